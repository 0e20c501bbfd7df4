"""Every background task of the studio: a job kind with params, items, progress, stop, resume and a log.

A job is a row in the store's ``jobs`` table. Jobs of a kind with items (expansion, evolution) have one
``job_items`` row per unit of work (a seed); runners store each finished unit together with marking its item
done, in one transaction, so a job that is stopped, crashes, or whose process is killed resumes with exactly
the items not yet done: nothing is generated twice and nothing is lost. Jobs of a kind without items (a training
run) report their own progress (``JobContext.set_counts``: e.g. steps taken of all steps) and decide their own
outcome (``Outcome``).

Kinds register with a *lane* (``register(kind, runner, lane=...)``): each lane has its own queue and worker, so
jobs that need different resources don't wait for each other: expansions and evolutions share the
``generate`` lane (a 2-core CPU gains nothing from two generations at once), training runs the ``train`` lane
(one run at a time on the GPUs), and an expansion started while a run trains starts at once. Within a lane, jobs
run in submission order.

Expansion and evolution run their items as a pipeline (``run_pipelined``): several items in flight, each
advancing through its steps on its own, each finished step kept in the store (``job_item_progress``) so a stop,
a pause or a killed process loses at most the requests in flight; a kind reports its progress in steps
(``Progress.metrics["steps_done"]``/``["steps_total"]``) so its bar moves before the first item is done.

Progress is read from the store plus an in-memory message, rate and metrics per job, so any page (or a reloaded
one) sees the same progress. A failed job keeps its one-line reason (``error``) and its full traceback or log
(``log``) in its row.

Sources: the queue/item model is the studio's own; a run as a supervised process that writes JSON events follows
LLaMA-Factory's web UI (``trainer_log.jsonl``).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

DEFAULT_LANE = "generate"
"""The lane of kinds that don't name one (expansion, evolution)."""

FINISHED = ("stopped", "done", "failed", "interrupted", "paused")
"""Statuses of a job that no longer runs; all but ``done`` can be resumed. ``paused``: its runner lost what it
works with (an endpoint teacher failed after its retries) and returned ``Outcome("paused", reason)``."""

ACTIVE = ("queued", "running", "stopping")


class JobFailed(Exception):
    """Raised by a runner whose job failed for a reason it can state: ``str(e)`` becomes the job's ``error``
    line and ``log`` (e.g. the training program's traceback) its ``log``."""

    def __init__(self, message: str, log: str | None = None):
        super().__init__(message)
        self.log = log


@dataclass
class Outcome:
    """What a runner of a kind without items returns (a runner with items may return one too, e.g.
    ``Outcome("paused", reason)`` when its endpoint is lost): the job's final ``status`` (``done``, ``stopped``,
    ``interrupted``, ``paused``, or ``detached``: the manager is closing and the job's own process goes on, so its
    row is left as it is for the next studio to re-attach) and a ``message`` kept in the row."""

    status: str
    message: str = ""


@dataclass
class JobContext:
    """What a runner gets: the job's id and params, a stop flag, and ways to report progress."""

    job_id: int
    params: dict
    stop_event: threading.Event
    _manager: "JobManager"
    _running: "_Running | None" = None

    def should_stop(self) -> bool:
        """True once someone asked the job to stop; runners check it between units of work."""
        return self.stop_event.is_set()

    def force_stop(self) -> bool:
        """True once someone asked the job to stop *now* (``stop(force=True)``): a process is killed instead of
        being let save its state."""
        return bool(self._running and self._running.force)

    def closing(self) -> bool:
        """True once the manager shuts down. A runner supervising a process of its own returns
        ``Outcome("detached")`` then, and the process goes on."""
        return self._manager._closing.is_set()

    def report(self, message: str) -> None:
        """Set the job's current status line (shown under the progress bar)."""
        self._manager._messages[self.job_id] = message

    def set_counts(self, *, total: int | None = None, done: int | None = None, failed: int | None = None) -> None:
        """Write the job's counts to its row (kinds without items: e.g. ``total`` steps, ``done`` steps)."""
        self._manager.store.set_job_counts(self.job_id, total=total, done=done, failed=failed)

    def set_metrics(self, **metrics) -> None:
        """Replace the job's extra figures shown with its progress (``Progress.metrics``), e.g. ``epoch``,
        ``loss``, ``eval_loss``, ``tokens_per_second`` and ``eta_s`` (seconds left, used as the job's ETA)."""
        self._manager._metrics[self.job_id] = {k: v for k, v in metrics.items() if v is not None}


@dataclass
class Progress:
    """A job's progress at one moment.

    Attributes:
        job_id, kind, status: the job and its state (``queued, running, stopping, stopped, done, failed,
            interrupted, paused``).
        total, done, failed: item counts (for a training run: steps in all, steps taken, 0).
        message: the runner's last status line, or the error.
        rate: items per second since the job (re)started, 0 if unknown.
        eta_s: seconds left at that rate (or as the runner reports it), None if unknown.
        unit: what ``total`` counts (``conv``, ``seed``, ``step``).
        title: what the job works on, in a few words (a training job: its run id), or "".
        metrics: the runner's extra figures (``JobContext.set_metrics``; empty when this process does not run
            the job).
        log: the job's kept log (a failure's traceback), or "".
    """

    job_id: int
    kind: str
    status: str
    total: int
    done: int
    failed: int
    message: str = ""
    rate: float = 0.0
    eta_s: float | None = None
    unit: str = "item"
    title: str = ""
    metrics: dict = field(default_factory=dict)
    log: str = ""

    @property
    def fraction(self) -> float:
        """Done over total, 0..1: steps finished over all steps when the job counts steps (``metrics["steps_done"]``
        and ``["steps_total"]``: an expansion's seed x round); a training job also counts the micro-batches done
        inside the step under way (``metrics`` ``micro`` of ``micro_of``), so its bar moves during a long step;
        else done items over total."""
        if self.status == "done":
            return 1.0
        st = self.metrics.get("steps_total")
        if st:
            return min(1.0, float(self.metrics.get("steps_done") or 0) / float(st))
        if self.unit == "step" and self.total and self.metrics.get("micro") and self.metrics.get("micro_of"):
            part = min(1.0, self.metrics["micro"] / self.metrics["micro_of"])
            return min(1.0, (self.done + part) / self.total)
        return min(1.0, self.done / self.total) if self.total else (1.0 if self.finished else 0.0)

    @property
    def outcome(self) -> str:
        """How the page colours the job: ``error`` (failed, paused, or ended with every item failed), ``warn``
        (ended with some items failed, or interrupted), ``ok`` (done), ``running`` (queued, running, stopping,
        stopped)."""
        if self.status in ("failed", "paused") or (self.status == "done" and self.failed and not self.done):
            return "error"
        if self.status == "interrupted" or (self.finished and self.failed):
            return "warn"
        return "ok" if self.status == "done" else "running"

    @property
    def finished(self) -> bool:
        """The job is no longer queued or running."""
        return self.status in FINISHED

    def counts(self) -> str:
        """``2/5`` (items) or ``step 12/40`` (steps; ``?`` while the total is unknown)."""
        if self.unit == "step":
            return f"step {self.done}/{self.total or '?'}"
        return f"{self.done}/{self.total}"

    def usage(self) -> str:
        """``, 1,234 prompt + 567 completion tokens, ~$0.0012`` from ``metrics`` (an expansion's figures), or ""
        when the job reports no tokens; the cost only when it is above 0."""
        m = self.metrics
        if not (m.get("prompt_tokens") or m.get("completion_tokens")):
            return ""
        p, c = int(m.get("prompt_tokens") or 0), int(m.get("completion_tokens") or 0)
        s = f", {p:,} prompt + {c:,} completion tokens"
        if m.get("cost"):
            s += f", ~${float(m['cost']):.4f}"
        return s

    def line(self) -> str:
        """One human line: ``job 3 running: 2/5 done, 1 failed, 7.2/min, 1,234 prompt + 567 completion tokens,
        ~$0.0012, ~25 s left — message`` (tokens and cost when the job has them); a training job
        reads ``job 4 running: step 12/40 (micro-batch 5/64 of step 13), epoch 0.30/3, loss 2.3100, 1,234 tok/s,
        ~1m20s left — training`` (the epochs configured, not the Trainer's count when max steps end it sooner)."""
        if self.unit == "step":
            s = f"job {self.job_id} {self.status}: {self.counts()}"
            m = self.metrics
            if m.get("micro") and m.get("micro_of") and not self.finished:
                s += f" (micro-batch {m['micro']}/{m['micro_of']} of step {self.done + 1})"
            if m.get("epoch") is not None:
                s += f", epoch {m['epoch']:.2f}"
                if m.get("num_train_epochs"):
                    s += f"/{m['num_train_epochs']:g}"
            if m.get("loss") is not None:
                s += f", loss {m['loss']:.4f}"
            if m.get("eval_loss") is not None:
                s += f", eval loss {m['eval_loss']:.4f}"
            if m.get("tokens_per_second") and not self.finished:
                s += f", {m['tokens_per_second']:,.0f} tok/s"
        elif self.status == "done" and self.failed and not self.done:
            s = f"job {self.job_id} failed on every {self.unit}: {self.failed} of {self.total} failed"
            s += self.usage()
        else:
            s = f"job {self.job_id} {self.status}: {self.done}/{self.total} done"
            if self.failed:
                s += f", {self.failed} failed"
            if self.metrics.get("steps_total") and not self.finished:
                s += f", step {int(self.metrics.get('steps_done') or 0)}/{int(self.metrics['steps_total'])}"
            if self.rate and not self.finished:
                s += f", {self.rate * 60:.1f}/min"
            s += self.usage()
        if self.eta_s is not None and not self.finished:
            s += f", ~{fmt_duration(self.eta_s)} left"
        msg = self.message
        if self.outcome == "error" and msg.startswith(f"{self.failed} failed, first: "):
            msg = "first: " + msg.split(", first: ", 1)[1]  # the count is said already
        if msg:
            s += f" — {msg}"
        return s


def fmt_duration(s: float | None) -> str:
    """``75`` -> ``1m15s``; ``8`` -> ``8 s``; ``None`` -> ``?``."""
    if s is None:
        return "?"
    s = int(max(0, s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec} s")


Runner = Callable[[JobContext, object], "Outcome | None"]


@dataclass
class JobKind:
    """A registered kind of job (see ``JobManager.register``)."""

    name: str
    runner: Runner
    resource: object = None
    lane: str = DEFAULT_LANE
    items: bool = True
    unit: str = "item"
    check_resume: Callable[[dict], None] | None = None
    recover: Callable[[dict], None] | None = None
    title: Callable[[dict], str] | None = None
    survives_close: bool = False
    figures: Callable[[dict], dict] | None = None


@dataclass
class _Running:
    lane: str
    stop_event: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    done_at_start: int = 0
    force: bool = False


class _Lane:
    def __init__(self, name: str):
        self.name = name
        self.waiting: deque[int] = deque()
        self.current: set[int] = set()
        self.threads: list[threading.Thread] = []


class JobManager:
    """Queue and run jobs on background threads, one queue and worker per lane.

    Args:
        store: the ``studio.store.Store`` holding jobs.
        workers: worker threads per lane (default 1; 0 runs nothing: one-shot commands that only read).

    On construction, jobs a previous process left queued or running are marked ``interrupted`` (resumable); a
    kind registered with ``recover`` is then offered each of its own (e.g. a training run whose process is still
    alive is re-attached).
    """

    def __init__(self, store, workers: int = 1):
        self.store = store
        self.workers = int(workers)
        self._kinds: dict[str, JobKind] = {}
        self._lanes: dict[str, _Lane] = {}
        self._running: dict[int, _Running] = {}
        self._messages: dict[int, str] = {}
        self._metrics: dict[int, dict] = {}
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._interrupted = set(store.mark_interrupted_jobs())

    # ------------------------------------------------------------------ kinds and lanes
    def register(self, kind: str, runner: Runner, resource: object = None, *, lane: str = DEFAULT_LANE,
                 items: bool = True, unit: str = "item", check_resume: Callable[[dict], None] | None = None,
                 recover: Callable[[dict], None] | None = None, title: Callable[[dict], str] | None = None,
                 survives_close: bool = False, figures: Callable[[dict], dict] | None = None) -> None:
        """Name a runner for a job kind; ``runner(ctx, resource)`` does the work of one job.

        Args:
            lane: the queue the kind's jobs wait in; jobs of one lane run one after another (``workers`` at a
                time), jobs of different lanes side by side.
            items: jobs have items (``submit`` needs at least one; resume needs one not done). Without items the
                runner reports counts itself and returns an ``Outcome``.
            unit: what the job's counts count (``conv``, ``seed``, ``step``), for progress bars.
            check_resume: ``check_resume(job_row)`` raises ``ValueError`` when the job can't be resumed now
                (e.g. its model was removed); called by ``resume``.
            recover: ``recover(job_row)`` for each job of this kind that the previous process left queued or
                running (now ``interrupted``); it may set another status or re-attach (``attach``).
            title: ``title(job_row)``: a few words on what the job works on, for job lists.
            survives_close: ``shutdown`` does not stop running jobs of this kind (their runner is told
                ``ctx.closing()`` and detaches; their process goes on).
            figures: ``figures(job_row)``: figures kept in the store for any job of the kind, running or not
                (e.g. an expansion's ``prompt_tokens``, ``completion_tokens`` and ``cost``), merged into
                ``Progress.metrics``.
        """
        k = JobKind(kind, runner, resource, lane, items, unit, check_resume, recover, title, survives_close,
                    figures)
        with self._lock:
            self._kinds[kind] = k
            ln = self._lanes.get(lane)
            if ln is None:
                ln = self._lanes[lane] = _Lane(lane)
                for i in range(self.workers):
                    t = threading.Thread(target=self._worker, args=(ln,), daemon=True, name=f"studio-jobs-{lane}-{i}")
                    ln.threads.append(t)
                    t.start()
        if recover is not None:
            for job_id in sorted(self._interrupted):
                try:
                    job = self.store.get_job(job_id)
                except Exception:  # noqa: BLE001 - gone meanwhile
                    continue
                if job["kind"] == kind:
                    self._interrupted.discard(job_id)
                    try:
                        recover(job)
                    except Exception:  # noqa: BLE001 - a job that can't be recovered stays interrupted
                        logging.getLogger(__name__).warning("could not recover job %s", job_id, exc_info=True)

    def kind(self, kind: str) -> JobKind:
        """The registered kind. Raises ValueError if unknown."""
        k = self._kinds.get(kind)
        if k is None:
            raise ValueError(f"no runner for jobs of kind '{kind}'")
        return k

    def lanes(self) -> dict[str, list[str]]:
        """``{lane: [kinds]}`` of the registered kinds."""
        out: dict[str, list[str]] = {}
        for k in self._kinds.values():
            out.setdefault(k.lane, []).append(k.name)
        return out

    # ------------------------------------------------------------------ submit, resume, stop
    def submit(self, kind: str, params: dict, item_ids: list[int] | None = None) -> int:
        """Create a job (one item per id, for kinds with items) and queue it in its kind's lane. Returns the id.

        Raises:
            ValueError: unknown kind, or no items for a kind that has items.
        """
        k = self.kind(kind)
        item_ids = list(item_ids or [])
        if k.items and not item_ids:
            raise ValueError("nothing to do: no seeds were chosen")
        job_id = self.store.create_job(kind, params, item_ids)
        self._enqueue(job_id, k)
        return job_id

    def resume(self, job_id: int) -> None:
        """Queue a stopped, failed or interrupted job again: a job with items runs only its items not yet done;
        a training run continues from its last checkpoint.

        Raises:
            ValueError: the job is queued or running already, is done / has nothing left to do, or its kind's
                ``check_resume`` refuses (the message says why). StoreError: no such job.
        """
        job = self.store.get_job(job_id)
        k = self.kind(job["kind"])
        if job["status"] in ACTIVE:
            raise ValueError(f"job {job_id} is {job['status']} already")
        if k.items and not self.store.pending_items(job_id):
            raise ValueError(f"job {job_id} has nothing left to do")
        if not k.items and job["status"] == "done":
            raise ValueError(f"job {job_id} has nothing left to do: it is done")
        if k.check_resume is not None:
            k.check_resume(job)
        self._enqueue(job_id, k)

    def attach(self, job_id: int, message: str = "") -> None:
        """Queue a job a previous process left running, first in its lane, with status ``running`` (for a kind's
        ``recover``: its runner follows the job's own process). With no workers, only the status is set."""
        k = self.kind(self.store.get_job(job_id)["kind"])
        self.store.set_job_status(job_id, "running")
        self._messages[job_id] = message
        if not self.workers:
            return
        with self._lock:
            self._running[job_id] = _Running(k.lane)
            self._lanes[k.lane].waiting.appendleft(job_id)
            self._cond.notify_all()

    def _enqueue(self, job_id: int, k: JobKind) -> None:
        if not self.workers:
            raise ValueError("this studio runs no jobs (opened for reading); start it with its job worker")
        with self._lock:
            ln = self._lanes[k.lane]
            busy = bool(ln.waiting or ln.current)
            self._running[job_id] = _Running(k.lane)
            self.store.set_job_status(job_id, "queued")
            self._messages[job_id] = "waiting for earlier jobs" if busy else ""
            self._metrics.pop(job_id, None)
            ln.waiting.append(job_id)
            self._cond.notify_all()

    def stop(self, job_id: int, force: bool = False) -> str:
        """Ask a job to stop. A queued one is stopped at once; a running one finishes its current unit (a training
        run: saves a checkpoint) and stops, its unfinished work kept for resume. ``force`` asks a running job's
        process to end now (a training run is killed and later resumes from its last saved checkpoint).

        Returns:
            The job's status after the call (``stopped`` or ``stopping``).

        Raises:
            ValueError: the job is not queued or running in this studio. StoreError: no such job.
        """
        with self._lock:
            r = self._running.get(job_id)
            job = self.store.get_job(job_id)
            if job["status"] not in ACTIVE:
                raise ValueError(f"job {job_id} is {job['status']}; only a queued or running job can be stopped")
            if r is None:
                raise ValueError(f"job {job_id} is {job['status']} but not run by this studio (it was opened "
                                 "without its job worker); stop it where it runs")
            if job["status"] == "queued":
                ln = self._lanes[r.lane]
                if job_id in ln.waiting:
                    ln.waiting.remove(job_id)
                self._running.pop(job_id, None)
                self.store.set_job_status(job_id, "stopped", "stopped before it started; resume to run it")
                self._messages[job_id] = ""
                return "stopped"
            # "stopping" is written before the flag is raised, so the worker's final status wins
            if job["status"] == "running":
                self.store.set_job_status(job_id, "stopping")
            r.force = r.force or bool(force)
            items = self._kinds[job["kind"]].items if job["kind"] in self._kinds else True
            self._messages[job_id] = ("stopping now" if r.force else
                                      "stopping once the requests in flight end (their steps are kept)"
                                      if items else "stopping")
            r.stop_event.set()
            self._cond.notify_all()
            return "stopping"

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop running jobs (their unfinished items stay pending, so they resume later; kinds registered with
        ``survives_close`` are detached instead, their process going on), stop queued ones, and end the worker
        threads, waiting up to ``timeout`` seconds."""
        self._closing.set()
        for job_id in self.active():
            with self._lock:
                r = self._running.get(job_id)
            try:
                job = self.store.get_job(job_id)
                if r is not None and job["status"] != "queued" and self.kind(job["kind"]).survives_close:
                    continue
                self.stop(job_id)
            except Exception:  # noqa: BLE001 - finished meanwhile, or the store is closing
                pass
        with self._lock:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for ln in list(self._lanes.values()):
            for t in ln.threads:
                t.join(timeout=max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ reading
    def active(self) -> list[int]:
        """Ids of jobs queued or running in this process."""
        with self._lock:
            return list(self._running)

    def queued(self, lane: str | None = None) -> list[int]:
        """Ids of jobs waiting in a lane (every lane when None), next first."""
        with self._lock:
            lanes = [self._lanes[lane]] if lane in self._lanes else ([] if lane else list(self._lanes.values()))
            return [j for ln in lanes for j in ln.waiting]

    def ahead(self, job_id: int) -> int:
        """How many jobs of the same lane run or wait before this one in this process (0: it runs now or is
        next)."""
        with self._lock:
            r = self._running.get(job_id)
            if r is None:
                return 0
            ln = self._lanes[r.lane]
            if job_id in ln.current:
                return 0
            waiting = list(ln.waiting)
            return len(ln.current) + (waiting.index(job_id) if job_id in waiting else 0)

    def progress(self, job_id: int, job: dict | None = None) -> Progress:
        """The job's progress now (see ``Progress``). Raises StoreError if unknown."""
        job = job or self.store.get_job(job_id)
        k = self._kinds.get(job["kind"])
        p = Progress(job_id, job["kind"], job["status"], job["total"] or 0, job["n_done"] or 0,
                     job["n_failed"] or 0, job.get("error") or self._messages.get(job_id, ""),
                     unit=k.unit if k else "item", metrics=dict(self._metrics.get(job_id, {})),
                     log=job.get("log") or "")
        if k is not None and k.title is not None:
            try:
                p.title = k.title(job)
            except Exception:  # noqa: BLE001 - a title is decoration
                p.title = ""
        if k is not None and k.figures is not None:
            try:
                p.metrics = {**k.figures(job), **p.metrics}
            except Exception:  # noqa: BLE001 - figures are decoration
                pass
        with self._lock:
            r = self._running.get(job_id)
        if r is not None and job["status"] in ("running", "stopping"):
            if p.metrics.get("eta_s") is not None:
                p.eta_s = float(p.metrics["eta_s"])
            elif k is None or k.items:
                elapsed = time.monotonic() - r.started
                made = p.done - r.done_at_start
                if made > 0 and elapsed > 0:
                    p.rate = made / elapsed
                    p.eta_s = (p.total - p.done - p.failed) / p.rate
        return p

    def recent(self, limit: int = 20, kind: str | None = None) -> list[Progress]:
        """The latest jobs of every kind (or one), newest first, as ``Progress``."""
        ids = self.store.list_jobs(kind, limit=limit)["id"].tolist()
        return [self.progress(int(j)) for j in ids]

    def wait(self, job_id: int, timeout: float | None = None, poll: float = 0.2) -> Progress:
        """Block until the job is finished (or ``timeout`` seconds pass); returns its last progress."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            p = self.progress(job_id)
            if p.finished and job_id not in self.active():
                return p
            if deadline is not None and time.monotonic() > deadline:
                return p
            time.sleep(poll)

    # ------------------------------------------------------------------ worker
    def _next(self, ln: _Lane) -> int | None:
        with self._lock:
            while not ln.waiting:
                if self._closing.is_set():
                    return None
                self._cond.wait(timeout=1.0)
            job_id = ln.waiting.popleft()
            ln.current.add(job_id)
            return job_id

    def _worker(self, ln: _Lane) -> None:
        log = logging.getLogger(__name__)
        while True:
            job_id = self._next(ln)
            if job_id is None:
                return
            with self._lock:
                r = self._running.get(job_id)
            try:
                if r is None:
                    continue
                job = self.store.get_job(job_id)
                k = self._kinds[job["kind"]]
                r.started, r.done_at_start = time.monotonic(), job["n_done"] or 0
                if job["status"] not in ("running", "stopping"):  # (an attached job may be stopping already)
                    self.store.set_job_status(job_id, "running")
                if self._messages.get(job_id, "") in ("", "waiting for earlier jobs"):
                    self._messages[job_id] = "starting"
                ctx = JobContext(job_id, job["params"], r.stop_event, self, r)
                try:
                    outcome = k.runner(ctx, k.resource)
                except JobFailed as e:
                    log.info("job %s failed: %s", job_id, e)
                    self.store.set_job_status(job_id, "failed", str(e), e.log)
                    continue
                except Exception as e:  # a runner's failure ends its job only; its traceback is kept
                    log.info("job %s failed", job_id, exc_info=True)
                    self.store.set_job_status(job_id, "failed", f"{e.__class__.__name__}: {e}",
                                              traceback.format_exc())
                    continue
                if isinstance(outcome, Outcome):
                    if outcome.status == "detached":
                        self._messages[job_id] = outcome.message or "detached; the next studio follows it"
                        continue
                    self.store.set_job_status(job_id, outcome.status, outcome.message or None)
                    self._messages[job_id] = outcome.message
                    continue
                left = self.store.pending_items(job_id) if k.items else []
                if r.stop_event.is_set() and left:
                    self.store.set_job_status(job_id, "stopped")
                    self._messages[job_id] = f"stopped; {len(left)} left — resume to finish"
                else:
                    # items that failed on their content (an empty follow-up, an eliminated evolution) leave
                    # the job done with a note; a runner that cannot work at all raises and fails the job
                    fails = self.store.job_item_errors(job_id) if k.items else []
                    self.store.set_job_status(job_id, "done",
                                              f"{len(fails)} failed, first: {fails[0][1]}" if fails else None)
                    self._messages[job_id] = "finished"
            except Exception:  # noqa: BLE001 - the store closing under a detached job: nothing to record
                log.debug("job %s: could not record its end", job_id, exc_info=True)
            finally:
                with self._lock:
                    self._running.pop(job_id, None)
                    ln.current.discard(job_id)
                    self._cond.notify_all()


# ---------------------------------------------------------------------------------------------- pipelined items


@dataclass
class ItemWork:
    """What ``run_pipelined`` gives one item's worker (on a pool thread).

    Attributes:
        seed_id: the item.
        kept: the item's state after its last finished step, kept from an earlier run (``Store.item_progress``),
            or None to start at its first step.
        save: ``save(steps_done, state)`` keeps a finished step (written by the runner's thread, soon after).
        should_stop: True once the job should stop (asked to, or another item lost the teacher): check it before
            each step; a step that began finishes and is kept.
    """

    seed_id: int
    kept: dict | None
    save: Callable[[int, dict], None]
    should_stop: Callable[[], bool]


def run_pipelined(ctx: JobContext, store, seed_ids: list[int], work: Callable[[ItemWork], object],
                  commit: Callable[[int, object], None], *, in_flight: int, lost_on: tuple = (),
                  describe: Callable[[int, int, int], str] | None = None) -> Exception | None:
    """Run a job's items as a pipeline: ``in_flight`` items at once, each advancing through its steps on its own
    (a slow item holds only itself), a new item starting as soon as one ends. Store writes stay on the calling
    (runner) thread: each finished step is kept (``Store.save_item_progress``, steps finished together written in
    one transaction) and each item's end is committed by ``commit`` (e.g. ``Store.complete_item``) as it comes.

    Args:
        seed_ids: the items to run, in order.
        work: ``work(ItemWork) -> result``: runs one item's remaining steps on a pool thread; returns its result
            for ``commit`` (a dict, or an Exception for an item that failed on its content), or None when it stopped
            before its last step (its finished steps are kept for a resume). It may raise.
        commit: ``commit(seed_id, result)`` on the runner's thread.
        in_flight: items at once (an endpoint's ``concurrency``; a setting for local models, whose engine batches
            concurrent requests).
        lost_on: exception types that mean the model is lost (an endpoint failing after its retries): the first one
            stops the other items before their next step, and is returned.
        describe: ``describe(done, running, total)`` gives the status line reported after each event.

    Returns:
        The first ``lost_on`` exception, or None (all items ended, or the job was asked to stop).

    Raises:
        Exception: the first exception of another type raised by ``work`` (a bug: the job fails with it), after
            the items in flight have ended.
    """
    import queue
    from concurrent.futures import ThreadPoolExecutor

    events: queue.Queue = queue.Queue()
    lost: list[BaseException] = []
    kept = store.item_progress(ctx.job_id)
    stop = lambda: bool(lost) or ctx.should_stop()  # noqa: E731
    todo = list(seed_ids)
    running: set[int] = set()

    def one(sid: int) -> None:
        item = ItemWork(sid, (kept.get(sid) or {}).get("state"),
                        lambda n, state: events.put(("step", sid, (int(n), json_copy(state)))), stop)
        try:
            events.put(("end", sid, work(item)))
        except BaseException as e:  # noqa: BLE001 - handed to the runner's thread
            events.put(("raised", sid, e))

    with ThreadPoolExecutor(max_workers=max(1, int(in_flight)), thread_name_prefix=f"job{ctx.job_id}") as pool:
        try:
            _pipeline_loop(ctx, store, pool, one, events, todo, running, lost, stop, commit, in_flight, describe,
                           len(seed_ids))
        except BaseException as e:  # the runner's own failure (the store closing): the workers stop at their next
            lost.insert(0, e)       # step instead of running their seeds to the end while the pool shuts down
            raise
    if lost:
        first = lost[0]
        if not isinstance(first, lost_on):
            raise first
        return first
    return None


def _pipeline_loop(ctx, store, pool, one, events, todo, running, lost, stop, commit, in_flight, describe,
                   total) -> None:
    """``run_pipelined``'s loop on the runner's thread: start items while there is room, then write what the
    workers report (finished steps in one transaction, then each item's end), until no item is left running."""
    import queue

    ended = 0
    while todo or running:
        while todo and len(running) < max(1, int(in_flight)) and not stop():
            sid = todo.pop(0)
            running.add(sid)
            pool.submit(one, sid)
        if not running:
            break
        batch = [events.get()]
        while True:
            try:
                batch.append(events.get_nowait())
            except queue.Empty:
                break
        steps = {sid: payload for kind, sid, payload in batch if kind == "step"}
        if steps:
            store.save_item_progress(ctx.job_id, steps)
        for kind, sid, payload in batch:
            if kind == "step":
                continue
            running.discard(sid)
            ended += 1
            if kind == "raised":
                lost.append(payload)
            elif payload is not None:
                commit(sid, payload)
        if describe is not None:
            ctx.report(describe(ended, len(running), total))


def json_copy(state: dict) -> dict:
    """A deep copy of a JSON-like dict (a worker goes on changing its state after saving a step)."""
    import json

    return json.loads(json.dumps(state))
