"""Training runs from the studio's side (``Studio.runs``, ``studio.runs``: a run is a job of kind ``train``), with
the real training program (``python -m training.train``) on a tiny random-weight Llama and, once, on the default
model. The command line's training commands are tested in ``test_cli.py``.

The tiny model (2 layers, hidden size 32, the default model's tokenizer) trains a step in well under a second,
so most of a run's time is the program's start-up (~8 s of imports).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.filters import ConvFilter, filter_from_mapping
from studio.registry import ModelSpec
from studio.runs import RunError, eval_count, failure_reason, pid_alive, read_events, tail_text, write_snapshot
from studio.train import RunManager

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


@pytest.fixture
def runs(studio, tiny_model_dir):
    """The studio's runs (``Studio.runs``), with the tiny model registered as ``tiny``; run processes still going
    at the end are killed."""
    studio.registry.add(ModelSpec(name="tiny", kind="hf", path=str(tiny_model_dir)))
    yield studio.runs
    studio.runs.kill_all()


def wait_for(pred, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(0.05)


def _wait_step(rm: RunManager, run_id: str, step: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = rm.status(run_id)
        if (s.get("step") or 0) >= step or s["state"] not in ("queued", "running", "stopping"):
            return s
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not reach step {step}: {rm.status(run_id)}\n{rm.log_tail(run_id)}")


# ---------------------------------------------------------------------------------------------- snapshot


def _snapshot_ids(runs, run_id: str) -> set[int]:
    d = runs.run_dir(run_id)
    rows = [json.loads(x) for name in ("snapshot.jsonl", "eval.jsonl") if (d / name).exists()
            for x in (d / name).read_text().splitlines()]
    return {int(r["id"]) for r in rows}


def test_a_run_leaves_flagged_and_deleted_conversations_out_unless_chosen(studio, runs):
    """The Train tab's status "all" is the Data tab's "all", and a run takes ``filter.for_training()`` of it:
    conversations a quality filter flagged (a bulk flag) and deleted ones stay out of the snapshot."""
    store = studio.store
    ids = add_conversations(studio, 12)
    flagged, deleted = ids[:3], ids[3:5]
    store.bulk("flag", flagged, "near duplicate of conversation 11")
    store.bulk("delete", deleted)
    f = filter_from_mapping({"status": "all", "source_id": 0, "origin": "all"})  # as the page's controls give it
    assert set(flagged) <= set(store.conversation_ids(f))  # the Data tab's "all" shows the flagged ones

    run = runs.create_run("tiny", "lora", f, FAST, eval_fraction=0.1)
    expected = set(store.conversation_ids(f.for_training()))
    assert _snapshot_ids(runs, run) == expected == set(ids[5:])
    assert runs.config(run)["filters"] == {"flagged": False} == runs.status(run)["filters"]
    assert runs.filter(run) == f.for_training()
    # the same from a mapping (a train --config file), and a preview shows the filter the run would record
    run2 = runs.create_run("tiny", "lora", {"status": "all"}, FAST)
    assert _snapshot_ids(runs, run2) == expected
    assert runs.preview("tiny", "lora", {"status": "all"})[1]["filters"] == {"flagged": False}

    # chosen explicitly, they train: status flagged, flagged=yes, status deleted
    assert _snapshot_ids(runs, runs.create_run("tiny", "lora", {"status": "flagged"}, FAST)) == set(flagged)
    assert _snapshot_ids(runs, runs.create_run("tiny", "lora", {"flagged": "yes"}, FAST)) == set(flagged)
    assert _snapshot_ids(runs, runs.create_run("tiny", "lora", {"status": "deleted"}, FAST)) == set(deleted)

    # nothing but flagged ones match: the refusal says what was left out and how to choose it
    store.bulk("flag", ids[5:], "too short")
    with pytest.raises(RunError, match="10 flagged and 2 deleted conversations match but stay out of training"):
        runs.create_run("tiny", "lora", {"status": "all"}, FAST)


def test_an_older_run_reads_its_filter_from_run_json(studio, runs):
    add_conversations(studio, 3)
    run_id = runs.create_run("tiny", "lora", {"origin": "imported"}, FAST)
    d = runs.run_dir(run_id)
    # before configs recorded the filter: none in config.json, run.json with the three fields of the old tab
    cfg = json.loads((d / "config.json").read_text())
    del cfg["filters"]
    (d / "config.json").write_text(json.dumps(cfg))
    meta = json.loads((d / "run.json").read_text())
    meta["filters"] = {"source_id": None, "status": None, "origin": "imported"}
    (d / "run.json").write_text(json.dumps(meta))
    assert runs.filter(run_id) == ConvFilter(origin="imported")
    assert runs.status(run_id)["filters"] == meta["filters"]


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
    with pytest.raises(RunError, match="filter field 'min_rounds': expected a whole number"):
        runs.create_run("tiny", "lora", filters={"min_rounds": "two"})
    with pytest.raises(RunError, match=r"no conversations match \(status=deleted\): import or expand"):
        runs.create_run("tiny", "lora", filters={"status": "deleted"})
    with pytest.raises(RunError, match="unknown distributed backend"):
        runs.create_run("tiny", "lora", backend="horovod")
    with pytest.raises(RunError, match="unknown template"):
        runs.create_run("tiny", "lora", template="alpaca")
    with pytest.raises(RunError, match="eval fraction"):
        runs.create_run("tiny", "lora", eval_fraction=0.9)
    # the name becomes a registry name and is refused before anything is made, not after the training
    for bad in ("../../etc/passwd", "/tmp/x", '<img src="http://h/p.png">', "my run", ".hidden", "x" * 65):
        with pytest.raises(RunError, match=r"run name '.*' is not allowed: use 1-64 letters"):
            runs.create_run("tiny", "lora", name=bad)
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
    assert line == (f"accelerate launch --num_processes 4 --multi_gpu -m training.train --run-dir "
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

    # several processes without a backend: accelerate starts them (--multi_gpu) on a rendezvous port of their own
    r = runs.create_run("tiny", "lora", {}, FAST, num_processes=2)
    c = runs.launch_argv(r)
    assert c[3] == "--main_process_port" and 0 < int(c[4]) < 65536 and "--multi_gpu" in c
    if torch.cuda.device_count() < 2:  # a CPU-only machine runs them on the CPU (DDP over gloo, test_train_ddp.py)
        r = runs.create_run("tiny", "lora", {}, FAST, num_processes=2, backend="fsdp")
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
    # epochs are the configured ones (3, FAST keeps the recipe's), not the Trainer's count in the start event (2):
    # with Max steps set the Trainer counts 1, and the line read "epoch 0.40/1" while Epochs was 3 (issue 13)
    assert (s["step"], s["max_steps"], s["epoch"], s["num_train_epochs"]) == (3, 10, 0.4, 3)
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

    # the run is a job of kind train: its row holds the steps, its message the outcome
    job = studio.store.get_job(s["job_id"])
    assert (job["kind"], job["status"], job["total"], job["n_done"]) == ("train", "done", 4, 4)
    assert job["params"] == {"run_id": run_id} and job["log"] is None
    p = studio.jobs.progress(s["job_id"])
    assert p.unit == "step" and p.fraction == 1.0 and p.title == f"run {run_id}"
    assert p.message.startswith("finished at step 4: final loss ") and p.message.endswith("registered as tiny-chat")
    assert s["message"] == p.message

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
    with pytest.raises(ValueError, match="nothing left to do"):
        studio.jobs.resume(s["job_id"])

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
def test_run_survives_a_restarted_studio_stops_resumes_and_is_interrupted_when_its_process_dies(
        settings, tiny_model_dir):
    """A studio that closes leaves its run going; the next one re-attaches (the job is running again, its
    progress flows on), stops it with SIGTERM (a checkpoint is saved) and resumes it from that checkpoint. A run
    whose process dies while no studio follows it is interrupted (resumable) at the next start."""
    from studio.core import Studio

    first = Studio(settings)
    try:
        first.registry.add(ModelSpec(name="tiny", kind="hf", path=str(tiny_model_dir)))
        add_conversations(first, 12)
        run_id = first.runs.create_run("tiny", "full", {}, LONG)
        first.runs.start(run_id)
        s = _wait_step(first.runs, run_id, 2)
        assert s["state"] == "running", first.runs.log_tail(run_id)
        job, pid = s["job_id"], s["pid"]
        wait_for(lambda: (first.store.get_job(job)["n_done"] or 0) >= 1, what="steps in the job row")
        assert first.store.get_job(job)["total"] == 100_000
    finally:
        first.close()  # the studio goes; the run's process does not
    run_dir = settings.data_dir / "runs" / run_id
    assert pid_alive(pid, run_dir.resolve())

    second = Studio(settings)
    try:
        runs = second.runs
        assert second.store.get_job(job)["status"] == "running" and job in second.jobs.active()
        s = runs.status(run_id)
        assert s["state"] == "running" and s["pid"] == pid and runs.default_run() == run_id
        done = second.store.get_job(job)["n_done"]
        wait_for(lambda: second.store.get_job(job)["n_done"] > done, what="steps of the re-attached run")

        assert runs.stop(run_id) == "stopping"  # SIGTERM: the program saves a checkpoint and ends
        s = runs.wait(run_id, timeout=120)
        assert s["state"] == "stopped", runs.log_tail(run_id)
        ck = runs.checkpoints(run_id)
        assert ck and int(ck[-1].name.split("-")[1]) == s["step"] >= 2
        assert s["message"] == f"stopped at step {s['step']}; resume continues from {ck[-1].name}"
        assert s["registered_as"] is None and second.store.get_job(job)["status"] == "stopped"
        with pytest.raises(RunError, match="is stopped"):
            runs.stop(run_id)
        with pytest.raises(RunError, match="use resume"):
            runs.start(run_id)

        stopped_at = s["step"]
        assert runs.resume(run_id) == 0
        s = _wait_step(runs, run_id, stopped_at + 3)
        assert s["state"] == "running" and s["attempts"] == 2 and s["job_id"] == job, runs.log_tail(run_id)
        pid = s["pid"]
    finally:
        second.close()
    os.killpg(pid, signal.SIGKILL)  # the process dies while no studio follows it
    wait_for(lambda: not pid_alive(pid), what="the killed process to end")

    third = Studio(settings)
    try:
        runs = third.runs
        p = third.jobs.progress(job)
        assert p.status == "interrupted" and job not in third.jobs.active()
        assert "ended while no studio followed it" in p.message and "resume continues from checkpoint-" in p.message
        s = runs.status(run_id)
        assert s["state"] == "interrupted" and s["pid"] is None
        events, _ = runs.events(run_id)
        assert [e["step"] for e in events if e["type"] == "start"] == [0, stopped_at]  # continued from its checkpoint
        assert [e["status"] for e in events if e["type"] == "end"] == ["stopped"]
        log = (runs.run_dir(run_id) / "train.log").read_text()
        assert "=== attempt 1 (start)" in log and "=== attempt 2 (resume)" in log and "--resume" in log
        with pytest.raises(RunError, match="is interrupted, not running"):
            runs.stop(run_id)
    finally:
        third.close()


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
    positions = [runs.start(r) for r in (crash, killed, good, cancelled)]  # training jobs ahead (0 = runs now)
    assert positions == [0, 1, 2, 3]
    assert runs.queued()[-3:] == [killed, good, cancelled]
    assert runs.stop(cancelled) == "stopped" and runs.queued()[-2:] == [killed, good]
    assert runs.status(good)["state"] == "queued" and runs.status(good)["queue_position"] is not None

    s = runs.wait(crash, timeout=120)
    assert s["state"] == "failed"
    assert "config" in s["message"].lower()
    log = studio.store.get_job(s["job_id"])["log"]  # the program's full traceback is kept with the job
    assert log.startswith("Traceback (most recent call last)") and "training/train.py" in log
    s = _wait_step(runs, killed, 1)
    assert s["state"] == "running" and runs.status(good)["state"] == "queued"  # one at a time
    os.killpg(s["pid"], signal.SIGKILL)
    s = runs.wait(killed, timeout=60)
    assert s["state"] == "failed" and s["message"] == "killed by SIGKILL"
    assert "attempt 1" in studio.store.get_job(s["job_id"])["log"]  # no traceback: the log's last lines

    s = runs.wait(good, timeout=120)
    assert s["state"] == "finished" and s["registered_as"], runs.log_tail(good)
    st = {r: json.loads((runs.run_dir(r) / "run.json").read_text()) for r in (crash, killed, good)}
    assert st[crash]["ended_at"] <= st[killed]["started_at"] and st[killed]["ended_at"] <= st[good]["started_at"]

    assert runs.status(cancelled)["state"] == "stopped"
    assert runs.status(cancelled)["message"] == "stopped before it started; resume to run it"
    assert not (runs.run_dir(cancelled) / "events.jsonl").exists()  # never launched

    # a failed run resumes once its cause is fixed
    (broken / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    runs.resume(crash)
    s = runs.wait(crash, timeout=120)
    assert s["state"] == "finished" and s["attempts"] == 2, runs.log_tail(crash)
    assert studio.store.get_job(s["job_id"])["log"] is None


@pytest.mark.slow
def test_an_expansion_does_not_wait_for_queued_training(studio, runs, data_dir, default_model_dir):
    """Lanes: a training run trains and another waits behind it in the train lane; an expansion started then
    runs at once in the generate lane and finishes while both runs are where they were."""
    from studio.expand import ExpandConfig
    from studio.registry import DEFAULT_MODEL_NAME, GenParams

    add_conversations(studio, 12)
    src = studio.import_file(data_dir / "wizardlm_testset.jsonl").source_id
    training = runs.create_run("tiny", "lora", {}, LONG)
    waiting = runs.create_run("tiny", "lora", {}, FAST)
    assert runs.start(training) == 0 and runs.start(waiting) == 1
    assert _wait_step(runs, training, 1)["state"] == "running", runs.log_tail(training)
    job = studio.expand(ExpandConfig(teacher=DEFAULT_MODEL_NAME, rounds=1, batch_size=1, source_id=src,
                                     answer=GenParams(max_new_tokens=8, temperature=0)), n=1)
    assert studio.jobs.ahead(job) == 0
    p = studio.jobs.wait(job, timeout=240)
    assert (p.status, p.done) == ("done", 1)
    assert runs.status(training)["state"] == "running" and runs.status(waiting)["state"] == "queued"
    assert runs.queued() == [waiting]


@pytest.mark.slow
def test_shown_command_does_the_same_run_elsewhere(studio, runs, tmp_path):
    """The preview's ``accelerate launch ...`` line, run by hand from another folder, trains the run; the
    studio then registers its checkpoint from the folder (the same registration a finished job does)."""
    add_conversations(studio, 4)
    run_id = runs.create_run("tiny", "lora", {}, dict(FAST, max_steps=2))
    cmd = runs.command(run_id)
    exe = Path(sys.executable).with_name("accelerate")
    env = dict(os.environ, PATH=f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    with open(tmp_path / "by-hand.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            assert proc.wait(timeout=240) == 0, (tmp_path / "by-hand.log").read_text()[-4000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    events, _ = runs.events(run_id)
    end = [e for e in events if e["type"] == "end"]
    assert end and end[-1]["status"] == "finished" and end[-1]["step"] == 2
    assert (runs.run_dir(run_id) / "output" / "final" / "adapter_config.json").exists()
    name = runs.register(run_id)
    assert studio.registry.get(name).lineage["run_id"] == run_id and runs.status(run_id)["registered_as"] == name


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
    rm: RunManager = studio.runs
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
        rm.kill_all()
