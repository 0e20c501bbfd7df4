"""The training program: fine-tune a causal LM on a run folder's conversation snapshot (Vicuna v1.1 recipe).

Run it as its own process, on one device or many::

    accelerate launch --num_processes N [--config_file training/configs/<name>.yaml] \\
        -m training.train --run-dir RUN_DIR [--resume]
    python -m training.train --run-dir RUN_DIR [--resume]          # single process

``RUN_DIR/config.json`` (written by the studio, see :func:`load_run_config`) names the base model, the method
(``lora``, ``qlora`` or ``full``), the template, the snapshot files and the hyperparameters
(:data:`DEFAULT_HYPERPARAMS`). The program writes into ``RUN_DIR``:

- ``events.jsonl``: one JSON object per line, ``{"type", "time" (unix seconds), ...}``, appended and flushed by
  the main process: ``status`` (phase messages), ``start``, ``progress`` (every logging step), ``substep``
  (micro-batches done inside a step of gradient accumulation, at most one a second), ``eval``,
  ``checkpoint``, ``end``, and ``error`` on a crash (then the exit status is 1). See :class:`EventWriter`.
- ``output/checkpoint-<step>/``: Trainer checkpoints (resumable), at most ``save_total_limit`` kept.
- ``output/final/``: the adapter (LoRA/QLoRA: peft adapter + tokenizer) or the full model (+ tokenizer and
  generation config), loadable with transformers/peft; plus ``training_run.json`` (the run's lineage).

Stop: the file ``RUN_DIR/STOP`` (or SIGTERM/SIGINT) makes the program save a checkpoint at the current step and
end with an ``end`` event of status ``"stopped"``. ``--resume`` continues from the latest checkpoint with the same
step count, optimizer and scheduler state.

The recipe (FastChat ``scripts/train_vicuna_13b.sh``, ``fastchat/train/train.py``, ``train_lora.py``): 3 epochs,
learning rate 2e-5, cosine schedule, warmup ratio 0.04, weight decay 0, max length 2048, global batch 128 by
gradient accumulation, bf16 where supported, gradient checkpointing for full fine-tunes, LoRA r=8 alpha=16
dropout 0.05 on q_proj and v_proj, QLoRA 4-bit NF4 with double quantization (bitsandbytes, CUDA only); loss on
assistant messages only (:mod:`training.data`). Built on transformers ``Trainer``, peft and accelerate.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_HYPERPARAMS",
    "METHODS",
    "PADDINGS",
    "TrainError",
    "EventWriter",
    "gradient_accumulation_steps",
    "latest_checkpoint",
    "load_run_config",
    "main",
    "merge_adapter",
    "resolve_hyperparams",
    "validate_run_config",
]

logger = logging.getLogger("training")

#: Fine-tuning methods.
METHODS = ("lora", "qlora", "full")
#: Batching: pad to the longest of a batch, the same with length-grouped batches, padding-free packing, or
#: FastChat's padding of every sample to ``max_length`` (``max_length``: for comparison, e.g. in ``bench/``).
PADDINGS = ("longest", "group_by_length", "packed", "max_length")

#: The Vicuna v1.1 recipe's defaults (FastChat ``scripts/train_vicuna_13b.sh`` and ``fastchat/train/train_lora.py``).
#: ``bf16``/``gradient_checkpointing`` ``"auto"``: bf16 where CUDA supports it; checkpointing for full fine-tunes.
#: ``eval_steps``/``save_steps`` ``None``: once per epoch. ``max_steps`` -1: from the epochs.
#: ``attn_implementation`` ``"auto"``: flash_attention_2 on CUDA when installed (half-precision weights), else
#: transformers' default (sdpa).
DEFAULT_HYPERPARAMS: dict[str, Any] = {
    "num_train_epochs": 3,
    "learning_rate": 2e-5,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.04,
    "weight_decay": 0.0,
    "max_length": 2048,
    "global_batch_size": 128,
    "per_device_train_batch_size": 2,
    "bf16": "auto",
    "gradient_checkpointing": "auto",
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "lora_target": "q_proj,v_proj",
    "padding": "group_by_length",
    "max_steps": -1,
    "logging_steps": 1,
    "eval_steps": None,
    "save_steps": None,
    "save_total_limit": 2,
    "seed": 42,
    "attn_implementation": "auto",
}

_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
               "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay")


class TrainError(Exception):
    """A run that cannot start or go on; the message says why and what to change."""


# ---------------------------------------------------------------------------------------------- hyperparameters


def _as_int(key: str, v: Any, lo: int | None = None, allow_none: bool = False) -> int | None:
    if v is None or v == "":
        if allow_none:
            return None
        raise ValueError(f"hyperparameter {key!r}: a whole number is required")
    if isinstance(v, bool):
        raise ValueError(f"hyperparameter {key!r}: expected a whole number, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"hyperparameter {key!r}: expected a whole number, got {v!r}") from None
    if not f.is_integer():
        raise ValueError(f"hyperparameter {key!r}: expected a whole number, got {v!r}")
    i = int(f)
    if lo is not None and i < lo:
        raise ValueError(f"hyperparameter {key!r}: must be at least {lo}, got {i}")
    return i


def _as_float(key: str, v: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
              hi_open: bool = False) -> float:
    if isinstance(v, bool):
        raise ValueError(f"hyperparameter {key!r}: expected a number, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"hyperparameter {key!r}: expected a number, got {v!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"hyperparameter {key!r}: must be finite, got {v!r}")
    if lo is not None and (f < lo or (lo_open and f == lo)):
        raise ValueError(f"hyperparameter {key!r}: must be {'>' if lo_open else '>='} {lo}, got {f}")
    if hi is not None and (f > hi or (hi_open and f == hi)):
        raise ValueError(f"hyperparameter {key!r}: must be {'<' if hi_open else '<='} {hi}, got {f}")
    return f


def _as_auto_bool(key: str, v: Any) -> bool | str:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("auto", "true", "false"):
        s = v.strip().lower()
        return "auto" if s == "auto" else s == "true"
    raise ValueError(f"hyperparameter {key!r}: expected true, false or 'auto', got {v!r}")


def resolve_hyperparams(d: dict | None = None, *, method: str | None = None) -> dict:
    """Fill in and check hyperparameters: the recipe's defaults for what is missing, values coerced and checked.

    Args:
        d: hyperparameters (keys of :data:`DEFAULT_HYPERPARAMS`; any may be missing or ``None`` for the default,
            except ``eval_steps``/``save_steps``/``save_total_limit``, whose ``None`` is a value). Numbers may come
            as floats or strings (e.g. from form fields): ``8.0`` is taken as ``8``.
        method: ``lora``, ``qlora`` or ``full``; when given, ``gradient_checkpointing="auto"`` is resolved (true for
            full fine-tunes). ``bf16="auto"`` is left for the training process, which sees the GPU.

    Returns:
        A new dict with every key of :data:`DEFAULT_HYPERPARAMS`, in that order.

    Raises:
        ValueError: an unknown key, or a value of the wrong type or out of range (the message names the key).
    """
    d = dict(d or {})
    unknown = sorted(set(d) - set(DEFAULT_HYPERPARAMS))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {', '.join(map(repr, unknown))}; known: "
                         f"{', '.join(DEFAULT_HYPERPARAMS)}")
    nullable = {"eval_steps", "save_steps", "save_total_limit"}
    hp = {k: (d[k] if k in d and (d[k] is not None or k in nullable) else v) for k, v in DEFAULT_HYPERPARAMS.items()}
    hp["num_train_epochs"] = _as_float("num_train_epochs", hp["num_train_epochs"], lo=0, lo_open=True)
    if hp["num_train_epochs"].is_integer():
        hp["num_train_epochs"] = int(hp["num_train_epochs"])
    hp["learning_rate"] = _as_float("learning_rate", hp["learning_rate"], lo=0, lo_open=True)
    if hp["lr_scheduler_type"] not in _SCHEDULERS:
        raise ValueError(f"hyperparameter 'lr_scheduler_type': unknown {hp['lr_scheduler_type']!r}; "
                         f"one of {', '.join(_SCHEDULERS)}")
    hp["warmup_ratio"] = _as_float("warmup_ratio", hp["warmup_ratio"], lo=0, hi=1, hi_open=True)
    hp["weight_decay"] = _as_float("weight_decay", hp["weight_decay"], lo=0)
    hp["max_length"] = _as_int("max_length", hp["max_length"], lo=16)
    hp["global_batch_size"] = _as_int("global_batch_size", hp["global_batch_size"], lo=1)
    hp["per_device_train_batch_size"] = _as_int("per_device_train_batch_size", hp["per_device_train_batch_size"],
                                                 lo=1)
    hp["bf16"] = _as_auto_bool("bf16", hp["bf16"])
    hp["gradient_checkpointing"] = _as_auto_bool("gradient_checkpointing", hp["gradient_checkpointing"])
    hp["lora_r"] = _as_int("lora_r", hp["lora_r"], lo=1)
    hp["lora_alpha"] = _as_float("lora_alpha", hp["lora_alpha"], lo=0, lo_open=True)
    if hp["lora_alpha"].is_integer():
        hp["lora_alpha"] = int(hp["lora_alpha"])
    hp["lora_dropout"] = _as_float("lora_dropout", hp["lora_dropout"], lo=0, hi=1, hi_open=True)
    target = hp["lora_target"]
    if isinstance(target, (list, tuple)):
        target = ",".join(map(str, target))
    if not isinstance(target, str) or not [t for t in target.split(",") if t.strip()]:
        raise ValueError("hyperparameter 'lora_target': give module names separated by commas "
                         "(e.g. 'q_proj,v_proj') or 'all-linear'")
    hp["lora_target"] = ",".join(t.strip() for t in target.split(",") if t.strip())
    if hp["padding"] not in PADDINGS:
        raise ValueError(f"hyperparameter 'padding': one of {', '.join(PADDINGS)}, got {hp['padding']!r}")
    hp["max_steps"] = _as_int("max_steps", hp["max_steps"], lo=-1)
    if hp["max_steps"] == 0:
        raise ValueError("hyperparameter 'max_steps': -1 (from the epochs) or at least 1")
    hp["logging_steps"] = _as_int("logging_steps", hp["logging_steps"], lo=1)
    hp["eval_steps"] = _as_int("eval_steps", hp["eval_steps"], lo=1, allow_none=True)
    hp["save_steps"] = _as_int("save_steps", hp["save_steps"], lo=1, allow_none=True)
    hp["save_total_limit"] = _as_int("save_total_limit", hp["save_total_limit"], lo=1, allow_none=True)
    hp["seed"] = _as_int("seed", hp["seed"])
    if not isinstance(hp["attn_implementation"], str) or not hp["attn_implementation"]:
        raise ValueError("hyperparameter 'attn_implementation': 'auto' or a transformers attention name")
    if method is not None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if hp["gradient_checkpointing"] == "auto":
            hp["gradient_checkpointing"] = method == "full"
    return hp


def gradient_accumulation_steps(hp: dict, world_size: int = 1) -> int:
    """``ceil(global_batch_size / (per_device_train_batch_size * world_size))``, at least 1.

    The effective global batch is then ``per_device * world_size * steps`` (>= ``global_batch_size``).
    """
    per_step = int(hp["per_device_train_batch_size"]) * max(1, int(world_size))
    return max(1, math.ceil(int(hp["global_batch_size"]) / per_step))


# ---------------------------------------------------------------------------------------------- run config


def load_run_config(run_dir: str | Path) -> dict:
    """Read and check ``RUN_DIR/config.json`` (see :func:`validate_run_config`).

    Returns:
        The config with ``hyperparams`` resolved (:func:`resolve_hyperparams` with the method).

    Raises:
        TrainError: the file is missing, not JSON, or invalid (the message names the field).
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise TrainError(f"{path}: run config not found")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TrainError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    return validate_run_config(cfg, run_dir=run_dir, check_hardware=False)


def validate_run_config(cfg: dict, run_dir: str | Path | None = None, check_hardware: bool = True) -> dict:
    """Check a run config (the contents of ``config.json``) and return it with resolved hyperparameters.

    Required: ``base_model_path`` (checkpoint folder or hub id), ``method`` (``lora``/``qlora``/``full``),
    ``template`` (``vicuna_v1.1``, another text template of :mod:`studio.templates`, or ``chat_template``),
    ``train_file``. Optional: ``run_id``, ``base_model``, ``eval_file`` (null: no evaluation),
    ``snapshot_sha256``, ``output_dir`` (default ``"output"``), ``hyperparams``.

    Args:
        cfg: the config dict.
        run_dir: when given, ``train_file``/``eval_file`` must exist in it.
        check_hardware: also check that the method can run here (QLoRA needs CUDA and bitsandbytes).

    Raises:
        TrainError: what is wrong, naming the field.
    """
    from studio import templates

    if not isinstance(cfg, dict):
        raise TrainError("run config must be a JSON object")
    out = dict(cfg)
    for key in ("base_model_path", "method", "template", "train_file"):
        if not isinstance(cfg.get(key), str) or not cfg[key]:
            raise TrainError(f"run config: {key!r} is required (a string)")
    if cfg["method"] not in METHODS:
        raise TrainError(f"run config: method must be one of {', '.join(METHODS)}, got {cfg['method']!r}")
    if cfg["template"] != "chat_template" and cfg["template"] not in templates.TEMPLATES:
        raise TrainError(f"run config: template must be 'chat_template' or one of "
                         f"{', '.join(templates.TEMPLATE_NAMES)}, got {cfg['template']!r}")
    try:
        out["hyperparams"] = resolve_hyperparams(cfg.get("hyperparams") or {}, method=cfg["method"])
    except ValueError as e:
        raise TrainError(f"run config: {e}") from None
    out.setdefault("output_dir", "output")
    out.setdefault("eval_file", None)
    if run_dir is not None:
        for key in ("train_file", "eval_file"):
            if out.get(key) and not (Path(run_dir) / out[key]).is_file():
                raise TrainError(f"run config: {key} {out[key]!r} not found in {run_dir}")
    if check_hardware and cfg["method"] == "qlora":
        _check_qlora()
    return out


def _check_qlora() -> None:
    import torch

    if not torch.cuda.is_available():
        raise TrainError(
            "QLoRA needs a CUDA GPU: its 4-bit NF4 quantization (bitsandbytes) runs on CUDA only, and this machine "
            "has none (torch.cuda.is_available() is False). Choose method 'lora' or 'full' here, or run on a GPU.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TrainError("QLoRA needs the bitsandbytes package (pip install bitsandbytes) on the training "
                         "machine; or choose method 'lora'.") from None


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The ``checkpoint-<step>`` folder with the highest step that holds a complete Trainer state, or None."""
    d = Path(output_dir)
    if not d.is_dir():
        return None
    found = []
    for p in d.glob("checkpoint-*"):
        tail = p.name.split("-", 1)[1]
        if p.is_dir() and tail.isdigit() and (p / "trainer_state.json").is_file():
            found.append((int(tail), p))
    return max(found)[1] if found else None


# ---------------------------------------------------------------------------------------------- events


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
        try:
            return _clean(v.item())
        except (TypeError, ValueError):
            return str(v)
    return v


class EventWriter:
    """Appends ``{"type", "time", ...}`` JSON lines to ``events.jsonl``, flushed per line.

    Only the main process writes (``enabled``), except ``error`` events, which any process writes (with its
    ``rank``) so that a crash on another rank is not silent. Non-finite floats are written as ``null``.
    """

    def __init__(self, path: str | Path, enabled: bool = True, rank: int = 0):
        self.path = Path(path)
        self.enabled = enabled
        self.rank = rank

    def write(self, type_: str, **fields: Any) -> dict:
        """Append one event (if enabled, or always for ``error``) and return it."""
        event = {"type": type_, "time": round(time.time(), 3), **_clean(fields)}
        if self.enabled or type_ == "error":
            if type_ == "error" and self.rank:
                event["rank"] = self.rank
            line = json.dumps(event, ensure_ascii=False) + "\n"
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
        return event


def _peak_memory_bytes() -> int:
    """CUDA: the most memory torch allocated on this device; otherwise the process's peak resident set size."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return int(torch.cuda.max_memory_allocated())
    except Exception:  # pragma: no cover - no torch / broken CUDA
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


# ---------------------------------------------------------------------------------------------- trainer pieces

_SIGNALLED = {"n": 0}


def _on_signal(signum, frame):
    """First SIGTERM/SIGINT: stop cleanly after the current step (checkpoint, ``end`` event "stopped").

    The default action is restored at once, so a second signal ends the process immediately, even in the middle
    of a long backward pass (Python runs handlers only between bytecodes)."""
    _SIGNALLED["n"] += 1
    signal.signal(signum, signal.SIG_DFL)
    logger.warning("signal %s: stopping after the current step (a checkpoint is saved); send again to kill", signum)


SUBSTEP_EVENT_S = 1.0
"""Least seconds between two ``substep`` events (micro-batches done inside one optimizer step)."""


def _make_trainer_classes():
    """Build the Trainer subclass and callback (deferred so that importing this module stays light)."""
    import torch
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from training.data import IGNORE_INDEX

    class StudioTrainer(Trainer):
        """transformers ``Trainer`` that also counts the non-pad input tokens, the tokens that carry loss and all
        input positions (padding included), summed over processes, logged at each logging step as ``num_tokens``,
        ``num_label_tokens`` and ``num_input_tokens`` (cumulative since this process started training). Counting
        stays on the device until a logging step, so there is no host sync per micro-batch."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self._counts = None
            self.tokens_seen = [0, 0, 0]

        def _get_train_sampler(self, train_dataset=None):
            # group_by_length: transformers sizes the sampler's length-sorted megabatches from the per-process
            # batch x accumulation, so N processes would group (and so order) the samples differently from one
            # process with N x the accumulation. Counting the global batch makes the order depend on the global
            # batch only: rank r takes per-device batch r of each global batch, as accelerate shards it.
            sampler = super()._get_train_sampler(train_dataset)
            if isinstance(sampler, LengthGroupedSampler):
                sampler.batch_size = self.args.train_batch_size * self.args.gradient_accumulation_steps \
                    * self.args.world_size
            return sampler

        def training_step(self, model, inputs, num_items_in_batch=None):
            ids = inputs["input_ids"]
            mask = inputs.get("attention_mask")
            total = torch.tensor(ids.numel(), device=ids.device)
            n = mask.sum() if mask is not None else total
            nl = (inputs["labels"] != IGNORE_INDEX).sum()
            c = torch.stack([n.to(torch.long), nl.to(torch.long), total.to(torch.long)])
            self._counts = c if self._counts is None else self._counts + c
            return super().training_step(model, inputs, num_items_in_batch)

        def log(self, logs, start_time=None):
            if "loss" in logs and "eval_loss" not in logs:
                c = self._counts if self._counts is not None else torch.zeros(3, dtype=torch.long,
                                                                              device=self.args.device)
                if self.accelerator.num_processes > 1:
                    c = self.accelerator.reduce(c.to(self.args.device), reduction="sum")
                for i, x in enumerate(c.tolist()):
                    self.tokens_seen[i] += int(x)
                self._counts = None
                logs["num_tokens"], logs["num_label_tokens"], logs["num_input_tokens"] = self.tokens_seen
            super().log(logs, start_time)

    class RunCallback(TrainerCallback):
        """Writes the run's events and honours stop requests (``RUN_DIR/STOP``, SIGTERM, SIGINT)."""

        def __init__(self, run_dir: Path, events: EventWriter, start_info: dict):
            self.stop_file = run_dir / "STOP"
            self.events = events
            self.start_info = start_info
            self.stopped = False
            self.t0 = time.time()
            self.cpu0 = time.process_time()
            self.step0 = 0
            self.last = (time.time(), 0, 0)
            self.final_loss = None
            self.final_eval_loss = None
            self.train_runtime = None
            self.last_checkpoint = None
            self.micro = 0
            self.micro_written = 0.0

        def _stop_requested(self, args, state) -> bool:
            local = _SIGNALLED["n"] > 0 or (state.is_world_process_zero and self.stop_file.exists())
            if torch.distributed.is_available() and torch.distributed.is_initialized() \
                    and torch.distributed.get_world_size() > 1:
                # Every rank must agree on the step at which to stop (rank 0 sees the file first).
                flag = torch.tensor([1 if local else 0], device=args.device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                return bool(flag.item())
            return local

        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.time()
            self.cpu0 = time.process_time()
            self.step0 = state.global_step
            self.last = (self.t0, 0, 0)
            if state.is_world_process_zero:
                self.events.write("start", max_steps=state.max_steps, num_train_epochs=state.num_train_epochs,
                                  step=state.global_step, **self.start_info)
                logger.info("training: %d steps (%s epochs), from step %d", state.max_steps,
                            state.num_train_epochs, state.global_step)

        def on_step_begin(self, args, state, control, **kw):
            self.micro = 0

        def on_substep_end(self, args, state, control, **kw):
            """A micro-batch of the current optimizer step is done (gradient accumulation): a ``substep`` event
            ``{step (steps done), micro (micro-batches done in step + 1), of (micro-batches per step)}``, at most
            one per ``SUBSTEP_EVENT_S`` seconds, so a long step's progress moves on the page."""
            self.micro += 1
            now = time.time()
            if state.is_world_process_zero and now - self.micro_written >= SUBSTEP_EVENT_S:
                self.micro_written = now
                self.events.write("substep", step=state.global_step, micro=self.micro,
                                  of=int(args.gradient_accumulation_steps))

        def on_step_end(self, args, state, control, **kw):
            if self._stop_requested(args, state) and state.global_step < state.max_steps:
                self.stopped = True
                control.should_save = True
                control.should_log = True
                control.should_training_stop = True
                if state.is_world_process_zero:
                    logger.warning("stop requested: saving a checkpoint at step %d and ending", state.global_step)

        def on_epoch_end(self, args, state, control, **kw):
            if self.stopped:  # the stop checkpoint is saved already; no epoch-end evaluation or second save
                control.should_save = False
                control.should_evaluate = False

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            if "train_runtime" in logs:
                self.train_runtime = logs["train_runtime"]
            if "loss" not in logs or "eval_loss" in logs:
                return
            self.final_loss = logs["loss"]
            if not state.is_world_process_zero:
                return
            now = time.time()
            t_prev, n_prev, nl_prev = self.last
            n, nl = logs.get("num_tokens", 0), logs.get("num_label_tokens", 0)
            dt = max(now - t_prev, 1e-9)
            self.last = (now, n, nl)
            done = state.global_step - self.step0
            elapsed = now - self.t0
            eta = (state.max_steps - state.global_step) * elapsed / done if done > 0 else None
            self.events.write(
                "progress", step=state.global_step, max_steps=state.max_steps, epoch=logs.get("epoch", state.epoch),
                loss=logs["loss"], learning_rate=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
                tokens_per_second=(n - n_prev) / dt, loss_tokens_per_second=(nl - nl_prev) / dt,
                eta_s=eta, elapsed_s=elapsed, cpu_time_s=time.process_time() - self.cpu0, num_tokens=n,
                num_label_tokens=nl, num_input_tokens=logs.get("num_input_tokens", 0),
                peak_memory_bytes=_peak_memory_bytes(),
                **{k: v for k, v in logs.items() if k.startswith(("rewards/", "logps/"))})  # DPO (TRL) metrics

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            metrics = metrics or {}
            if "eval_loss" in metrics:
                self.final_eval_loss = metrics["eval_loss"]
                if state.is_world_process_zero:
                    self.events.write("eval", step=state.global_step, epoch=state.epoch,
                                      eval_loss=metrics["eval_loss"])

        def on_save(self, args, state, control, **kw):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.last_checkpoint = path
            if state.is_world_process_zero:
                self.events.write("checkpoint", step=state.global_step, path=str(path))

    return StudioTrainer, RunCallback


# ---------------------------------------------------------------------------------------------- model


def _load_config(path: str):
    """AutoConfig for ``path``, without a stale GGUF ``quantization_config``.

    A checkpoint converted from GGUF (``studio.registry.convert_gguf``) keeps ``quantization_config:
    {"quant_method": "gguf"}`` in its config.json although its safetensors weights are plain floats; transformers
    then marks the loaded model as quantized and Trainer refuses to train it. The entry is dropped here.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    qc = getattr(config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    if qc is not None and str(getattr(method, "value", method)).lower() == "gguf":
        del config.quantization_config
    return config


def _check_base_path(path: str) -> None:
    p = Path(path).expanduser()
    looks_local = p.exists() or p.is_absolute() or path.startswith((".", "~")) or path.count("/") != 1
    if looks_local and not (p / "config.json").is_file():
        raise TrainError(f"base model {path!r}: no checkpoint there (no config.json); pick a model from the "
                         "registry whose checkpoint exists")


def _precision(hp: dict, method: str):
    """(bf16, fp16, model dtype) for this machine. Full fine-tunes keep float32 master weights (mixed precision by
    autocast, as FastChat's FSDP recipe); LoRA/QLoRA load the frozen base in half precision on CUDA."""
    import torch

    cuda = torch.cuda.is_available()
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    bf16 = bf16_ok if hp["bf16"] == "auto" else bool(hp["bf16"])
    # Pre-Ampere GPUs: adapters train in fp16 mixed precision instead (the frozen base in fp16).
    fp16 = cuda and not bf16 and hp["bf16"] == "auto" and method in ("lora", "qlora")
    if method == "full" or not cuda:
        dtype = torch.float32
    else:
        dtype = torch.bfloat16 if bf16 else torch.float16 if fp16 else torch.float32
    return bf16, fp16, dtype


def _attn_implementation(hp: dict, dtype) -> str | None:
    import importlib.util

    import torch

    impl = hp["attn_implementation"]
    if impl != "auto":
        return impl
    if torch.cuda.is_available() and dtype in (torch.bfloat16, torch.float16) \
            and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return None  # transformers' default (sdpa where the model supports it)


def _load_model(cfg: dict, hp: dict, dtype, attn: str | None, gc: bool):
    from transformers import AutoModelForCausalLM
    from transformers.integrations import is_deepspeed_zero3_enabled

    path = cfg["base_model_path"]
    kwargs: dict[str, Any] = {"config": _load_config(path), "dtype": dtype}
    if attn:
        kwargs["attn_implementation"] = attn
    if cfg["method"] == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)  # storage dtype: for ZeRO-3/FSDP sharding
        fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
        if not is_deepspeed_zero3_enabled() and not fsdp:
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.config.use_cache = False
    if cfg["method"] in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if cfg["method"] == "qlora":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gc,
                                                    gradient_checkpointing_kwargs={"use_reentrant": False})
        target = hp["lora_target"]
        lcfg = LoraConfig(r=hp["lora_r"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
                          target_modules="all-linear" if target == "all-linear" else target.split(","),
                          bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    return model, int(trainable), int(total)


# ---------------------------------------------------------------------------------------------- the run


def _dataset(samples: list[dict]):
    import datasets

    return datasets.Dataset.from_dict({
        "input_ids": [s["input_ids"] for s in samples],
        "labels": [s["labels"] for s in samples],
        "length": [s["length"] for s in samples],
    })


def run(run_dir: Path, resume: bool, events: EventWriter) -> int:
    """Do one training run in ``run_dir`` (see the module doc). Returns the exit status (0)."""
    cfg = load_run_config(run_dir)  # configuration errors come before the slow imports
    hp = cfg["hyperparams"]
    method = cfg["method"]
    _check_base_path(cfg["base_model_path"])
    if cfg.get("objective") == "dpo":  # preference tuning on TRL's DPOTrainer (training/dpo.py)
        from training import dpo

        return dpo.run(run_dir, resume, events, cfg)
    if method == "qlora":
        _check_qlora()
    import torch
    from transformers import AutoTokenizer, TrainingArguments, set_seed
    from transformers.utils import logging as hf_logging

    from training import data as tdata

    hf_logging.disable_progress_bar()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    ga = gradient_accumulation_steps(hp, world_size)
    set_seed(hp["seed"])
    if events.enabled and (run_dir / "STOP").exists():  # a stale stop request from an earlier attempt
        (run_dir / "STOP").unlink()
    out_dir = run_dir / cfg["output_dir"]
    resume_from = latest_checkpoint(out_dir) if resume else None
    if resume and resume_from is None:
        logger.warning("--resume: no checkpoint in %s; starting from the beginning", out_dir)

    # Tokenizer and data.
    path = cfg["base_model_path"]
    events.write("status", message=f"loading tokenizer and data ({cfg['template']} template)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    train_rows = tdata.load_conversations(run_dir / cfg["train_file"])
    train_samples, train_stats = tdata.build_dataset(train_rows, tokenizer, cfg["template"], hp["max_length"])
    logger.info("train data: %s", train_stats.as_dict())
    if not train_samples:
        raise TrainError(f"no training sample left from {cfg['train_file']} ({train_stats.conversations} "
                         f"conversations; reasons: {'; '.join(train_stats.errors[:3]) or 'none'})")
    eval_samples, eval_stats = [], None
    if cfg.get("eval_file"):
        eval_rows = tdata.load_conversations(run_dir / cfg["eval_file"])
        eval_samples, eval_stats = tdata.build_dataset(eval_rows, tokenizer, cfg["template"], hp["max_length"])
        logger.info("eval data: %s", eval_stats.as_dict())
        if not eval_samples:
            logger.warning("no evaluation sample left from %s: evaluation is off", cfg["eval_file"])

    # Arguments first: under DeepSpeed ZeRO-3 they make from_pretrained partition the weights as it loads.
    bf16, fp16, dtype = _precision(hp, method)
    gc = bool(hp["gradient_checkpointing"])
    cuda = torch.cuda.is_available()
    do_eval = bool(eval_samples)
    args = TrainingArguments(
        output_dir=str(out_dir),
        num_train_epochs=hp["num_train_epochs"],
        max_steps=hp["max_steps"],
        learning_rate=hp["learning_rate"],
        lr_scheduler_type=hp["lr_scheduler_type"],
        warmup_steps=hp["warmup_ratio"],  # transformers 5: a value < 1 is a ratio of the total steps
        weight_decay=hp["weight_decay"],
        per_device_train_batch_size=hp["per_device_train_batch_size"],
        per_device_eval_batch_size=hp["per_device_train_batch_size"],
        gradient_accumulation_steps=ga,
        bf16=bf16,
        fp16=fp16,
        activation_checkpointing=gc,  # transformers 5's name for gradient checkpointing
        activation_checkpointing_kwargs={"use_reentrant": False} if gc else None,
        logging_strategy="steps",
        logging_steps=hp["logging_steps"],
        logging_nan_inf_filter=False,  # report the loss as it is
        eval_strategy=("steps" if hp["eval_steps"] else "epoch") if do_eval else "no",
        eval_steps=hp["eval_steps"] if do_eval else None,
        save_strategy="steps" if hp["save_steps"] else "epoch",
        save_steps=hp["save_steps"] or 500,
        save_total_limit=hp["save_total_limit"],
        seed=hp["seed"],
        data_seed=hp["seed"],
        report_to="none",
        disable_tqdm=True,  # plain log lines (PrinterCallback) suit a log file better than progress bars
        log_level="warning",  # transformers' info level dumps whole configs at every save
        log_level_replica="warning",
        dataloader_pin_memory=cuda,
        # bf16 autocast on a CPU-only machine must be asked for explicitly; and so must DDP over gloo: without
        # use_cpu, N processes launched on a machine without CUDA (accelerate launch --multi_gpu / torchrun) each
        # train alone on the whole data set (accelerate's PartialState picks gloo/MULTI_CPU only when told cpu).
        use_cpu=(bf16 or world_size > 1) and not cuda,
        remove_unused_columns=False,
        label_names=["labels"],
        prediction_loss_only=True,
        train_sampling_strategy="group_by_length" if hp["padding"] == "group_by_length" else "random",
        length_column_name="length",
        ddp_find_unused_parameters=False,
        use_cache=False,
    )
    if args.world_size != world_size:  # launched as N processes that did not join one process group
        raise TrainError(f"launched as {world_size} processes (WORLD_SIZE) but training sees {args.world_size} "
                         f"(distributed type {args.distributed_state.distributed_type}); each process would train "
                         "alone. Launch with 'accelerate launch --multi_gpu' or a config of training/configs.")

    events.write("status", message=f"loading {cfg.get('base_model') or path} for {method}")
    attn = _attn_implementation(hp, dtype)
    model, trainable, total = _load_model(cfg, hp, dtype, attn, gc)
    padding = hp["padding"]
    if padding == "packed":
        ok, why = tdata.packing_support(model)
        if ok:
            collator = tdata.packed_collator(flash_attention=why.startswith("flash_attention"))
        else:
            logger.warning("padding 'packed' is not possible here (%s): padding to the longest of each "
                           "length-grouped batch instead", why)
            events.write("status", message=f"packing unavailable ({why}); using group_by_length")
            padding = "group_by_length"
            args.train_sampling_strategy = "group_by_length"
    if padding != "packed":
        collator = tdata.PadCollator(tokenizer.pad_token_id, pad_to="max_length" if padding == "max_length"
                                     else "longest", max_length=hp["max_length"],
                                     pad_to_multiple_of=8 if cuda and padding != "max_length" else None)

    StudioTrainer, RunCallback = _make_trainer_classes()
    start_info = {
        "n_train": len(train_samples), "n_eval": len(eval_samples), "world_size": world_size, "method": method,
        "trainable_params": trainable, "total_params": total, "template": cfg["template"], "padding": padding,
        # The effective global batch: samples per optimizer step over all processes (>= hp global_batch_size).
        "per_device_train_batch_size": hp["per_device_train_batch_size"], "gradient_accumulation_steps": ga,
        "global_batch_size": hp["per_device_train_batch_size"] * world_size * ga,
        "precision": "bf16" if bf16 else "fp16" if fp16 else "fp32",
        "attn_implementation": getattr(getattr(model, "config", None), "_attn_implementation", attn),
        "gradient_checkpointing": gc, "resumed_from": str(resume_from) if resume_from else None,
        "data": train_stats.as_dict(), "eval_data": eval_stats.as_dict() if eval_stats else None,
    }
    logger.info("run: %s", {k: v for k, v in start_info.items() if k not in ("data", "eval_data")})
    callback = RunCallback(run_dir, events, start_info)
    trainer = StudioTrainer(
        model=model, args=args, data_collator=collator, train_dataset=_dataset(train_samples),
        eval_dataset=_dataset(eval_samples) if do_eval else None, processing_class=tokenizer,
        callbacks=[callback])
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    state = trainer.state
    if callback.stopped:
        status, output = "stopped", callback.last_checkpoint
    else:
        status, output = "finished", run_dir / cfg["output_dir"] / "final"
        trainer.save_model(str(output))  # adapter or full model (+ generation config) and the tokenizer
        if trainer.is_world_process_zero():
            lineage = {k: cfg.get(k) for k in ("run_id", "base_model", "base_model_path", "method", "template",
                                               "snapshot_sha256")}
            lineage.update(hyperparams=hp, final_loss=callback.final_loss, final_eval_loss=callback.final_eval_loss,
                           step=state.global_step)
            (Path(output) / "training_run.json").write_text(json.dumps(_clean(lineage), indent=1))
    if trainer.is_world_process_zero():
        events.write("end", status=status, final_loss=callback.final_loss, final_eval_loss=callback.final_eval_loss,
                     output_path=str(output) if output else None, step=state.global_step,
                     train_runtime_s=callback.train_runtime or result.metrics.get("train_runtime"),
                     mean_loss=result.training_loss, peak_memory_bytes=_peak_memory_bytes())
        logger.info("%s at step %d; output: %s", status, state.global_step, output)
    return 0


def _fix_deepspeed_config_path() -> None:
    """The shipped DeepSpeed accelerate configs name their JSON file relative to the repository root
    (``training/configs/ds_zero2.json``); accelerate hands that path to the processes as it is, relative to the
    working directory. Where it is not found from there, point it at the repository's copy, so the command also
    works when started from another folder."""
    p = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if p and p != "none" and not os.path.isabs(p) and not os.path.exists(p):
        candidate = Path(__file__).resolve().parents[1] / p
        if candidate.is_file():
            os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = str(candidate)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--run-dir RUN_DIR [--resume]``. Returns the exit status (0, or 1 after an ``error`` event,
    2 for a missing run folder)."""
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="the run folder holding config.json and the snapshot")
    parser.add_argument("--resume", action="store_true", help="continue from the latest output/checkpoint-*")
    a = parser.parse_args(argv)
    run_dir = Path(a.run_dir).expanduser().resolve()
    if not (run_dir / "config.json").is_file():
        print(f"error: {run_dir} is not a run folder (no config.json)", file=sys.stderr)
        return 2
    _fix_deepspeed_config_path()
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    events = EventWriter(run_dir / "events.jsonl", enabled=rank == 0, rank=rank)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        return run(run_dir, a.resume, events)
    except BaseException as e:  # noqa: BLE001 - every crash becomes an error event and a non-zero exit
        tb = traceback.format_exc()
        message = str(e) if isinstance(e, TrainError) else f"{type(e).__name__}: {e}"
        logger.error("run failed: %s\n%s", message, tb)
        try:
            events.write("error", message=message, traceback=tb)
        except OSError:
            pass
        return 1


# ---------------------------------------------------------------------------------------------- merge


def merge_adapter(base_path: str | Path, adapter_path: str | Path, out_dir: str | Path, dtype: str = "auto") -> Path:
    """Merge a LoRA/QLoRA adapter into its base and save a full checkpoint (peft ``merge_and_unload``).

    The base is loaded unquantized (``dtype``: ``"auto"`` keeps the checkpoint's dtype; or ``"float32"``,
    ``"bfloat16"``, ``"float16"``), the adapter applied and merged, and the model (with generation config) and
    tokenizer (the adapter's if it has one, else the base's) saved into ``out_dir``. The folder is written beside
    ``out_dir`` and renamed into place, so a failure leaves nothing half-written.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        TrainError: the base or adapter folder is missing, or the merge fails (the reason is kept).
    """
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_path, adapter_path, out_dir = str(base_path), Path(adapter_path), Path(out_dir)
    if not (adapter_path / "adapter_config.json").is_file():
        raise TrainError(f"{adapter_path} is not an adapter folder (no adapter_config.json)")
    _check_base_path(base_path)
    tmp = out_dir.with_name(out_dir.name + f".merging-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        model = AutoModelForCausalLM.from_pretrained(base_path, config=_load_config(base_path), dtype=torch_dtype)
        model = PeftModel.from_pretrained(model, str(adapter_path)).merge_and_unload()
        tok_src = adapter_path if (adapter_path / "tokenizer_config.json").is_file() else base_path
        tokenizer = AutoTokenizer.from_pretrained(str(tok_src))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TrainError(f"could not merge {adapter_path} into {base_path}: {e}") from e
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out_dir)
    return out_dir


if __name__ == "__main__":
    sys.exit(main())
