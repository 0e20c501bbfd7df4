"""Pipelined expansion and evolution (issue 11; issue 13 item 10), against the loopback OpenAI-compatible server
of ``tests/test_endpoints.py`` (``Teacher``): a slow seed holds only itself (the others are committed before it);
Stop keeps each seed's finished steps and Resume does not redo them (counted as the requests the server received);
the same after the studio is killed and restarted; progress counts steps (seed x round); an answer cut at the token
limit is marked (``gen_params.finish_reasons``) and found by the one filter (``ConvFilter.cut``) and exports; an
eliminated evolution keeps its rejected text."""

from __future__ import annotations

import json
import time

from test_endpoints import Teacher, _seeds, _settings, studio, teacher  # noqa: F401 - fixtures

from studio.core import Studio
from studio.evol import EvolConfig
from studio.expand import JOB_KIND, ExpandConfig, new_state
from studio.filters import filter_from_mapping
from studio.registry import GenParams


def _until(cond, what: str, timeout: float = 60.0) -> None:
    """Poll ``cond`` (store or server state) until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _seed_order(store, job: int) -> list[int]:
    """The job's conversations' seed ids in the order they were committed (conversation ids are a sequence)."""
    return [store.get_conversation(c)["seed_id"] for c in store.conversation_ids(job_id=job)]


def test_a_slow_seed_holds_only_itself(studio, teacher, tmp_path):
    studio.registry.add_endpoint("ep", teacher.url, "m", concurrency=2)
    src = _seeds(studio, tmp_path, 4)
    teacher.plan = ["gate"]  # the first request to arrive (seed 1's or 2's round-1 answer) waits for the test
    job = studio.expand(ExpandConfig(teacher="ep", rounds=2, batch_size=1, source_id=src), n=4)
    store = studio.store
    _until(lambda: store.get_job(job)["n_done"] == 3, "the three other seeds")
    [slow] = store.pending_items(job)
    assert slow in (1, 2) and store.get_job(job)["status"] == "running" and teacher.in_flight == 1
    others = [s for s in (1, 2, 3, 4) if s != slow]
    assert sorted(_seed_order(store, job)) == others
    p = studio.jobs.progress(job)  # steps, not only seeds: 3 seeds x 2 rounds of 4 x 2
    assert (p.metrics["steps_done"], p.metrics["steps_total"]) == (6, 8) and p.fraction == 0.75, p.line()
    assert "step 6/8" in p.line()
    teacher.gate.set()
    p = studio.jobs.wait(job, timeout=60)
    assert (p.status, p.done, p.failed) == ("done", 4, 0), p.line()
    assert _seed_order(store, job)[-1] == slow  # committed as each finished: the slow one last
    assert len(teacher.arrivals) == 4 * 3  # each seed: answer, follow-up question, answer; none twice
    assert store.item_progress(job) == {}  # kept steps go with their finished item


def test_stop_mid_round_keeps_finished_steps_and_resume_does_not_redo_them(studio, teacher, tmp_path):
    studio.registry.add_endpoint("ep", teacher.url, "m", concurrency=1)  # one seed at a time: requests in order
    src = _seeds(studio, tmp_path, 2)
    # seed 1: request 1 answers round 1, 2 asks round 2's question, 3 answers it (held), 4-5 round 3
    teacher.plan = ["ok", "ok", "gate"]
    job = studio.expand(ExpandConfig(teacher="ep", rounds=3, batch_size=1, source_id=src), n=2)
    store = studio.store
    _until(lambda: len(teacher.arrivals) == 3 and teacher.in_flight == 1, "seed 1's round-2 answer in flight")
    kept = store.item_progress(job)[1]  # round 1 and round 2's question are kept already
    assert kept["steps_done"] == 1 and [m["content"] for m in kept["state"]["messages"]][1:] == \
        ["Answer 1.", "What about part 2?"]
    p = studio.jobs.progress(job)
    assert p.done == 0 and p.metrics["steps_done"] == 1 and p.fraction > 0  # the bar moved during the rounds
    studio.jobs.stop(job)
    teacher.gate.set()  # the answer in flight finishes and is kept; nothing new starts
    p = studio.jobs.wait(job, timeout=60)
    assert (p.status, p.done, p.total) == ("stopped", 0, 2), p.line()
    assert len(teacher.arrivals) == 3
    kept = store.item_progress(job)
    assert list(kept) == [1] and kept[1]["steps_done"] == 2
    assert kept[1]["state"]["messages"][-1] == {"role": "assistant", "content": "Answer 3."}
    assert p.metrics["steps_done"] == 2 and abs(p.fraction - 2 / 6) < 1e-9

    studio.jobs.resume(job)
    p = studio.jobs.wait(job, timeout=60)
    assert (p.status, p.done, p.failed) == ("done", 2, 0), p.line()
    assert len(teacher.arrivals) == 3 + 2 + 5  # seed 1's round 3 only, then all of seed 2
    first = store.get_conversation(store.conversation_ids(job_id=job)[0])
    assert first["seed_id"] == 1
    assert [m["content"] for m in first["messages"] if m["role"] == "assistant"] == \
        ["Answer 1.", "Answer 3.", "Answer 5."]  # the kept answers, not regenerated
    assert (first["n_prompt_tokens"], first["n_completion_tokens"]) == (50, 25)  # 5 requests, counted once each
    assert store.item_progress(job) == {} and not store.pending_items(job)


def test_a_killed_studio_resumes_each_seed_from_its_kept_steps(tmp_path, teacher):
    settings = _settings(tmp_path)
    first = Studio(settings, start_jobs=False)
    try:
        first.registry.add_endpoint("ep", teacher.url, "m", concurrency=1)
        src = _seeds(first, tmp_path, 2)
        cfg = ExpandConfig(teacher="ep", rounds=2, batch_size=1, source_id=src)
        job = first.store.create_job(JOB_KIND, cfg.to_params(), [1, 2])
        first.store.set_job_status(job, "running")
        state = new_state(first.store.get_seeds([1])[1])
        state["messages"].append({"role": "assistant", "content": "Kept before the crash."})
        state.update(prompt_tokens=7, completion_tokens=3, finish_reasons=["stop"])
        assert first.store.save_item_progress(job, {1: (1, state)}) == 1
    finally:
        first.close()  # the process "dies" with the job running

    second = Studio(settings)
    try:
        p = second.jobs.progress(second.store.get_job(job)["id"])
        assert p.status == "interrupted" and p.metrics["steps_done"] == 1 and p.metrics["steps_total"] == 4
        second.jobs.resume(job)
        p = second.jobs.wait(job, timeout=60)
        assert (p.status, p.done, p.failed) == ("done", 2, 0), p.line()
        assert len(teacher.arrivals) == 2 + 3  # seed 1: round 2 only; seed 2: all of it
        convs = {c["seed_id"]: c for c in map(second.store.get_conversation, second.store.conversation_ids(job_id=job))}
        assert convs[1]["messages"][1]["content"] == "Kept before the crash."
        assert convs[1]["n_prompt_tokens"] == 7 + 20 and len(convs[1]["messages"]) == 4
        assert second.store.item_progress(job) == {}
    finally:
        second.close()


def test_answers_cut_at_the_token_limit_are_marked_filtered_and_exported(studio, teacher, tmp_path):
    studio.registry.add_endpoint("ep", teacher.url, "m", concurrency=1)
    src = _seeds(studio, tmp_path, 3)
    teacher.plan = ["ok", "length"]  # seed 2's answer stops at max_tokens
    job = studio.expand(ExpandConfig(teacher="ep", rounds=1, batch_size=1, source_id=src,
                                     answer=GenParams(max_new_tokens=16)), n=3)
    assert studio.jobs.wait(job, timeout=60).status == "done"
    store = studio.store
    reasons = {store.get_conversation(c)["seed_id"]: store.get_conversation(c)["gen_params"]["finish_reasons"]
               for c in store.conversation_ids(job_id=job)}
    assert reasons == {1: ["stop"], 2: ["length"], 3: ["stop"]}
    [cut] = store.conversation_ids(filter_from_mapping({"cut": "yes"}))
    assert store.get_conversation(cut)["seed_id"] == 2
    assert store.count_conversations(filter_from_mapping({"cut": "no"})) == 2
    imported = _seeds(studio, tmp_path, 1)  # conversations with no finish reasons count as not cut
    assert store.count_conversations(filter_from_mapping({"cut": "no", "source_id": imported})) == 0
    path, n = studio.export(tmp_path / "cut.json", cut=True)
    assert n == 1 and [r["id"] for r in json.loads(path.read_text())] == [str(cut)]
    path, n = studio.export(tmp_path / "whole.json", cut=False)
    assert n == 2


def test_an_evolution_stopped_mid_seed_keeps_its_rewrite(studio, teacher, tmp_path):
    studio.registry.add_endpoint("evolver", teacher.url, "m", concurrency=1)
    src = _seeds(studio, tmp_path, 2)
    teacher.plan = ["gate"]  # seed 1: request 1 rewrites (held); its answer would be request 2
    cfg = EvolConfig(evolver="evolver", batch_size=1, min_words=1, min_new_words=1)  # "Answer 1." passes
    job = studio.evolve(cfg, n=2, source_id=src)
    store = studio.store
    _until(lambda: len(teacher.arrivals) == 1 and teacher.in_flight == 1, "seed 1's rewrite in flight")
    studio.jobs.stop(job)
    teacher.gate.set()
    p = studio.jobs.wait(job, timeout=60)
    assert p.status == "stopped" and len(teacher.arrivals) == 1, p.line()
    kept = store.item_progress(job)
    assert kept[1]["steps_done"] == 1 and kept[1]["state"]["evolved"] == "Answer 1."
    assert (p.metrics["steps_done"], p.metrics["steps_total"]) == (1, 4)
    studio.jobs.resume(job)
    p = studio.jobs.wait(job, timeout=60)
    assert (p.status, p.done, p.failed) == ("done", 2, 0), p.line()
    assert len(teacher.arrivals) == 1 + 1 + 2  # seed 1's answer only, then seed 2's rewrite and answer
    new = store.evolved_seeds(job)
    assert sorted(new["instruction"]) == ["Answer 1.", "Answer 3."], new


def test_an_eliminated_evolution_keeps_its_rejected_text(studio, teacher, tmp_path):
    studio.registry.add_endpoint("evolver", teacher.url, "m", concurrency=1)
    src = _seeds(studio, tmp_path, 1)
    job = studio.evolve(EvolConfig(evolver="evolver", batch_size=1), n=1, source_id=src)
    p = studio.jobs.wait(job, timeout=60)
    assert (p.status, p.done, p.failed) == ("done", 0, 1) and p.outcome == "error", p.line()
    assert p.line().startswith(f"job {job} failed on every seed: 1 of 1 failed")
    [(sid, reason, detail)] = studio.store.job_item_failures(job)
    assert sid == 1 and reason == "eliminated (add_constraints): too short (2 words, fewer than 3)"
    assert detail == "Answer 1."  # what was rejected, for people to judge
