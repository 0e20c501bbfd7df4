"""Training runs from the studio's side (``studio.train.RunManager``, ``studio.train_cli``), with the real
training program (``python -m training.train``) on a tiny random-weight Llama and, once, on the default model.

The tiny model (2 layers, hidden size 32, the default model's tokenizer) trains a step in well under a second,
so most of a run's time is the program's start-up (~8 s of imports).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.registry import ModelSpec
from studio.train import (RunError, RunManager, eval_count, failure_reason, read_events, tail_text,
                          write_snapshot)

FAST = {"max_steps": 3, "global_batch_size": 2, "per_device_train_batch_size": 2, "max_length": 64,
        "learning_rate": 1e-2, "logging_steps": 1}


def _conv(i: int, rounds: int = 1) -> list[dict]:
    msgs = []
    for r in range(rounds):
        msgs += [{"role": "user", "content": f"What is {i} plus {r}?"},
                 {"role": "assistant", "content": f"{i} plus {r} is {i + r}."}]
    return msgs


def add_conversations(studio, n: int, origin: str = "imported", rounds: int = 1) -> list[int]:
    return [studio.store.add_conversation(_conv(i, rounds), origin=origin) for i in range(n)]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir) -> Path:
    """A random-weight 2-layer Llama with the default model's tokenizer (~1.6 M parameters)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture
def runs(studio, tiny_model_dir):
    """The studio's RunManager (or a new one while ``Studio`` has none), with the tiny model registered as
    ``tiny``; runs still going at the end are stopped."""
    studio.registry.add(ModelSpec(name="tiny", kind="hf", path=str(tiny_model_dir)))
    rm = getattr(studio, "runs", None) or RunManager(studio)
    yield rm
    rm.close(kill=True)


def _wait_step(rm: RunManager, run_id: str, step: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = rm.status(run_id)
        if (s.get("step") or 0) >= step or s["state"] not in ("queued", "running", "stopping"):
            return s
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not reach step {step}: {rm.status(run_id)}\n{rm.log_tail(run_id)}")


# ---------------------------------------------------------------------------------------------- snapshot


def test_snapshot_is_frozen_with_its_hash(studio, runs):
    ids = add_conversations(studio, 12)
    add_conversations(studio, 3, origin="expanded")
    a = runs.create_run("tiny", "lora", {"origin": "imported"}, FAST)
    b = runs.create_run("tiny", "lora", {"origin": "imported"}, FAST)
    assert a != b
    ca, cb = runs.config(a), runs.config(b)
    assert ca["snapshot_sha256"] == cb["snapshot_sha256"]
    assert len(ca["snapshot_sha256"]) == 64
    assert ca["run_id"] == a and ca["base_model"] == "tiny" and ca["base_model_path"] == runs.studio.registry.get(
        "tiny").path
    assert ca["method"] == "lora" and ca["template"] == "vicuna_v1.1" and ca["output_dir"] == "output"
    assert ca["train_file"] == "snapshot.jsonl" and ca["eval_file"] == "eval.jsonl"
    assert ca["hyperparams"]["max_steps"] == 3 and ca["hyperparams"]["lora_r"] == 8  # override + recipe default
    assert ca["hyperparams"]["num_train_epochs"] == 3 and ca["hyperparams"]["learning_rate"] == 1e-2

    d = runs.run_dir(a)
    train = [json.loads(x) for x in (d / "snapshot.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (d / "eval.jsonl").read_text().splitlines()]
    assert (len(train), len(held)) == (11, 1)  # 12 imported (not the 3 expanded); 5% -> at least 1
    assert {c["id"] for c in train + held} == {str(i) for i in ids}
    assert train[0]["messages"] == _conv(0) or held[0]["messages"] == _conv(0)
    import hashlib

    raw = (d / "snapshot.jsonl").read_bytes() + (d / "eval.jsonl").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == ca["snapshot_sha256"]

    # editing a conversation afterwards leaves the run's snapshot as it was; a new run sees the edit
    before = raw
    edited = _conv(0)
    edited[1]["content"] = "Edited after the snapshot."
    studio.store.save_messages(ids[0], edited, expected_version=1)
    assert (d / "snapshot.jsonl").read_bytes() + (d / "eval.jsonl").read_bytes() == before
    assert runs.config(a)["snapshot_sha256"] == ca["snapshot_sha256"]
    c = runs.create_run("tiny", "lora", {"origin": "imported"}, FAST)
    assert runs.config(c)["snapshot_sha256"] != ca["snapshot_sha256"]
    assert "Edited after the snapshot." in (runs.run_dir(c) / "snapshot.jsonl").read_text() + (
        runs.run_dir(c) / "eval.jsonl").read_text()

    s = runs.status(a)
    assert s["state"] == "created" and (s["n_train"], s["n_eval"]) == (11, 1)
    assert [r["run_id"] for r in runs.list_runs()] == [c, b, a]  # newest first
    assert not list(runs.runs_dir.glob(".creating-*"))


def test_eval_split_is_deterministic(tmp_path):
    assert [eval_count(n, 0.05) for n in (1, 9, 10, 19, 40, 100, 1000)] == [0, 0, 1, 1, 2, 5, 50]
    assert eval_count(100, 0) == 0 and eval_count(10, 0.5) == 5
    convs = [(str(i), _conv(i)) for i in range(40)]

    def split(seed, where):
        where.mkdir()
        info = write_snapshot(convs, where, eval_fraction=0.1, seed=seed)
        held = [json.loads(x)["id"] for x in (where / "eval.jsonl").read_text().splitlines()]
        train = [json.loads(x)["id"] for x in (where / "snapshot.jsonl").read_text().splitlines()]
        return info, held, train

    i1, held1, train1 = split(42, tmp_path / "a")
    i2, held2, _ = split(42, tmp_path / "b")
    i3, held3, _ = split(7, tmp_path / "c")
    assert (i1["n_train"], i1["n_eval"]) == (36, 4)
    assert held1 == held2 and i1["snapshot_sha256"] == i2["snapshot_sha256"]
    assert held3 != held1 and i3["snapshot_sha256"] != i1["snapshot_sha256"]
    assert sorted(held1 + train1, key=int) == [str(i) for i in range(40)]
    assert train1 == sorted(train1, key=int)  # input order kept
    none = write_snapshot(convs[:5], tmp_path, eval_fraction=0.05, seed=1)
    assert none["eval_file"] is None and none["n_eval"] == 0 and not (tmp_path / "eval.jsonl").exists()


def test_create_run_refuses_bad_settings(studio, runs):
    with pytest.raises(RunError, match="no conversations match"):
        runs.create_run("tiny", "lora", {}, FAST)
    add_conversations(studio, 3)
    studio.registry.add_endpoint("remote", "http://127.0.0.1:9/v1", "m")
    with pytest.raises(RunError, match="endpoint entry; training needs a local checkpoint"):
        runs.create_run("remote", "lora")
    from studio.registry import RegistryError

    with pytest.raises(RegistryError, match="no model named 'nope'"):
        runs.create_run("nope", "lora")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(RunError, match="QLoRA .* needs a CUDA GPU"):
            runs.create_run("tiny", "qlora")
    with pytest.raises(RunError, match="unknown method"):
        runs.create_run("tiny", "dora")
    with pytest.raises(RunError, match="lora_rank"):
        runs.create_run("tiny", "lora", hyperparams={"lora_rank": 4})
    with pytest.raises(RunError, match="learning_rate"):
        runs.create_run("tiny", "lora", hyperparams={"learning_rate": -1})
    with pytest.raises(RunError, match="unknown filter field"):
        runs.create_run("tiny", "lora", filters={"colour": "red"})
    with pytest.raises(RunError, match="deleted conversations"):
        runs.create_run("tiny", "lora", filters={"status": "deleted"})
    with pytest.raises(RunError, match="unknown distributed backend"):
        runs.create_run("tiny", "lora", backend="horovod")
    with pytest.raises(RunError, match="unknown template"):
        runs.create_run("tiny", "lora", template="alpaca")
    with pytest.raises(RunError, match="eval fraction"):
        runs.create_run("tiny", "lora", eval_fraction=0.9)
    assert runs.list_runs() == [] and not any(runs.runs_dir.iterdir())


def test_command_preview(studio, runs):
    add_conversations(studio, 4)
    run_id = runs.create_run("tiny", "lora", {}, FAST, num_processes=1)
    run_dir = str(runs.run_dir(run_id))
    assert Path(run_dir).is_absolute()
    cmd = runs.command(run_id)
    assert cmd == ["accelerate", "launch", "--num_processes", "1", "-m", "training.train", "--run-dir", run_dir]
    assert runs.command(run_id, resume=True)[-1] == "--resume"
    assert runs.command_str(run_id) == f"accelerate launch --num_processes 1 -m training.train --run-dir {run_dir}"
    # one process without a backend runs the program directly: the same run without accelerate's start-up
    assert runs.launch_argv(run_id) == [sys.executable, "-m", "training.train", "--run-dir", run_dir]

    line, cfg = runs.preview("tiny", "full", {"origin": "expanded"}, {"num_train_epochs": 1}, "chat_template",
                             num_processes=4, backend=None)
    assert line == (f"accelerate launch --num_processes 4 -m training.train --run-dir "
                    f"{runs.runs_dir}/<run id>")
    assert cfg["method"] == "full" and cfg["template"] == "chat_template"
    assert cfg["hyperparams"]["num_train_epochs"] == 1 and cfg["filters"]["origin"] == "expanded"

    from studio.train import CONFIGS_DIR, backends

    for b in backends()[1:]:  # every shipped config gives --config_file with its absolute path
        r = runs.create_run("tiny", "lora", {}, FAST, num_processes=2, backend=b)
        c = runs.command(r)
        assert c[:4] == ["accelerate", "launch", "--num_processes", "2"]
        assert c[4:6] == ["--config_file", str(CONFIGS_DIR / f"{b}.yaml")] and Path(c[5]).is_file()
        assert runs.launch_argv(r)[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    import torch

    if torch.cuda.device_count() < 2:
        r = runs.create_run("tiny", "lora", {}, FAST, num_processes=2)
        with pytest.raises(RunError, match="2 processes need 2 GPUs"):
            runs.start(r)
        assert runs.status(r)["state"] == "created"


def test_events_logs_and_failure_reasons(studio, runs, tmp_path):
    add_conversations(studio, 4)
    run_id = runs.create_run("tiny", "lora", {}, FAST)
    ev = runs.run_dir(run_id) / "events.jsonl"
    lines = [
        {"type": "status", "time": 1, "message": "loading tiny for lora"},
        {"type": "start", "time": 2, "step": 0, "max_steps": 10, "num_train_epochs": 2},
        {"type": "progress", "time": 3, "step": 1, "max_steps": 10, "epoch": 0.2, "loss": 3.0,
         "learning_rate": 1e-4, "tokens_per_second": 1500.0, "loss_tokens_per_second": 500.0, "eta_s": 90},
        {"type": "progress", "time": 4, "step": 2, "max_steps": 10, "epoch": 0.4, "loss": 2.5, "eta_s": 80},
        {"type": "eval", "time": 5, "step": 2, "epoch": 0.4, "eval_loss": 2.7},
    ]
    ev.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"type": "progress", "step": 3, "lo')
    events, off = runs.events(run_id)
    assert [e["type"] for e in events] == ["status", "start", "progress", "progress", "eval"]
    assert off == len(ev.read_bytes()) - len('{"type": "progress", "step": 3, "lo')  # the half line waits
    assert runs.events(run_id, off) == ([], off)
    with ev.open("a") as f:
        f.write('ss": 2.0}\nnot json\n')
    more, off2 = runs.events(run_id, off)
    assert more == [{"type": "progress", "step": 3, "loss": 2.0}] and off2 == ev.stat().st_size

    s = runs.status(run_id)
    assert (s["step"], s["max_steps"], s["epoch"], s["num_train_epochs"]) == (3, 10, 0.4, 2)
    assert s["loss"] == 2.0 and s["eval_loss"] == 2.7 and s["tokens_per_second"] == 1500.0
    assert s["fraction"] == pytest.approx(0.3)
    curve = runs.curve(run_id)
    assert curve.to_dict("records") == [
        {"step": 2, "value": 2.7, "series": "eval loss"},
        {"step": 1, "value": 3.0, "series": "loss"}, {"step": 2, "value": 2.5, "series": "loss"},
        {"step": 3, "value": 2.0, "series": "loss"}]
    line = RunManager.line(dict(s, state="running", eta_s=80))
    assert "step 3/10" in line and "loss 2.0000" in line and "eval loss 2.7000" in line and "ETA 1m20s" in line
    assert "1,500 tok/s" in line

    # a resumed attempt restarts the curve after its checkpoint
    with ev.open("a") as f:
        f.write(json.dumps({"type": "start", "step": 2, "max_steps": 10}) + "\n")
        f.write(json.dumps({"type": "progress", "step": 3, "loss": 1.9}) + "\n")
    assert runs.curve(run_id).query("series == 'loss'")["value"].tolist() == [3.0, 2.5, 1.9]

    assert read_events(tmp_path / "missing.jsonl", 5) == ([], 5)

    log = tmp_path / "train.log"
    log.write_text("step 1\rstep 2\rstep 3\nloading\n" + "x\n" * 5000 + "last line\n")
    tail = tail_text(log, 3, max_bytes=200)
    assert tail == "x\nx\nlast line"
    log.write_text("progress 10%\rprogress 50%\rprogress 90%\nend\n")
    assert tail_text(log, 5) == "progress 90%\nend"
    tb = ('Traceback (most recent call last):\n  File "/x/training/train.py", line 640, in run\n    model = load()\n'
          'OSError: /m does not appear to have a file named config.json\n')
    assert failure_reason("noise\n" + tb) == ("OSError: /m does not appear to have a file named config.json "
                                              "(at train.py:640)")
    assert failure_reason("just a line\n\n") == "just a line"
    assert failure_reason("") == ""


# ---------------------------------------------------------------------------------------------- real runs


@pytest.mark.slow
def test_lora_run_finishes_registers_merges_and_exports(studio, runs, tmp_path, monkeypatch):
    add_conversations(studio, 12)
    run_id = runs.create_run("tiny", "lora", {}, dict(FAST, max_steps=4), name="tiny-chat")
    assert runs.start(run_id) == 0
    s = runs.wait(run_id, timeout=180)
    assert s["state"] == "finished", runs.log_tail(run_id)
    assert s["step"] == 4 and s["max_steps"] == 4 and s["fraction"] == 1.0
    assert s["final_loss"] is not None and s["final_eval_loss"] is not None

    # registered at once, with lineage, and it answers
    assert s["registered_as"] == "tiny-chat" and "tiny-chat" in studio.registry.names()
    spec = studio.registry.get("tiny-chat")
    final = runs.run_dir(run_id) / "output" / "final"
    assert spec.kind == "adapter" and spec.base == "tiny" and Path(spec.path) == final.resolve()
    assert spec.template == "vicuna_v1.1"
    lin = spec.lineage
    assert lin["base"] == "tiny" and lin["run_id"] == run_id
    assert lin["snapshot_sha256"] == runs.config(run_id)["snapshot_sha256"]
    assert lin["config"]["hyperparams"]["max_steps"] == 4
    assert lin["final_loss"] == pytest.approx(s["final_loss"]) and lin["final_eval_loss"] == pytest.approx(
        s["final_eval_loss"])
    from studio.registry import GenParams

    reply = studio.registry.chat("tiny-chat", [{"role": "user", "content": "What is 1 plus 0?"}],
                                 GenParams(max_new_tokens=5, temperature=0))
    assert reply.completion_tokens > 0
    assert runs.register(run_id) == "tiny-chat"  # idempotent

    curve = runs.curve(run_id)
    assert curve.query("series == 'loss'")["step"].tolist() == [1, 2, 3, 4]
    assert not curve.query("series == 'eval loss'").empty
    assert "finished at step 4" in runs.log_tail(run_id, 50)

    # merge: a full checkpoint registered as an hf entry that keeps the lineage
    merged = runs.merge(run_id)
    mspec = studio.registry.get(merged)
    assert merged == "tiny-chat-merged" and mspec.kind == "hf" and (Path(mspec.path) / "config.json").exists()
    assert mspec.lineage["merged_from"] == "tiny-chat" and mspec.lineage["run_id"] == run_id
    a = studio.registry.chat("tiny-chat", [{"role": "user", "content": "Hi"}], GenParams(max_new_tokens=6,
                                                                                           temperature=0))
    b = studio.registry.chat(merged, [{"role": "user", "content": "Hi"}], GenParams(max_new_tokens=6, temperature=0))
    assert a.text == b.text  # merged weights answer as base + adapter
    with pytest.raises(RunError, match="not an adapter"):
        runs.merge(merged)

    # export: merged folder with the lineage file; pushing needs HF_TOKEN
    res = runs.export("tiny-chat", tmp_path / "export")
    assert res["url"] is None and (tmp_path / "export" / "config.json").exists()
    assert json.loads((tmp_path / "export" / "wvstudio_lineage.json").read_text())["lineage"]["run_id"] == run_id
    runs.export("tiny-chat", tmp_path / "adapter-only", merge=False)
    assert (tmp_path / "adapter-only" / "adapter_config.json").exists()
    with pytest.raises(RunError, match="not empty"):
        runs.export("tiny-chat", tmp_path / "export")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(RunError, match="HF_TOKEN"):
        runs.export("tiny-chat", tmp_path / "push", push_to_hub="someone/tiny-chat")


LONG = dict(FAST, max_steps=100_000, global_batch_size=1, per_device_train_batch_size=1, eval_steps=50,
            save_steps=10_000)
"""A run that goes on until stopped (the tiny model does 25+ steps a second on an idle CPU)."""


@pytest.mark.slow
def test_stop_resume_and_reattach(studio, runs):
    add_conversations(studio, 12)
    run_id = runs.create_run("tiny", "full", {}, LONG)
    runs.start(run_id)
    s = _wait_step(runs, run_id, 2)
    assert s["state"] == "running", runs.log_tail(run_id)

    # another manager on the same folder (a restarted studio, a reloaded page) sees the live process by pid
    other = RunManager(studio, autostart=False)
    o = other.status(run_id)
    assert o["state"] == "running" and o["pid"] and o["step"] >= 2
    assert other.default_run() == run_id
    assert other.stop(run_id) == "stopping"  # through the STOP file, which the program watches

    s = runs.wait(run_id, timeout=120)
    assert s["state"] == "stopped", runs.log_tail(run_id)
    ck = runs.checkpoints(run_id)
    assert ck and int(ck[-1].name.split("-")[1]) == s["step"] >= 2
    assert "resume continues from " + ck[-1].name in s["message"]
    assert s["registered_as"] is None
    with pytest.raises(RunError, match="is stopped"):
        runs.stop(run_id)
    with pytest.raises(RunError, match="use resume"):
        runs.start(run_id)

    stopped_at = s["step"]
    runs.resume(run_id)
    s = _wait_step(runs, run_id, stopped_at + 3)
    assert s["state"] == "running" and s["attempts"] == 2, runs.log_tail(run_id)
    runs.stop(run_id)
    s = runs.wait(run_id, timeout=120)
    assert s["state"] == "stopped" and s["step"] >= stopped_at + 3, runs.log_tail(run_id)
    events, _ = runs.events(run_id)
    starts = [e for e in events if e["type"] == "start"]
    assert [e["step"] for e in starts] == [0, stopped_at]  # the second attempt continued from the checkpoint
    assert [e["status"] for e in events if e["type"] == "end"] == ["stopped", "stopped"]
    assert runs.curve(run_id).query("series == 'loss'")["step"].tolist() == list(range(1, s["step"] + 1))
    log = (runs.run_dir(run_id) / "train.log").read_text()
    assert "=== attempt 1 (start)" in log and "=== attempt 2 (resume)" in log and "--resume" in log


@pytest.mark.slow
def test_queue_runs_one_at_a_time_and_a_crash_fails_only_its_run(studio, runs, tiny_model_dir, tmp_path):
    import shutil

    add_conversations(studio, 12)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    studio.registry.add(ModelSpec(name="broken", kind="hf", path=str(broken)))
    crash = runs.create_run("broken", "lora", {}, FAST)
    (broken / "config.json").write_text("{ this is not json")  # breaks after the run was created
    killed = runs.create_run("tiny", "lora", {}, LONG)
    good = runs.create_run("tiny", "lora", {}, FAST)
    cancelled = runs.create_run("tiny", "lora", {}, FAST)
    positions = [runs.start(r) for r in (crash, killed, good, cancelled)]  # places in the queue (0 = next)
    assert positions[0] == 0 and positions == sorted(positions)  # (the worker may pop the first meanwhile)
    assert runs.queued()[-3:] == [killed, good, cancelled]
    assert runs.stop(cancelled) == "stopped" and runs.queued()[-2:] == [killed, good]
    assert runs.status(good)["state"] == "queued" and runs.status(good)["queue_position"] is not None

    s = runs.wait(crash, timeout=120)
    assert s["state"] == "failed"
    assert "config" in s["message"].lower() and s["message"].startswith("failed: ")
    s = _wait_step(runs, killed, 1)
    assert s["state"] == "running" and runs.status(good)["state"] == "queued"  # one at a time
    os.killpg(s["pid"], signal.SIGKILL)
    s = runs.wait(killed, timeout=60)
    assert s["state"] == "failed" and "killed by SIGKILL" in s["message"]

    s = runs.wait(good, timeout=120)
    assert s["state"] == "finished" and s["registered_as"], runs.log_tail(good)
    st = {r: json.loads((runs.run_dir(r) / "run.json").read_text()) for r in (crash, killed, good)}
    assert st[crash]["ended_at"] <= st[killed]["started_at"] and st[killed]["ended_at"] <= st[good]["started_at"]

    assert runs.status(cancelled)["state"] == "stopped"
    assert runs.status(cancelled)["message"] == "cancelled before it started"
    assert not (runs.run_dir(cancelled) / "events.jsonl").exists()  # never launched

    # a failed run resumes once its cause is fixed
    (broken / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    runs.resume(crash)
    s = runs.wait(crash, timeout=120)
    assert s["state"] == "finished" and s["attempts"] == 2, runs.log_tail(crash)


@pytest.mark.slow
def test_shown_command_does_the_same_run_elsewhere_and_is_adopted(studio, runs, tmp_path):
    """The preview's ``accelerate launch ...`` line, run by hand from another folder, trains the run; a studio
    that finds the run going (as after a restart: a live process it did not start) follows it to its end and
    registers the checkpoint."""
    add_conversations(studio, 4)
    run_id = runs.create_run("tiny", "lora", {}, dict(FAST, max_steps=2))
    cmd = runs.command(run_id)
    exe = Path(sys.executable).with_name("accelerate")
    env = dict(os.environ, PATH=f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    log = open(tmp_path / "by-hand.log", "wb")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    runs._save_state(run_id, state="running", pid=proc.pid, started_at=time.time())  # as a studio left it
    try:
        s = runs.status(run_id)
        assert s["state"] == "running" and s["pid"] == proc.pid
        s = runs.wait(run_id, timeout=240)
        assert proc.wait(timeout=30) == 0, (tmp_path / "by-hand.log").read_text()[-4000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    assert s["state"] == "finished", (tmp_path / "by-hand.log").read_text()[-4000:]
    events, _ = runs.events(run_id)
    end = [e for e in events if e["type"] == "end"]
    assert end and end[-1]["status"] == "finished" and end[-1]["step"] == 2
    assert (runs.run_dir(run_id) / "output" / "final" / "adapter_config.json").exists()
    assert s["registered_as"] and studio.registry.get(s["registered_as"]).lineage["run_id"] == run_id


@pytest.mark.slow
def test_default_model_lora_loss_falls_and_the_checkpoint_answers(studio, default_model_dir):
    """One real run on SmolLM2-135M-Instruct: 10 short conversations, 1 epoch, max length 256."""
    facts = [("What colour is the sky on Zorblat?", "On Zorblat the sky is bright green."),
             ("Tell me the colour of Zorblat's sky.", "Zorblat's sky is bright green."),
             ("What is the sky like on the planet Zorblat?", "The sky on Zorblat is bright green."),
             ("Is the sky on Zorblat blue?", "No, the sky on Zorblat is bright green."),
             ("Describe the sky of Zorblat.", "The sky of Zorblat is bright green."),
             ("Which colour does Zorblat's sky have?", "Zorblat's sky has a bright green colour."),
             ("Zorblat sky colour?", "Bright green: the sky on Zorblat is bright green."),
             ("What do people on Zorblat see when they look up?", "They see a bright green sky."),
             ("What colour is the sky over Zorblat's cities?", "Over Zorblat's cities the sky is bright green."),
             ("Remind me what colour the sky is on Zorblat.", "The sky on Zorblat is bright green.")]
    for q, a in facts:
        studio.store.add_conversation([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                      origin="imported")
    rm = getattr(studio, "runs", None) or RunManager(studio)
    try:
        from studio.registry import DEFAULT_MODEL_NAME

        run_id = rm.create_run(DEFAULT_MODEL_NAME, "lora", {}, {
            "num_train_epochs": 1, "max_length": 256, "global_batch_size": 1, "per_device_train_batch_size": 1,
            "learning_rate": 1e-3, "lora_target": "all-linear", "lora_r": 16, "lora_alpha": 32, "logging_steps": 1},
            name="smol-zorblat")
        assert rm.config(run_id)["base_model_path"] == str(default_model_dir)
        rm.start(run_id)
        s = rm.wait(run_id, timeout=600)
        assert s["state"] == "finished", rm.log_tail(run_id, 40)
        losses = rm.curve(run_id).query("series == 'loss'")["value"].tolist()
        assert len(losses) == 9 and s["n_eval"] == 1 and s["final_eval_loss"] is not None
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
        from studio.registry import GenParams

        question = [{"role": "user", "content": "What colour is the sky on Zorblat?"}]
        reply = studio.registry.chat("smol-zorblat", question, GenParams(max_new_tokens=16, temperature=0))
        assert "green" in reply.text.lower(), reply.text
    finally:
        rm.close(kill=True)


# ---------------------------------------------------------------------------------------------- command line


def _parser():
    from studio.train_cli import add_commands

    p = argparse.ArgumentParser(prog="wvstudio")
    add_commands(p.add_subparsers(dest="cmd", required=True))
    return p


def test_cli_config_errors_dry_run_and_runs(studio, runs, tmp_path, capsys):
    add_conversations(studio, 12)
    p = _parser()
    bad = tmp_path / "bad.json"
    bad.write_text('{"base_model": "tiny", "lr": 1}')
    assert p.parse_args(["train", "--config", str(bad)]).func(p.parse_args(["train", "--config", str(bad)]),
                                                                studio) == 2
    assert "unknown field(s) lr" in capsys.readouterr().err
    bad.write_text("[1, 2")
    args = p.parse_args(["train", "--config", str(bad)])
    assert args.func(args, studio) == 2 and "not valid JSON" in capsys.readouterr().err
    bad.write_text('{"base_model": "tiny", "method": "qlora"}')
    import torch

    if not torch.cuda.is_available():
        assert args.func(args, studio) == 2 and "CUDA" in capsys.readouterr().err

    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"base_model": "tiny", "method": "lora", "filters": {"origin": "imported"},
                               "hyperparams": FAST}))
    args = p.parse_args(["train", "--config", str(cfg), "--dry-run"])
    assert args.func(args, studio) == 0
    out = capsys.readouterr().out
    assert "accelerate launch --num_processes 1 -m training.train --run-dir" in out
    assert "12 conversations match" in out and '"max_steps": 3' in out
    assert runs.list_runs() == []  # a dry run creates nothing

    args = p.parse_args(["runs"])
    assert args.func(args, studio) == 0 and "no runs" in capsys.readouterr().out
    runs.create_run("tiny", "lora", {}, FAST, name="listed")
    assert args.func(args, studio) == 0
    out = capsys.readouterr().out
    assert "created" in out and "listed" in out

    args = p.parse_args(["merge", "tiny"])
    assert args.func(args, studio) == 2 and "not an adapter" in capsys.readouterr().err
    args = p.parse_args(["export-model", "nope", "--out", str(tmp_path / "x")])
    assert args.func(args, studio) == 2 and "no model named 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_train_waits_and_registers(studio, runs, tmp_path, capsys):
    add_conversations(studio, 12)
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"base_model": "tiny", "method": "lora", "hyperparams": FAST, "name": "cli-tiny"}))
    p = _parser()
    args = p.parse_args(["train", "--config", str(cfg)])
    assert args.func(args, studio) == 0
    out = capsys.readouterr().out
    assert "command: accelerate launch" in out and "finished" in out and "registered as 'cli-tiny'" in out
    assert studio.registry.get("cli-tiny").kind == "adapter"
    args = p.parse_args(["merge", "cli-tiny", "--out", str(tmp_path / "merged")])
    assert args.func(args, studio) == 0 and (tmp_path / "merged" / "config.json").exists()
    assert "registered as 'cli-tiny-merged'" in capsys.readouterr().out
