"""Tests for studio/jobs.py: the job queue with small pure-Python runners on a real DuckDB store (no model):
progress and ETA, stop (queued and running), runner failures and their kept tracebacks, failed items, resume,
interrupted jobs, lanes, kinds without items, and re-attaching a job that survived its studio."""

from __future__ import annotations

import threading
import time

import pytest

from studio.jobs import JobFailed, JobManager, Outcome
from studio.store import Store, StoreError


class Work:
    """Resource shared with the runners: gates the test opens, and a record of the seeds each run handled."""

    def __init__(self, pause_after: int | None = None, delay: float = 0.0, fail_seed: int | None = None,
                 raise_after: int | None = None):
        self.pause_after = pause_after
        self.delay = delay
        self.fail_seed = fail_seed
        self.raise_after = raise_after
        self.gate = threading.Event()
        self.runs: list[list[int]] = []


def convo(seed_id: int) -> dict:
    return {"messages": [{"role": "user", "content": f"seed {seed_id}"},
                         {"role": "assistant", "content": f"answer {seed_id}"}], "teacher": "pure-python"}


def step_runner(ctx, work: Work) -> None:
    """Completes the job's pending items one by one; may pause on ``work.gate``, fail one item or raise."""
    store = ctx._manager.store
    handled: list[int] = []
    work.runs.append(handled)
    for k, sid in enumerate(store.pending_items(ctx.job_id)):
        if work.pause_after is not None and k == work.pause_after:
            ctx.report("paused at the gate")
            while not work.gate.wait(0.01):
                if ctx.should_stop():
                    return
        if ctx.should_stop():
            return
        if work.raise_after is not None and k == work.raise_after:
            raise ValueError(f"boom at seed {sid}")
        time.sleep(work.delay)
        handled.append(sid)
        if sid == work.fail_seed:
            store.fail_item(ctx.job_id, sid, f"seed {sid} is cursed")
        else:
            store.complete_item(ctx.job_id, sid, convo(sid), source_id=None)
        ctx.report(f"item {k + 1}")


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "jobs.duckdb")
    yield s
    s.close()


@pytest.fixture
def manager(store):
    m = JobManager(store)
    yield m
    m.shutdown()


def wait_for(pred, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_progress_fraction_rate_and_eta(manager, store):
    work = Work(pause_after=2, delay=0.15)
    manager.register("step", step_runner, work)
    job = manager.submit("step", {"x": 1}, [11, 12, 13, 14])
    assert store.get_job(job)["params"] == {"x": 1}
    wait_for(lambda: manager.progress(job).message == "paused at the gate")
    p = manager.progress(job)
    assert (p.status, p.total, p.done, p.failed) == ("running", 4, 2, 0)
    assert p.fraction == 0.5 and not p.finished
    assert 0 < p.rate <= 2 / 0.3  # two items of at least 0.15 s each
    assert p.eta_s == pytest.approx(2 / p.rate)
    assert p.message == "paused at the gate"
    line = p.line()
    assert line.startswith(f"job {job} running: 2/4 done") and "/min" in line and "s left" in line
    assert job in manager.active()

    work.gate.set()
    p = manager.wait(job, timeout=20)
    assert (p.status, p.done, p.total, p.fraction, p.eta_s) == ("done", 4, 4, 1.0, None)
    assert p.line() == f"job {job} done: 4/4 done — finished"
    assert work.runs == [[11, 12, 13, 14]]
    assert store.pending_items(job) == []
    assert store.count_conversations(job_id=job) == 4
    assert manager.active() == []


def test_stop_running_job_then_resume(manager, store):
    work = Work(pause_after=1)
    manager.register("step", step_runner, work)
    job = manager.submit("step", {}, [1, 2, 3])
    wait_for(lambda: manager.progress(job).done == 1)
    manager.stop(job)
    p = manager.wait(job, timeout=20)
    assert (p.status, p.done) == ("stopped", 1)
    assert p.message == "stopped; 2 left — resume to finish"
    assert store.pending_items(job) == [2, 3]
    work.pause_after = None
    manager.resume(job)
    p = manager.wait(job, timeout=20)
    assert (p.status, p.done, p.total) == ("done", 3, 3)
    assert work.runs == [[1], [2, 3]]  # the resume ran only what was left
    assert store.count_conversations(job_id=job) == 3


def test_stop_queued_job_never_runs_it(manager, store):
    work = Work(pause_after=0)
    manager.register("step", step_runner, work)
    first = manager.submit("step", {}, [1])
    wait_for(lambda: store.get_job(first)["status"] == "running")
    second = manager.submit("step", {}, [2, 3])
    assert manager.progress(second).status == "queued"
    assert manager.progress(second).message == "waiting for earlier jobs"
    manager.stop(second)
    work.gate.set()
    assert manager.wait(first, timeout=20).status == "done"
    p = manager.wait(second, timeout=20)
    assert (p.status, p.done) == ("stopped", 0)
    assert work.runs == [[1]]  # the stopped job's runner never started
    assert store.pending_items(second) == [2, 3]
    manager.resume(second)
    assert manager.wait(second, timeout=20).status == "done"
    assert work.runs == [[1], [2, 3]]


def test_stop_queued_job_is_stopped_at_once(manager, store):
    work = Work(pause_after=0)
    manager.register("step", step_runner, work)
    first = manager.submit("step", {}, [1])
    wait_for(lambda: store.get_job(first)["status"] == "running")
    second = manager.submit("step", {}, [2])
    try:
        assert manager.stop(second) == "stopped"
        assert manager.progress(second).status == "stopped" and second not in manager.active()
    finally:
        work.gate.set()
        manager.wait(first, timeout=20)
        manager.wait(second, timeout=20)


def test_runner_exception_fails_only_its_job(manager, store):
    boom = Work(raise_after=1)
    ok = Work()
    manager.register("boom", step_runner, boom)
    manager.register("ok", step_runner, ok)
    bad = manager.submit("boom", {}, [1, 2, 3])
    good = manager.submit("ok", {}, [4, 5])
    p = manager.wait(bad, timeout=20)
    assert p.status == "failed"
    assert p.message == "ValueError: boom at seed 2"
    assert store.get_job(bad)["error"] == "ValueError: boom at seed 2"
    log = store.get_job(bad)["log"]  # the full traceback is kept where a person can read it
    assert log.startswith("Traceback (most recent call last)") and "in step_runner" in log
    assert log.rstrip().endswith("ValueError: boom at seed 2") and p.log == log
    assert p.done == 1 and store.pending_items(bad) == [2, 3]  # the work done before the failure is kept
    q = manager.wait(good, timeout=20)
    assert (q.status, q.done, q.failed) == ("done", 2, 0)
    assert store.count_conversations(job_id=good) == 2
    # a failed job can be resumed and finishes the rest
    boom.raise_after = None
    manager.resume(bad)
    p = manager.wait(bad, timeout=20)
    assert (p.status, p.done) == ("done", 3)
    assert store.get_job(bad)["error"] is None and store.get_job(bad)["log"] is None
    assert boom.runs == [[1], [2, 3]]


def test_failed_items_are_reported_and_retried_on_resume(manager, store):
    work = Work(fail_seed=2)
    manager.register("step", step_runner, work)
    job = manager.submit("step", {}, [1, 2, 3])
    p = manager.wait(job, timeout=20)
    assert (p.status, p.done, p.failed, p.total) == ("done", 2, 1, 3)
    assert p.message == "1 failed, first: seed 2 is cursed"
    assert store.job_item_errors(job) == [(2, "seed 2 is cursed")]
    assert store.pending_items(job) == [2]
    work.fail_seed = None
    manager.resume(job)
    p = manager.wait(job, timeout=20)
    assert (p.status, p.done, p.failed) == ("done", 3, 0)
    assert work.runs == [[1, 2, 3], [2]]
    assert sorted(r[0] for r in store._q(
        "SELECT seed_id FROM conversations WHERE job_id = ?", [job])) == [1, 2, 3]


def test_resume_refusals(manager, store):
    work = Work(pause_after=0)
    manager.register("step", step_runner, work)
    job = manager.submit("step", {}, [1, 2])
    wait_for(lambda: store.get_job(job)["status"] == "running")
    with pytest.raises(ValueError, match="is running already"):
        manager.resume(job)
    work.gate.set()
    assert manager.wait(job, timeout=20).status == "done"
    with pytest.raises(ValueError, match=f"job {job} has nothing left to do"):
        manager.resume(job)
    with pytest.raises(StoreError, match="job 99 does not exist"):
        manager.resume(99)
    with pytest.raises(ValueError, match="no runner for jobs of kind 'nope'"):
        manager.submit("nope", {}, [1])
    with pytest.raises(ValueError, match="nothing to do"):
        manager.submit("step", {}, [])
    with pytest.raises(ValueError, match=f"job {job} is done; only a queued or running job can be stopped"):
        manager.stop(job)
    assert len(store.list_jobs()) == 1


def test_jobs_left_running_become_interrupted(tmp_path):
    path = tmp_path / "j.duckdb"
    s = Store(path)
    running = s.create_job("step", {}, [1, 2])
    s.set_job_status(running, "running")
    s.complete_item(running, 1, convo(1), source_id=None)
    queued = s.create_job("step", {}, [3])
    finished = s.create_job("step", {}, [4])
    s.complete_item(finished, 4, convo(4), source_id=None)
    s.set_job_status(finished, "done")
    s.close()

    s = Store(path)
    manager = None
    try:
        manager = JobManager(s)
        work = Work()
        manager.register("step", step_runner, work)
        assert [manager.progress(j).status for j in (running, queued, finished)] == ["interrupted", "interrupted",
                                                                                     "done"]
        p = manager.progress(running)
        assert p.finished and p.done == 1 and "resume" in p.message
        manager.resume(running)
        assert manager.wait(running, timeout=20).done == 2
        assert work.runs == [[2]]
        with pytest.raises(ValueError, match="nothing left"):
            manager.resume(finished)
    finally:
        if manager is not None:
            manager.shutdown()
        s.close()


def test_job_log_counts_and_jobs_without_items(store):
    """A training-like job: no items, progress set directly, a failure keeps its full traceback in ``log``;
    a resume clears it."""
    job = store.create_job("train", {"run": "r1"}, [])
    assert store.pending_items(job) == [] and store.get_job(job)["total"] == 0
    store.set_job_status(job, "running")
    store.set_job_counts(job, total=200)
    store.set_job_counts(job, done=50)
    j = store.get_job(job)
    assert (j["total"], j["n_done"], j["n_failed"], j["status"]) == (200, 50, 0, "running")
    try:
        raise RuntimeError("CUDA out of memory")
    except RuntimeError:
        import traceback

        tb = traceback.format_exc()
    store.set_job_status(job, "failed", error="RuntimeError: CUDA out of memory", log=tb)
    j = store.get_job(job)
    assert j["status"] == "failed" and j["finished_at"] is not None
    assert j["error"] == "RuntimeError: CUDA out of memory"
    assert j["log"] == tb and "Traceback (most recent call last)" in j["log"] and "\n" in j["log"]
    store.set_job_status(job, "running")                         # resumed: the old failure is gone
    j = store.get_job(job)
    assert (j["error"], j["log"], j["finished_at"], j["n_done"]) == (None, None, None, 50)
    with pytest.raises(ValueError, match="job count 'n_done' must be a whole number >= 0"):
        store.set_job_counts(job, done=-1)
    with pytest.raises(StoreError, match="job 999 does not exist"):
        store.set_job_counts(999, done=1)
    with pytest.raises(ValueError, match="unknown job status 'sleeping'"):
        store.set_job_status(job, "sleeping")
    assert store.get_job(job)["status"] == "running"


def test_lanes_a_generation_job_does_not_wait_for_training(manager, store):
    """A job of the train lane runs and another waits behind it; a job of the generate lane starts at once."""
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []

    def train_runner(ctx, _):
        ran.append(ctx.job_id)
        ctx.set_counts(total=10, done=3)
        ctx.set_metrics(loss=1.5, eta_s=12, epoch=None)
        ctx.report("training")
        started.set()
        assert release.wait(20)
        return Outcome("done", f"trained {ctx.params['run']}")

    manager.register("train", train_runner, lane="train", items=False, unit="step")
    work = Work()
    manager.register("step", step_runner, work)
    assert manager.lanes() == {"train": ["train"], "generate": ["step"]}
    first = manager.submit("train", {"run": 1}, [])  # no items: the runner reports its own counts
    assert started.wait(20)
    second = manager.submit("train", {"run": 2}, [])
    assert manager.progress(second).status == "queued" and manager.ahead(second) == 1
    assert manager.queued("train") == [second]
    gen = manager.submit("step", {}, [1, 2])
    p = manager.wait(gen, timeout=20)
    assert (p.status, p.done) == ("done", 2) and work.runs == [[1, 2]]
    assert [manager.progress(j).status for j in (first, second)] == ["running", "queued"]  # still where they were

    q = manager.progress(first)
    assert (q.total, q.done, q.unit, q.eta_s, q.metrics) == (10, 3, "step", 12, {"loss": 1.5, "eta_s": 12})
    assert q.line() == f"job {first} running: step 3/10, loss 1.5000, ~12 s left — training"
    release.set()
    assert manager.wait(first, timeout=20).message == "trained 1"
    p = manager.wait(second, timeout=20)
    assert (p.status, p.message, p.fraction) == ("done", "trained 2", 1.0)
    assert ran == [first, second]
    with pytest.raises(ValueError, match="nothing left to do: it is done"):
        manager.resume(second)


def test_runner_failure_with_its_own_log_and_outcomes(manager, store):
    outcomes = iter([JobFailed("the process died", log="line 1\nTraceback ...\nOSError: gone"),
                     Outcome("stopped", "stopped at step 4"), Outcome("done", "finished")])

    def runner(ctx, _):
        o = next(outcomes)
        if isinstance(o, Exception):
            raise o
        return o

    manager.register("proc", runner, lane="train", items=False, unit="step")
    job = manager.submit("proc", {}, [])
    p = manager.wait(job, timeout=20)
    assert (p.status, p.message, p.log) == ("failed", "the process died", "line 1\nTraceback ...\nOSError: gone")
    manager.resume(job)
    p = manager.wait(job, timeout=20)
    assert (p.status, p.message, p.log) == ("stopped", "stopped at step 4", "")
    manager.resume(job)
    assert manager.wait(job, timeout=20).status == "done"
    with pytest.raises(ValueError, match="is done; only a queued or running job can be stopped"):
        manager.stop(job)


def test_a_job_that_survives_its_studio_is_reattached(tmp_path):
    """A kind registered with ``survives_close`` is detached (not stopped) when the manager shuts down; the next
    manager's ``recover`` re-attaches it (``attach``) and its runner follows it to its end."""
    path = tmp_path / "j.duckdb"
    s = Store(path)
    going, follow = threading.Event(), threading.Event()
    seen: list[tuple[int, str]] = []

    def runner(ctx, _):
        seen.append((ctx.job_id, ctx._manager.store.get_job(ctx.job_id)["status"]))
        going.set()
        if len(seen) == 1:  # the first studio: its own process goes on until the studio closes
            while not ctx.closing():
                ctx.stop_event.wait(0.01)
            return Outcome("detached")
        assert follow.wait(20)
        return Outcome("done", "followed to its end")

    m = JobManager(s)
    m.register("proc", runner, lane="train", items=False, survives_close=True)
    job = m.submit("proc", {}, [])
    assert going.wait(20)
    m.shutdown()
    assert s.get_job(job)["status"] == "running"  # left as it was, for the next studio
    s.close()

    s = Store(path)
    m = JobManager(s)
    try:
        assert s.get_job(job)["status"] == "interrupted"  # until its kind recovers it
        recovered: list[int] = []

        def recover(row):
            recovered.append(row["id"])
            m.attach(row["id"], "re-attached")

        going.clear()
        m.register("proc", runner, lane="train", items=False, survives_close=True, recover=recover)
        assert recovered == [job] and s.get_job(job)["status"] == "running"
        assert going.wait(20)
        follow.set()
        p = m.wait(job, timeout=20)
        assert (p.status, p.message) == ("done", "followed to its end")
        assert seen == [(job, "running"), (job, "running")]
    finally:
        m.shutdown()
        s.close()
