"""Training runs from the studio's side (``Studio.runs``): the recipe's defaults and the rules for a run's
settings, creating a run (a frozen snapshot and ``config.json`` in its folder), the exact command, and reading a
run's progress, curves and log; starting, stopping and resuming go through the one job manager (``studio.jobs``),
where a run is a job of kind ``train`` (``studio.runs``). Also: merging a LoRA adapter into its base, and exporting
a model to a folder or the Hugging Face Hub.

Recipe defaults (``training.train.DEFAULT_HYPERPARAMS``): Vicuna v1.1, FastChat ``scripts/train_vicuna_13b.sh``
(3 epochs, lr 2e-5, cosine, warmup ratio 0.04, weight decay 0, max length 2048, global batch 128) and
``train_lora.py`` (r 8, alpha 16, dropout 0.05, q_proj and v_proj).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Mapping

from .filters import ConvFilter, FilterError, filter_from_mapping
from .jobs import ACTIVE, fmt_duration
from .paths import NAME_RULE, safe_child
from .registry import ModelSpec, RegistryError
from .runs import (CONFIGS_DIR, PROGRAM, TRAIN_JOB, TRAIN_LANE, RunError, RunFolder, TrainingJobs, _slug,
                   accelerate_argv, check_run_name, check_gpus, eval_count, launch_argv, write_json)
from .templates import VICUNA_V11

__all__ = ["RunManager", "RunError", "default_hyperparams", "resolve_hyperparams", "padding_choices", "backends",
           "run_filter", "training_filter", "eval_count", "merge_into", "fmt_duration", "METHODS", "RUN_TEMPLATES",
           "STATES", "EXPORT_NAME_REFUSED"]

METHODS = ("lora", "qlora", "full")
RUN_TEMPLATES = (VICUNA_V11, "chat_template")
STATES = ("created", "queued", "running", "stopping", "stopped", "finished", "failed", "interrupted")
"""Run states: ``created`` (folder written, never started), then its training job's status: ``queued``,
``running``, ``stopping`` (a stop was asked, the program is saving), ``stopped`` (resumable), ``finished`` (the
job is ``done``), ``failed`` (resumable), ``interrupted`` (the studio or the process ended meanwhile;
resumable)."""
ACTIVE_STATES = ACTIVE
LIVE_STATES = ("running", "stopping")
RESUMABLE_STATES = ("stopped", "failed", "interrupted")

PADDING_CHOICES = ("group_by_length", "longest", "packed")
SCHEDULER_CHOICES = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts",
                     "polynomial")
LORA_TARGET_CHOICES = ("q_proj,v_proj", "all-linear")
EXPORT_NAME_REFUSED = (f"export name refused: give a folder name ({NAME_RULE}); the model is written into that "
                       "folder inside the studio's exports folder, so paths, '..' and links leading out of it are "
                       "not accepted")
"""The one refusal of a page export name (``RunManager.export_folder``): the same text for every bad name, so it
tells nothing about which server paths exist."""


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


def run_filter(filters: ConvFilter | Mapping[str, Any] | None) -> ConvFilter:
    """The filter a run is asked for, as a ``ConvFilter`` (before the training rule, see ``training_filter``).

    Args:
        filters: a ``ConvFilter`` (the page's filter controls give one); or a mapping of its fields (a
            ``train --config`` file's ``filters``, a run's recorded ``filters``, an older run's ``run.json``),
            read by ``studio.filters.filter_from_mapping`` (None, ``""``, ``"all"``/``"any"`` and a source id of
            0 leave a field open); or None (every conversation).

    Raises:
        RunError: an unknown filter field or a bad value (the message names the field), or not a mapping.
    """
    if filters is None:
        return ConvFilter()
    if isinstance(filters, ConvFilter):
        return filters
    if not isinstance(filters, Mapping):
        raise RunError(f"a run's filters must be a filter or a mapping of filter fields, not {filters!r}")
    try:
        return filter_from_mapping(filters)
    except FilterError as e:
        raise RunError(str(e)) from e


def training_filter(filters: ConvFilter | Mapping[str, Any] | None) -> ConvFilter:
    """The conversations a run with ``filters`` trains on: ``run_filter(filters).for_training()`` (the one rule,
    ``ConvFilter.for_training``: flagged and deleted conversations stay out unless the filter chose them).

    Raises:
        RunError: as ``run_filter``.
    """
    return run_filter(filters).for_training()


def _left_out_hint(store, chosen: ConvFilter) -> str:
    """``: import or expand some ...``, or what the training rule left out of ``chosen`` and how to choose it."""
    t = store.training_totals(chosen)
    if t["flagged_left_out"] or t["deleted_left_out"]:
        return (f"; {t['flagged_left_out']} flagged and {t['deleted_left_out']} deleted conversations match but "
                "stay out of training unless you choose status flagged or deleted")
    return ": import or expand some in the Data tab first"


def _state(job: dict | None) -> str:
    """A run's state from its training job's row (None: never started)."""
    if job is None:
        return "created"
    return "finished" if job["status"] == "done" else job["status"]


# ---------------------------------------------------------------------------------------------- manager


LONG_RUN_S = 600
"""A run estimated to take longer than this (seconds) gets a warning before Start."""

GUESS_FLOPS = {"cpu": 1e11, "cuda": 5e13}
"""Training floating-point operations per second assumed when no run measured this machine yet (``estimate``).
The CPU figure matches issue 13's run: SmolLM2-135M LoRA, ~300 tokens per sequence, 2.6 s per sequence on a
2-core CPU; the GPU figure is a modest fraction of a current datacenter GPU's bf16 peak."""


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - torch broken: guess the CPU
        return False


def param_count(spec: ModelSpec) -> int | None:
    """The number of parameters of a local ``hf`` checkpoint folder, summed from its ``*.safetensors`` headers
    (shapes only: nothing is loaded); None for another kind, a folder without safetensors or an unreadable
    header."""
    import struct

    if spec.kind != "hf" or not spec.path or not Path(spec.path).is_dir():
        return None
    total = 0
    try:
        for f in Path(spec.path).glob("*.safetensors"):
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
            for name, t in header.items():
                if name != "__metadata__":
                    k = 1
                    for d in t.get("shape", []):
                        k *= int(d)
                    total += k
    except (OSError, ValueError, struct.error):
        return None
    return total or None


class RunManager:
    """The training runs of one studio (``Studio.runs``): create, preview, command, status, curves, log, merge,
    export; start, stop and resume through the studio's job manager (a run is a ``train`` job, see
    ``studio.runs``).

    Args:
        studio: the ``Studio`` (its settings' ``data_dir``, ``store``, ``registry`` and ``jobs``). The ``train``
            job kind is registered with ``studio.jobs`` here, which re-attaches to runs a previous studio left
            running.
        python: the interpreter that runs the program (default: this one).

    Thread-safe. A crashed, killed or failing run changes only its own folder and job.
    """

    def __init__(self, studio, *, python: str | None = None):
        self.studio = studio
        self.runs_dir = (Path(studio.settings.data_dir) / "runs").resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.kind = TrainingJobs(self.runs_dir, studio.registry, python)
        self.python = self.kind.python
        self.kind.register_with(studio.jobs)

    @property
    def jobs(self):
        return self.studio.jobs

    # ------------------------------------------------------------------ folders
    def folder(self, run_id: str) -> RunFolder:
        """The run's ``RunFolder``. Raises RunError if there is no such run."""
        return self.kind.folder(run_id)

    def run_dir(self, run_id: str) -> Path:
        """The run's folder. Raises RunError if there is no such run."""
        return self.folder(run_id).path

    def config(self, run_id: str) -> dict:
        """The run's ``config.json`` (what the training program reads)."""
        return self.folder(run_id).config()

    def filter(self, run_id: str) -> ConvFilter:
        """The filter the run's snapshot was taken with: ``filters`` of its ``config.json``, or of its
        ``run.json`` for a run made before configs recorded it (those filters had no training rule yet).

        Raises:
            RunError: no such run, or a recorded filter that no longer reads (the message names the field).
        """
        f = self.folder(run_id)
        recorded = f.config().get("filters")
        return run_filter(recorded if recorded is not None else (f.meta().get("filters") or {}))

    def _run_ids(self) -> list[str]:
        return [d.name for d in self.runs_dir.iterdir() if d.is_dir() and not d.name.startswith(".")
                and (d / RunFolder.META).exists()] if self.runs_dir.is_dir() else []

    def job_id(self, run_id: str) -> int | None:
        """The id of the run's training job (None before it was started)."""
        return self.folder(run_id).meta().get("job_id")

    def run_of_job(self, job_id: int) -> str | None:
        """The run id a training job works on (None for a job of another kind)."""
        job = self.studio.store.get_job(job_id)
        return job["params"].get("run_id") if job["kind"] == TRAIN_JOB else None

    def _job(self, meta: dict) -> dict | None:
        if meta.get("job_id") is None:
            return None
        try:
            return self.studio.store.get_job(int(meta["job_id"]))
        except Exception:  # noqa: BLE001 - a run folder copied from another data folder
            return None

    def state(self, run_id: str) -> str:
        """The run's state (``STATES``): ``created``, or its job's status (``done`` reads ``finished``)."""
        job = self._job(self.folder(run_id).meta())
        return _state(job)

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
            filters: which conversations: a ``ConvFilter`` or a mapping of its fields (see ``run_filter``);
                the run trains on ``training_filter(filters)`` (flagged and deleted conversations stay out
                unless chosen), recorded as ``filters`` in ``config.json`` and ``run.json``.
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
            RunError: bad settings (a name that is not a safe registry name among them: refused before anything
                is made), or no conversation matches the filter. RegistryError: unknown base model.
        """
        name = check_run_name(name)
        chosen = run_filter(filters)
        train_f = chosen.for_training()
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
        conversations = list(self.studio.store.iter_conversations(train_f))
        if not conversations:
            raise RunError(f"no conversations match ({train_f.describe()}){_left_out_hint(self.studio.store, chosen)}")
        cfg["filters"] = train_f.to_mapping()
        cfg["base_model_path"] = self._base_path(self.studio.registry.get(base_model), convert=True)
        label = name if name and name.strip() else _slug(f"{base_model}-{method}", 30)
        folder = RunFolder.create(
            self.runs_dir, label, conversations, config=cfg, eval_fraction=eval_fraction,
            seed=int(cfg["hyperparams"].get("seed", 42)),
            meta={"name": (name or "").strip() or None, "filters": cfg["filters"], "eval_fraction": eval_fraction,
                  "num_processes": num_processes, "backend": backend})
        return folder.id

    # ------------------------------------------------------------------ commands
    def command(self, run_id: str, resume: bool = False) -> list[str]:
        """The command that does this run, as shown to people and copyable to another shell or machine:
        ``accelerate launch --num_processes N [--config_file training/configs/B.yaml] -m training.train
        --run-dir /abs/run/dir [--resume]`` (absolute paths)."""
        f = self.folder(run_id)
        m = f.meta()
        return accelerate_argv(f.path, int(m.get("num_processes") or 1), m.get("backend"), resume)

    def command_str(self, run_id: str, resume: bool = False) -> str:
        """``command`` as one shell-quoted line."""
        return shlex.join(self.command(run_id, resume))

    def launch_argv(self, run_id: str, resume: bool = False) -> list[str]:
        """What the training job executes (``studio.runs.launch_argv``): the program itself for one process
        without a backend, else ``command`` through this interpreter's accelerate."""
        return launch_argv(self.folder(run_id), self.python, resume)

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
        argv = accelerate_argv(self.runs_dir / "__RUN_ID__", int(num_processes or 1), backend)
        cfg["filters"] = training_filter(filters).to_mapping()
        return shlex.join(argv).replace("__RUN_ID__", "<run id>"), cfg

    def seconds_per_sequence(self, base_model: str) -> tuple[float, str] | None:
        """Seconds one training sequence took on this machine in the newest run of ``base_model`` that took at
        least one step (its last ``progress`` event: ``elapsed_s`` over steps taken x sequences per step, a
        step being ``min(global batch, train conversations)`` sequences), and that run's id; None if no run of
        that base has taken a step here."""
        newest = sorted(self._run_ids(), key=lambda r: (self.runs_dir / r / RunFolder.META).stat().st_mtime,
                        reverse=True)
        for run_id in newest:
            try:
                f = self.folder(run_id)
                cfg, m, view = f.config(), f.meta(), f.view()
            except (RunError, OSError, ValueError, KeyError):
                continue
            p = view.progress
            start = (view.start or {}).get("step") or 0
            steps = (p.get("step") or 0) - start
            if cfg.get("base_model") != base_model or steps <= 0 or not p.get("elapsed_s"):
                continue
            per_step = min(int(cfg["hyperparams"].get("global_batch_size") or 1), int(m.get("n_train") or 1))
            return float(p["elapsed_s"]) / (steps * max(1, per_step)), run_id
        return None

    def estimate(self, base_model: str, n_train: int, hyperparams: dict | None = None,
                 tokens_per_sequence: float | None = None) -> dict:
        """How long a run would take before it starts: ``{"steps", "sequences", "seconds" (None when no time is
        known), "seconds_per_sequence", "source" (how the time was found, in words), "long" (over
        ``LONG_RUN_S``)}``.

        Steps are ``ceil(n_train / global batch) x epochs`` (a step is one optimizer update over the global
        batch; the last of each epoch may be smaller), or ``max_steps`` when set. The time per sequence is
        measured on this machine (``seconds_per_sequence``: the newest run of the same base model), or else
        guessed as ``6 x parameters x tokens per sequence`` floating-point operations (forward and backward,
        Kaplan et al. 2020) at ``GUESS_FLOPS`` for this device; tokens per sequence default to half of
        ``max_length``. The parameter count is read from the base's safetensors headers (``param_count``).

        Raises:
            RunError / RegistryError: as ``build_config`` (unknown base model, bad hyperparameter).
        """
        import math

        hp = self.build_config(base_model, "lora", hyperparams)["hyperparams"]
        gb = max(1, int(hp.get("global_batch_size") or 1))
        n = max(0, int(n_train))
        per_step = min(gb, n) if n else gb
        if int(hp.get("max_steps") or -1) > 0:
            steps = int(hp["max_steps"])
            sequences = steps * per_step
        else:
            epochs = float(hp.get("num_train_epochs") or 1)
            steps = math.ceil(math.ceil(n / gb) * epochs) if n else 0
            sequences = round(n * epochs)
        measured = self.seconds_per_sequence(base_model)
        sps, source = None, ""
        if measured:
            sps, source = measured[0], f"measured on run {measured[1]} of this model on this machine"
        else:
            params = param_count(self.studio.registry.get(base_model))
            if params:
                tokens = min(float(tokens_per_sequence or 0) or hp.get("max_length", 2048) / 2,
                             float(hp.get("max_length", 2048)))
                device = "cuda" if _cuda() else "cpu"
                sps = 6 * params * tokens / GUESS_FLOPS[device]
                source = (f"guessed: {params / 1e6:,.0f}M parameters x {tokens:,.0f} tokens per sequence on "
                          f"{'a CUDA GPU' if device == 'cuda' else 'this CPU'}, no run of this model here yet")
        seconds = sps * sequences if sps is not None else None
        return {"steps": steps, "sequences": sequences, "seconds": seconds, "seconds_per_sequence": sps,
                "source": source, "long": bool(seconds and seconds > LONG_RUN_S)}

    # ------------------------------------------------------------------ start, stop, resume (the job manager)
    def start(self, run_id: str) -> int:
        """Queue a created run as a ``train`` job. Training jobs run one at a time, in the order they were
        queued; jobs of other lanes (expansion, evolution) don't wait for them.

        Returns:
            How many training jobs run or wait before it (0: it starts now).

        Raises:
            RunError: the run was started before (use ``resume``), or needs GPUs this machine lacks.
        """
        f = self.folder(run_id)
        m = f.meta()
        state = _state(self._job(m))
        if state != "created":
            hint = " (use resume)" if state in RESUMABLE_STATES else ""
            raise RunError(f"run {run_id} is {state}; it can be started only when created{hint}")
        check_gpus(int(m.get("num_processes") or 1), m.get("backend"))
        job_id = self.jobs.submit(TRAIN_JOB, {"run_id": run_id}, [])
        f.update_meta(job_id=job_id)
        return self.jobs.ahead(job_id)

    def resume(self, run_id: str) -> int:
        """Queue a stopped, failed or interrupted run's job again; it continues from its latest
        ``output/checkpoint-*`` (from the start when it saved none).

        Returns:
            How many training jobs run or wait before it. Raises RunError in any other state.
        """
        m = self.folder(run_id).meta()
        state = _state(self._job(m))
        if state not in RESUMABLE_STATES:
            raise RunError(f"run {run_id} is {state}; it can be resumed only when "
                           f"{', '.join(RESUMABLE_STATES[:-1])} or {RESUMABLE_STATES[-1]}")
        self.jobs.resume(int(m["job_id"]))
        return self.jobs.ahead(int(m["job_id"]))

    def stop(self, run_id: str, force: bool = False) -> str:
        """Stop a run's job: a queued one at once (``stopped``); a running one gets SIGTERM, saves a checkpoint
        and ends (``stopping``, then ``stopped``). ``force`` kills its process group at once; it then resumes
        from its last saved checkpoint.

        Returns:
            The new state. Raises RunError if the run is not queued or running.
        """
        m = self.folder(run_id).meta()
        state = _state(self._job(m))
        if state not in ACTIVE_STATES:
            raise RunError(f"run {run_id} is {state}, not running")
        try:
            return self.jobs.stop(int(m["job_id"]), force=force)
        except ValueError as e:
            raise RunError(str(e)) from None

    def queued(self) -> list[str]:
        """Run ids waiting in the training lane, next first."""
        out = []
        for job_id in self.jobs.queued(TRAIN_LANE):
            try:
                out.append(self.run_of_job(job_id))
            except Exception:  # noqa: BLE001
                continue
        return out

    def checkpoints(self, run_id: str) -> list[Path]:
        """The run's ``output/checkpoint-<step>`` folders, oldest first."""
        return self.folder(run_id).checkpoints()

    # ------------------------------------------------------------------ reading
    def events(self, run_id: str, since_offset: int = 0) -> tuple[list[dict], int]:
        """The run's events after byte ``since_offset`` of ``events.jsonl``: ``(events, next_offset)``. Keep
        ``next_offset`` for the next call, so each poll reads only what was appended."""
        return self.folder(run_id).events(since_offset)

    def log_tail(self, run_id: str, n_lines: int = 40) -> str:
        """The last ``n_lines`` of the run's ``train.log`` (reads only the file's end)."""
        return self.folder(run_id).log_tail(n_lines)

    def curve(self, run_id: str):
        """The loss curves so far: a DataFrame with ``step`` (int), ``value`` (float) and ``series``
        (``loss`` / ``eval loss``), sorted by series then step (for ``gr.LinePlot``)."""
        import pandas as pd

        view = self.folder(run_id).view()
        rows = [(int(step), float(v), series) for (series, step), v in list(view.points.items())]
        df = pd.DataFrame(rows, columns=["step", "value", "series"])
        return df.sort_values(["series", "step"]).reset_index(drop=True)

    def status(self, run_id: str) -> dict:
        """The run now: ``run_id, name, state, message, job_id, base_model, method, template, step, max_steps,
        epoch, start_step (where the current attempt began), num_train_epochs (as configured), micro and micro_of
        (micro-batches done inside the step under way, None between steps), fraction (0..1, micro-batches
        included), eta_s,
        tokens_per_second, loss_tokens_per_second, loss, eval_loss, learning_rate, final_loss, final_eval_loss,
        queue_position (0: next in the training lane), registered_as, n_train, n_eval, snapshot_sha256, filters
        (the recorded filter's fields, see ``filter``), created_at, started_at, ended_at, attempts, pid,
        command``. Missing numbers are None.

        Raises:
            RunError: no such run.
        """
        f = self.folder(run_id)
        m = f.meta()
        view = f.view()
        cfg = f.config()
        job = self._job(m)
        state = _state(job)
        if job is not None:
            message = self.jobs.progress(int(job["id"]), job).message
        else:
            message = f"{m.get('n_train')} train / {m.get('n_eval')} eval conversations frozen"
        p = dict(view.progress)
        step, max_steps = p.get("step"), p.get("max_steps")
        micro = view.micro() if view.end is None else None
        frac = (step / max_steps) if isinstance(step, (int, float)) and max_steps else 0.0
        if micro and frac < 1.0:
            frac += min(1.0, micro[0] / micro[1]) / max_steps
        if state == "finished":
            frac = 1.0
        waiting = self.jobs.queued(TRAIN_LANE)
        qpos = waiting.index(job["id"]) if job is not None and job["id"] in waiting else None
        live = state in LIVE_STATES
        return {
            "run_id": run_id, "name": m.get("name") or run_id, "state": state, "message": message,
            "job_id": m.get("job_id"),
            "base_model": cfg["base_model"], "template": cfg["template"],
            "method": f"dpo ({cfg['method']})" if cfg.get("objective") == "dpo" else cfg["method"],
            "step": step, "max_steps": max_steps, "epoch": p.get("epoch"),
            "start_step": (view.start or {}).get("step"),
            # the epochs the user set (the Trainer's own count is 1 when max steps end the run within an epoch)
            "num_train_epochs": cfg["hyperparams"].get("num_train_epochs", p.get("num_train_epochs")),
            "micro": micro[0] if micro else None, "micro_of": micro[1] if micro else None,
            "fraction": max(0.0, min(1.0, frac)),
            "eta_s": p.get("eta_s") if live else None,
            "tokens_per_second": p.get("tokens_per_second"), "loss_tokens_per_second": p.get("loss_tokens_per_second"),
            "loss": view.last("loss") if view.last("loss") is not None else p.get("loss"),
            "eval_loss": view.last("eval loss") if view.last("eval loss") is not None else p.get("eval_loss"),
            "learning_rate": p.get("learning_rate"),
            "final_loss": p.get("final_loss"), "final_eval_loss": p.get("final_eval_loss"),
            "queue_position": qpos, "registered_as": m.get("registered_as"), "n_train": m.get("n_train"),
            "n_eval": m.get("n_eval"), "snapshot_sha256": cfg.get("snapshot_sha256"),
            "filters": cfg["filters"] if "filters" in cfg else (m.get("filters") or {}),
            "created_at": m.get("created_at"), "started_at": m.get("started_at"), "ended_at": m.get("ended_at"),
            "attempts": m.get("attempts", 0), "pid": m.get("pid") if live else None,
            "command": self.command_str(run_id),
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
        if s.get("micro") and s.get("micro_of"):
            parts[-1] += f" (micro-batch {s['micro']}/{s['micro_of']})"
        if s.get("epoch") is not None:
            n = s.get("num_train_epochs")
            parts.append(f"epoch {s['epoch']:.2f}/{format(n, 'g') if isinstance(n, (int, float)) else '?'}")
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
        for run_id in self._run_ids():
            try:
                out.append(self.status(run_id))
            except (RunError, OSError, KeyError, json.JSONDecodeError):
                continue
        return sorted(out, key=lambda s: s.get("created_at") or 0, reverse=True)

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
            if s["state"] not in ACTIVE_STATES and (s["job_id"] is None or s["job_id"] not in self.jobs.active()):
                return s
            if deadline is not None and time.monotonic() > deadline:
                return s
            time.sleep(poll)

    def kill_all(self, timeout: float = 30.0) -> list[str]:
        """Kill (SIGKILL, whole process group) the process of every run that still has one, and wait up to
        ``timeout`` seconds for their jobs to end (for tests and shutting a machine down; a page or a closing
        studio leaves runs going). Returns the run ids killed."""
        killed = []
        for run_id in self._run_ids():
            f = self.folder(run_id)
            pid = f.meta().get("pid")
            if f.process_alive():
                try:
                    os.killpg(int(pid), signal.SIGKILL)
                    killed.append(run_id)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + timeout
        for run_id in killed:
            job_id = self.job_id(run_id)
            while job_id in self.jobs.active() and time.monotonic() < deadline:
                time.sleep(0.1)
        return killed

    # ------------------------------------------------------------------ registry
    def register(self, run_id: str, name: str | None = None) -> str:
        """Add a finished run's final checkpoint to the registry (done when a run finishes; see
        ``studio.runs.TrainingJobs.register``). Registering twice returns the existing entry.

        Raises:
            RunError: the run has not finished or has no final output. RegistryError: the entry is invalid.
        """
        return self.kind.register(self.folder(run_id), name)

    def _resolve_adapter(self, name_or_run: str) -> ModelSpec:
        reg = self.studio.registry
        if name_or_run in reg.names():
            spec = reg.get(name_or_run)
        else:
            try:
                meta = self.folder(name_or_run).meta()
            except RunError:
                raise RunError(f"'{name_or_run}' is neither a registry model nor a run id") from None
            reg_name = meta.get("registered_as") or self.register(name_or_run)
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

    def export_folder(self, export_name: str) -> Path:
        """Where an export named ``export_name`` goes: ``<data>/exports/<export_name>``, resolved (symbolic links
        followed) and checked to lie strictly inside the exports folder (``studio.paths.safe_child``).

        This is the page's rule: a visitor names a folder, never a server path. The command line
        (``wvstudio export-model --out DIR``) still takes any path, its user owns the machine.

        Raises:
            RunError: ``EXPORT_NAME_REFUSED``, the same text for every refusal: not a ``str``, empty, a path
                (``/etc``, ``a/b``), ``..`` or ``../../x``, a hidden name, or a name in the exports folder that is
                a link leading out of it (whether its target exists or not). Nothing is looked up outside the
                exports folder.
        """
        try:
            return safe_child(self.studio.settings.export_dir, export_name, "export name")
        except ValueError:
            raise RunError(EXPORT_NAME_REFUSED) from None

    def export_named(self, name: str, export_name: str, push_to_hub: str | None = None, merge: bool = True,
                     private: bool = True) -> dict:
        """``export`` into the exports folder under a name: what the Train tab's Export does.

        Args:
            name: the registry model to write.
            export_name: the folder's name inside ``<data>/exports`` (``export_folder`` rules). A name that is
                taken (a non-empty folder, or a file) is refused, never overwritten or renamed: the visitor
                chose that name; an empty folder is written into.
            push_to_hub, merge, private: as ``export``.

        Returns:
            ``{"path": str, "url": str | None, "name": export_name}`` (``path`` is the absolute folder).

        Raises:
            RunError: ``EXPORT_NAME_REFUSED``; ``"an export named '<name>' exists already ..."``; or what
                ``export`` raises.
        """
        out = self.export_folder(export_name)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise RunError(f"an export named '{export_name}' exists already in the exports folder; choose another "
                           "name")
        return {**self.export(name, out, push_to_hub=push_to_hub, merge=merge, private=private),
                "name": export_name}

    def export(self, name: str, out_dir: str | Path, push_to_hub: str | None = None, merge: bool = True,
               private: bool = True) -> dict:
        """Write a registry model to a folder (any path: the command line's export; a name a visitor typed goes
        through ``export_named``), and push it to the Hugging Face Hub when asked.

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
        write_json(out / "wvstudio_lineage.json", {"name": spec.name, "kind": spec.kind, "base": spec.base,
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
