"""Training runs from the studio's side: freeze a snapshot, write the run's config, queue and launch the
training program (``training/``) as its own process, follow its progress, stop, resume, and register the
trained checkpoint in the model registry.

A run lives in one folder, ``<data_dir>/runs/<run_id>/``:

- ``config.json``: what the training program reads (base model and its checkpoint path, method, template,
  the snapshot files and their hash, hyperparameters). Written once, at creation.
- ``snapshot.jsonl`` / ``eval.jsonl``: the frozen conversations, one ``{"id", "messages"}`` per line (the
  training process never opens the live database). ``snapshot_sha256`` is the sha256 of the train file's
  bytes followed by the eval file's bytes.
- ``run.json``: the studio's state of the run (``RunState``): queued, running, stopped, ... with the process
  id, times, the last message and the registered model. Written atomically by the studio only.
- ``events.jsonl``: JSON lines appended by the training program (``start``, ``progress``, ``log``, ``eval``,
  ``checkpoint``, ``end``, ``error``), read incrementally (a byte offset per reader).
- ``train.log``: the program's stdout and stderr. ``STOP``: created to ask the program to save a checkpoint
  and end. ``output/``: checkpoints (``checkpoint-*``) and the final model (``output/final``).

Runs execute one at a time, in the order they were started, on a background thread of ``RunManager``; each is
a subprocess in its own session, so closing the page (or the studio) does not stop it, and a new
``RunManager`` on the same folder re-attaches to it by process id. A run whose process ended without an
``end`` event is marked failed with the reason from its last ``error`` event or its log's last traceback.

Recipe defaults (``training.train.DEFAULT_HYPERPARAMS``): Vicuna v1.1, FastChat ``scripts/train_vicuna_13b.sh`` (3 epochs, lr 2e-5,
cosine, warmup ratio 0.04, weight decay 0, max length 2048, global batch 128) and ``train_lora.py`` (r 8,
alpha 16, dropout 0.05, q_proj and v_proj).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from .registry import ModelSpec, RegistryError
from .templates import VICUNA_V11

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository (or installed tree) holding ``studio/`` and ``training/``."""

CONFIGS_DIR = REPO_ROOT / "training" / "configs"
"""Accelerate / DeepSpeed / FSDP configs shipped with the training program."""

PROGRAM = "training.train"
"""The training program's module (``python -m training.train --run-dir DIR [--resume]``)."""

METHODS = ("lora", "qlora", "full")
RUN_TEMPLATES = (VICUNA_V11, "chat_template")
FILTER_KEYS = ("source_id", "status", "origin")
STATES = ("created", "queued", "running", "stopping", "stopped", "finished", "failed")
"""Run states: ``created`` (folder written, never started), ``queued``, ``running``, ``stopping`` (STOP
asked, the program is saving), ``stopped`` (resumable), ``finished``, ``failed`` (resumable)."""
ACTIVE_STATES = ("queued", "running", "stopping")
LIVE_STATES = ("running", "stopping")

PADDING_CHOICES = ("group_by_length", "longest", "packed")
SCHEDULER_CHOICES = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts",
                     "polynomial")
LORA_TARGET_CHOICES = ("q_proj,v_proj", "all-linear")


class RunError(ValueError):
    """A run action was refused (unknown run, wrong state, bad settings); the message says why and nothing
    was changed. A ``ValueError``, so the page and the CLI show it as a user error."""


# ---------------------------------------------------------------------------------------------- defaults


def _program():
    """The training program's module (``training.train``): the one source of the recipe's defaults and of the
    rules that check hyperparameters, shared by the studio and the program."""
    import importlib

    return importlib.import_module(PROGRAM)


def default_hyperparams() -> dict:
    """The recipe defaults, ``training.train.DEFAULT_HYPERPARAMS`` (Vicuna v1.1, FastChat
    ``scripts/train_vicuna_13b.sh`` / ``train_lora.py``)."""
    return dict(_program().DEFAULT_HYPERPARAMS)


def resolve_hyperparams(overrides: dict | None) -> dict:
    """The recipe defaults with ``overrides`` applied, checked and typed (``8.0`` from a form is ``8``), by the
    training program's own rules (``training.train.resolve_hyperparams``). ``gradient_checkpointing``/``bf16``
    ``"auto"`` stay ``"auto"`` (the training process decides where it runs).

    Raises:
        RunError: an unknown key (the message lists the known ones) or a value of the wrong type or range.
    """
    overrides = {k: (None if isinstance(v, str) and v.strip().lower() in ("", "none", "null") else v)
                 for k, v in dict(overrides or {}).items()}
    try:
        return dict(_program().resolve_hyperparams(overrides))
    except (ValueError, TypeError, KeyError) as e:
        raise RunError(str(e).strip("'\"")) from e


def padding_choices() -> list[str]:
    """Batching modes the training program offers (``training.train.PADDINGS``)."""
    return list(getattr(_program(), "PADDINGS", None) or PADDING_CHOICES)


def backends() -> list[str]:
    """Distributed backends: ``none`` (plain DDP / one process) and the stem of every
    ``training/configs/*.yaml`` (e.g. ``deepspeed_zero2``, ``deepspeed_zero3``, ``fsdp``)."""
    names = sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")) if CONFIGS_DIR.is_dir() else []
    return ["none"] + [n for n in names if n != "none"]


def _norm_backend(backend: str | None) -> str | None:
    if backend in (None, "", "none", "ddp") and not (CONFIGS_DIR / f"{backend}.yaml").exists():
        return None
    if backend not in backends():
        raise RunError(f"unknown distributed backend '{backend}' (available: {', '.join(backends())})")
    return backend


def _filter_fields() -> tuple[str, ...]:
    try:
        from .store import ConvFilter

        return tuple(ConvFilter.__dataclass_fields__)
    except ImportError:  # an older store: the three Data-tab fields
        return FILTER_KEYS


def normalize_filters(filters: dict | None) -> dict:
    """A Data-tab filter as ``Store.iter_conversations`` takes it. ``source_id``, ``status`` and ``origin``
    are always present (``None`` = any; 0, ``"all"`` and empty mean any); other filter fields the store knows
    (``teacher``, ``tags``, ``min_rounds``, ...) pass through when set.

    Raises:
        RunError: an unknown field, a bad source id, or ``status="deleted"`` (deleted conversations don't train).
    """
    filters = dict(filters or {})
    known = set(FILTER_KEYS) | set(_filter_fields())
    unknown = sorted(set(filters) - known)
    if unknown:
        raise RunError(f"unknown filter field(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    src = filters.pop("source_id", None)
    try:
        src = int(src) if src not in (None, "", 0, "0", "all") else None
    except (TypeError, ValueError):
        raise RunError(f"source_id must be a source's number, not {src!r}") from None
    status = filters.pop("status", None) or None
    status = None if status == "all" else status
    if status == "deleted":
        raise RunError("deleted conversations can't be trained on; restore them first or choose another status")
    origin = filters.pop("origin", None) or None
    origin = None if origin == "all" else origin
    if origin not in (None, "imported", "expanded"):
        raise RunError(f"origin filter must be all, imported or expanded, not {origin!r}")
    out = {"source_id": src, "status": status, "origin": origin}
    out.update({k: v for k, v in filters.items() if v not in (None, "", [])})
    return out


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


def _slug(s: str, limit: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-.")
    return s[:limit] or "run"


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


class _FolderLock:
    """An exclusive ``flock`` on ``<run_dir>/.lock`` (no-op where ``fcntl`` is missing), so two studios (or
    two managers) never finalise or register the same run twice."""

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


def fmt_duration(s: float | None) -> str:
    """``75`` -> ``1m15s``; ``None`` -> ``?``."""
    if s is None:
        return "?"
    s = int(max(0, s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


# ---------------------------------------------------------------------------------------------- processes


def _pid_alive(pid: int | None, run_dir: Path | None = None) -> bool:
    """True if ``pid`` is a live (not zombie) process; with ``run_dir``, also that its command line or its
    session's leader names that run folder (guards against a recycled process id)."""
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


# ---------------------------------------------------------------------------------------------- events


@dataclass
class _View:
    """What the manager knows from one run's ``events.jsonl``, updated from a byte offset."""

    offset: int = 0
    progress: dict = field(default_factory=dict)
    points: dict = field(default_factory=dict)  # (series, step) -> value, in arrival order
    start: dict | None = None
    end: dict | None = None
    error: dict | None = None
    checkpoint: dict | None = None
    phase: str = ""
    n_events: int = 0


def read_events(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """JSON events appended to ``path`` after byte ``offset``: ``(events, new_offset)``.

    Only complete lines are read (a line the program is still writing waits for the next call); lines that
    are not JSON objects are skipped. A missing file gives ``([], offset)``; a file shorter than ``offset``
    (replaced) is read from its start.
    """
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
    events = []
    for line in data[:cut].splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            ev = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(ev, dict):
            events.append(ev)
    return events, offset + cut + 1


def _apply(view: _View, ev: dict) -> None:
    view.n_events += 1
    kind = ev.get("type")
    step = ev.get("step")
    if kind == "start":
        view.start, view.end, view.error = ev, None, None
        if isinstance(step, (int, float)):  # a resumed attempt replaces the curve after its checkpoint
            view.points = {k: v for k, v in view.points.items() if k[1] <= step}
        view.progress.update({k: ev[k] for k in ("step", "max_steps", "epoch", "num_train_epochs") if k in ev})
    elif kind in ("progress", "log", "eval"):
        view.progress.update({k: v for k, v in ev.items() if k not in ("type", "time") and v is not None})
        if isinstance(step, (int, float)):
            if kind != "eval" and isinstance(ev.get("loss"), (int, float)):
                view.points[("loss", step)] = float(ev["loss"])
            if isinstance(ev.get("eval_loss"), (int, float)):
                view.points[("eval loss", step)] = float(ev["eval_loss"])
    elif kind == "checkpoint":
        view.checkpoint = ev
    elif kind == "status":
        view.phase = str(ev.get("message") or "")
    elif kind == "end":
        view.end = ev
        for k in ("final_loss", "final_eval_loss", "step", "max_steps", "epoch"):
            if ev.get(k) is not None:
                view.progress[k] = ev[k]
    elif kind == "error":
        view.error = ev


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


# ---------------------------------------------------------------------------------------------- manager


class RunManager:
    """Create, queue, launch, watch, stop, resume and register training runs of one studio.

    Args:
        studio: the ``Studio`` (its settings' ``data_dir``, its ``store`` and ``registry``).
        autostart: start the queue worker now, re-queue runs a previous studio process left queued, and keep
            watching runs still running from before (they are finalised and registered when they end). With
            False (one-shot commands) the worker starts on the first ``start``/``resume``.
        python: the interpreter that runs the program (default: this one).

    Thread-safe. A crashed, killed or failing run changes only its own folder and state.
    """

    def __init__(self, studio, *, autostart: bool = True, python: str | None = None):
        self.studio = studio
        self.runs_dir = (Path(studio.settings.data_dir) / "runs").resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.python = python or sys.executable
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[str] = deque()
        self._procs: dict[str, subprocess.Popen] = {}
        self._views: dict[str, _View] = {}
        self._configs: dict[str, dict] = {}
        self._worker: threading.Thread | None = None
        self._closed = False
        if autostart:
            states = self._all_states()
            for s in sorted((s for s in states if s["state"] == "queued"), key=lambda s: s.get("queued_at") or 0):
                self._queue.append(s["run_id"])
            for s in states:  # finished while no studio was there to register it (or registration failed)
                if s["state"] == "finished" and not s.get("registered_as"):
                    try:
                        self.register(s["run_id"])
                    except Exception:  # noqa: BLE001 - the message in run.json already says why
                        pass
            self._ensure_worker()

    # ------------------------------------------------------------------ folders and state
    def run_dir(self, run_id: str) -> Path:
        """The run's folder. Raises RunError if there is no such run."""
        if not run_id or "/" in str(run_id) or str(run_id).startswith("."):
            raise RunError(f"no run '{run_id}'")
        d = self.runs_dir / str(run_id)
        if not (d / "run.json").exists():
            raise RunError(f"no run '{run_id}' in {self.runs_dir}")
        return d

    def _state(self, run_id: str) -> dict:
        return json.loads((self.run_dir(run_id) / "run.json").read_text(encoding="utf-8"))

    def _save_state(self, run_id: str, **changes) -> dict:
        with self._lock:
            st = self._state(run_id)
            st.update(changes)
            _write_json(self.runs_dir / run_id / "run.json", st)
            return st

    def config(self, run_id: str) -> dict:
        """The run's ``config.json`` (what the training program reads; written once, so read once)."""
        cfg = self._configs.get(run_id)
        if cfg is None:
            cfg = json.loads((self.run_dir(run_id) / "config.json").read_text(encoding="utf-8"))
            self._configs[run_id] = cfg
        return dict(cfg)

    def _all_states(self) -> list[dict]:
        out = []
        for d in self.runs_dir.iterdir() if self.runs_dir.is_dir() else []:
            if d.is_dir() and not d.name.startswith(".") and (d / "run.json").exists():
                try:
                    out.append(json.loads((d / "run.json").read_text(encoding="utf-8")))
                except (OSError, json.JSONDecodeError):
                    continue
        return out

    # ------------------------------------------------------------------ creation
    def _base(self, base_model: str) -> ModelSpec:
        if not base_model:
            raise RunError("choose a base model")
        spec = self.studio.registry.get(base_model)
        if spec.kind not in ("hf", "gguf"):
            raise RunError(f"base model '{base_model}' is {'an' if spec.kind[0] in 'ae' else 'a'} {spec.kind} entry;"
                           " training needs a local checkpoint (an hf or gguf entry). Merge an adapter first to "
                           "train on top of it.")
        return spec

    def _base_path(self, spec: ModelSpec, convert: bool) -> str:
        if convert:
            return self.studio.registry.checkpoint_path(spec)
        if spec.kind == "gguf":
            return str(Path(self.studio.settings.model_dir) / spec.name.replace("/", "_"))
        return str(spec.path)

    @staticmethod
    def _check_method(method: str) -> None:
        if method not in METHODS:
            raise RunError(f"unknown method '{method}' (lora, qlora, full)")
        if method == "qlora":
            import torch

            if not torch.cuda.is_available():
                raise RunError("QLoRA trains a 4-bit NF4 model through bitsandbytes, which needs a CUDA GPU; "
                               "this machine has none. Choose LoRA (same adapter, 16/32-bit base) or full.")
            try:
                import bitsandbytes  # noqa: F401
            except ImportError:
                raise RunError("QLoRA needs the bitsandbytes package: pip install bitsandbytes") from None

    def build_config(self, base_model: str, method: str = "lora", hyperparams: dict | None = None,
                     template: str = VICUNA_V11, *, convert: bool = False) -> dict:
        """The ``config.json`` a run with these settings gets, without the run id and snapshot fields.

        Raises:
            RunError / RegistryError: an unknown or non-local base, method, template or hyperparameter.
        """
        spec = self._base(base_model)
        self._check_method(method)
        if template not in RUN_TEMPLATES:
            raise RunError(f"unknown template '{template}' ({', '.join(RUN_TEMPLATES)})")
        return {"base_model": spec.name, "base_model_path": self._base_path(spec, convert), "method": method,
                "template": template, "hyperparams": resolve_hyperparams(hyperparams)}

    def create_run(self, base_model: str, method: str = "lora", filters: dict | None = None,
                   hyperparams: dict | None = None, template: str = VICUNA_V11, num_processes: int = 1,
                   backend: str | None = None, eval_fraction: float = 0.05, name: str | None = None) -> str:
        """Freeze the chosen conversations and write a new run folder (not started: see ``start``).

        Args:
            base_model: a registry entry with local weights (``hf`` or ``gguf``).
            method: ``lora``, ``qlora`` (needs CUDA and bitsandbytes) or ``full``.
            filters: a Data-tab filter, ``{"source_id", "status", "origin"}`` (see ``normalize_filters``).
            hyperparams: overrides of the recipe defaults (``DEFAULT_HYPERPARAMS`` keys).
            template: ``vicuna_v1.1`` (the recipe) or ``chat_template`` (the base tokenizer's).
            num_processes: processes for ``accelerate launch`` (one per GPU).
            backend: ``None``/``"none"`` or a ``training/configs/<backend>.yaml`` name.
            eval_fraction: share of conversations held out for evaluation, in [0, 0.5] (see ``eval_count``).
            name: the run's display name and the registry name of its checkpoint (default
                ``<base>-<method>-<time>``).

        Returns:
            The run id (the folder name under ``<data_dir>/runs``).

        Raises:
            RunError: bad settings, or no conversation matches the filter. RegistryError: unknown base model.
        """
        filters = normalize_filters(filters)
        try:
            num_processes = int(num_processes)
        except (TypeError, ValueError):
            raise RunError(f"number of processes must be a whole number, not {num_processes!r}") from None
        if num_processes < 1:
            raise RunError("number of processes must be at least 1")
        backend = _norm_backend(backend)
        try:
            eval_fraction = float(eval_fraction)
        except (TypeError, ValueError):
            raise RunError(f"eval fraction must be a number, not {eval_fraction!r}") from None
        if not 0 <= eval_fraction <= 0.5:
            raise RunError(f"eval fraction must be between 0 and 0.5, not {eval_fraction}")
        cfg = self.build_config(base_model, method, hyperparams, template)
        conversations = list(self.studio.store.iter_conversations(**filters))
        if not conversations:
            what = ", ".join(f"{k} {v}" for k, v in filters.items() if v is not None) or "any filter"
            raise RunError(f"no conversations match ({what}): import or expand some in the Data tab first")
        cfg["base_model_path"] = self._base_path(self.studio.registry.get(base_model), convert=True)

        stamp = time.strftime("%Y%m%d-%H%M%S")
        label = _slug(name) if name and name.strip() else _slug(f"{base_model}-{method}", 30)
        with self._lock:
            run_id = f"{stamp}-{label}"
            k = 2
            while (self.runs_dir / run_id).exists():
                run_id = f"{stamp}-{label}-{k}"
                k += 1
            tmp = self.runs_dir / f".creating-{run_id}"
            tmp.mkdir(parents=True)
        try:
            snap = write_snapshot(conversations, tmp, eval_fraction=eval_fraction,
                                  seed=int(cfg["hyperparams"].get("seed", 42)))
            config = {"run_id": run_id, **{k: cfg[k] for k in ("base_model", "base_model_path", "method",
                                                              "template")},
                      "train_file": snap["train_file"], "eval_file": snap["eval_file"],
                      "snapshot_sha256": snap["snapshot_sha256"], "output_dir": "output",
                      "hyperparams": cfg["hyperparams"]}
            _write_json(tmp / "config.json", config)
            state = {"run_id": run_id, "name": (name or "").strip() or None, "state": "created",
                     "message": f"{snap['n_train']} train / {snap['n_eval']} eval conversations frozen",
                     "created_at": time.time(), "queued_at": None, "started_at": None, "ended_at": None,
                     "pid": None, "attempts": 0, "resume": False, "filters": filters, "eval_fraction": eval_fraction,
                     "num_processes": num_processes, "backend": backend, "n_train": snap["n_train"],
                     "n_eval": snap["n_eval"], "registered_as": None, "exit_code": None}
            _write_json(tmp / "run.json", state)
            os.replace(tmp, self.runs_dir / run_id)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return run_id

    # ------------------------------------------------------------------ commands
    def _config_file(self, backend: str | None) -> str | None:
        return str(CONFIGS_DIR / f"{backend}.yaml") if backend else None

    def command(self, run_id: str, resume: bool = False) -> list[str]:
        """The command that does this run, as shown to people and copyable to another shell or machine:
        ``accelerate launch --num_processes N [--config_file training/configs/B.yaml] -m training.train
        --run-dir /abs/run/dir [--resume]`` (absolute paths)."""
        st = self._state(run_id)
        return self._accelerate_argv(self.run_dir(run_id).resolve(), st["num_processes"], st.get("backend"),
                                     resume, display=True)

    def command_str(self, run_id: str, resume: bool = False) -> str:
        """``command`` as one shell-quoted line."""
        return shlex.join(self.command(run_id, resume))

    def _accelerate_argv(self, run_dir, num_processes: int, backend: str | None, resume: bool,
                         display: bool) -> list[str]:
        head = ["accelerate", "launch"] if display else [self.python, "-m", "accelerate.commands.launch"]
        argv = head + ["--num_processes", str(int(num_processes))]
        cfg = self._config_file(backend)
        if cfg:
            argv += ["--config_file", cfg]
        argv += ["-m", PROGRAM, "--run-dir", str(run_dir)]
        return argv + (["--resume"] if resume else [])

    def launch_argv(self, run_id: str, resume: bool = False) -> list[str]:
        """What the queue actually executes: ``python -m training.train --run-dir DIR`` for one process
        without a backend (same run as ``command``, without accelerate's start-up), else ``command`` with
        this interpreter's accelerate."""
        st = self._state(run_id)
        run_dir = self.run_dir(run_id).resolve()
        if int(st["num_processes"]) == 1 and not st.get("backend"):
            return [self.python, "-m", PROGRAM, "--run-dir", str(run_dir)] + (["--resume"] if resume else [])
        return self._accelerate_argv(run_dir, st["num_processes"], st.get("backend"), resume, display=False)

    def preview(self, base_model: str, method: str = "lora", filters: dict | None = None,
                hyperparams: dict | None = None, template: str = VICUNA_V11, num_processes: int = 1,
                backend: str | None = None) -> tuple[str, dict]:
        """The command and ``config.json`` a run with these settings would get (for the page, before Start):
        ``(command line with <run id> in the run folder, config without the snapshot fields)``.

        Raises:
            RunError / RegistryError: as ``create_run`` (except for a missing GPU or empty filter).
        """
        cfg = self.build_config(base_model, method, hyperparams, template)
        backend = _norm_backend(backend)
        argv = self._accelerate_argv(self.runs_dir / "__RUN_ID__", int(num_processes or 1), backend, False,
                                     display=True)
        cfg["filters"] = normalize_filters(filters)
        return shlex.join(argv).replace("__RUN_ID__", "<run id>"), cfg

    # ------------------------------------------------------------------ queue
    def _ensure_worker(self) -> None:
        with self._lock:
            if self._worker is None or not self._worker.is_alive():
                self._closed = False
                self._worker = threading.Thread(target=self._work, daemon=True, name="studio-runs")
                self._worker.start()

    def start(self, run_id: str) -> int:
        """Queue a created run. Runs execute one at a time in the order they were started.

        Returns:
            The run's place in the queue (0: next to run).

        Raises:
            RunError: the run was started before (use ``resume``), or needs GPUs this machine lacks.
        """
        return self._enqueue(run_id, resume=False, allowed=("created",))

    def resume(self, run_id: str) -> int:
        """Queue a stopped or failed run again; it continues from its latest ``output/checkpoint-*`` (from the
        start when it saved none).

        Returns:
            The run's place in the queue. Raises RunError in any other state.
        """
        return self._enqueue(run_id, resume=True, allowed=("stopped", "failed"))

    def _enqueue(self, run_id: str, resume: bool, allowed: tuple) -> int:
        self._refresh(run_id)
        with self._lock:
            st = self._state(run_id)
            if st["state"] not in allowed:
                hint = " (use resume)" if st["state"] in ("stopped", "failed") else ""
                raise RunError(f"run {run_id} is {st['state']}; it can be "
                               f"{'resumed' if resume else 'started'} only when {' or '.join(allowed)}{hint}")
            self._check_gpus(st)
            has_ckpt = bool(self.checkpoints(run_id))
            (self.runs_dir / run_id / "STOP").unlink(missing_ok=True)
            pos = len(self._queue)
            self._save_state(run_id, state="queued", queued_at=time.time(), resume=bool(resume and has_ckpt),
                             message="waiting for earlier runs" if pos or self._busy() else "starting")
            self._queue.append(run_id)
            self._cond.notify_all()
        self._ensure_worker()
        return pos

    @staticmethod
    def _check_gpus(st: dict) -> None:
        n = int(st.get("num_processes") or 1)
        if n > 1:
            import torch

            have = torch.cuda.device_count()
            if have < n:
                raise RunError(f"{n} processes need {n} GPUs; this machine has {have}. Copy the command to a "
                               "machine that has them, or use 1 process.")

    def checkpoints(self, run_id: str) -> list[Path]:
        """The run's ``output/checkpoint-<step>`` folders, oldest first."""
        out = self.run_dir(run_id) / "output"
        found = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.split("-")[-1]))

    def _busy(self) -> bool:
        return any(p.poll() is None for p in self._procs.values()) or bool(self._orphans())

    def _orphans(self) -> list[str]:
        """Runs in a live state whose process this manager did not start (left by an earlier studio)."""
        out = []
        for st in self._all_states():
            if st["state"] in LIVE_STATES and st["run_id"] not in self._procs:
                out.append(st["run_id"])
        return out

    def queued(self) -> list[str]:
        """Run ids waiting in the queue, next first."""
        with self._lock:
            return list(self._queue)

    def _work(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                if not self._queue:
                    self._cond.wait(timeout=2.0)
                if self._closed:
                    return
                run_id = self._queue[0] if self._queue else None
            try:
                for rid in self._orphans():  # runs left by an earlier studio: finalise those that ended
                    self._refresh(rid)
                if run_id is None:
                    continue
                if self._orphans():  # one run at a time, also across studio restarts
                    time.sleep(1.0)
                    continue
                with self._lock:
                    if not self._queue or self._queue[0] != run_id:
                        continue  # cancelled meanwhile
                    self._queue.popleft()
                    st = self._state(run_id)
                    if st["state"] != "queued":
                        continue
                    proc = self._launch(run_id, st)
                if proc is None:
                    continue
                proc.wait()
                self._finalize(run_id, proc.returncode)
            except Exception as e:  # a broken run never stops the queue
                if run_id is None:
                    continue
                try:
                    self._procs.pop(run_id, None)
                    self._save_state(run_id, state="failed", message=f"could not run: {e.__class__.__name__}: {e}",
                                     ended_at=time.time(), pid=None)
                except Exception:
                    pass

    def _launch(self, run_id: str, st: dict) -> subprocess.Popen | None:
        run_dir = self.runs_dir / run_id
        resume = bool(st.get("resume"))
        argv = self.launch_argv(run_id, resume=resume)
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        attempt = int(st.get("attempts") or 0) + 1
        with open(run_dir / "train.log", "ab") as log:
            log.write((f"\n=== attempt {attempt} ({'resume' if resume else 'start'}) at "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(self.command(run_id, resume))}\n").encode())
            log.flush()
            try:
                proc = subprocess.Popen(argv, cwd=str(REPO_ROOT), stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            except OSError as e:
                self._save_state(run_id, state="failed", message=f"could not start the training program: {e}",
                                 ended_at=time.time())
                return None
        self._procs[run_id] = proc
        self._save_state(run_id, state="running", pid=proc.pid, started_at=time.time(), ended_at=None,
                         attempts=attempt, message="starting: loading the model and data", exit_code=None)
        return proc

    # ------------------------------------------------------------------ stop and finish
    def stop(self, run_id: str, force: bool = False) -> str:
        """Stop a run: a queued one is taken out of the queue (state ``stopped``); a running one gets a
        ``STOP`` file, saves a checkpoint and ends (state ``stopping``, then ``stopped``). ``force`` kills its
        process group at once (SIGKILL); it then resumes from its last saved checkpoint.

        Returns:
            The new state. Raises RunError if the run is not queued or running.
        """
        self._refresh(run_id)
        with self._lock:
            st = self._state(run_id)
            if st["state"] == "queued":
                if run_id in self._queue:
                    self._queue.remove(run_id)
                self._save_state(run_id, state="stopped", message="cancelled before it started",
                                 ended_at=time.time())
                return "stopped"
            if st["state"] not in LIVE_STATES:
                raise RunError(f"run {run_id} is {st['state']}, not running")
            (self.runs_dir / run_id / "STOP").touch()
            if force:
                self._kill(st)
                self._save_state(run_id, state="stopping", message="terminated; its last checkpoint is kept")
            else:
                self._save_state(run_id, state="stopping", message="stopping: saving a checkpoint")
            return "stopping"

    def _kill(self, st: dict, sig: int = signal.SIGKILL) -> None:
        pid = st.get("pid")
        if pid and _pid_alive(pid):
            try:
                os.killpg(int(pid), sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _refresh(self, run_id: str) -> dict:
        """Bring the run's state up to date: read new events; a live-state run whose process is gone is
        finalised (finished, stopped or failed). Returns the state."""
        st = self._state(run_id)
        self._view(run_id)
        if st["state"] in LIVE_STATES:
            proc = self._procs.get(run_id)
            alive = proc.poll() is None if proc is not None else _pid_alive(st.get("pid"), self.runs_dir / run_id)
            if not alive and (proc is None or proc.returncode is not None):
                if proc is None:  # not our child: the worker is not waiting on it
                    self._finalize(run_id, None)
                st = self._state(run_id)
            elif st["state"] == "running" and (self.runs_dir / run_id / "STOP").exists():
                st = self._save_state(run_id, state="stopping")
        return st

    def _finalize(self, run_id: str, returncode: int | None) -> None:
        with self._lock, _FolderLock(self.runs_dir / run_id):
            self._procs.pop(run_id, None)
            st = self._state(run_id)
            if st["state"] not in LIVE_STATES:
                return
            view = self._view(run_id)
            changes = {"pid": None, "ended_at": time.time(), "exit_code": returncode}
            (self.runs_dir / run_id / "STOP").unlink(missing_ok=True)
            if view.end is not None:
                status = view.end.get("status", "finished")
                state = "stopped" if status == "stopped" else "finished"
                fl, fel = view.end.get("final_loss"), view.end.get("final_eval_loss")
                msg = (f"{state}: final loss {fl:.4f}" if isinstance(fl, (int, float)) else state) + (
                    f", eval loss {fel:.4f}" if isinstance(fel, (int, float)) else "")
                if state == "stopped":
                    ck = self.checkpoints(run_id)
                    msg = f"stopped at step {view.progress.get('step', '?')}" + (
                        f"; resume continues from {ck[-1].name}" if ck else "")
                changes.update(state=state, message=msg)
            else:
                reason = view.error.get("message") if view.error else None
                if not reason:
                    reason = failure_reason(tail_text(self.runs_dir / run_id / "train.log", 200, 256 * 1024))
                if returncode is not None and returncode < 0:
                    sig = -returncode
                    try:
                        signame = signal.Signals(sig).name
                    except ValueError:
                        signame = f"signal {sig}"
                    reason = f"killed by {signame}"
                if st["state"] == "stopping" and view.error is None:  # asked to stop, terminated before saving
                    ck = self.checkpoints(run_id)
                    changes.update(state="stopped", message="terminated before saving" + (
                        f"; resume continues from {ck[-1].name}" if ck else "; resume starts it again"))
                    self._save_state(run_id, **changes)
                    return
                reason = reason or "the training process ended without an end event"
                code = f" (exit code {returncode})" if returncode is not None and returncode > 0 else ""
                changes.update(state="failed", message=f"failed: {reason}{code}")
            self._save_state(run_id, **changes)
        if changes["state"] == "finished":
            try:
                self.register(run_id)
            except Exception as e:  # the run stays finished; registration can be retried
                self._save_state(run_id, message=f"finished, but not registered: {e}")

    # ------------------------------------------------------------------ reading
    def _view(self, run_id: str) -> _View:
        with self._lock:
            view = self._views.setdefault(run_id, _View())
            events, view.offset = read_events(self.runs_dir / run_id / "events.jsonl", view.offset)
            for ev in events:
                _apply(view, ev)
            return view

    def events(self, run_id: str, since_offset: int = 0) -> tuple[list[dict], int]:
        """The run's events after byte ``since_offset`` of ``events.jsonl``: ``(events, next_offset)``. Keep
        ``next_offset`` for the next call, so each poll reads only what was appended."""
        return read_events(self.run_dir(run_id) / "events.jsonl", int(since_offset or 0))

    def log_tail(self, run_id: str, n_lines: int = 40) -> str:
        """The last ``n_lines`` of the run's ``train.log`` (reads only the file's end)."""
        return tail_text(self.run_dir(run_id) / "train.log", n_lines)

    def curve(self, run_id: str):
        """The loss curves so far: a DataFrame with ``step`` (int), ``value`` (float) and ``series``
        (``loss`` / ``eval loss``), sorted by series then step (for ``gr.LinePlot``)."""
        import pandas as pd

        view = self._view(run_id)
        with self._lock:
            rows = [(int(step), float(v), series) for (series, step), v in view.points.items()]
        df = pd.DataFrame(rows, columns=["step", "value", "series"])
        return df.sort_values(["series", "step"]).reset_index(drop=True)

    def status(self, run_id: str) -> dict:
        """The run now: ``run_id, name, state, message, base_model, method, step, max_steps, epoch, start_step
        (where the current attempt began),
        num_train_epochs, fraction (0..1), eta_s, tokens_per_second, loss_tokens_per_second, loss, eval_loss,
        learning_rate, final_loss, final_eval_loss, queue_position, registered_as, n_train, n_eval,
        snapshot_sha256, created_at, started_at, ended_at, attempts, pid, command``. Missing numbers are None.

        Raises:
            RunError: no such run.
        """
        st = self._refresh(run_id)
        view = self._view(run_id)
        cfg = self.config(run_id)
        p = dict(view.progress)
        step, max_steps = p.get("step"), p.get("max_steps")
        frac = (step / max_steps) if isinstance(step, (int, float)) and max_steps else 0.0
        if st["state"] == "finished":
            frac = 1.0
        with self._lock:
            qpos = self._queue.index(run_id) if run_id in self._queue else None
        message = st.get("message") or ""
        if st["state"] == "running" and message.startswith("starting"):
            message = "training" if view.start is not None else (view.phase or message)
        last_loss = next((v for (s, _), v in reversed(list(view.points.items())) if s == "loss"), p.get("loss"))
        last_eval = next((v for (s, _), v in reversed(list(view.points.items())) if s == "eval loss"),
                         p.get("eval_loss"))
        return {
            "run_id": run_id, "name": st.get("name") or run_id, "state": st["state"], "message": message,
            "base_model": cfg["base_model"], "method": cfg["method"], "template": cfg["template"],
            "step": step, "max_steps": max_steps, "epoch": p.get("epoch"),
            "start_step": (view.start or {}).get("step"),
            "num_train_epochs": p.get("num_train_epochs", cfg["hyperparams"].get("num_train_epochs")),
            "fraction": max(0.0, min(1.0, frac)),
            "eta_s": p.get("eta_s") if st["state"] in LIVE_STATES else None,
            "tokens_per_second": p.get("tokens_per_second"), "loss_tokens_per_second": p.get("loss_tokens_per_second"),
            "loss": last_loss, "eval_loss": last_eval, "learning_rate": p.get("learning_rate"),
            "final_loss": p.get("final_loss"), "final_eval_loss": p.get("final_eval_loss"),
            "queue_position": qpos, "registered_as": st.get("registered_as"), "n_train": st.get("n_train"),
            "n_eval": st.get("n_eval"), "snapshot_sha256": cfg.get("snapshot_sha256"),
            "created_at": st.get("created_at"), "started_at": st.get("started_at"), "ended_at": st.get("ended_at"),
            "attempts": st.get("attempts", 0), "pid": st.get("pid"), "command": self.command_str(run_id),
        }

    @staticmethod
    def line(s: dict) -> str:
        """One human line for a status dict: ``running · step 12/40 · epoch 0.30/1 · loss 2.31 · eval 2.40 ·
        1,234 tok/s · ETA 1m20s — message``."""
        parts = [s["state"]]
        if s.get("queue_position") is not None:
            parts[0] += f" (#{s['queue_position'] + 1} in queue)"
        if s.get("step") is not None:
            parts.append(f"step {s['step']}/{s.get('max_steps') or '?'}")
        if s.get("epoch") is not None:
            parts.append(f"epoch {s['epoch']:.2f}/{s.get('num_train_epochs') or '?'}")
        if s.get("loss") is not None:
            parts.append(f"loss {s['loss']:.4f}")
        if s.get("eval_loss") is not None:
            parts.append(f"eval loss {s['eval_loss']:.4f}")
        if s.get("tokens_per_second") and s["state"] in LIVE_STATES:
            parts.append(f"{s['tokens_per_second']:,.0f} tok/s")
        if s.get("eta_s") is not None:
            parts.append(f"ETA {fmt_duration(s['eta_s'])}")
        line = " · ".join(parts)
        return line + (f" — {s['message']}" if s.get("message") and s["message"] != s["state"] else "")

    def list_runs(self) -> list[dict]:
        """Every run, newest first, as ``status`` dicts (a run folder that can't be read is skipped)."""
        out = []
        for st in sorted(self._all_states(), key=lambda s: s.get("created_at") or 0, reverse=True):
            try:
                out.append(self.status(st["run_id"]))
            except (RunError, OSError, KeyError, json.JSONDecodeError):
                continue
        return out

    def default_run(self) -> str | None:
        """The run a page shows when nothing is selected: the most recent running one, else the most recent
        queued one, else the most recent run; None when there are no runs."""
        runs = self.list_runs()
        for states in (LIVE_STATES, ("queued",)):
            for r in runs:
                if r["state"] in states:
                    return r["run_id"]
        return runs[0]["run_id"] if runs else None

    def wait(self, run_id: str, timeout: float | None = None, poll: float = 0.5) -> dict:
        """Block until the run is no longer queued or running (or ``timeout`` seconds pass); its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            s = self.status(run_id)
            if s["state"] not in ACTIVE_STATES:
                return s
            if deadline is not None and time.monotonic() > deadline:
                return s
            time.sleep(poll)

    def close(self, kill: bool = False) -> None:
        """Stop the queue worker (queued runs stay queued for the next studio). Running processes go on
        unless ``kill``: then each gets SIGTERM (the program saves a checkpoint and ends ``stopped``), and
        SIGKILL after 30 s."""
        with self._lock:
            self._closed = True
            self._cond.notify_all()
        if kill:
            for st in self._all_states():
                if st["state"] in LIVE_STATES:
                    self._save_state(st["run_id"], state="stopping")
                    self._kill(st, signal.SIGTERM)
                    proc = self._procs.get(st["run_id"])
                    if proc is not None:
                        try:
                            proc.wait(timeout=30)
                        except subprocess.TimeoutExpired:
                            os.killpg(proc.pid, signal.SIGKILL)
                            proc.wait()
                    self._finalize(st["run_id"], proc.returncode if proc is not None else None)

    # ------------------------------------------------------------------ registry
    def register(self, run_id: str, name: str | None = None) -> str:
        """Add a finished run's ``output/final`` to the registry (done automatically when a run finishes).

        LoRA/QLoRA: an ``adapter`` entry over the base entry; full: an ``hf`` entry. ``lineage`` holds
        ``base, snapshot_sha256, config, final_loss, final_eval_loss, run_id``. Registering twice returns the
        existing entry.

        Returns:
            The registry name (the run's name, else ``<base>-<method>-<run time>``; ``-2``, ... if taken).

        Raises:
            RunError: the run has not finished or has no final output. RegistryError: the entry is invalid.
        """
        self._refresh(run_id)
        with self._lock, _FolderLock(self.runs_dir / run_id):
            return self._register(run_id, name)

    def _register(self, run_id: str, name: str | None) -> str:
        st = self._state(run_id)
        if st.get("registered_as") and st["registered_as"] in self.studio.registry.names():
            return st["registered_as"]
        if st["state"] != "finished":
            raise RunError(f"run {run_id} is {st['state']}; only a finished run can be registered")
        cfg = self.config(run_id)
        view = self._view(run_id)
        final = self.run_dir(run_id) / cfg.get("output_dir", "output") / "final"
        out_path = (view.end or {}).get("output_path")
        if out_path and Path(out_path).is_dir():
            final = Path(out_path)
        if not final.is_dir():
            raise RunError(f"run {run_id} has no final checkpoint in {final}")
        base = name or st.get("name") or f"{cfg['base_model']}-{cfg['method']}-{run_id[:15]}"
        reg = self.studio.registry
        taken = set(reg.names())
        reg_name, k = base, 2
        while reg_name in taken:
            reg_name, k = f"{base}-{k}", k + 1
        p = view.progress
        lineage = {"base": cfg["base_model"], "snapshot_sha256": cfg["snapshot_sha256"], "config": cfg,
                   "final_loss": p.get("final_loss"), "final_eval_loss": p.get("final_eval_loss"), "run_id": run_id}
        desc = (f"{cfg['method']} fine-tune of {cfg['base_model']} on {st.get('n_train')} conversations (run "
                f"{run_id})" + (f", final loss {p['final_loss']:.4f}" if isinstance(p.get("final_loss"), (int, float))
                                else ""))
        if cfg["method"] in ("lora", "qlora"):
            spec = ModelSpec(name=reg_name, kind="adapter", path=str(final), base=cfg["base_model"],
                             template=cfg["template"], lineage=lineage, description=desc)
        else:
            spec = ModelSpec(name=reg_name, kind="hf", path=str(final), template=cfg["template"], lineage=lineage,
                             description=desc)
        reg.add(spec)
        msg = st.get("message") or "finished"
        msg = "finished" if msg.startswith("finished, but not registered") else msg
        self._save_state(run_id, registered_as=reg_name, message=f"{msg}; registered as {reg_name}")
        return reg_name

    def _resolve_adapter(self, name_or_run: str) -> ModelSpec:
        reg = self.studio.registry
        if name_or_run in reg.names():
            spec = reg.get(name_or_run)
        else:
            try:
                st = self._refresh(name_or_run)
            except RunError:
                raise RunError(f"'{name_or_run}' is neither a registry model nor a run id") from None
            reg_name = st.get("registered_as") or self.register(name_or_run)
            spec = reg.get(reg_name)
        if spec.kind != "adapter":
            raise RunError(f"'{spec.name}' is {'an' if spec.kind[0] in 'ae' else 'a'} {spec.kind} entry, not an "
                           "adapter; only LoRA/QLoRA adapters are merged")
        return spec

    def merge(self, name_or_run: str, out_dir: str | Path | None = None, name: str | None = None) -> str:
        """Merge a LoRA adapter (a registry name, or a run id whose checkpoint is an adapter) into its base:
        a full checkpoint in ``out_dir`` (default ``<run folder>/output/merged`` for an adapter trained here,
        else ``<model_dir>/<adapter name>-merged``; ``-2``, ... when that folder is taken), registered as an
        ``hf`` entry ``<adapter name>-merged`` (or ``name``) with the adapter's lineage plus ``merged_from``.

        Uses ``training.train.merge_adapter`` (peft ``merge_and_unload``) when present, else peft directly.

        Returns:
            The new registry name.

        Raises:
            RunError: not an adapter, or ``out_dir`` exists and is not empty. RegistryError: load failure.
        """
        spec = self._resolve_adapter(name_or_run)
        reg = self.studio.registry
        base = reg.get(spec.base)
        new_name = name or f"{spec.name}-merged"
        if new_name in reg.names():
            raise RunError(f"a model named '{new_name}' exists already; give another name")
        if out_dir:
            out = Path(out_dir).expanduser().resolve()
        else:  # beside the run's output when the adapter was trained here, else in the model folder
            run_id = (spec.lineage or {}).get("run_id")
            home = (self.runs_dir / run_id / "output") if run_id and (self.runs_dir / run_id).is_dir() else Path(
                self.studio.settings.model_dir)
            stem = "merged" if home.name == "output" else _slug(new_name, 120)
            out, k = home / stem, 2
            while out.exists() and any(out.iterdir()):
                out, k = home / f"{stem}-{k}", k + 1
        if out.exists() and any(out.iterdir()):
            raise RunError(f"{out} exists and is not empty; choose another folder")
        merge_into(reg.checkpoint_path(base), spec.path, out)
        lineage = dict(spec.lineage or {}, merged_from=spec.name)
        reg.add(ModelSpec(name=new_name, kind="hf", path=str(out), template=spec.template, lineage=lineage,
                          description=f"{spec.name} merged into {base.name}"))
        return new_name

    def export(self, name: str, out_dir: str | Path, push_to_hub: str | None = None, merge: bool = True,
               private: bool = True) -> dict:
        """Write a registry model to a folder, and push it to the Hugging Face Hub when asked.

        Adapters are merged into their base (a standalone checkpoint) unless ``merge=False`` (then the
        adapter folder is copied). Local ``hf``/``gguf`` checkpoints are copied. A ``wvstudio_lineage.json``
        with the entry's lineage is written beside the weights.

        Args:
            push_to_hub: a repo id (``user/name``): uploaded with ``huggingface_hub`` using ``$HF_TOKEN``.

        Returns:
            ``{"path": str, "url": str | None}``.

        Raises:
            RunError: an endpoint or hub-id entry, a non-empty ``out_dir``, or ``push_to_hub`` without ``HF_TOKEN``.
        """
        reg = self.studio.registry
        spec = reg.get(name)
        out = Path(out_dir).expanduser().resolve()
        if out.exists() and any(out.iterdir()):
            raise RunError(f"{out} exists and is not empty; choose another folder")
        if push_to_hub and not os.environ.get("HF_TOKEN"):
            raise RunError("pushing to the Hub needs a token: set HF_TOKEN (a write token from "
                           "huggingface.co/settings/tokens)")
        if spec.kind == "endpoint":
            raise RunError(f"'{name}' is an endpoint; it has no weights to export")
        if spec.kind == "adapter" and merge:
            merge_into(reg.checkpoint_path(reg.get(spec.base)), spec.path, out)
        else:
            src = Path(spec.path if spec.kind == "adapter" else reg.checkpoint_path(spec))
            if not src.is_dir():
                raise RunError(f"'{name}' is not a local folder ({src}); nothing to copy")
            shutil.copytree(src, out, dirs_exist_ok=True)
        _write_json(out / "wvstudio_lineage.json", {"name": spec.name, "kind": spec.kind, "base": spec.base,
                                                    "template": spec.template, "lineage": spec.lineage})
        url = None
        if push_to_hub:
            from huggingface_hub import HfApi

            api = HfApi(token=os.environ["HF_TOKEN"])
            api.create_repo(push_to_hub, private=private, exist_ok=True)
            info = api.upload_folder(folder_path=str(out), repo_id=push_to_hub,
                                     commit_message=f"Upload {spec.name} from WizardVicuna Studio")
            url = getattr(info, "repo_url", None) or f"https://huggingface.co/{push_to_hub}"
            url = str(url)
        return {"path": str(out), "url": url}


def merge_into(base_path: str, adapter_path: str, out_dir: str | Path) -> Path:
    """Merge a peft adapter into its base checkpoint and save the result (and the tokenizer) in ``out_dir``.

    Uses ``training.train.merge_adapter`` (peft's ``merge_and_unload``). Raises RegistryError when either folder
    will not load.
    """
    out = Path(out_dir)
    try:
        _program().merge_adapter(str(base_path), str(adapter_path), str(out))
    except Exception as e:  # the program's TrainError, OSError, torch errors: one message for the page
        raise RegistryError(f"could not merge {adapter_path} into {base_path}: {e}") from e
    return out
