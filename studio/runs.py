"""Training runs as a job kind: the run folder (snapshot, config, events, checkpoints) and the job runner that
launches, supervises, stops, resumes, finalises and registers a run of the training program (``training/``).

A run lives in one folder, ``<data_dir>/runs/<run_id>/`` (``RunFolder``):

- ``config.json``: what the training program reads (base model and its checkpoint path, method, template,
  the snapshot files and their hash, hyperparameters). Written once, at creation.
- ``snapshot.jsonl`` / ``eval.jsonl``: the frozen conversations, one ``{"id", "messages"}`` per line (the
  training process never opens the live database). ``snapshot_sha256`` is the sha256 of the train file's
  bytes followed by the eval file's bytes.
- ``run.json``: the studio's facts about the run, written atomically by the studio only: name, filter, counts,
  processes and backend, the ``job_id`` of its training job, and of the current attempt the process id,
  attempt number, times, exit code and where its events begin; ``registered_as`` once registered. The run's
  *state* is its job's status (``studio.jobs``): a run without a job is ``created``.
- ``events.jsonl``: JSON lines appended by the training program (``status``, ``start``, ``progress``, ``eval``,
  ``checkpoint``, ``end``, ``error``), read incrementally (a byte offset per reader).
- ``train.log``: the program's stdout and stderr, one ``=== attempt N`` header per launch. ``STOP``: created
  when a stop is asked. ``output/``: checkpoints (``checkpoint-<step>``) and the final model (``output/final``).

The job kind (``TrainingJobs``, kind ``train`` in lane ``train``): its runner launches the program as its own
process in its own session (so closing the page or the studio does not stop it), copies the progress from
``events.jsonl`` into the job row (steps taken of all steps) and metrics (epoch, loss, ETA, tokens/s), stops it
with SIGTERM (the program saves a checkpoint and ends with an ``end`` event ``stopped``), resumes from the last
``output/checkpoint-*``, and on the end finalises the run and registers its checkpoint (``TrainingJobs.register``,
the one place that does). A studio that starts while a run's process is still alive re-attaches to it (by process
id, checking its command line names the run folder) and follows it to its end; a run whose process died while no
studio watched is marked ``interrupted`` (resumable), or ``failed`` when the program wrote an ``error`` event.

The command shown to people is ``accelerate launch --num_processes N [--config_file training/configs/B.yaml] -m
training.train --run-dir DIR [--resume]`` (``accelerate_argv``); one process without a backend runs the same
program directly (``python -m training.train ...``), without accelerate's start-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .jobs import JobFailed, Outcome, fmt_duration

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository (or installed tree) holding ``studio/`` and ``training/``."""

CONFIGS_DIR = REPO_ROOT / "training" / "configs"
"""Accelerate / DeepSpeed / FSDP configs shipped with the training program."""

PROGRAM = "training.train"
"""The training program's module (``python -m training.train --run-dir DIR [--resume]``)."""

TRAIN_JOB = "train"
"""The job kind of a training run."""

TRAIN_LANE = "train"
"""The job lane training runs wait in: one run at a time, beside the generation lane."""

REWARD_SERIES = {"rewards/margins": "reward margin", "rewards/accuracies": "reward accuracy"}
"""DPO runs' curves beside the loss: TRL ``DPOTrainer`` log key -> series name."""

POLL_S = 0.5
"""How often a supervised run's events and process are checked, seconds."""

__all__ = ["RunError", "RunFolder", "TrainingJobs", "EventView", "read_events", "tail_text", "failure_reason",
           "write_snapshot", "eval_count", "accelerate_argv", "launch_argv", "pid_alive", "fmt_duration",
           "free_port", "TRAIN_JOB", "TRAIN_LANE"]


class RunError(ValueError):
    """A run action was refused (unknown run, wrong state, bad settings); the message says why and nothing
    was changed. A ``ValueError``, so the page and the CLI show it as a user error."""


# ---------------------------------------------------------------------------------------------- files


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (a temporary file renamed into place)."""
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def eval_count(n: int, fraction: float) -> int:
    """Held-out conversations for ``n`` in total: ``round(n * fraction)``, at least 1 when ``n >= 10`` and
    ``fraction > 0``; 0 below 10 conversations (all of them train)."""
    if fraction <= 0 or n < 10:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


def write_snapshot(conversations: list[tuple[str, list[dict]]], run_dir: Path, *, eval_fraction: float,
                   seed: int) -> dict:
    """Write ``snapshot.jsonl`` (train) and ``eval.jsonl`` (held out) into ``run_dir``.

    The eval conversations are chosen by ``random.Random(seed)`` over the input order, so the same
    conversations with the same seed give the same files, byte for byte; both files keep the input order.

    Returns:
        ``{"train_file", "eval_file" (None when nothing is held out), "snapshot_sha256", "n_train", "n_eval"}``.
    """
    n = len(conversations)
    k = eval_count(n, eval_fraction)
    held = set(random.Random(seed).sample(range(n), k)) if k else set()

    def dump(items) -> bytes:
        return "".join(json.dumps({"id": str(cid), "messages": msgs}, ensure_ascii=False) + "\n"
                       for cid, msgs in items).encode("utf-8")

    train_bytes = dump(c for i, c in enumerate(conversations) if i not in held)
    eval_bytes = dump(c for i, c in enumerate(conversations) if i in held)
    (run_dir / "snapshot.jsonl").write_bytes(train_bytes)
    if k:
        (run_dir / "eval.jsonl").write_bytes(eval_bytes)
    return {"train_file": "snapshot.jsonl", "eval_file": "eval.jsonl" if k else None,
            "snapshot_sha256": hashlib.sha256(train_bytes + eval_bytes).hexdigest(),
            "n_train": n - k, "n_eval": k}


def _read_lines(path: Path, offset: int) -> tuple[list[tuple[int, dict]], int]:
    """``([(byte offset of the line, event)], new_offset)``: the complete JSON-object lines after ``offset``."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size < offset:
                offset = 0
            if size == offset:
                return [], offset
            f.seek(offset)
            data = f.read(size - offset)
    except FileNotFoundError:
        return [], offset
    cut = data.rfind(b"\n")
    if cut < 0:
        return [], offset
    out, pos = [], offset
    for line in data[:cut + 1].split(b"\n")[:-1]:
        start, pos = pos, pos + len(line) + 1
        line = line.strip()
        if not line:
            continue
        try:
            ev = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(ev, dict):
            out.append((start, ev))
    return out, offset + cut + 1


def read_events(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """JSON events appended to ``path`` after byte ``offset``: ``(events, new_offset)``.

    Only complete lines are read (a line the program is still writing waits for the next call); lines that
    are not JSON objects are skipped. A missing file gives ``([], offset)``; a file shorter than ``offset``
    (replaced) is read from its start.
    """
    lines, offset = _read_lines(Path(path), offset)
    return [ev for _, ev in lines], offset


def tail_text(path: Path, n_lines: int = 40, max_bytes: int = 65536) -> str:
    """The last ``n_lines`` lines of a text file, reading at most its last ``max_bytes`` bytes. Progress-bar
    redraws (``\\r``) keep only their last state."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            start = max(0, size - max_bytes)
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")
    if start > 0:
        lines = lines[1:]  # first line is cut
    lines = [ln.rsplit("\r", 1)[-1] if "\r" in ln.rstrip("\r") else ln.rstrip("\r") for ln in lines]
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines[-n_lines:])


def failure_reason(log_text: str) -> str:
    """Why a process died, from the end of its log: the last exception line (``SomethingError: ...``) with
    the place it was raised (``at file.py:line``), or else the last non-empty line; ``""`` for an empty log."""
    lines = [ln.rstrip() for ln in log_text.splitlines() if ln.strip()]
    if not lines:
        return ""
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"^[\w.]*(Error|Exception|Interrupt|Exit|Failure)(\b|:)", lines[i]):
            where = next((ln.strip() for ln in reversed(lines[max(0, i - 40):i]) if ln.strip().startswith("File ")),
                         None)
            m = re.match(r'File "([^"]+)", line (\d+)', where or "")
            return lines[i].strip() + (f" (at {Path(m.group(1)).name}:{m.group(2)})" if m else "")
    return lines[-1].strip()


def pid_alive(pid: int | None, run_dir: Path | None = None) -> bool:
    """True if ``pid`` is a live (not zombie) process; with ``run_dir``, also that its command line names that
    run folder (guards against a recycled process id)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{int(pid)}")
    if not proc.exists():
        return True  # no /proc (macOS): trust kill(0)
    try:
        stat = (proc / "stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        if run_dir is not None:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            return str(run_dir) in cmd
    except (OSError, IndexError):
        return False
    return True


class _FolderLock:
    """An exclusive ``flock`` on ``<run_dir>/.lock`` (no-op where ``fcntl`` is missing), so a run is never
    finalised or registered twice at once."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.f = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # Windows: the thread lock alone
            return self
        self.f = open(self.path, "a+")
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            import fcntl

            fcntl.flock(self.f, fcntl.LOCK_UN)
            self.f.close()


# ---------------------------------------------------------------------------------------------- events


@dataclass
class EventView:
    """What is known from one run's ``events.jsonl``, updated from a byte offset (``RunFolder.view``).

    Attributes:
        offset: bytes read so far.
        progress: the latest value of every field of ``start``/``progress``/``log``/``eval``/``end`` events
            (``step``, ``max_steps``, ``epoch``, ``loss``, ``eta_s``, ``tokens_per_second``, ``final_loss``, ...).
        points: ``{(series, step): value}`` of the curves (``loss``, ``eval loss``; DPO runs also ``reward margin``,
            ``reward accuracy``), in arrival order; a resumed
            attempt's ``start`` drops the points after its step.
        start, end, error, checkpoint: the current attempt's last event of that type (None if none).
        phase: the last ``status`` message (what the program is loading).
    """

    offset: int = 0
    attempt_offset: int = 0
    progress: dict = field(default_factory=dict)
    points: dict = field(default_factory=dict)
    start: dict | None = None
    end: dict | None = None
    error: dict | None = None
    checkpoint: dict | None = None
    phase: str = ""
    n_events: int = 0

    def apply(self, ev: dict, at: int = 0) -> None:
        """Take one event in (``at``: its byte offset; ``start``/``end``/``error`` before the current attempt's
        first byte belong to an earlier attempt and don't count as this attempt's)."""
        self.n_events += 1
        kind = ev.get("type")
        step = ev.get("step")
        current = at >= self.attempt_offset
        if kind == "start":
            if current:
                self.start, self.end, self.error = ev, None, None
            if isinstance(step, (int, float)):  # a resumed attempt replaces the curve after its checkpoint
                self.points = {k: v for k, v in self.points.items() if k[1] <= step}
            self.progress.update({k: ev[k] for k in ("step", "max_steps", "epoch", "num_train_epochs") if k in ev})
        elif kind in ("progress", "log", "eval"):
            self.progress.update({k: v for k, v in ev.items() if k not in ("type", "time") and v is not None})
            if isinstance(step, (int, float)):
                if kind != "eval" and isinstance(ev.get("loss"), (int, float)):
                    self.points[("loss", step)] = float(ev["loss"])
                if isinstance(ev.get("eval_loss"), (int, float)):
                    self.points[("eval loss", step)] = float(ev["eval_loss"])
                for key, series in REWARD_SERIES.items():  # DPO runs: TRL's reward margins and accuracies
                    if kind != "eval" and isinstance(ev.get(key), (int, float)):
                        self.points[(series, step)] = float(ev[key])
        elif kind == "substep":
            self.progress.update(micro=ev.get("micro"), micro_of=ev.get("of"), micro_step=step)
        elif kind == "checkpoint":
            self.checkpoint = ev
        elif kind == "status":
            self.phase = str(ev.get("message") or "")
        elif kind == "end":
            if current:
                self.end = ev
            for k in ("final_loss", "final_eval_loss", "step", "max_steps", "epoch"):
                if ev.get(k) is not None:
                    self.progress[k] = ev[k]
        elif kind == "error" and current:
            self.error = ev

    def micro(self) -> tuple[int, int] | None:
        """``(micro-batches done, micro-batches per step)`` inside the step now under way (from the last
        ``substep`` event, if it belongs to the current step), else None."""
        p = self.progress
        if p.get("micro") and p.get("micro_of") and p.get("micro_step") == p.get("step"):
            return int(p["micro"]), int(p["micro_of"])
        return None

    def last(self, series: str):
        """The latest value of a curve (``loss`` / ``eval loss``), or None."""
        return next((v for (s, _), v in reversed(list(self.points.items())) if s == series), None)


# ---------------------------------------------------------------------------------------------- folder

_create_lock = threading.Lock()


def check_run_name(name: str | None) -> str | None:
    """A run's name, checked before anything is made: it becomes its checkpoint's registry name, so it must be a
    safe name (``paths.check_name``) now rather than fail registration after the training. Returns the stripped
    name, or None when none was given (the run then gets a default name).

    Raises:
        RunError: ``"run name '<name>' is not allowed: use ..."``.
    """
    from .paths import check_name

    if name is None or (isinstance(name, str) and not name.strip()):
        return None
    name = name.strip() if isinstance(name, str) else name
    try:
        return check_name(name, "run name")
    except ValueError as e:
        raise RunError(str(e)) from None


def _slug(s: str, limit: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-.")
    return s[:limit] or "run"


class RunFolder:
    """One run's folder: its paths, snapshot, config, ``run.json`` facts, events (read incrementally), log,
    checkpoints and lock. Thread-safe; keep one instance per run to read only what was appended.

    Args:
        path: the folder (``<data_dir>/runs/<run_id>``).
    """

    CONFIG, META, EVENTS, LOG, STOP, OUTPUT = "config.json", "run.json", "events.jsonl", "train.log", "STOP", "output"

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self.id = self.path.name
        self._lock = threading.RLock()
        self._config: dict | None = None
        self._view = EventView()

    @property
    def events_path(self) -> Path:
        return self.path / self.EVENTS

    @property
    def log_path(self) -> Path:
        return self.path / self.LOG

    @property
    def stop_path(self) -> Path:
        return self.path / self.STOP

    @property
    def output_dir(self) -> Path:
        return self.path / self.OUTPUT

    def exists(self) -> bool:
        """The folder holds a run (its ``run.json`` exists)."""
        return (self.path / self.META).is_file()

    @staticmethod
    def reserve(runs_dir: Path, label: str) -> tuple[str, Path]:
        """A new run id ``<time>-<label>`` (``-2``, ... if taken) and its hidden folder
        ``<runs_dir>/.creating-<id>``, made under one lock so two runs never get the same id; the caller fills the
        folder and renames it into place (``label``: already a slug)."""
        runs_dir = Path(runs_dir)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        with _create_lock:
            run_id, k = f"{stamp}-{label}", 2
            while (runs_dir / run_id).exists() or (runs_dir / f".creating-{run_id}").exists():
                run_id, k = f"{stamp}-{label}-{k}", k + 1
            tmp = runs_dir / f".creating-{run_id}"
            tmp.mkdir(parents=True)
        return run_id, tmp

    @classmethod
    def create(cls, runs_dir: Path, label: str, conversations: list[tuple[str, list[dict]]], *, config: dict,
               meta: dict, eval_fraction: float, seed: int) -> "RunFolder":
        """Freeze ``conversations`` into a new run folder ``<runs_dir>/<time>-<label>`` (``-2``, ... if taken),
        written in a hidden folder and renamed into place, so a failure leaves nothing half-made.

        Args:
            config: ``config.json`` fields without the run id and snapshot fields (``hyperparams`` last).
            meta: ``run.json`` fields; ``run_id``, ``n_train``, ``n_eval`` and ``created_at`` are added.

        Returns:
            The new folder.
        """
        run_id, tmp = cls.reserve(runs_dir, _slug(label))
        try:
            snap = write_snapshot(conversations, tmp, eval_fraction=eval_fraction, seed=seed)
            hp = config.get("hyperparams", {})
            cfg = {"run_id": run_id, **{k: v for k, v in config.items() if k != "hyperparams"},
                   "train_file": snap["train_file"], "eval_file": snap["eval_file"],
                   "snapshot_sha256": snap["snapshot_sha256"], "output_dir": cls.OUTPUT, "hyperparams": hp}
            write_json(tmp / cls.CONFIG, cfg)
            write_json(tmp / cls.META, {"run_id": run_id, **meta, "n_train": snap["n_train"],
                                        "n_eval": snap["n_eval"], "created_at": time.time(), "job_id": None,
                                        "pid": None, "attempts": 0, "registered_as": None})
            os.replace(tmp, runs_dir / run_id)
        except BaseException:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(runs_dir / run_id)

    def config(self) -> dict:
        """``config.json`` (written once, so read once)."""
        with self._lock:
            if self._config is None:
                self._config = json.loads((self.path / self.CONFIG).read_text(encoding="utf-8"))
            return dict(self._config)

    def meta(self) -> dict:
        """``run.json``: the studio's facts about the run (see the module docstring)."""
        return json.loads((self.path / self.META).read_text(encoding="utf-8"))

    def update_meta(self, **changes) -> dict:
        """Change ``run.json`` fields (atomically); returns the new contents."""
        with self._lock:
            m = self.meta()
            m.update(changes)
            write_json(self.path / self.META, m)
            return m

    def view(self) -> EventView:
        """The events so far, reading only what was appended since the last call."""
        with self._lock:
            v = self._view
            at = int(self.meta().get("events_offset") or 0)
            if at > v.attempt_offset and v.offset <= at:  # a new attempt began: what was read is an earlier one's
                v.start = v.end = v.error = None
            v.attempt_offset = at
            lines, v.offset = _read_lines(self.events_path, v.offset)
            for at, ev in lines:
                v.apply(ev, at)
            return v

    def events(self, offset: int = 0) -> tuple[list[dict], int]:
        """Events after byte ``offset`` of ``events.jsonl``: ``(events, next_offset)`` (see ``read_events``)."""
        return read_events(self.events_path, int(offset or 0))

    def log_tail(self, n_lines: int = 40) -> str:
        """The last ``n_lines`` of ``train.log`` (reads only the file's end)."""
        return tail_text(self.log_path, n_lines)

    def checkpoints(self) -> list[Path]:
        """The ``output/checkpoint-<step>`` folders, oldest first."""
        found = [p for p in self.output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.split("-")[-1]))

    def final_checkpoint(self) -> Path | None:
        """The finished model: the ``end`` event's ``output_path``, else ``output/final``; None if missing."""
        out = (self.view().end or {}).get("output_path")
        for p in ([Path(out)] if out else []) + [self.output_dir / "final"]:
            if p.is_dir():
                return p
        return None

    def process_alive(self) -> bool:
        """The current attempt's process (``run.json`` ``pid``) is alive and is this run's."""
        return pid_alive(self.meta().get("pid"), self.path)

    def lock(self) -> _FolderLock:
        """An exclusive lock on the folder (``with folder.lock(): ...``), across processes."""
        return _FolderLock(self.path)


# ---------------------------------------------------------------------------------------------- commands


def accelerate_argv(run_dir: Path, num_processes: int, backend: str | None, resume: bool = False,
                    python: str | None = None) -> list[str]:
    """``accelerate launch --num_processes N [--config_file training/configs/B.yaml | --multi_gpu] -m training.train
    --run-dir DIR [--resume]`` (``--multi_gpu`` for N > 1 without a backend); with ``python``, the same through
    that interpreter's ``accelerate.commands.launch``."""
    head = ["accelerate", "launch"] if python is None else [python, "-m", "accelerate.commands.launch"]
    argv = head + ["--num_processes", str(int(num_processes))]
    if backend:
        argv += ["--config_file", str(CONFIGS_DIR / f"{backend}.yaml")]
    elif int(num_processes) > 1:
        # Several processes without a config: --multi_gpu makes accelerate start them (torchrun) on any machine;
        # without it, accelerate does so only where it sees 2+ GPUs and otherwise starts ONE process (its --cpu
        # too). On a machine without CUDA the program then trains on the CPU, DDP over gloo.
        argv += ["--multi_gpu"]
    argv += ["-m", PROGRAM, "--run-dir", str(run_dir)]
    return argv + (["--resume"] if resume else [])


def launch_argv(folder: RunFolder, python: str, resume: bool = False) -> list[str]:
    """What the runner executes: ``python -m training.train --run-dir DIR`` for one process without a backend
    (the same run as the shown command, without accelerate's start-up), else ``accelerate_argv`` through
    ``python``, with ``--main_process_port`` set to a free port for N > 1 processes."""
    m = folder.meta()
    if int(m.get("num_processes") or 1) == 1 and not m.get("backend"):
        return [python, "-m", PROGRAM, "--run-dir", str(folder.path)] + (["--resume"] if resume else [])
    argv = accelerate_argv(folder.path, int(m.get("num_processes") or 1), m.get("backend"), resume, python)
    if int(m.get("num_processes") or 1) > 1:
        # A free port for the processes' rendezvous instead of accelerate's fixed 29500, which another run (of
        # another studio or a test) on this machine may hold. The shown command keeps the default.
        argv[3:3] = ["--main_process_port", str(free_port())]
    return argv


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (the OS chooses it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


# ---------------------------------------------------------------------------------------------- the job kind


class TrainingJobs:
    """The ``train`` job kind: its runner, recovery at start, resume check and registration.

    Args:
        runs_dir: ``<data_dir>/runs``.
        registry: the studio's ``Registry`` (a finished run's checkpoint is added to it).
        python: the interpreter that runs the program (default: this one).
    """

    def __init__(self, runs_dir: Path, registry, python: str | None = None):
        self.runs_dir = Path(runs_dir).resolve()
        self.registry = registry
        self.python = python or sys.executable
        self.jobs = None
        self._folders: dict[str, RunFolder] = {}
        self._lock = threading.RLock()

    def register_with(self, jobs) -> None:
        """Register the kind with a ``JobManager`` (lane ``train``, unit ``step``; survives the studio closing).
        Training jobs the previous studio left running are recovered now (see ``recover``)."""
        self.jobs = jobs
        jobs.register(TRAIN_JOB, self.run, None, lane=TRAIN_LANE, items=False, unit="step",
                      check_resume=self.check_resume, recover=self.recover, title=self.title, survives_close=True)

    def folder(self, run_id: str) -> RunFolder:
        """The run's folder (one object per run). Raises RunError if there is no such run."""
        if not run_id or "/" in str(run_id) or "\\" in str(run_id) or str(run_id).startswith("."):
            raise RunError(f"no run '{run_id}'")
        with self._lock:
            f = self._folders.get(str(run_id))
            if f is None:
                f = RunFolder(self.runs_dir / str(run_id))
                if not f.exists():
                    raise RunError(f"no run '{run_id}' in {self.runs_dir}")
                self._folders[str(run_id)] = f
            return f

    def title(self, job: dict) -> str:
        """``run <run id>``."""
        return f"run {job['params'].get('run_id')}"

    # ------------------------------------------------------------------ runner
    def launch(self, folder: RunFolder, resume: bool) -> subprocess.Popen:
        """Start the program for the run's next attempt, in its own session, output appended to ``train.log``;
        records the process id, attempt number and where the attempt's events begin in ``run.json``.

        Raises:
            JobFailed: the program could not be started.
        """
        m = folder.meta()
        argv = launch_argv(folder, self.python, resume)
        shown = accelerate_argv(folder.path, int(m.get("num_processes") or 1), m.get("backend"), resume)
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        attempt = int(m.get("attempts") or 0) + 1
        offset = folder.events_path.stat().st_size if folder.events_path.exists() else 0
        with open(folder.log_path, "ab") as log:
            log.write((f"\n=== attempt {attempt} ({'resume' if resume else 'start'}) at "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(shown)}\n").encode())
            log.flush()
            try:
                proc = subprocess.Popen(argv, cwd=str(REPO_ROOT), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            except OSError as e:
                raise JobFailed(f"could not start the training program: {e}") from e
        folder.update_meta(pid=proc.pid, attempts=attempt, started_at=time.time(), ended_at=None, exit_code=None,
                           events_offset=offset)
        return proc

    def _sync(self, ctx, folder: RunFolder, last: list) -> None:
        """Copy the run's progress from its events into the job: counts (steps) and metrics."""
        v = folder.view()
        p = v.progress
        step, total = p.get("step"), p.get("max_steps")
        if (step, total) != tuple(last) and v.start is not None:
            ctx.set_counts(total=total, done=step)
            last[:] = [step, total]
        micro = v.micro() if v.end is None else None
        ctx.set_metrics(epoch=p.get("epoch"), num_train_epochs=folder.config().get("hyperparams", {}).get(
                            "num_train_epochs", p.get("num_train_epochs")), loss=v.last("loss"),
                        micro=micro[0] if micro else None, micro_of=micro[1] if micro else None,
                        eval_loss=v.last("eval loss"), learning_rate=p.get("learning_rate"),
                        tokens_per_second=p.get("tokens_per_second") if v.start else None,
                        eta_s=p.get("eta_s") if v.start else None)
        if not ctx.should_stop():
            ctx.report("training" if v.start is not None else (v.phase or "starting: loading the model and data"))

    def run(self, ctx, _resource=None) -> Outcome:
        """The runner: launch the run's program (``--resume`` when it has a checkpoint), or follow its live
        process when a previous studio started it; copy its progress into the job every ``POLL_S`` seconds; on
        stop, create ``STOP`` and send SIGTERM to the process (accelerate's launcher passes it on to its
        workers once), which saves a checkpoint and ends; on a forced stop, SIGKILL its process group. When the
        manager closes, detach (the process goes on). Returns the outcome of ``finalize``.

        Raises:
            JobFailed: the run failed (its reason, and the program's traceback as the log).
        """
        folder = self.folder(ctx.params["run_id"])
        proc = None
        if folder.process_alive():
            pid = int(folder.meta()["pid"])
            signalled = folder.stop_path.exists()
        else:
            folder.stop_path.unlink(missing_ok=True)
            ctx.set_metrics()
            proc = self.launch(folder, resume=bool(folder.checkpoints()))
            pid, signalled = proc.pid, False
            ctx.report("starting: loading the model and data")
        killed, last = False, [None, None]
        while True:
            alive = proc.poll() is None if proc is not None else pid_alive(pid, folder.path)
            self._sync(ctx, folder, last)
            if not alive:
                break
            if ctx.force_stop() and not killed:
                folder.stop_path.touch()
                _kill_group(pid, signal.SIGKILL)
                killed = True
                ctx.report("killing the process; its last checkpoint is kept")
            elif ctx.should_stop() and not signalled:
                folder.stop_path.touch()
                try:
                    os.kill(pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
                signalled = True
                ctx.report("stopping: saving a checkpoint")
            elif ctx.closing():
                return Outcome("detached", f"its process (pid {pid}) goes on; the next studio follows it")
            if ctx.should_stop():
                time.sleep(POLL_S)
            else:
                ctx.stop_event.wait(POLL_S)
        returncode = proc.returncode if proc is not None else None
        return self.finalize(folder, returncode, stop_asked=signalled or killed or folder.stop_path.exists())

    # ------------------------------------------------------------------ end
    def finalize(self, folder: RunFolder, returncode: int | None, *, stop_asked: bool,
                 recovering: bool = False) -> Outcome:
        """The outcome of a run whose process ended, from its events and log: an ``end`` event ``finished``
        registers the checkpoint (``done``), ``stopped`` is ``stopped`` (resume continues from its checkpoint); no
        ``end`` event after a stop was asked is ``stopped`` too. Otherwise the run failed: the reason is the
        ``error`` event's message, else the log's last exception, or the signal that killed it.

        Args:
            returncode: the process's exit status (negative: killed by that signal), None when not known (a
                process this studio did not start).
            recovering: found ended at start-up: without an ``error`` event the run is ``interrupted``.

        Raises:
            JobFailed: failed, with the program's traceback (or the log's last 200 lines) as the log.
        """
        with self._lock, folder.lock():
            v = folder.view()
            folder.stop_path.unlink(missing_ok=True)
            folder.update_meta(pid=None, ended_at=time.time(), exit_code=returncode)
            if v.end is not None:
                step = v.end.get("step", v.progress.get("step", "?"))
                if v.end.get("status") == "stopped":
                    ck = folder.checkpoints()
                    return Outcome("stopped", f"stopped at step {step}" + (
                        f"; resume continues from {ck[-1].name}" if ck else ""))
                fl, fel = v.end.get("final_loss"), v.end.get("final_eval_loss")
                msg = f"finished at step {step}" + (f": final loss {fl:.4f}" if isinstance(fl, (int, float)) else "") \
                    + (f", eval loss {fel:.4f}" if isinstance(fel, (int, float)) else "")
                try:
                    msg += f"; registered as {self._register(folder, None)}"
                except Exception as e:  # noqa: BLE001 - the run stays finished; registration can be retried
                    msg += f"; not registered: {e}"
                return Outcome("done", msg)
            ck = folder.checkpoints()
            if stop_asked and v.error is None:  # asked to stop, ended before saving
                return Outcome("stopped", "terminated before saving" + (
                    f"; resume continues from {ck[-1].name}" if ck else "; resume starts it again"))
            tail = tail_text(folder.log_path, 200, 64 * 1024)
            reason = (v.error or {}).get("message") or failure_reason(tail)
            if returncode is not None and returncode < 0:
                reason = f"killed by {_signal_name(returncode)}"
            code = f" (exit code {returncode})" if returncode is not None and returncode > 0 else ""
            log = (v.error or {}).get("traceback") or tail
            if recovering and v.error is None:
                return Outcome("interrupted", "the training process ended while no studio followed it"
                               + (f" ({reason})" if reason else "") + (
                                   f"; resume continues from {ck[-1].name}" if ck else "; resume starts it again"))
            raise JobFailed(f"{reason or 'the training process ended without an end event'}{code}", log=log)

    def recover(self, job: dict) -> None:
        """For a training job the previous studio left queued or running (now ``interrupted``): re-attach when
        its process is alive (``JobManager.attach``: followed to its end and registered); finalise it when its
        process ended meanwhile (finished and registered, stopped, failed with its traceback, or interrupted).
        A job whose run never launched stays interrupted."""
        folder = self.folder(job["params"]["run_id"])
        m = folder.meta()
        if folder.process_alive():
            self.jobs.attach(job["id"], f"re-attached to its process (pid {m['pid']})")
            if folder.stop_path.exists():
                self.jobs.store.set_job_status(job["id"], "stopping")
            return
        if not m.get("pid"):
            return
        try:
            out = self.finalize(folder, None, stop_asked=folder.stop_path.exists(), recovering=True)
        except JobFailed as e:
            self.jobs.store.set_job_status(job["id"], "failed", str(e), e.log)
            return
        self.jobs.store.set_job_status(job["id"], out.status, out.message)

    def check_resume(self, job: dict) -> None:
        """Refuse to resume a run whose process still runs, or that needs more GPUs than this machine has.

        Raises:
            RunError: with the reason.
        """
        folder = self.folder(job["params"]["run_id"])
        if folder.process_alive():
            raise RunError(f"run {folder.id} still runs (pid {folder.meta()['pid']}); stop it first")
        check_gpus(int(folder.meta().get("num_processes") or 1), folder.meta().get("backend"))

    # ------------------------------------------------------------------ registry
    def register(self, folder: RunFolder, name: str | None = None) -> str:
        """Add a finished run's final checkpoint to the registry, once (registering again returns the existing
        entry). LoRA/QLoRA: an ``adapter`` entry over the base entry; full: an ``hf`` entry. ``lineage`` holds
        ``base, snapshot_sha256, config, final_loss, final_eval_loss, run_id``.

        Returns:
            The registry name: ``name``, else the run's name, else ``<base>-<method>-<run time>``; ``-2``, ... if
            taken.

        Raises:
            RunError: the run has no ``end`` event ``finished`` or no final checkpoint. RegistryError: invalid
            entry.
        """
        with self._lock, folder.lock():
            return self._register(folder, name)

    def _register(self, folder: RunFolder, name: str | None) -> str:
        from .registry import ModelSpec

        m = folder.meta()
        if m.get("registered_as") and m["registered_as"] in self.registry.names():
            return m["registered_as"]
        v = folder.view()
        if v.end is None or v.end.get("status", "finished") != "finished":
            raise RunError(f"run {folder.id} has not finished; only a finished run can be registered")
        final = folder.final_checkpoint()
        if final is None:
            raise RunError(f"run {folder.id} has no final checkpoint in {folder.output_dir / 'final'}")
        cfg = folder.config()
        base = name or m.get("name") or (f"{cfg.get('parent')}-dpo-{folder.id[:15]}" if cfg.get("objective") == "dpo"
                                         else f"{cfg['base_model']}-{cfg['method']}-{folder.id[:15]}")
        taken = set(self.registry.names())
        reg_name, k = base, 2
        while reg_name in taken:
            reg_name, k = f"{base}-{k}", k + 1
        p = v.progress
        lineage = {"base": cfg["base_model"], "snapshot_sha256": cfg["snapshot_sha256"], "config": cfg,
                   "final_loss": p.get("final_loss"), "final_eval_loss": p.get("final_eval_loss"), "run_id": folder.id}
        if cfg.get("objective") == "dpo":  # lineage: the parent checkpoint and the preference snapshot's hash
            lineage.update(objective="dpo", parent=cfg.get("parent"), preference_set=cfg.get("preference_set"))
        what = (f"DPO ({cfg['method']}) of {cfg.get('parent')} on {m.get('n_train')} preference pairs"
                if cfg.get("objective") == "dpo" else
                f"{cfg['method']} fine-tune of {cfg['base_model']} on {m.get('n_train')} conversations")
        desc = (f"{what} (run {folder.id})" + (f", final loss {p['final_loss']:.4f}"
                                                if isinstance(p.get("final_loss"), (int, float)) else ""))
        if cfg["method"] in ("lora", "qlora"):
            spec = ModelSpec(name=reg_name, kind="adapter", path=str(final), base=cfg["base_model"],
                             template=cfg["template"], lineage=lineage, description=desc)
        else:
            spec = ModelSpec(name=reg_name, kind="hf", path=str(final), template=cfg["template"], lineage=lineage,
                             description=desc)
        self.registry.add(spec)
        folder.update_meta(registered_as=reg_name)
        return reg_name


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(int(pid), sig)
    except (ProcessLookupError, PermissionError):
        pass


def check_gpus(n: int, backend: str | None = None) -> None:
    """Raise RunError when ``n`` processes (one per GPU) need more CUDA GPUs than this machine has.

    A machine with no CUDA GPU at all may run several processes without a backend (``backend`` None): they train
    on the CPU, DDP over gloo (slow; for trying the distributed path before a GPU machine). The configs of
    ``training/configs`` (DeepSpeed, FSDP, DDP) are for GPUs.
    """
    if n > 1:
        import torch

        have = torch.cuda.device_count()
        if have == 0 and backend in (None, "none"):
            return
        if have < n:
            raise RunError(f"{n} processes need {n} GPUs; this machine has {have}. Copy the command to a "
                           "machine that has them, or use 1 process.")
