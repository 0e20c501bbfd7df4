"""The training program across processes: ``accelerate launch --multi_gpu --num_processes 2`` with CUDA hidden
is PyTorch DDP over gloo (the program trains on the CPU when there is no CUDA device, see ``training.train.run``),
against one process with twice the gradient accumulation on the same samples; and ``wvstudio train`` with
``"num_processes": 2`` on a machine without CUDA, from the command line to the registered checkpoint.

Why ``--multi_gpu`` and not ``--cpu``: accelerate 1.x's ``--cpu`` goes to its ``simple_launcher``, which starts ONE
process whatever ``--num_processes`` says (several CPU processes need ``mpirun``); ``--multi_gpu`` starts them
through torchrun, and ``TrainingArguments(use_cpu=True)`` makes each of them join a gloo process group.

The tiny random-weight Llama of ``conftest.tiny_model_dir`` keeps a step well under a second; nearly all of each
test's time (~1 minute on 2 busy cores) is the interpreters importing torch and transformers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from training.train import gradient_accumulation_steps, resolve_hyperparams

ROOT = Path(__file__).resolve().parents[1]

#: 2 steps of a global batch of 4: per-device batch 2; 1 process accumulates 2 micro-batches, 2 processes 1 each.
#: Full fine-tune: every weight's gradient must be averaged across the processes for step 2's loss to match.
#: Llama has no dropout (attention_dropout 0), so the only randomness is the data order (seed 7).
#: 500 training conversations: the default ``group_by_length`` sampler sorts by length within megabatches of
#: ``min(n // (4 b), 50) * b`` samples for a batch count b; counted per process (b = 2 for 2 processes) that is
#: 100 samples against 124 for one process (b = 4), which puts other samples first. The program counts the
#: global batch (b = 4 for both; see ``StudioTrainer._get_train_sampler``). Answers are cut to 1..50 words so
#: that the lengths are spread (77 distinct, 2 of 500 cut at max_length); samples cut to max_length would tie
#: at the top of every megabatch and hide the difference.
HP = {"max_steps": 2, "global_batch_size": 4, "per_device_train_batch_size": 2, "learning_rate": 1e-2,
      "max_length": 128, "logging_steps": 1, "warmup_ratio": 0.0, "lr_scheduler_type": "constant", "seed": 7,
      "save_steps": 2, "save_total_limit": 1}
N_TRAIN = 500

#: Same samples, same global batch, same initial weights: the two runs differ only in how float32 sums are
#: ordered (per-process partial sums then a gloo all-reduce of the gradients and of the token count, against
#: one process accumulating two micro-batches). That rounding is ~1e-7 relative per operation; after one
#: AdamW step at lr 1e-2 it shows as at most ~1e-5 in the loss. 1e-4 relative is ten times that, and far below
#: what a real fault moves: a rank training alone on its own half batch, or another sample order, changes the
#: loss of a random-weight model on different text by 1e-3 or more (printed on failure).
RTOL = 1e-4


def _free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it), for torchrun's rendezvous: tests of several worktrees
    run at once on this machine, and accelerate's default 29500 would clash."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_run(parent: Path, name: str, data_dir: Path, base: Path) -> Path:
    run = parent / name
    run.mkdir()
    alpaca = json.loads((data_dir / "alpaca_en_demo.json").read_text())
    rows = [{"id": f"a{i}", "messages": [{"role": "user", "content": r["instruction"]},
                                         {"role": "assistant", "content": r["output"]}]}
            for i, r in enumerate(alpaca[:N_TRAIN])]
    for i, (r, a) in enumerate(zip(rows, alpaca)):  # answers of 1..50 words: lengths spread below max_length
        r["messages"][1]["content"] = " ".join(a["output"].split()[: 1 + (i * 37) % 50])
    (run / "snapshot.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "config.json").write_text(json.dumps({
        "run_id": name, "base_model": "tiny", "base_model_path": str(base), "method": "full",
        "template": "vicuna_v1.1", "train_file": "snapshot.jsonl", "eval_file": None, "snapshot_sha256": "0" * 64,
        "output_dir": "output", "hyperparams": HP}))
    return run


def _run_all(jobs: list[tuple[list[str], Path]], timeout: float = 300) -> None:
    """Run the programs at once, each to its end in its own process group (most of a run is start-up, so two at
    once take little longer than one); whatever is left of a group afterwards (torchrun's workers) is killed."""
    # CUDA hidden: the comparison is of the CPU path (fp32, gloo) on any machine; on a GPU the program would pick
    # bf16 and NCCL, and a machine with one GPU cannot hold 2 processes of one GPU each.
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="")
    procs = []
    try:
        for argv, run in jobs:
            with open(run / "train.log", "ab") as log:
                procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True))
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for rc, (_, run) in zip(codes, jobs):
        assert rc == 0, f"{run.name}: exit code {rc}; log:\n" + (run / "train.log").read_text()[-4000:]


def _events(run: Path) -> tuple[list[str], list[dict]]:
    lines = (run / "events.jsonl").read_text().splitlines()
    return lines, [json.loads(x) for x in lines]


def test_two_processes_match_one_process_with_double_accumulation(tmp_path, data_dir, tiny_model_dir):
    hp = resolve_hyperparams(HP, method="full")
    assert gradient_accumulation_steps(hp, 1) == 2 and gradient_accumulation_steps(hp, 2) == 1

    one = _make_run(tmp_path, "one", data_dir, tiny_model_dir)
    two = _make_run(tmp_path, "two", data_dir, tiny_model_dir)
    _run_all([([sys.executable, "-m", "training.train", "--run-dir", str(one)], one),
              ([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port()), "-m", "training.train", "--run-dir", str(two)], two)])

    _, ev1 = _events(one)
    lines2, ev2 = _events(two)

    # Only the main process writes events: one stream, each event once, one start and one end.
    assert len(lines2) == len(set(lines2)), "\n".join(lines2)
    types2 = [e["type"] for e in ev2]
    assert types2.count("start") == 1 and types2.count("end") == 1 and "error" not in types2, types2
    assert [e["step"] for e in ev2 if e["type"] == "progress"] == [1, 2]
    assert [e["step"] for e in ev2 if e["type"] == "checkpoint"] == [2]
    # the same events apart from status lines and micro-batch progress ("substep": at most one a second, and
    # only where a step accumulates more than one micro-batch, i.e. the 1-process run)
    assert [e["type"] for e in ev1 if e["type"] not in ("status", "substep")] == \
        [t for t in types2 if t not in ("status", "substep")]

    # Global batch = per-device batch x accumulation x processes, in both runs.
    s1, s2 = (next(e for e in ev if e["type"] == "start") for ev in (ev1, ev2))
    assert (s1["world_size"], s1["gradient_accumulation_steps"], s1["global_batch_size"]) == (1, 2, 4)
    assert (s2["world_size"], s2["gradient_accumulation_steps"], s2["global_batch_size"]) == (2, 1, 4)
    for s in (s1, s2):
        assert s["global_batch_size"] == s["per_device_train_batch_size"] * s["gradient_accumulation_steps"] \
            * s["world_size"]
    # The same samples: the tokens of each step's global batch, summed over the processes, are the same.
    p1, p2 = ([e for e in ev if e["type"] == "progress"] for ev in (ev1, ev2))
    assert [e["num_label_tokens"] for e in p1] == [e["num_label_tokens"] for e in p2]
    assert [e["num_tokens"] for e in p1] == [e["num_tokens"] for e in p2]

    # The same losses within float rounding (see RTOL), at step 1 (same weights) and step 2 (after one update
    # from the averaged gradients).
    losses1, losses2 = [e["loss"] for e in p1], [e["loss"] for e in p2]
    assert losses1[1] != losses1[0]  # the update changed the loss: step 2 does test the synchronised gradients
    assert losses2 == pytest.approx(losses1, rel=RTOL), (losses1, losses2)
    e1, e2 = (next(e for e in ev if e["type"] == "end") for ev in (ev1, ev2))
    assert e1["status"] == e2["status"] == "finished" and e2["step"] == 2
    assert e2["final_loss"] == pytest.approx(e1["final_loss"], rel=RTOL)

    # One final checkpoint with one lineage record, written by the main process.
    final = two / "output" / "final"
    assert (final / "config.json").is_file() and (final / "training_run.json").is_file()
    assert json.loads((final / "training_run.json").read_text())["step"] == 2


@pytest.mark.slow
def test_cli_train_with_two_processes_on_cpu_registers_once(tmp_path, capsys, tiny_model_dir):
    """``wvstudio train --config`` with ``"num_processes": 2`` on this CPU-only machine: the studio launches
    ``accelerate launch --num_processes 2 --multi_gpu`` (on a free rendezvous port), the 2 processes train as one
    DDP group over gloo, and the finished run's checkpoint is registered once."""
    import torch

    from studio.cli import main

    if 0 < torch.cuda.device_count() < 2:
        pytest.skip("one CUDA GPU: the studio rightly refuses 2 processes (one per GPU) here")

    def cli(*argv) -> tuple[int, str, str]:
        rc = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return rc, out, err

    d = tmp_path / "data"
    convs = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"What is {i} plus {i % 7}?"},
                                               {"from": "gpt", "value": f"{i} plus {i % 7} is {i + i % 7}."}]}
             for i in range(16)]
    (tmp_path / "convs.json").write_text(json.dumps(convs))
    assert cli("import", tmp_path / "convs.json", "--data-dir", d)[0] == 0
    assert cli("models", "add-hf", "tiny", tiny_model_dir, "--data-dir", d)[0] == 0
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"base_model": "tiny", "method": "lora", "num_processes": 2, "name": "ddp-tiny",
                               "eval_fraction": 0, "hyperparams": {
                                   "max_steps": 2, "global_batch_size": 4, "per_device_train_batch_size": 2,
                                   "max_length": 64, "learning_rate": 1e-2}}))

    rc, out, err = cli("train", "--config", cfg, "--data-dir", d)
    runs = sorted((d / "runs").iterdir())
    log = (runs[0] / "train.log").read_text() if runs else ""
    assert rc == 0, out + err + log[-4000:]
    assert "command: accelerate launch --num_processes 2 --multi_gpu -m training.train --run-dir" in out
    assert "registered as 'ddp-tiny'" in out
    assert len(runs) == 1
    lines = (runs[0] / "events.jsonl").read_text().splitlines()
    ev = [json.loads(x) for x in lines]
    assert len(lines) == len(set(lines)) and [e["type"] for e in ev].count("end") == 1
    start = next(e for e in ev if e["type"] == "start")
    assert (start["world_size"], start["gradient_accumulation_steps"], start["global_batch_size"]) == (2, 1, 4)
    rc, out, _ = cli("models", "list", "--data-dir", d)
    assert rc == 0 and out.count("ddp-tiny") == 1, out
