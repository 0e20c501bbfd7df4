"""Background jobs: a queue, progress events, stop, and resume.

A job is a row in the store's ``jobs`` table with one ``job_items`` row per unit of work (a seed). Runners
store each finished unit together with marking its item done, in one transaction, so a job that is stopped,
crashes, or whose process is killed resumes with exactly the items not yet done: nothing is generated twice
and nothing is lost.

Jobs run one at a time on a worker thread, in submission order (a 2-core CPU gains nothing from running two
generations at once; a GPU server can raise ``workers``). Progress is read from the store plus an in-memory
message and rate per job, so any page (or a reloaded one) sees the same progress.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class JobContext:
    """What a runner gets: the job's id and params, a stop flag, and a way to report a status message."""

    job_id: int
    params: dict
    stop_event: threading.Event
    _manager: "JobManager"

    def should_stop(self) -> bool:
        """True once someone asked the job to stop; runners check it between units of work."""
        return self.stop_event.is_set()

    def report(self, message: str) -> None:
        """Set the job's current status line (shown under the progress bar)."""
        self._manager._messages[self.job_id] = message


@dataclass
class Progress:
    """A job's progress at one moment.

    Attributes:
        job_id, kind, status: the job and its state (``queued, running, stopping, stopped, done, failed,
            interrupted``).
        total, done, failed: item counts.
        message: the runner's last status line, or the error.
        rate: items per second since the job (re)started, 0 if unknown.
        eta_s: seconds left at that rate, None if unknown.
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

    @property
    def fraction(self) -> float:
        """Done items over total, 0..1."""
        return (self.done / self.total) if self.total else (1.0 if self.finished else 0.0)

    @property
    def finished(self) -> bool:
        """The job is no longer queued or running."""
        return self.status in ("stopped", "done", "failed", "interrupted")

    def line(self) -> str:
        """One human line: ``job 3 running: 2/5 done (0 failed), 0.12/s, ~25 s left — message``."""
        s = f"job {self.job_id} {self.status}: {self.done}/{self.total} done"
        if self.failed:
            s += f", {self.failed} failed"
        if self.rate and not self.finished:
            s += f", {self.rate * 60:.1f}/min"
        if self.eta_s is not None and not self.finished:
            s += f", ~{self.eta_s:.0f} s left"
        if self.message:
            s += f" — {self.message}"
        return s


Runner = Callable[[JobContext, object], None]


@dataclass
class _Running:
    stop_event: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    done_at_start: int = 0


class JobManager:
    """Queue and run jobs on background threads.

    Args:
        store: the ``studio.store.Store`` holding jobs.
        workers: how many jobs run at the same time (default 1).

    On construction, jobs a previous process left running are marked ``interrupted`` (resumable).
    """

    def __init__(self, store, workers: int = 1):
        self.store = store
        self._runners: dict[str, tuple[Runner, object]] = {}
        self._queue: "queue.Queue[int]" = queue.Queue()
        self._running: dict[int, _Running] = {}
        self._messages: dict[int, str] = {}
        self._lock = threading.Lock()
        store.mark_interrupted_jobs()
        self._threads = [threading.Thread(target=self._worker, daemon=True, name="studio-jobs")
                         for _ in range(workers)]
        for t in self._threads:
            t.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the running job (its unfinished items stay pending, so it resumes later) and end the worker
        threads, waiting up to ``timeout`` seconds."""
        for job_id in self.active():
            try:
                self.stop(job_id)
            except Exception:  # noqa: BLE001 - the store may be closing
                pass
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=timeout)

    def register(self, kind: str, runner: Runner, resource: object = None) -> None:
        """Name a runner for a job kind; ``runner(ctx, resource)`` does the work of one job."""
        self._runners[kind] = (runner, resource)

    def submit(self, kind: str, params: dict, seed_ids: list[int]) -> int:
        """Create a job with one item per seed and queue it. Returns the job id.

        Raises:
            ValueError: unknown kind or no items.
        """
        if kind not in self._runners:
            raise ValueError(f"no runner for jobs of kind '{kind}'")
        if not seed_ids:
            raise ValueError("nothing to do: no seeds were chosen")
        job_id = self.store.create_job(kind, params, seed_ids)
        self._enqueue(job_id)
        return job_id

    def resume(self, job_id: int) -> None:
        """Queue a stopped, failed or interrupted job again; it runs only its items not yet done.

        Raises:
            ValueError: the job is queued or running already, or has nothing left to do.
        """
        job = self.store.get_job(job_id)
        if job["status"] in ("queued", "running", "stopping"):
            raise ValueError(f"job {job_id} is {job['status']} already")
        if not self.store.pending_items(job_id):
            raise ValueError(f"job {job_id} has nothing left to do")
        self._enqueue(job_id)

    def _enqueue(self, job_id: int) -> None:
        with self._lock:
            self._running[job_id] = _Running()
        self.store.set_job_status(job_id, "queued")
        self._messages[job_id] = "waiting for earlier jobs" if self._queue.qsize() or self.active() else ""
        self._queue.put(job_id)

    def stop(self, job_id: int) -> None:
        """Ask a job to stop. A running job finishes its current unit and stops (its unfinished items stay
        pending for resume); a queued one is stopped at once."""
        with self._lock:
            r = self._running.get(job_id)
            if r is None:
                return
            job = self.store.get_job(job_id)
            if job["status"] == "queued":
                r.stop_event.set()
                self.store.set_job_status(job_id, "stopped")
                self._messages[job_id] = "stopped before it started; resume to run it"
            elif job["status"] == "running":
                # "stopping" is written before the flag is raised, so the worker's final status wins
                self.store.set_job_status(job_id, "stopping")
                self._messages[job_id] = "stopping after the current batch"
                r.stop_event.set()

    def active(self) -> list[int]:
        """Ids of jobs queued or running in this process."""
        with self._lock:
            return list(self._running)

    def progress(self, job_id: int) -> Progress:
        """The job's progress now (see ``Progress``). Raises StoreError if unknown."""
        job = self.store.get_job(job_id)
        p = Progress(job_id, job["kind"], job["status"], job["total"] or 0, job["n_done"] or 0,
                     job["n_failed"] or 0, job["error"] or self._messages.get(job_id, ""))
        with self._lock:
            r = self._running.get(job_id)
        if r is not None and job["status"] in ("running", "stopping"):
            elapsed = time.monotonic() - r.started
            made = p.done - r.done_at_start
            if made > 0 and elapsed > 0:
                p.rate = made / elapsed
                p.eta_s = (p.total - p.done - p.failed) / p.rate
        return p

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

    def _worker(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:  # shutdown
                self._queue.task_done()
                return
            with self._lock:
                r = self._running.get(job_id)
            try:
                if r is None:
                    continue
                if r.stop_event.is_set():
                    if self.store.get_job(job_id)["status"] != "stopped":
                        self.store.set_job_status(job_id, "stopped")
                    continue
                job = self.store.get_job(job_id)
                runner, resource = self._runners[job["kind"]]
                r.started, r.done_at_start = time.monotonic(), job["n_done"] or 0
                self.store.set_job_status(job_id, "running")
                self._messages[job_id] = "starting"
                ctx = JobContext(job_id, job["params"], r.stop_event, self)
                try:
                    runner(ctx, resource)
                except Exception as e:  # a runner's failure ends its job only
                    logging.getLogger(__name__).debug("job %s failed", job_id, exc_info=True)
                    self.store.set_job_status(job_id, "failed", f"{e.__class__.__name__}: {e}")
                    continue
                left = self.store.pending_items(job_id)
                if r.stop_event.is_set() and left:
                    self.store.set_job_status(job_id, "stopped")
                    self._messages[job_id] = f"stopped; {len(left)} left — resume to finish"
                else:
                    # items that failed on their content (an empty follow-up, an eliminated evolution) leave
                    # the job done with a note; a runner that cannot work at all raises and fails the job
                    fails = self.store.job_item_errors(job_id)
                    self.store.set_job_status(job_id, "done",
                                              f"{len(fails)} failed, first: {fails[0][1]}" if fails else None)
                    self._messages[job_id] = "finished"
            finally:
                with self._lock:
                    self._running.pop(job_id, None)
                self._queue.task_done()
