"""Tests for studio/expand.py: the prompt helpers (no model), and whole expansion jobs with the real default
model as teacher, including stop/resume and a job left running by a process that died."""

from __future__ import annotations

import json
import time

import pytest

from studio.core import Studio
from studio.expand import (
    JOB_KIND,
    ExpandConfig,
    ExpansionPrompts,
    clean_question,
    seed_prompt,
    transcript,
)
from studio.registry import DEFAULT_MODEL_NAME, GenParams, RegistryError

# ------------------------------------------------------------------------------------------------ no model


def test_prompts_validate():
    ExpansionPrompts().validate()
    ExpansionPrompts(followup="{transcript}").validate()
    ExpansionPrompts(followup="Topic {topic}. Literal {{braces}}.\n{transcript}").validate()
    with pytest.raises(ValueError, match=r"must contain \{transcript\}"):
        ExpansionPrompts(followup="Ask about {topic}.").validate()
    with pytest.raises(ValueError, match="bad field.*'answer'"):
        ExpansionPrompts(followup="{transcript} then {answer}").validate()
    with pytest.raises(ValueError, match="bad field"):
        ExpansionPrompts(followup="{transcript} {}").validate()
    with pytest.raises(ValueError, match="bad field"):
        ExpansionPrompts(followup="{transcript} {topic").validate()


def test_prompts_version_follows_the_text():
    base = ExpansionPrompts()
    assert base.version == ExpansionPrompts().version
    assert base.version.startswith("wv-") and len(base.version) == 13
    int(base.version[3:], 16)
    changed = {
        ExpansionPrompts(system="Be brief.").version,
        ExpansionPrompts(followup=base.followup + " ").version,
        ExpansionPrompts(max_transcript_chars=400).version,
    }
    assert len(changed) == 3 and base.version not in changed


@pytest.mark.parametrize("raw, expected", [
    ("User: What is X?", "What is X?"),
    ("**User**: How does Y work? I wonder about it.", "How does Y work?"),
    ("Question: Why is the sky blue?", "Why is the sky blue?"),
    ('"Why is the sky blue?"', "Why is the sky blue?"),
    ("“What is love?”", "What is love?"),
    ("  next message: Is it safe? Is it fast?\n\nThanks for reading!", "Is it safe? Is it fast?"),
    ("What about Z?\nAssistant: Z is a letter.", "What about Z?"),
    ("How do tides form?\n\nASSISTANT: The moon.", "How do tides form?"),
    ("Tell me more about lists", "Tell me more about lists"),
    ("Tell me more\n\nabout lists? Yes", "Tell me more\n\nabout lists? Yes"),  # no '?' in the first paragraph
    ("", ""),
    ("   \n  ", ""),
])
def test_clean_question(raw, expected):
    assert clean_question(raw) == expected


@pytest.mark.parametrize("raw", ["**Follow-up question:** How does Y work? I wonder.", "**Question:** How does Y work?"])
def test_clean_question_bold_label_with_inner_colon(raw):
    assert clean_question(raw) == "How does Y work?"


def test_transcript_labels_skips_system_and_truncates():
    msgs = [
        {"role": "system", "content": "hidden system prompt"},
        {"role": "user", "content": "  Short question?  "},
        {"role": "assistant", "content": "abcdefghij"},
        {"role": "user", "content": "abcd efgh"},
        {"role": "assistant", "content": "12345"},
    ]
    assert transcript(msgs, 5) == "User: Short …\nAssistant: abcde …\nUser: abcd …\nAssistant: 12345"
    assert transcript(msgs, 100) == ("User: Short question?\nAssistant: abcdefghij\nUser: abcd efgh\n"
                                     "Assistant: 12345")
    assert "hidden" not in transcript(msgs, 100)
    assert transcript([], 10) == ""


def test_seed_prompt():
    assert seed_prompt({"instruction": " Summarize this. ", "input": " The cat sat. "}) == \
        "Summarize this.\n\nThe cat sat."
    assert seed_prompt({"instruction": "Summarize this.", "input": "  \n"}) == "Summarize this."
    assert seed_prompt({"instruction": "Summarize this."}) == "Summarize this."


def test_expand_config_round_trip():
    cfg = ExpandConfig(teacher="t", rounds=4, answer=GenParams(max_new_tokens=33, temperature=0.2, top_p=0.8,
                                                               repetition_penalty=1.1, seed=7),
                       question_max_new_tokens=12, batch_size=2, source_id=5,
                       prompts=ExpansionPrompts(system="", followup="Q on {topic}: {transcript}",
                                                max_transcript_chars=300))
    params = cfg.to_params()
    assert params["prompt_version"] == cfg.prompts.version
    assert params["answer"]["seed"] == 7 and params["prompts"]["system"] == ""
    back = ExpandConfig.from_params(json.loads(json.dumps(params)))
    assert back == cfg
    assert ExpandConfig.from_params(ExpandConfig(teacher="x").to_params()) == ExpandConfig(teacher="x")


@pytest.mark.parametrize("kw, match", [
    (dict(rounds=0), "rounds"),
    (dict(rounds=21), "rounds"),
    (dict(batch_size=0), "batch size"),
    (dict(batch_size=65), "batch size"),
    (dict(answer=GenParams(max_new_tokens=0)), "max new tokens"),
    (dict(prompts=ExpansionPrompts(followup="no transcript")), "transcript"),
])
def test_expand_config_validate(kw, match):
    ExpandConfig(teacher="t").validate()
    with pytest.raises(ValueError, match=match):
        ExpandConfig(teacher="t", **kw).validate()


def test_studio_expand_refuses_bad_requests(studio, data_dir):
    with pytest.raises(ValueError, match="no seeds to expand"):
        studio.expand(ExpandConfig(teacher=DEFAULT_MODEL_NAME), n=3)
    src = studio.import_file(data_dir / "wizardlm_testset.jsonl").source_id
    with pytest.raises(RegistryError, match="no model named 'ghost'"):
        studio.expand(ExpandConfig(teacher="ghost", source_id=src), n=3)
    with pytest.raises(ValueError, match="rounds"):
        studio.expand(ExpandConfig(teacher=DEFAULT_MODEL_NAME, rounds=0, source_id=src), n=3)
    assert studio.store.list_jobs().empty


def test_unreachable_teacher_pauses_the_job_and_keeps_items(studio, data_dir):
    """An endpoint teacher nobody listens to: the job pauses with the reason (after the client's retries),
    nothing is stored, and every item stays pending for a resume."""
    src = studio.import_file(data_dir / "wizardlm_testset.jsonl").source_id
    studio.registry.add_endpoint("dead", "http://127.0.0.1:9/v1", "nothing")
    job = studio.expand(ExpandConfig(teacher="dead", rounds=2, batch_size=2, source_id=src), n=3)
    p = studio.jobs.wait(job, timeout=900)
    assert p.status == "paused"
    assert p.message.startswith("endpoint 'dead' (nothing @ http://127.0.0.1:9/v1): cannot reach "
                                "http://127.0.0.1:9/v1"), p.message
    assert "(with up to 2 retries)" in p.message and "3 seeds left; resume" in p.message
    assert (p.done, p.failed, p.total) == (0, 0, 3)
    assert studio.store.pending_items(job) == [1, 2, 3]
    assert studio.store.count_conversations(origin="expanded") == 0


# ------------------------------------------------------------------------------------------------ with the model


def _cfg(source_id: int, **kw) -> ExpandConfig:
    base = dict(teacher=DEFAULT_MODEL_NAME, rounds=3,
                answer=GenParams(max_new_tokens=24, temperature=0.7, seed=0), question_max_new_tokens=24,
                batch_size=3, source_id=source_id)
    base.update(kw)
    return ExpandConfig(**base)


def _expanded(studio, job_id: int) -> list[dict]:
    df, _ = studio.store.list_conversations(job_id=job_id, origin="expanded", limit=100)
    return [studio.store.get_conversation(int(i)) for i in df["id"]]


def _check_conversation(conv: dict, seed: dict, cfg: ExpandConfig, rounds: int, job_id: int) -> None:
    msgs = conv["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"] * rounds
    assert msgs[0]["content"] == seed["instruction"].strip()
    assert all(m["content"].strip() == m["content"] and m["content"] for m in msgs)
    assert conv["origin"] == "expanded" and conv["status"] == "new" and conv["version"] == 1
    assert conv["seed_id"] == seed["id"] and conv["job_id"] == job_id
    assert conv["source_id"] == seed["source_id"]
    assert conv["teacher"] == cfg.teacher
    assert conv["prompt_version"] == cfg.prompts.version
    assert conv["gen_params"] == {"rounds": rounds, "answer": cfg.answer.as_dict(),
                                  "question_max_new_tokens": cfg.question_max_new_tokens,
                                  "system": cfg.prompts.system,
                                  "finish_reasons": conv["gen_params"]["finish_reasons"],
                                  "usage": {"prompt_tokens": conv["n_prompt_tokens"],  # a local teacher is free
                                            "completion_tokens": conv["n_completion_tokens"],
                                            "price_in_per_m": 0.0, "price_out_per_m": 0.0, "cost": 0.0}}
    assert conv["n_prompt_tokens"] > 0 and conv["n_completion_tokens"] > 0
    # one finish reason per answer; 'length' marks an answer cut at max_new_tokens (24 here: most are)
    assert len(conv["gen_params"]["finish_reasons"]) == rounds
    assert set(conv["gen_params"]["finish_reasons"]) <= {"stop", "length"}
    # at most max_new_tokens per generation step, 2 * rounds - 1 steps
    cap = max(cfg.answer.max_new_tokens, cfg.question_max_new_tokens)
    assert conv["n_completion_tokens"] <= cap * (2 * rounds - 1)
    assert (conv["n_turns"], conv["n_rounds"]) == (2 * rounds, rounds)


@pytest.mark.slow
def test_expand_three_seeds(studio, data_dir, default_model_dir):
    teacher = studio.registry.names()[0]
    assert teacher == DEFAULT_MODEL_NAME
    src = studio.import_file(data_dir / "wizardlm_testset.jsonl").source_id
    cfg = _cfg(src, teacher=teacher)
    job = studio.expand(cfg, n=3)
    p = studio.jobs.wait(job, timeout=900)
    assert (p.status, p.done, p.failed, p.total) == ("done", 3, 0, 3)
    assert p.fraction == 1.0
    stored = studio.store.get_job(job)
    assert stored["kind"] == JOB_KIND and stored["params"] == cfg.to_params()
    assert stored["finished_at"] is not None and stored["error"] is None
    convs = _expanded(studio, job)
    assert len(convs) == 3
    seeds = studio.store.get_seeds([1, 2, 3])
    assert sorted(c["seed_id"] for c in convs) == [1, 2, 3]  # committed as each finishes: any order
    for c in convs:
        _check_conversation(c, seeds[c["seed_id"]], cfg, 3, job)
    # expanded seeds are no longer offered
    assert studio.store.pick_seeds(src, 3) == [4, 5, 6]
    assert studio.store.list_seeds(src, unexpanded_only=True)[1] == 215
    # an expansion job's conversations export like any other
    path, n = studio.export(studio.settings.export_dir / "expanded.json", origin="expanded")
    assert n == 3
    assert [r["id"] for r in json.loads(path.read_text())] == [str(c["id"]) for c in convs]


@pytest.mark.slow
def test_stop_and_resume(studio, data_dir, default_model_dir):
    src = studio.import_file(data_dir / "wizardlm_testset.jsonl").source_id
    cfg = _cfg(src, rounds=2, answer=GenParams(max_new_tokens=16, temperature=0.7, seed=0),
               question_max_new_tokens=16, batch_size=2)
    job = studio.expand(cfg, n=4)
    deadline = time.monotonic() + 240
    seen_running = False
    while True:
        p = studio.jobs.progress(job)
        seen_running |= p.status == "running"
        if p.done >= 2 or p.finished or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert p.done == 2 and p.status == "running" and seen_running
    assert p.rate > 0 and p.eta_s is not None and p.eta_s > 0
    studio.jobs.stop(job)
    assert studio.store.get_job(job)["status"] in ("stopping", "stopped")
    p = studio.jobs.wait(job, timeout=900)
    assert (p.status, p.done, p.failed, p.total) == ("stopped", 2, 0, 4)
    assert "resume" in p.message
    assert studio.store.count_conversations(origin="expanded") == 2
    assert studio.store.pending_items(job) == [3, 4]

    studio.jobs.resume(job)
    p = studio.jobs.wait(job, timeout=900)
    assert (p.status, p.done, p.failed, p.total) == ("done", 4, 0, 4)
    convs = _expanded(studio, job)
    assert len(convs) == 4
    assert studio.store.count_conversations(origin="expanded") == 4
    assert sorted(c["seed_id"] for c in convs) == [1, 2, 3, 4]
    seeds = studio.store.get_seeds([1, 2, 3, 4])
    for c in convs:
        _check_conversation(c, seeds[c["seed_id"]], cfg, 2, job)
    with pytest.raises(ValueError, match="nothing left to do"):
        studio.jobs.resume(job)


@pytest.mark.slow
def test_killed_job_is_interrupted_and_resumes_only_the_rest(settings, data_dir, default_model_dir):
    cfg = None
    first = Studio(settings, start_jobs=False)
    try:
        src = first.import_file(data_dir / "wizardlm_testset.jsonl").source_id
        cfg = _cfg(src, rounds=2, answer=GenParams(max_new_tokens=16, temperature=0.7, seed=1),
                   question_max_new_tokens=16, batch_size=2)
        seed_ids = first.store.pick_seeds(src, 3)
        assert seed_ids == [1, 2, 3]
        job = first.store.create_job(JOB_KIND, cfg.to_params(), seed_ids)
        first.store.set_job_status(job, "running")
        done_msgs = [{"role": "user", "content": first.store.get_seeds([1])[1]["instruction"]},
                     {"role": "assistant", "content": "Written before the crash."}]
        cid = first.store.complete_item(job, 1, {"messages": done_msgs, "teacher": cfg.teacher,
                                                 "prompt_version": cfg.prompts.version, "n_prompt_tokens": 1,
                                                 "n_completion_tokens": 1}, source_id=src)
        assert cid is not None
        # the same item again is refused (no duplicate)
        assert first.store.complete_item(job, 1, {"messages": done_msgs}, source_id=src) is None
        assert first.store.get_job(job)["status"] == "running"
    finally:
        first.close()  # the process "dies": the job is still marked running

    second = Studio(settings)
    try:
        p = second.jobs.progress(job)
        assert (p.status, p.done, p.total) == ("interrupted", 1, 3)
        assert "resume" in p.message
        assert second.store.pending_items(job) == [2, 3]
        second.jobs.resume(job)
        p = second.jobs.wait(job, timeout=900)
        assert (p.status, p.done, p.failed) == ("done", 3, 0)
        convs = _expanded(second, job)
        assert sorted(c["seed_id"] for c in convs) == [1, 2, 3]  # the resumed seeds commit as each finishes
        assert convs[0]["id"] == cid and convs[0]["messages"] == done_msgs  # kept, not regenerated
        seeds = second.store.get_seeds([2, 3])
        for c in convs[1:]:
            _check_conversation(c, seeds[c["seed_id"]], cfg, 2, job)
        assert second.store.count_conversations(origin="expanded") == 3
    finally:
        second.close()
