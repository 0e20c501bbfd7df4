"""``wvstudio prefs ...`` and ``wvstudio train`` with method ``dpo``, in-process (``main([...])``) on a temporary
data folder, with the real training program on the tiny random-weight Llama."""

from __future__ import annotations

import json

from studio.cli import main
from studio.registry import ModelSpec


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _conv(q, a):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_prefs_commands_and_a_dpo_run(tmp_path, capsys, tiny_model_dir):
    from studio.config import Settings
    from studio.core import Studio

    d = tmp_path / "data"
    s = Studio(Settings(data_dir=d))
    try:
        s.registry.add(ModelSpec(name="tiny", kind="hf", path=str(tiny_model_dir), template="vicuna_v1.1"))
        for i, w in enumerate(["model_a", "model_b", "tie", "tie (bothbad)", "model_a"]):
            s.store.add_battle({"model_a": "tiny", "model_b": "other", "winner": w, "round_id": f"r{i}",
                                "conversation_a": _conv(f"q{i}", f"a{i}"), "conversation_b": _conv(f"q{i}", f"b{i}")})
    finally:
        s.close()

    rc, out, err = run(capsys, "prefs", "build", "--name", "votes", "--no-thumbs", "--data-dir", d)
    assert rc == 0, err
    assert "preference set 1 'votes': 3 pairs" in out and "votes: tie 1" in out and "votes: tie (bothbad) 1" in out
    rc, out, _ = run(capsys, "prefs", "edit", 1, 2, "drop", "--data-dir", d)
    assert rc == 0 and "keeps 2 pairs" in out
    rc, out, _ = run(capsys, "prefs", "show", 1, "--data-dir", d)
    assert rc == 0 and "2 kept of 3" in out and "by source: votes 2" in out and "dropped" in out
    rc, _, err = run(capsys, "prefs", "edit", 1, 9, "drop", "--data-dir", d)
    assert rc == 2 and "no pair 9" in err

    f = tmp_path / "trl.jsonl"
    f.write_text(json.dumps({"prompt": "hi", "chosen": "hello", "rejected": "go"}) + "\n" + json.dumps({"x": 1}))
    rc, _, err = run(capsys, "prefs", "import", f, "--data-dir", d)
    assert rc == 2 and "trl.jsonl line 2: missing 'chosen' and 'rejected'" in err
    f.write_text(json.dumps({"prompt": "hi", "chosen": "hello", "rejected": "go"}) + "\n")
    rc, out, err = run(capsys, "prefs", "import", f, "--name", "file", "--data-dir", d)
    assert rc == 0 and "preference set 2 'file': 1 pairs imported" in out, err
    rc, out, _ = run(capsys, "prefs", "list", "--data-dir", d)
    assert rc == 0 and "votes" in out and "file" in out

    fast = {"max_steps": 2, "global_batch_size": 2, "per_device_train_batch_size": 2, "max_length": 64}
    cfg = tmp_path / "dpo.json"
    cfg.write_text(json.dumps({"base_model": "tiny", "method": "dpo", "preference_set": 1, "hyperparams": fast,
                               "dpo": {"beta": 0.2}, "name": "tiny-dpo"}))
    rc, out, err = run(capsys, "train", "--config", cfg, "--dry-run", "--data-dir", d)
    assert rc == 0, err
    assert "-m training.train --run-dir" in out and '"objective": "dpo"' in out and '"beta": 0.2' in out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"base_model": "tiny", "method": "dpo"}))
    rc, _, err = run(capsys, "train", "--config", bad, "--data-dir", d)
    assert rc == 2 and "'preference_set' is required" in err
    rc, out, err = run(capsys, "train", "--config", cfg, "--data-dir", d)
    assert rc == 0, err + out
    assert "DPO (lora) of tiny on preference set 1 (2 pairs" in out and "registered as 'tiny-dpo'" in out
    rc, out, _ = run(capsys, "runs", "--data-dir", d)
    assert rc == 0 and "finished" in out and "tiny-dpo" in out
