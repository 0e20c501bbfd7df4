"""DPO runs from the studio's side: a preference set frozen into a run folder, on top of any registry checkpoint.

A DPO run is an ordinary training run (``studio.runs``: the same folder, ``events.jsonl``, job, queue, stop,
resume and registration), whose ``config.json`` says ``"objective": "dpo"``; ``training.train`` hands it to
``training.dpo`` (TRL's ``DPOTrainer``). Creating one (``create_dpo_run``):

- freezes the set's kept pairs into ``pairs.jsonl`` (``studio.preferences.snapshot_bytes``); its sha256 is the
  run's ``snapshot_sha256`` and equals the set's hash at that moment (``preference_set``: ``{id, name, sha256}``);
- takes the parent checkpoint from the registry: an ``hf``/``gguf`` entry is the base; an ``adapter`` entry (e.g.
  the SFT run's LoRA) trains further over its base (``adapter_path``), so the result registers as an adapter over
  the same base entry; the lineage names the parent (``parent``) and the preference set;
- renders prompts with the parent's template (``auto`` resolved as the registry does: the tokenizer's chat
  template when it has one, else Vicuna v1.1).
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from .runs import RunError, RunFolder, _slug, accelerate_argv, check_run_name, write_json

__all__ = ["DPO_METHODS", "dpo_defaults", "create_dpo_run", "preview_dpo", "parent_checkpoints"]

DPO_METHODS = ("lora", "full")
"""How a DPO run trains: a LoRA adapter (no second model in memory) or all weights."""


def dpo_defaults() -> dict:
    """``{"hyperparams": training.dpo.DEFAULT_DPO_HYPERPARAMS resolved, "dpo": {"beta", "loss_type"}}``."""
    from training.dpo import resolve_dpo

    hp, dpo = resolve_dpo()
    return {"hyperparams": hp, "dpo": dpo}


def parent_checkpoints(registry) -> list[str]:
    """Registry entries a DPO run can start from: local checkpoints (``hf``, ``gguf``) and adapters over one."""
    out = []
    for name in registry.names():
        spec = registry.get(name)
        if spec.kind in ("hf", "gguf") or (spec.kind == "adapter" and spec.base):
            out.append(name)
    return out


def _template(registry, spec, path: str) -> str:
    if spec.template and spec.template != "auto":
        return spec.template
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return registry.template_for(spec, tok)


def _config(studio, set_id: int, parent: str, method: str, hyperparams: dict | None, dpo: dict | None,
            convert: bool) -> tuple[dict, dict]:
    """(config without run id and snapshot fields, the set) for a DPO run. Raises RunError / RegistryError."""
    from training.dpo import resolve_dpo

    from .store import StoreError

    if method not in DPO_METHODS:
        raise RunError(f"DPO method must be one of {', '.join(DPO_METHODS)}, not {method!r}")
    try:
        pset = studio.store.preference_set(int(set_id))
    except (StoreError, TypeError, ValueError):
        raise RunError(f"no preference set {set_id!r}; build or import one first") from None
    if not parent:
        raise RunError("choose the checkpoint to tune (a registry entry)")
    reg = studio.registry
    spec = reg.get(parent)
    adapter_path = None
    if spec.kind == "adapter":
        if not spec.base:
            raise RunError(f"adapter '{parent}' names no base entry")
        base = reg.get(spec.base)
        adapter_path = str(spec.path)
    elif spec.kind in ("hf", "gguf"):
        base = spec
    else:
        raise RunError(f"'{parent}' is {'an' if spec.kind[0] in 'ae' else 'a'} {spec.kind} entry; DPO needs local "
                       "weights (an hf, gguf or adapter entry)")
    if base.kind not in ("hf", "gguf"):
        raise RunError(f"the base of '{parent}' ('{base.name}') is a {base.kind} entry; DPO needs local weights")
    try:
        hp, d = resolve_dpo(hyperparams, dpo, method=method)
    except ValueError as e:
        raise RunError(str(e)) from None
    base_path = studio.runs._base_path(base, convert)
    template = _template(reg, spec, adapter_path or base_path) if convert else (
        spec.template if spec.template != "auto" else "auto")
    cfg = {"objective": "dpo", "base_model": base.name, "base_model_path": base_path, "parent": spec.name,
           "adapter_path": adapter_path, "method": method, "template": template,
           "preference_set": {"id": pset["id"], "name": pset["name"], "sha256": pset["sha256"]},
           "dpo": d, "hyperparams": hp}
    return cfg, pset


def preview_dpo(studio, set_id: int, parent: str, method: str = "lora", hyperparams: dict | None = None,
                dpo: dict | None = None) -> tuple[str, dict]:
    """The command and ``config.json`` a DPO run with these settings would get (before it is created).

    Raises:
        RunError / RegistryError: as ``create_dpo_run``.
    """
    cfg, _ = _config(studio, set_id, parent, method, hyperparams, dpo, convert=False)
    argv = accelerate_argv(studio.runs.runs_dir / "__RUN_ID__", 1, None)
    return shlex.join(argv).replace("__RUN_ID__", "<run id>"), cfg


def create_dpo_run(studio, set_id: int, parent: str, method: str = "lora", hyperparams: dict | None = None,
                   dpo: dict | None = None, name: str | None = None) -> str:
    """Freeze a preference set's kept pairs and write a new DPO run folder (not started: ``Studio.runs.start``).

    Args:
        set_id: the preference set (``Store.preference_set``).
        parent: the registry entry to tune: ``hf``/``gguf`` (the base), or an ``adapter`` (trained further).
        method: ``lora`` or ``full``.
        hyperparams: overrides of ``training.dpo.DEFAULT_DPO_HYPERPARAMS`` (``training.train`` keys).
        dpo: overrides of ``training.dpo.DPO_DEFAULTS`` (``beta``, ``loss_type``).
        name: the run's display name and its checkpoint's registry name (default ``<parent>-dpo-<time>``).

    Returns:
        The run id.

    Raises:
        RunError: an unknown set or parent, a set with no kept pair, a name that is not a safe registry name, or
            a bad setting (named). RegistryError:
            an unknown entry.
    """
    from .preferences import snapshot_bytes

    name = check_run_name(name)
    cfg, pset = _config(studio, set_id, parent, method, hyperparams, dpo, convert=True)
    pairs = studio.store.preference_pairs(pset["id"], include_dropped=False)
    if not pairs:
        raise RunError(f"preference set {pset['id']} has no kept pair (all dropped)")
    data = snapshot_bytes(pairs)
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    runs_dir = Path(studio.runs.runs_dir)
    run_id, tmp = RunFolder.reserve(runs_dir, _slug(name if name and name.strip() else f"{parent}-dpo", 30))
    try:
        (tmp / "pairs.jsonl").write_bytes(data)
        hp = cfg.pop("hyperparams")
        config = {"run_id": run_id, **cfg, "train_file": "pairs.jsonl", "eval_file": None, "snapshot_sha256": sha,
                  "output_dir": RunFolder.OUTPUT, "filters": {}, "hyperparams": hp}
        write_json(tmp / RunFolder.CONFIG, config)
        write_json(tmp / RunFolder.META, {
            "run_id": run_id, "name": (name or "").strip() or None, "filters": {}, "eval_fraction": 0.0,
            "num_processes": 1, "backend": None, "objective": "dpo", "n_train": len(pairs), "n_eval": 0,
            "created_at": time.time(), "job_id": None, "pid": None, "attempts": 0, "registered_as": None})
        os.replace(tmp, runs_dir / run_id)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_id
