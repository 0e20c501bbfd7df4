"""DPO training (``training.dpo`` on TRL's ``DPOTrainer``; ``studio.dpo``): prompts rendered with the checkpoint's
template and chosen/rejected masked as TRL expects (decoded here), the lineage from a preference snapshot to the
registered checkpoint, and resume of a stopped DPO run. On a tiny random-weight Llama (``tiny_model_dir``) with
the default model's tokenizer."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from studio import templates
from studio.dpo import create_dpo_run, dpo_defaults, preview_dpo
from studio.registry import ModelSpec
from studio.runs import RunError

FAST = {"max_steps": 2, "global_batch_size": 2, "per_device_train_batch_size": 2, "max_length": 64,
        "learning_rate": 1e-3, "logging_steps": 1}


def _pair(i: int) -> dict:
    return {"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}], "chosen": f"It is {2 * i}.",
            "rejected": f"Maybe {i}?", "source": "votes", "model_chosen": "a", "model_rejected": "b"}


@pytest.fixture
def runs(studio, tiny_model_dir):
    studio.registry.add(ModelSpec(name="tiny", kind="hf", path=str(tiny_model_dir), template="vicuna_v1.1"))
    yield studio.runs
    studio.runs.kill_all()


def _set(studio, n=6) -> int:
    return studio.store.add_preference_set("prefs", [_pair(i) for i in range(n)], sources={"votes": True})


def _cfg(tmp_path, model_dir, template, method="lora", n=4):
    from studio.preferences import snapshot_bytes
    from training.train import validate_run_config

    (tmp_path / "pairs.jsonl").write_bytes(snapshot_bytes([_pair(i) for i in range(n)]))
    d = dpo_defaults()
    return validate_run_config({"objective": "dpo", "base_model_path": str(model_dir), "method": method,
                                "template": template, "train_file": "pairs.jsonl", "output_dir": "output",
                                "dpo": d["dpo"], "hyperparams": {**d["hyperparams"], **FAST}}, run_dir=tmp_path)


@pytest.mark.parametrize("template", ["vicuna_v1.1", "chat_template"])
def test_pairs_rendered_with_the_template_and_completions_masked_as_trl_expects(tmp_path, tiny_model_dir, template):
    from transformers import AutoTokenizer

    from training.dpo import build_trainer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    trainer, info = build_trainer(_cfg(tmp_path, tiny_model_dir, template), tmp_path)
    assert info["n_pairs"] == 4 and info["reference"] == "adapter disabled" and trainer.ref_model is None
    assert trainer.beta == 0.1 and trainer.loss_types == ["sigmoid"]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    ids, mask, att = batch["input_ids"], batch["completion_mask"], batch["attention_mask"]
    assert ids.shape[0] == 6  # chosen rows, then rejected rows
    for i in range(3):
        p = _pair(i)
        if template == "vicuna_v1.1":
            want_prompt = templates.render(p["prompt"], template, add_generation_prompt=True, eos_token=tok.eos_token)
            want = {"chosen": " " + p["chosen"] + tok.eos_token, "rejected": " " + p["rejected"] + tok.eos_token}
        else:
            want_prompt = templates.chat_template_render(tok, p["prompt"], add_generation_prompt=True)
            full = tok.apply_chat_template(p["prompt"] + [{"role": "assistant", "content": p["chosen"]}],
                                           tokenize=False)
            assert full.startswith(want_prompt)
            want = {"chosen": full[len(want_prompt):]}
        for side, row in (("chosen", i), ("rejected", i + 3)):
            prompt_part = tok.decode(ids[row][(att[row] == 1) & (mask[row] == 0)])
            completion = tok.decode(ids[row][mask[row] == 1])
            assert prompt_part == want_prompt
            if side in want:
                assert completion == want[side]
            assert p[side] in completion and p["prompt"][0]["content"] not in completion


def test_dpo_settings_are_checked(studio, runs):
    sid = _set(studio)
    with pytest.raises(RunError, match="beta"):
        create_dpo_run(studio, sid, "tiny", dpo={"beta": 0})
    with pytest.raises(RunError, match="loss_type"):
        create_dpo_run(studio, sid, "tiny", dpo={"loss_type": "nope"})
    with pytest.raises(RunError, match="DPO method must be one of lora, full"):
        create_dpo_run(studio, sid, "tiny", method="qlora")
    with pytest.raises(RunError, match="no preference set"):
        create_dpo_run(studio, 999, "tiny")
    for bad in ("../../etc/passwd", '<img src="http://h/p.png">', "a b"):
        with pytest.raises(RunError, match=r"run name '.*' is not allowed"):
            create_dpo_run(studio, sid, "tiny", name=bad)
    assert not any(Path(runs.runs_dir).iterdir())
    cmd, cfg = preview_dpo(studio, sid, "tiny")
    assert "-m training.train --run-dir" in cmd and cfg["objective"] == "dpo" and cfg["dpo"] == {
        "beta": 0.1, "loss_type": "sigmoid"}
    assert cfg["hyperparams"]["learning_rate"] == 1e-6 and runs.list_runs() == []


def test_lineage_from_preference_snapshot_to_registered_checkpoint(studio, runs):
    sid = _set(studio)
    studio.store.edit_preference_pair(sid, 5, "drop")
    pset = studio.store.preference_set(sid)
    run_id = create_dpo_run(studio, sid, "tiny", "lora", FAST, name="tiny-dpo")
    folder = runs.folder(run_id)
    assert len((folder.path / "pairs.jsonl").read_text().splitlines()) == 5
    assert folder.config()["snapshot_sha256"] == pset["sha256"]
    runs.start(run_id)
    s = runs.wait(run_id, timeout=300)
    assert s["state"] == "finished", runs.log_tail(run_id, 60)
    assert s["registered_as"] == "tiny-dpo" and s["n_train"] == 5 and s["method"] == "dpo (lora)"
    spec = studio.registry.get("tiny-dpo")
    assert spec.kind == "adapter" and spec.base == "tiny" and spec.template == "vicuna_v1.1"
    lin = spec.lineage
    assert lin["objective"] == "dpo" and lin["parent"] == "tiny" and lin["snapshot_sha256"] == pset["sha256"]
    assert lin["preference_set"] == {"id": sid, "name": "prefs", "sha256": pset["sha256"]}
    assert lin["config"]["dpo"] == {"beta": 0.1, "loss_type": "sigmoid"}
    on_disk = json.loads((folder.final_checkpoint() / "training_run.json").read_text())
    assert on_disk["snapshot_sha256"] == pset["sha256"] and on_disk["objective"] == "dpo"
    assert not (folder.final_checkpoint() / "ref").exists()  # no reference copy in the result
    # the reward curves are plotted beside the loss
    curve = runs.curve(run_id)
    assert {"loss", "reward margin", "reward accuracy"} <= set(curve["series"])
    assert set(curve[curve["series"] == "reward accuracy"]["step"]) == {1, 2}

    # DPO again on top of the DPO adapter: the adapter trains further (TRL's frozen "ref" copy), registered over
    # the same base, with the adapter as its parent
    run2 = create_dpo_run(studio, sid, "tiny-dpo", "lora", FAST, name="tiny-dpo2")
    cfg2 = runs.config(run2)
    assert cfg2["adapter_path"] == spec.path and cfg2["base_model"] == "tiny" and cfg2["parent"] == "tiny-dpo"
    runs.start(run2)
    s2 = runs.wait(run2, timeout=300)
    assert s2["state"] == "finished", runs.log_tail(run2, 60)
    spec2 = studio.registry.get("tiny-dpo2")
    assert spec2.base == "tiny" and spec2.lineage["parent"] == "tiny-dpo"
    assert "ref adapter" in runs.events(run2)[0][[e["type"] for e in runs.events(run2)[0]].index("start")][
        "reference"]
    # the registered checkpoint answers
    out = studio.registry.chat("tiny-dpo2", [{"role": "user", "content": "What is 1 plus 1?"}],
                               _params(max_new_tokens=4))
    assert isinstance(out.text, str)


def _params(**kw):
    from studio.registry import GenParams

    return GenParams(**kw)


def test_a_stopped_dpo_run_resumes_from_its_checkpoint(studio, runs):
    sid = _set(studio, 8)
    run_id = create_dpo_run(studio, sid, "tiny", "full", {**FAST, "max_steps": 100_000, "save_steps": 100_000})
    runs.start(run_id)
    deadline = time.monotonic() + 300
    while (runs.status(run_id).get("step") or 0) < 2:
        assert runs.status(run_id)["state"] in ("queued", "running"), runs.log_tail(run_id, 60)
        assert time.monotonic() < deadline, runs.log_tail(run_id, 60)
        time.sleep(0.2)
    assert runs.stop(run_id) == "stopping"
    s = runs.wait(run_id, timeout=120)
    assert s["state"] == "stopped", runs.log_tail(run_id, 60)
    ck = runs.checkpoints(run_id)
    stopped_at = s["step"]
    assert ck and int(ck[-1].name.split("-")[1]) == stopped_at >= 2
    assert runs.resume(run_id) == 0
    deadline = time.monotonic() + 300
    while (runs.status(run_id).get("step") or 0) < stopped_at + 2:
        assert runs.status(run_id)["state"] in ("queued", "running"), runs.log_tail(run_id, 60)
        assert time.monotonic() < deadline, runs.log_tail(run_id, 60)
        time.sleep(0.2)
    runs.stop(run_id)
    s = runs.wait(run_id, timeout=120)
    assert s["state"] == "stopped" and s["attempts"] == 2, runs.log_tail(run_id, 60)
    events, _ = runs.events(run_id)
    starts = [e for e in events if e["type"] == "start"]
    assert [e["step"] for e in starts] == [0, stopped_at]  # the second attempt continued from the checkpoint
    assert starts[1]["resumed_from"].endswith(f"checkpoint-{stopped_at}") and starts[1]["reference"] == "precomputed"
    assert [e["status"] for e in events if e["type"] == "end"] == ["stopped", "stopped"]
