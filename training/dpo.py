"""Preference tuning (DPO) of a run folder's frozen preference pairs, on TRL's ``DPOTrainer`` (trl 1.16).

``training.train`` hands a run here when its ``config.json`` has ``"objective": "dpo"``; the run folder, events,
stop, resume and the final checkpoint are the same as for SFT (see ``training.train``). The config adds:

- ``train_file``: the frozen pairs (``pairs.jsonl``: one ``{"id", "prompt" (messages ending with a user message),
  "chosen", "rejected", ...}`` per line, ``studio.preferences.snapshot_bytes``), ``snapshot_sha256`` its hash;
- ``adapter_path``: when the parent checkpoint is a LoRA adapter (e.g. the SFT run's), its folder;
- ``dpo``: ``beta`` and ``loss_type`` (:data:`DPO_DEFAULTS`).

Prompts are rendered with the checkpoint's template (``template``): for a text template (``vicuna_v1.1``, what
models trained here use) the prompt is the rendered conversation ending with ``"ASSISTANT:"`` and each completion
is ``" " + answer``, to which TRL appends the tokenizer's EOS token, so a pair is tokenized exactly as the SFT
recipe rendered that answer (``... ASSISTANT: answer<eos>``); with ``chat_template`` the pairs go to TRL in its
conversational form and TRL applies the tokenizer's chat template. TRL then tokenizes prompt and prompt+completion
and masks the prompt (``completion_mask``): only the chosen and rejected continuations carry log-probabilities.

The reference model follows TRL: for LoRA none is loaded (``ref_model=None`` with a peft model): a new adapter's
reference is the model with the adapter disabled; an existing adapter being trained further (the parent is an
adapter) gets a frozen copy of itself as a second adapter named ``ref`` (``DPOTrainer``), dropped before the final
adapter is saved. For full fine-tunes the reference log-probabilities are computed once before training
(``precompute_ref_log_probs``), so no second copy is held either; on resume they are computed again from the
parent's weights, before the checkpoint's weights are loaded.

Recipe defaults (:data:`DEFAULT_DPO_HYPERPARAMS`, :data:`DPO_DEFAULTS`) follow TRL's ``DPOConfig``: beta 0.1,
sigmoid loss, learning rate 1e-6, max length 1024, no warmup, linear schedule; editable per run.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_DPO_HYPERPARAMS", "DPO_DEFAULTS", "LOSS_TYPES", "resolve_dpo", "load_pairs", "preference_rows",
           "build_trainer", "run"]

logger = logging.getLogger("training")

#: TRL ``DPOConfig`` defaults (trl 1.16 ``dpo_config.py``): beta 0.1, the sigmoid (original DPO) loss.
DPO_DEFAULTS: dict[str, Any] = {"beta": 0.1, "loss_type": "sigmoid"}

#: Loss types of TRL's ``DPOConfig.loss_type`` that need nothing more than beta.
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust", "bco_pair", "sppo_hard", "nca_pair", "apo_zero", "apo_down",
              "sigmoid_norm")

#: The SFT hyperparameters (``training.train.DEFAULT_HYPERPARAMS`` keys) with TRL ``DPOConfig``'s values where
#: they differ: learning rate 1e-6, max length 1024, linear schedule without warmup, per-device batch 8 (one
#: optimizer step per batch: global batch 8), and LoRA on all linear layers (TRL's DPO examples).
DEFAULT_DPO_HYPERPARAMS: dict[str, Any] = {
    "num_train_epochs": 3,
    "learning_rate": 1e-6,
    "lr_scheduler_type": "linear",
    "warmup_ratio": 0.0,
    "weight_decay": 0.0,
    "max_length": 1024,
    "global_batch_size": 8,
    "per_device_train_batch_size": 8,
    "lora_target": "all-linear",
    "padding": "longest",
    "save_total_limit": 2,
}


def resolve_dpo(hyperparams: dict | None = None, dpo: dict | None = None, *, method: str | None = None
                ) -> tuple[dict, dict]:
    """Fill in and check a DPO run's settings.

    Args:
        hyperparams: overrides of :data:`DEFAULT_DPO_HYPERPARAMS` (any ``training.train.DEFAULT_HYPERPARAMS`` key).
        dpo: overrides of :data:`DPO_DEFAULTS`: ``beta`` (> 0), ``loss_type`` (one of :data:`LOSS_TYPES`).
        method: ``lora`` or ``full`` (QLoRA is not offered for DPO).

    Returns:
        ``(hyperparams resolved by training.train.resolve_hyperparams, {"beta", "loss_type"})``.

    Raises:
        ValueError: an unknown key or a bad value (named).
    """
    from training.train import resolve_hyperparams

    if method is not None and method not in ("lora", "full"):
        raise ValueError(f"DPO trains 'lora' or 'full', not {method!r}")
    hp = resolve_hyperparams({**DEFAULT_DPO_HYPERPARAMS, **{k: v for k, v in (hyperparams or {}).items()
                                                            if v is not None}}, method=method)
    d = {**DPO_DEFAULTS, **{k: v for k, v in (dpo or {}).items() if v is not None}}
    unknown = sorted(set(d) - set(DPO_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown DPO setting(s) {', '.join(map(repr, unknown))}; known: beta, loss_type")
    try:
        beta = float(d["beta"])
    except (TypeError, ValueError):
        raise ValueError(f"DPO setting 'beta': expected a number, got {d['beta']!r}") from None
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"DPO setting 'beta': must be > 0, got {d['beta']!r}")
    if d["loss_type"] not in LOSS_TYPES:
        raise ValueError(f"DPO setting 'loss_type': one of {', '.join(LOSS_TYPES)}, got {d['loss_type']!r}")
    return hp, {"beta": beta, "loss_type": d["loss_type"]}


def load_pairs(path: str | Path) -> list[dict]:
    """The frozen pairs of a run (``pairs.jsonl``), in order. Raises ValueError naming a bad line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{Path(path).name} line {n}: not JSON ({e.msg})") from None
            if not isinstance(d, dict) or not all(k in d for k in ("prompt", "chosen", "rejected")):
                raise ValueError(f"{Path(path).name} line {n}: needs 'prompt', 'chosen' and 'rejected'")
            out.append(d)
    return out


def preference_rows(pairs: list[dict], tokenizer, template: str) -> list[dict]:
    """Pairs -> the rows TRL's ``DPOTrainer`` takes, rendered with ``template``.

    Text templates: ``{"prompt": render(prompt, template, add_generation_prompt=True, eos_token=<tokenizer's>),
    "chosen": " " + chosen, "rejected": " " + rejected}`` (TRL appends the EOS token to each completion).
    ``chat_template``: TRL's conversational form, ``{"prompt": messages, "chosen": [assistant message],
    "rejected": [assistant message]}``.

    Raises:
        ValueError: a prompt the template refuses (named by the pair's position).
    """
    from studio import templates

    rows = []
    for i, p in enumerate(pairs, 1):
        prompt = [{"role": m["role"], "content": m["content"]} for m in p["prompt"]]
        if template == "chat_template":
            rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": p["chosen"]}],
                         "rejected": [{"role": "assistant", "content": p["rejected"]}]})
            continue
        try:
            text = templates.render(prompt, template, add_generation_prompt=True, eos_token=tokenizer.eos_token)
        except ValueError as e:
            raise ValueError(f"pair {i}: {e}") from None
        rows.append({"prompt": text, "chosen": " " + p["chosen"], "rejected": " " + p["rejected"]})
    return rows


def _load_policy(cfg: dict, hp: dict, dtype, attn):
    """(model, peft_config or None, trainable, total): the parent checkpoint ready for DPOTrainer."""
    from transformers import AutoModelForCausalLM

    from training.train import _load_config

    kwargs: dict[str, Any] = {"config": _load_config(cfg["base_model_path"]), "dtype": dtype}
    if attn:
        kwargs["attn_implementation"] = attn
    model = AutoModelForCausalLM.from_pretrained(cfg["base_model_path"], **kwargs)
    model.config.use_cache = False
    adapter = cfg.get("adapter_path")
    peft_config = None
    if adapter:
        from peft import PeftModel

        if cfg["method"] == "lora":  # train the parent adapter further; TRL keeps a frozen copy as "ref"
            model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
        else:
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    if cfg["method"] == "lora" and not adapter:
        from peft import LoraConfig

        target = hp["lora_target"]
        peft_config = LoraConfig(r=hp["lora_r"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
                                 target_modules="all-linear" if target == "all-linear" else target.split(","),
                                 bias="none", task_type="CAUSAL_LM")
    total = sum(p.numel() for p in model.parameters())
    return model, peft_config, total


def build_trainer(cfg: dict, run_dir: Path, *, callbacks=(), events=None):
    """The ``DPOTrainer`` of a run (model, tokenizer, rendered pairs, ``DPOConfig``), not yet trained.

    Args:
        cfg: the run's validated config (``training.train.load_run_config``).
        run_dir: the run folder (pairs read from ``cfg["train_file"]``, output to ``cfg["output_dir"]``).

    Returns:
        ``(trainer, info)``: ``info`` has ``n_train``, ``trainable_params``, ``total_params``, ``precision``.

    Raises:
        TrainError: no pair left, or a pair the template refuses.
    """
    import torch
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from training.train import TrainError, _attn_implementation, _precision, gradient_accumulation_steps

    hp, dpo = resolve_dpo(cfg["hyperparams"], cfg.get("dpo"), method=cfg["method"])
    tokenizer = AutoTokenizer.from_pretrained(cfg["base_model_path"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    pairs = load_pairs(run_dir / cfg["train_file"])
    try:
        rows = preference_rows(pairs, tokenizer, cfg["template"])
    except ValueError as e:
        raise TrainError(f"{cfg['train_file']}: {e}") from None
    if not rows:
        raise TrainError(f"no preference pair in {cfg['train_file']}")
    import datasets

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    ga = gradient_accumulation_steps(hp, world_size)
    bf16, fp16, dtype = _precision(hp, cfg["method"])
    gc = bool(hp["gradient_checkpointing"])
    cuda = torch.cuda.is_available()
    args = DPOConfig(
        output_dir=str(run_dir / cfg["output_dir"]),
        num_train_epochs=hp["num_train_epochs"], max_steps=hp["max_steps"], learning_rate=hp["learning_rate"],
        lr_scheduler_type=hp["lr_scheduler_type"], warmup_steps=hp["warmup_ratio"], weight_decay=hp["weight_decay"],
        per_device_train_batch_size=hp["per_device_train_batch_size"], gradient_accumulation_steps=ga,
        bf16=bf16, fp16=fp16, gradient_checkpointing=gc,
        gradient_checkpointing_kwargs={"use_reentrant": False} if gc else None,
        logging_strategy="steps", logging_steps=hp["logging_steps"], logging_nan_inf_filter=False,
        eval_strategy="no", save_strategy="steps" if hp["save_steps"] else "epoch", save_steps=hp["save_steps"] or 500,
        save_total_limit=hp["save_total_limit"], seed=hp["seed"], data_seed=hp["seed"], report_to="none",
        disable_tqdm=True, log_level="warning", log_level_replica="warning", dataloader_pin_memory=cuda,
        use_cpu=bf16 and not cuda, max_length=hp["max_length"], beta=dpo["beta"], loss_type=[dpo["loss_type"]],
        precompute_ref_log_probs=cfg["method"] == "full", ddp_find_unused_parameters=False,
    )
    if events is not None:
        events.write("status", message=f"loading {cfg.get('parent') or cfg.get('base_model')} for DPO "
                                       f"({cfg['method']})")
    model, peft_config, total = _load_policy(cfg, hp, dtype, _attn_implementation(hp, dtype))
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tokenizer, peft_config=peft_config, callbacks=list(callbacks))
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    info = {"n_train": len(trainer.train_dataset), "n_pairs": len(rows), "trainable_params": int(trainable),
            "total_params": int(total), "gradient_accumulation_steps": ga,
            "global_batch_size": hp["per_device_train_batch_size"] * world_size * ga,
            "precision": "bf16" if bf16 else "fp16" if fp16 else "fp32", "beta": dpo["beta"],
            "loss_type": dpo["loss_type"], "reference": "precomputed" if cfg["method"] == "full" else
            ("ref adapter (copy of the parent adapter)" if cfg.get("adapter_path") else "adapter disabled")}
    return trainer, info


def run(run_dir: Path, resume: bool, events, cfg: dict) -> int:
    """Do one DPO run in ``run_dir`` (``training.train.run`` hands it over). Returns the exit status (0)."""
    from transformers import set_seed

    from training.train import _clean, _make_trainer_classes, _peak_memory_bytes, latest_checkpoint

    hp = cfg["hyperparams"]
    set_seed(hp["seed"])
    if events.enabled and (run_dir / "STOP").exists():
        (run_dir / "STOP").unlink()
    out_dir = run_dir / cfg["output_dir"]
    resume_from = latest_checkpoint(out_dir) if resume else None
    if resume and resume_from is None:
        logger.warning("--resume: no checkpoint in %s; starting from the beginning", out_dir)
    events.write("status", message=f"loading tokenizer and preference pairs ({cfg['template']} template)")
    _, RunCallback = _make_trainer_classes()
    start_info: dict = {"method": cfg["method"], "objective": "dpo", "template": cfg["template"], "n_eval": 0,
                        "resumed_from": str(resume_from) if resume_from else None}
    callback = RunCallback(run_dir, events, start_info)
    trainer, info = build_trainer(cfg, run_dir, callbacks=[callback], events=events)
    start_info.update(info)
    logger.info("dpo run: %s", start_info)
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    state = trainer.state
    if callback.stopped:
        status, output = "stopped", callback.last_checkpoint
    else:
        status, output = "finished", out_dir / "final"
        model = trainer.accelerator.unwrap_model(trainer.model)
        if "ref" in (getattr(model, "peft_config", None) or {}):
            model.delete_adapter("ref")  # the frozen reference copy is not part of the result
        trainer.save_model(str(output))
        if trainer.is_world_process_zero():
            lineage = {k: cfg.get(k) for k in ("run_id", "base_model", "base_model_path", "parent", "adapter_path",
                                               "method", "template", "snapshot_sha256", "preference_set")}
            lineage.update(objective="dpo", hyperparams=hp, dpo=cfg.get("dpo"), final_loss=callback.final_loss,
                           step=state.global_step)
            (Path(output) / "training_run.json").write_text(json.dumps(_clean(lineage), indent=1))
    if trainer.is_world_process_zero():
        events.write("end", status=status, final_loss=callback.final_loss, final_eval_loss=None,
                     output_path=str(output) if output else None, step=state.global_step,
                     train_runtime_s=callback.train_runtime or result.metrics.get("train_runtime"),
                     mean_loss=result.training_loss, peak_memory_bytes=_peak_memory_bytes())
    return 0
