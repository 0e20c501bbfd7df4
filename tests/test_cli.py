"""The ``wvstudio`` command line, run in-process with ``main([...])`` on temporary data folders (no mocks)."""

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
    """Ctrl-C (a real SIGINT to this process) while ``expand`` waits: the job stops after its current batch,
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
        rc = _watch(studio, job, d)
        t.join()
        out, err = capsys.readouterr()
        assert rc == 130
        assert "stopping after the current batch (Ctrl-C again" in err
        assert f"job {job} stopped" in out and f"wvstudio expand --resume {job}" in out
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
