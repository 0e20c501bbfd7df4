"""The ``wvstudio`` command line, run in-process with ``main([...])`` on temporary data folders (no mocks); the
training commands with the real training program on the tiny random-weight Llama of ``test_train_runs``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio.cli import main
from studio.registry import DEFAULT_MODEL_NAME



def run(capsys, *argv) -> tuple[int, str, str]:
    """``main(argv)`` -> (exit code, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_import_testset_then_again_adds_nothing(tmp_path, capsys, data_dir):
    d = tmp_path / "data"
    rc, out, err = run(capsys, "import", data_dir / "wizardlm_testset.jsonl", "--data-dir", d)
    assert rc == 0, err
    assert "218 seeds" in out and "[source 1]" in out
    rc, out, _ = run(capsys, "import", data_dir / "wizardlm_testset.jsonl", "--data-dir", d)
    assert rc == 0 and "already imported" in out
    rc, out, _ = run(capsys, "sources", "--data-dir", d)
    assert rc == 0
    assert len([line for line in out.splitlines() if "wizardlm_testset.jsonl" in line]) == 1


def test_import_lists_bad_rows_and_refuses_non_json(tmp_path, capsys):
    d = tmp_path / "data"
    rows = [{"instruction": f"Explain topic {i}.", "output": f"Topic {i} is ..."} for i in range(5)]
    lines = [json.dumps(r) for r in rows]
    lines[1] = json.dumps({"instruction": "", "output": "x"})  # row 2: empty instruction
    lines[3] = "{not json"  # row 4
    lines += ["[1, 2]"] * 23  # rows 6..28: not objects
    bad = tmp_path / "crafted.jsonl"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")

    rc, out, err = run(capsys, "import", bad, "--data-dir", d)
    assert rc == 0, err
    assert "3 seeds" in out and "25 bad rows skipped" in out
    listed = [line.strip() for line in out.splitlines() if line.startswith("  row ")]
    assert len(listed) == 20
    assert listed[0].startswith("row 2:") and "instruction" in listed[0]
    assert listed[1].startswith("row 4:")
    assert listed[2].startswith("row 6:") and "not a JSON object" in listed[2]
    assert "... 5 more" in out

    junk = tmp_path / "notes.md"
    junk.write_text("this is not JSON at all\n", encoding="utf-8")
    rc, out, err = run(capsys, "import", junk, "--data-dir", d)
    assert rc == 2
    assert err.startswith("error: ") and "notes.md" in err
    assert "Traceback" not in err and out == ""

    rc, out, err = run(capsys, "import", tmp_path / "missing.json", "--data-dir", d)
    assert rc == 2 and "missing.json" in err


def test_models_commands(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VLLM_KEY", raising=False)
    monkeypatch.setenv("STUDIO_ENDPOINT_KEY_ENVS", "VLLM_KEY")  # the admin's allow-list of key variables
    d = tmp_path / "data"
    rc, out, _ = run(capsys, "models", "list", "--data-dir", d)
    assert rc == 0
    assert DEFAULT_MODEL_NAME in out and "(default)" in out and "chat_template" in out
    rc, out, err = run(capsys, "models", "add-endpoint", "local-vllm", "--base-url", "http://127.0.0.1:9/v1",
                       "--model", "llama", "--api-key-env", "VLLM_KEY", "--data-dir", d)
    assert rc == 0, err
    rc, out, _ = run(capsys, "models", "list", "--data-dir", d)
    assert "local-vllm" in out and "llama @ http://127.0.0.1:9/v1" in out
    # errors: a message, exit 2, never a traceback
    rc, _, err = run(capsys, "models", "ping", "local-vllm", "--data-dir", d)
    assert rc == 2 and "VLLM_KEY" in err and "Traceback" not in err
    rc, _, err = run(capsys, "models", "remove", DEFAULT_MODEL_NAME, "--data-dir", d)
    assert rc == 2 and "cannot be removed" in err
    rc, _, err = run(capsys, "models", "add-hf", "nowhere", str(tmp_path / "no-such-folder"), "--data-dir", d)
    assert rc == 2 and "no-such-folder" in err
    rc, out, _ = run(capsys, "models", "remove", "local-vllm", "--data-dir", d)
    assert rc == 0
    rc, out, _ = run(capsys, "models", "list", "--data-dir", d)
    assert "local-vllm" not in out


def test_errors_are_messages(tmp_path, capsys):
    d = tmp_path / "data"
    rc, _, err = run(capsys, "show", 99, "--data-dir", d)
    assert rc == 2 and err == "error: conversation 99 does not exist\n"
    rc, _, err = run(capsys, "expand", "--all", "--n", 2, "--data-dir", d)
    assert rc == 2 and "no seeds" in err
    rc, _, err = run(capsys, "expand", "--source", 1, "--data-dir", d)
    assert rc == 2 and "--n" in err
    rc, _, err = run(capsys, "expand", "--resume", 5, "--data-dir", d)
    assert rc == 2 and "job 5 does not exist" in err
    rc, out, _ = run(capsys, "list", "--data-dir", d)
    assert rc == 0 and "no conversations" in out


@pytest.mark.slow
def test_expand_list_export_reimport(tmp_path, capsys, data_dir, default_model_dir):
    d = tmp_path / "data"
    assert run(capsys, "import", data_dir / "wizardlm_testset.jsonl", "--data-dir", d)[0] == 0
    rc, out, err = run(capsys, "expand", "--source", 1, "--n", 2, "--rounds", 2, "--max-new-tokens", 24,
                       "--question-max-new-tokens", 24, "--batch-size", 1, "--seed", 0,
                       "--data-dir", d)
    assert rc == 0, err
    assert "job 1 done: 2/2 done" in out
    assert "job 1" in err  # the progress bar

    rc, out, _ = run(capsys, "list", "--origin", "expanded", "--data-dir", d)
    assert rc == 0 and "2 of 2 conversations" in out
    rows = [line.split() for line in out.splitlines()[2:-1]]
    assert len(rows) == 2
    assert all(r[2] == "expanded" and r[3] == "4" and r[5] == DEFAULT_MODEL_NAME for r in rows)

    rc, out, _ = run(capsys, "show", rows[0][0], "--data-dir", d)
    assert rc == 0 and out.count("] user:") == 2 and out.count("] assistant:") == 2

    rc, out, _ = run(capsys, "jobs", "--data-dir", d)
    assert rc == 0 and " done " in out

    export = tmp_path / "out.json"
    rc, out, _ = run(capsys, "export", "--out", export, "--origin", "expanded", "--data-dir", d)
    assert rc == 0 and f"wrote 2 conversations to {export}" in out
    data = json.loads(export.read_text(encoding="utf-8"))
    assert isinstance(data, list) and len(data) == 2
    for conv in data:
        assert [t["from"] for t in conv["conversations"]] == ["human", "gpt", "human", "gpt"]

    d2 = tmp_path / "fresh"
    rc, out, _ = run(capsys, "import", export, "--data-dir", d2)
    assert rc == 0 and "2 conversations imported" in out

    from studio.config import Settings
    from studio.core import Studio

    def messages(path: Path, origin: str) -> list[list[dict]]:
        s = Studio(Settings(data_dir=path), start_jobs=False)
        try:
            return [m for _, m in s.store.iter_conversations(origin=origin)]
        finally:
            s.close()

    assert messages(d2, "imported") == messages(d, "expanded")


@pytest.mark.slow
def test_ctrl_c_stops_expansion_cleanly_and_resume_finishes_it(tmp_path, capsys, data_dir, default_model_dir):
    """Ctrl-C (a real SIGINT to this process) while ``expand`` waits: the job stops once its requests in flight end,
    keeps what was done, says how to resume; ``expand --resume`` then does exactly the rest."""
    import os
    import signal
    import threading

    from studio.cli import _watch
    from studio.config import Settings
    from studio.core import Studio
    from studio.expand import ExpandConfig
    from studio.registry import GenParams

    d = tmp_path / "data"
    assert run(capsys, "import", data_dir / "wizardlm_testset.jsonl", "--data-dir", d)[0] == 0
    studio = Studio(Settings(data_dir=d))
    try:
        cfg = ExpandConfig(teacher=DEFAULT_MODEL_NAME, rounds=1, batch_size=1, source_id=1,
                           answer=GenParams(max_new_tokens=8, temperature=0))
        job = studio.expand(cfg, n=4)

        def interrupt_after_first():
            while True:
                p = studio.jobs.progress(job)
                if p.finished:
                    return
                if p.done >= 1:
                    os.kill(os.getpid(), signal.SIGINT)
                    return
                threading.Event().wait(0.05)

        t = threading.Thread(target=interrupt_after_first, daemon=True)
        t.start()
        rc = _watch(studio, job)
        t.join()
        out, err = capsys.readouterr()
        assert rc == 130
        assert "stopping once the requests in flight end (finished steps are kept) (Ctrl-C again" in err
        assert f"job {job} stopped" in out and f"wvstudio resume {job} --data-dir {d}" in out
        done = studio.jobs.progress(job).done
        assert 1 <= done < 4
        assert studio.store.count_conversations(origin="expanded") == done
    finally:
        studio.close()

    rc, out, err = run(capsys, "expand", "--resume", job, "--data-dir", d)
    assert rc == 0, err
    assert f"resuming job {job}: {4 - done} seeds left" in out
    assert f"job {job} done: 4/4 done" in out
    rc, out, _ = run(capsys, "list", "--origin", "expanded", "--data-dir", d)
    assert "4 of 4 conversations" in out


# ---------------------------------------------------------------------------------------------- training


FAST = {"max_steps": 3, "global_batch_size": 2, "per_device_train_batch_size": 2, "max_length": 64,
        "learning_rate": 1e-2, "logging_steps": 1}


def _training_data(tmp_path, capsys, model_dir, name: str = "tiny", n: int = 12) -> Path:
    """A data folder with ``n`` imported conversations (ShareGPT JSON) and ``model_dir`` registered as ``name``."""
    d = tmp_path / "data"
    convs = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"What is {i} plus 0?"},
                                               {"from": "gpt", "value": f"{i} plus 0 is {i}."}]} for i in range(n)]
    f = tmp_path / "convs.json"
    f.write_text(json.dumps(convs), encoding="utf-8")
    rc, out, err = run(capsys, "import", f, "--data-dir", d)
    assert rc == 0 and f"{n} conversations imported" in out, out + err
    rc, _, err = run(capsys, "models", "add-hf", name, model_dir, "--data-dir", d)
    assert rc == 0, err
    return d


def _config(tmp_path, **fields) -> Path:
    f = tmp_path / f"run-{len(list(tmp_path.glob('run-*.json')))}.json"
    f.write_text(json.dumps(fields), encoding="utf-8")
    return f


def test_train_config_errors_dry_run_and_lists(tmp_path, capsys, tiny_model_dir):  # noqa: F811
    d = _training_data(tmp_path, capsys, tiny_model_dir)
    rc, _, err = run(capsys, "train", "--config", _config(tmp_path, base_model="tiny", lr=1), "--data-dir", d)
    assert rc == 2 and "unknown field(s) lr" in err and "Traceback" not in err
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    rc, _, err = run(capsys, "train", "--config", bad, "--data-dir", d)
    assert rc == 2 and f"{bad}: not valid JSON" in err
    import torch

    if not torch.cuda.is_available():
        rc, _, err = run(capsys, "train", "--config", _config(tmp_path, base_model="tiny", method="qlora"),
                         "--data-dir", d)
        assert rc == 2 and "CUDA" in err

    cfg = _config(tmp_path, base_model="tiny", method="lora", filters={"origin": "imported"}, hyperparams=FAST)
    rc, out, err = run(capsys, "train", "--config", cfg, "--dry-run", "--data-dir", d)
    assert rc == 0, err
    assert "accelerate launch --num_processes 1 -m training.train --run-dir" in out
    assert "12 conversations match" in out and '"max_steps": 3' in out
    rc, out, _ = run(capsys, "runs", "--data-dir", d)
    assert rc == 0 and "no runs" in out  # a dry run creates nothing
    rc, out, _ = run(capsys, "jobs", "--data-dir", d)
    assert rc == 0 and "no jobs" in out

    for argv, message in ((["merge", "tiny"], "not an adapter"),
                          (["export-model", "nope", "--out", tmp_path / "x"], "no model named 'nope'"),
                          (["train", "--resume", "no-such-run"], "no run 'no-such-run'"),
                          (["stop", 5], "job 5 does not exist"), (["resume", 5], "job 5 does not exist")):
        rc, _, err = run(capsys, *argv, "--data-dir", d)
        assert rc == 2 and err.startswith("error: ") and message in err and "Traceback" not in err, (argv, err)


def _interrupt_at_step(runs_dir: Path, step: int, timeout: float = 240.0):
    """Send SIGINT to this process once a run in ``runs_dir`` logged ``step`` (a real Ctrl-C while the command
    waits); returns the thread."""
    import os
    import signal
    import threading
    import time

    from studio.runs import read_events

    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for f in runs_dir.glob("*/events.jsonl"):
                events = read_events(f)[0]
                if any(e.get("type") == "end" for e in events):
                    return
                if any(e.get("type") == "progress" and (e.get("step") or 0) >= step for e in events):
                    os.kill(os.getpid(), signal.SIGINT)
                    return
            threading.Event().wait(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.mark.slow
def test_one_watcher_trains_stops_on_ctrl_c_and_resumes(tmp_path, capsys, tiny_model_dir):  # noqa: F811
    """``train`` waits with the same job watcher as ``expand``: a progress bar in steps; Ctrl-C stops the run
    after it saved a checkpoint and prints ``wvstudio resume JOB``, which continues it from that checkpoint to the
    end, where its model is registered. ``jobs`` lists it with every other kind."""
    d = _training_data(tmp_path, capsys, tiny_model_dir)
    hp = dict(FAST, max_steps=120, global_batch_size=1, per_device_train_batch_size=1, eval_steps=1000,
              save_steps=10_000)
    cfg = _config(tmp_path, base_model="tiny", method="lora", hyperparams=hp, name="cli-tiny")
    t = _interrupt_at_step(d / "runs", 2)
    rc, out, err = run(capsys, "train", "--config", cfg, "--data-dir", d)
    t.join()
    assert rc == 130, out + err
    assert "command: accelerate launch --num_processes 1 -m training.train" in out and "job 1: training run" in out
    assert "job 1 train" in err and "step" in err  # the one progress bar, counting steps
    assert "stopping: saving a checkpoint (Ctrl-C again to leave at once)" in err
    assert "job 1 stopped: step " in out and "resume continues from checkpoint-" in out
    assert f"resume with: wvstudio resume 1 --data-dir {d}" in out

    rc, out, _ = run(capsys, "jobs", "--data-dir", d)
    assert rc == 0 and "train" in out and "stopped" in out and "step " in out
    rc, out, _ = run(capsys, "jobs", 1, "--data-dir", d)
    assert rc == 0 and "kind: train (run " in out and f"resume with: wvstudio resume 1 --data-dir {d}" in out

    rc, out, err = run(capsys, "resume", 1, "--data-dir", d)
    assert rc == 0, out + err
    assert "resuming job 1 (run " in out and "from checkpoint-" in out and "--resume" in out
    assert "job 1 done: step 120/120" in out and "registered as 'cli-tiny' (wvstudio models list)" in out
    rc, out, _ = run(capsys, "runs", "--data-dir", d)
    assert rc == 0 and "finished" in out and "cli-tiny" in out
    rc, out, _ = run(capsys, "merge", "cli-tiny", "--out", tmp_path / "merged", "--data-dir", d)
    assert rc == 0 and "registered as 'cli-tiny-merged'" in out and (tmp_path / "merged" / "config.json").exists()


@pytest.mark.slow
def test_failed_training_keeps_its_traceback(tmp_path, capsys, tiny_model_dir):  # noqa: F811
    """A run whose program crashes: exit code 2 with the reason; ``jobs JOB`` shows the program's traceback."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    d = _training_data(tmp_path, capsys, broken, name="broken")
    (broken / "config.json").write_text("{ this is not json")
    rc, out, err = run(capsys, "train", "--config", _config(tmp_path, base_model="broken", hyperparams=FAST),
                       "--data-dir", d)
    assert rc == 2, out + err
    assert "error: job 1 failed: " in err and f"full log: wvstudio jobs 1 --data-dir {d}" in err
    assert "wvstudio resume 1" in err and "Traceback" not in err
    rc, out, _ = run(capsys, "jobs", 1, "--data-dir", d)
    assert rc == 0 and "job 1 failed" in out
    log = out.split("log:\n", 1)[1]
    assert log.startswith("Traceback (most recent call last)") and "training/train.py" in log
