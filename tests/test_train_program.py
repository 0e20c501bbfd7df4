"""The training program as the studio runs it: ``python -m training.train --run-dir RUN_DIR`` in a subprocess.

A tiny random-weight Llama (hidden size 64, 2 layers) with the default tokenizer keeps each run to seconds. Covered:
events (start, progress, eval, checkpoint, end), LoRA and full fine-tunes whose ``output/final`` loads, stop by
the STOP file and by SIGTERM with a checkpoint, ``--resume`` continuing the step count and the learning-rate
schedule, a crash (missing base model) and QLoRA without CUDA giving an ``error`` event and a non-zero exit.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.train import (
    DEFAULT_HYPERPARAMS,
    TrainError,
    gradient_accumulation_steps,
    resolve_hyperparams,
    validate_run_config,
)

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 16


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, default_model_dir) -> Path:
    """A random-weight 2-layer Llama with the default tokenizer, saved as a checkpoint folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    out = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _write_jsonl(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_run(tmp_path: Path, data_dir: Path, base: str, method: str, template="vicuna_v1.1", n_train=16, n_eval=4,
             **hp) -> Path:
    """A run folder as the studio writes it: config.json, snapshot.jsonl, eval.jsonl."""
    run = tmp_path / f"run-{method}"
    run.mkdir()
    alpaca = json.loads((data_dir / "alpaca_en_demo.json").read_text())
    convs = [{"id": f"a{i}", "messages": [{"role": "user", "content": r["instruction"]},
                                          {"role": "assistant", "content": r["output"]}]}
             for i, r in enumerate(alpaca[: n_train + n_eval])]
    _write_jsonl(run / "snapshot.jsonl", convs[:n_train])
    _write_jsonl(run / "eval.jsonl", convs[n_train:])
    hyper = {"max_steps": MAX_STEPS, "learning_rate": 1e-3, "global_batch_size": 1, "per_device_train_batch_size": 1,
             "max_length": 96, "save_total_limit": 2, **hp}
    (run / "config.json").write_text(json.dumps({
        "run_id": run.name, "base_model": "tiny", "base_model_path": base, "method": method, "template": template,
        "train_file": "snapshot.jsonl", "eval_file": "eval.jsonl" if n_eval else None,
        "snapshot_sha256": "0" * 64, "output_dir": "output", "hyperparams": hyper}))
    return run


def start(run: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    log = open(run / "train.log", "a")
    return subprocess.Popen([sys.executable, "-m", "training.train", "--run-dir", str(run), *extra], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def events(run: Path) -> list[dict]:
    p = run / "events.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def finish(proc: subprocess.Popen, run: Path, timeout=150) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("training did not finish in time; log:\n" + (run / "train.log").read_text()[-3000:])


def wait_for_progress(proc: subprocess.Popen, run: Path, after: int = 0, timeout=120) -> None:
    t = time.time()
    while time.time() - t < timeout:
        if sum(e["type"] == "progress" for e in events(run)) > after:
            return
        if proc.poll() is not None:
            raise AssertionError("training ended early; log:\n" + (run / "train.log").read_text()[-3000:])
        time.sleep(0.05)
    raise AssertionError("no progress event in time")


def _session(evs: list[dict], n: int) -> list[dict]:
    """Events of the n-th start (0-based) up to its end."""
    starts = [i for i, e in enumerate(evs) if e["type"] == "start"]
    stop = starts[n + 1] if n + 1 < len(starts) else len(evs)
    return evs[starts[n]: stop]


def _expected_learning_rates(base_lr: float, steps: int) -> list[float]:
    """The learning rate logged at steps 1..steps by an uninterrupted run (cosine, warmup ratio 0.04)."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(steps * 0.04), steps)
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_lora_run_stop_file_then_resume(tmp_path, data_dir, tiny_model):
    run = make_run(tmp_path, data_dir, str(tiny_model), "lora", lora_target="all-linear")
    proc = start(run)
    wait_for_progress(proc, run)
    (run / "STOP").touch()
    assert finish(proc, run) == 0
    first = events(run)
    types = [e["type"] for e in first]
    assert types[:3] == ["status", "status", "start"] and types[-1] == "end"
    s = first[2]
    assert s["max_steps"] == MAX_STEPS and s["n_train"] == 16 and s["n_eval"] == 4 and s["world_size"] == 1
    assert s["method"] == "lora" and 0 < s["trainable_params"] < s["total_params"]
    end = first[-1]
    assert end["status"] == "stopped" and 1 <= end["step"] < MAX_STEPS
    assert [e for e in first if e["type"] == "checkpoint"][-1]["step"] == end["step"]
    assert end["output_path"].endswith(f"checkpoint-{end['step']}") and Path(end["output_path"]).is_dir()
    stopped_at = end["step"]
    for p in (e for e in first if e["type"] == "progress"):
        assert {"step", "max_steps", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_second",
                "loss_tokens_per_second", "eta_s", "elapsed_s"} <= set(p)
        assert math.isfinite(p["loss"]) and p["tokens_per_second"] > 0
        assert 0 < p["loss_tokens_per_second"] <= p["tokens_per_second"]

    proc = start(run, "--resume")  # the stale STOP file is removed at start
    assert finish(proc, run) == 0
    second = _session(events(run), 1)
    assert second[0]["step"] == stopped_at and second[0]["resumed_from"].endswith(f"checkpoint-{stopped_at}")
    progress = [e for e in second if e["type"] == "progress"]
    assert progress[0]["step"] == stopped_at + 1 and progress[-1]["step"] == MAX_STEPS
    end = second[-1]
    assert end["type"] == "end" and end["status"] == "finished" and end["step"] == MAX_STEPS
    assert math.isfinite(end["final_loss"]) and math.isfinite(end["final_eval_loss"])
    # the learning-rate schedule goes on as if never interrupted
    logged = {e["step"]: e["learning_rate"] for e in events(run) if e["type"] == "progress"}
    expected = _expected_learning_rates(1e-3, MAX_STEPS)
    assert sorted(logged) == list(range(1, MAX_STEPS + 1))
    assert [round(logged[k], 9) for k in sorted(logged)] == [round(x, 9) for x in expected]

    final = Path(end["output_path"])
    assert final == run / "output" / "final" and (final / "adapter_config.json").is_file()
    assert json.loads((final / "training_run.json").read_text())["method"] == "lora"
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(final)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), final)
    with torch.no_grad():
        assert torch.isfinite(model(**tok("Hello", return_tensors="pt")).logits).all()

    from training.train import merge_adapter

    merged = merge_adapter(tiny_model, final, tmp_path / "merged")
    m = AutoModelForCausalLM.from_pretrained(merged)
    assert not any("lora" in n for n, _ in m.named_parameters())
    assert (merged / "tokenizer.json").is_file()


def test_full_run_sigterm_then_resume(tmp_path, data_dir, tiny_model):
    run = make_run(tmp_path, data_dir, str(tiny_model), "full", template="chat_template", padding="packed")
    proc = start(run)
    wait_for_progress(proc, run)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc, run) == 0
    end = events(run)[-1]
    assert end["type"] == "end" and end["status"] == "stopped" and end["step"] < MAX_STEPS
    assert (run / "output" / f"checkpoint-{end['step']}" / "trainer_state.json").is_file()
    start_ev = next(e for e in events(run) if e["type"] == "start")
    assert start_ev["padding"] == "packed" and start_ev["trainable_params"] == start_ev["total_params"]
    assert start_ev["gradient_checkpointing"] is True  # "auto" for a full fine-tune

    proc = start(run, "--resume")
    assert finish(proc, run) == 0
    evs = _session(events(run), 1)
    assert [e for e in evs if e["type"] == "progress"][0]["step"] == end["step"] + 1
    assert any(e["type"] == "eval" and math.isfinite(e["eval_loss"]) for e in evs)  # once per epoch
    end = evs[-1]
    assert end["status"] == "finished" and end["step"] == MAX_STEPS
    final = Path(end["output_path"])
    assert (final / "model.safetensors").is_file() and (final / "generation_config.json").is_file()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    assert tok.chat_template
    with torch.no_grad():
        assert torch.isfinite(model(**tok("Hello", return_tensors="pt")).logits).all()


def test_crash_and_qlora_without_cuda_give_error_events(tmp_path, data_dir, tiny_model):
    import torch

    missing = make_run(tmp_path, data_dir, str(tmp_path / "no-such-model"), "lora")
    qlora = make_run(tmp_path, data_dir, str(tiny_model), "qlora")
    procs = [start(missing), start(qlora)]  # both fail fast; run them side by side
    codes = [finish(p, r) for p, r in zip(procs, (missing, qlora))]
    assert codes[0] != 0
    err = events(missing)[-1]
    assert err["type"] == "error" and "no-such-model" in err["message"] and "no checkpoint" in err["message"]
    assert "Traceback" in err["traceback"]
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: QLoRA may run here")
    assert codes[1] != 0
    err = events(qlora)[-1]
    assert err["type"] == "error" and err["message"].startswith("QLoRA needs a CUDA GPU")
    assert not any(e["type"] == "start" for e in events(qlora))  # it fails before loading anything


def test_qlora_check_in_process():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    cfg = {"base_model_path": "x/y", "method": "qlora", "template": "vicuna_v1.1", "train_file": "s.jsonl"}
    with pytest.raises(TrainError, match="QLoRA needs a CUDA GPU"):
        validate_run_config(cfg)
    assert validate_run_config(cfg, check_hardware=False)["hyperparams"]["gradient_checkpointing"] is False


def test_resolve_hyperparams_defaults_and_checks():
    hp = resolve_hyperparams({})
    assert hp == DEFAULT_HYPERPARAMS and hp is not DEFAULT_HYPERPARAMS
    assert (hp["num_train_epochs"], hp["learning_rate"], hp["lr_scheduler_type"], hp["warmup_ratio"]) == \
        (3, 2e-5, "cosine", 0.04)
    assert (hp["lora_r"], hp["lora_alpha"], hp["lora_dropout"], hp["lora_target"]) == (8, 16, 0.05, "q_proj,v_proj")
    assert resolve_hyperparams({}, method="full")["gradient_checkpointing"] is True
    assert resolve_hyperparams({}, method="lora")["gradient_checkpointing"] is False
    # form fields give floats and strings
    hp = resolve_hyperparams({"lora_r": 16.0, "max_length": "512", "bf16": "false", "eval_steps": None,
                              "lora_target": " q_proj , k_proj ", "learning_rate": "1e-4"})
    assert (hp["lora_r"], hp["max_length"], hp["bf16"], hp["lora_target"], hp["learning_rate"]) == \
        (16, 512, False, "q_proj,k_proj", 1e-4)
    for bad, match in [({"lora_r": 2.5}, "lora_r"), ({"padding": "pad"}, "padding"), ({"nope": 1}, "nope"),
                       ({"warmup_ratio": 1}, "warmup_ratio"), ({"max_steps": 0}, "max_steps"),
                       ({"bf16": "yes"}, "bf16"), ({"learning_rate": float("nan")}, "learning_rate")]:
        with pytest.raises(ValueError, match=match):
            resolve_hyperparams(bad)
    assert gradient_accumulation_steps(resolve_hyperparams({}), 1) == 64
    assert gradient_accumulation_steps(resolve_hyperparams({}), 8) == 8
    assert gradient_accumulation_steps(resolve_hyperparams({"per_device_train_batch_size": 3}), 4) == 11


def test_accelerate_configs_are_valid():
    """Every shipped accelerate config parses, and the DeepSpeed JSON files it names exist and parse."""
    import yaml

    configs = sorted((ROOT / "training" / "configs").glob("*.yaml"))
    names = {p.stem for p in configs}
    assert {"single", "ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"} <= names
    from accelerate.commands.config.config_args import ClusterConfig

    for p in configs:
        raw = yaml.safe_load(p.read_text())
        cfg = ClusterConfig.from_yaml_file(p)
        assert cfg.distributed_type is not None
        ds = (raw.get("deepspeed_config") or {}).get("deepspeed_config_file")
        if ds:
            path = ROOT / ds
            assert path.is_file(), f"{p.name} names {ds}, which is missing"
            json.loads(path.read_text())
