"""Train tab: fine-tune a registry model on a filter of the conversations with the Vicuna v1.1 recipe (LoRA,
QLoRA or full), see the exact command first, start (runs queue one at a time), watch progress, the loss and
eval-loss curves and the log, stop and resume; past runs with their curves; merge and export the result.

The page reads the run folders through ``Studio.runs`` (``studio.train.RunManager``, incremental reads on a 1 s
timer); a run is a job of kind ``train``, so its progress bar, Stop and Resume are the shared job panel's
(``ui.jobs.JobPanel``, with the list of jobs of every kind). A run is its own process, so closing or reloading
the page does not touch it, and the page re-attaches to the most recent running run."""

from __future__ import annotations

import json
import time

import gradio as gr
import pandas as pd

from ..train import (LORA_TARGET_CHOICES, RUN_TEMPLATES, SCHEDULER_CHOICES, RunManager, backends, default_hyperparams,
                     eval_count, normalize_filters, padding_choices)
from .common import friendly, guard_writes, progress_html, source_choices
from .jobs import JobPanel

METHOD_CHOICES = [("LoRA", "lora"), ("QLoRA (4-bit, CUDA only)", "qlora"), ("Full fine-tune", "full")]
TEMPLATE_LABELS = [("Vicuna v1.1 (the recipe)", RUN_TEMPLATES[0]), ("Base model's chat template", RUN_TEMPLATES[1])]
STATUS_CHOICES = [("All (not deleted)", "all"), ("New", "new"), ("Edited", "edited")]
ORIGIN_CHOICES = [("All origins", "all"), ("Imported", "imported"), ("Expanded", "expanded")]
BOOL_AUTO = ["auto", "true", "false"]
ATTN_CHOICES = ["auto", "sdpa", "eager", "flash_attention_2"]
LOG_CSS = ("<style>#train-log textarea { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; "
           "white-space: pre; }</style>")
RUN_COLUMNS = ["run", "state", "base", "method", "step", "loss", "eval loss", "registered as", "created"]

# (key, label, kind, extra) per accordion; kind: num | int | opt_int | choice | text
HP_GROUPS = [
    ("Schedule", True, [
        ("num_train_epochs", "Epochs", "num", {}),
        ("learning_rate", "Learning rate", "num", {}),
        ("lr_scheduler_type", "LR schedule", "choice", {"choices": list(SCHEDULER_CHOICES)}),
        ("warmup_ratio", "Warm-up ratio", "num", {}),
        ("weight_decay", "Weight decay", "num", {}),
        ("max_steps", "Max steps (-1 = from the epochs)", "int", {}),
        ("seed", "Seed (also picks the eval split)", "int", {}),
    ]),
    ("Batch, length and memory", False, [
        ("max_length", "Max length (tokens)", "int", {}),
        ("global_batch_size", "Global batch (sequences per optimizer step)", "int", {}),
        ("per_device_train_batch_size", "Batch per device (the rest is gradient accumulation)", "int", {}),
        ("padding", "Batching", "choice", {"choices": padding_choices}),
        ("bf16", "bf16", "choice", {"choices": BOOL_AUTO}),
        ("gradient_checkpointing", "Gradient checkpointing", "choice", {"choices": BOOL_AUTO}),
        ("attn_implementation", "Attention", "choice", {"choices": ATTN_CHOICES, "allow_custom_value": True}),
    ]),
    ("LoRA", False, [
        ("lora_r", "Rank r", "int", {}),
        ("lora_alpha", "Alpha", "int", {}),
        ("lora_dropout", "Dropout", "num", {}),
        ("lora_target", "Target modules", "choice", {"choices": list(LORA_TARGET_CHOICES),
                                                     "allow_custom_value": True}),
    ]),
    ("Logging, evaluation and checkpoints", False, [
        ("logging_steps", "Log every N steps", "int", {}),
        ("eval_steps", "Evaluate every N steps (empty = each epoch)", "opt_int", {}),
        ("save_steps", "Save a checkpoint every N steps (empty = each epoch)", "opt_int", {}),
        ("save_total_limit", "Checkpoints kept", "int", {}),
    ]),
]


def _hp_groups(defaults: dict) -> list:
    """``HP_GROUPS`` without the keys the training program does not know (e.g. ``attn_implementation`` when the
    studio runs on its own copy of the recipe)."""
    return [(title, open_, [f for f in fields if f[0] in defaults]) for title, open_, fields in HP_GROUPS]


def _ui_value(key: str, value, kind: str):
    if kind == "choice" and isinstance(value, bool):
        return "true" if value else "false"
    return value


def local_models(studio) -> list[str]:
    """Registry entries a run can start from (local ``hf``/``gguf`` checkpoints), the default first."""
    return [s.name for s in studio.registry.list() if s.kind in ("hf", "gguf")]


def _fmt(v, spec: str = ".4f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) else ""


def runs_frame(runs: list[dict]) -> pd.DataFrame:
    """The past-runs table: one row per run, newest first (``RUN_COLUMNS``)."""
    rows = [[r["run_id"], r["state"], r["base_model"], r["method"],
             f"{r['step']}/{r['max_steps']}" if r.get("step") is not None else "",
             _fmt(r.get("final_loss") if r.get("final_loss") is not None else r.get("loss")),
             _fmt(r.get("final_eval_loss") if r.get("final_eval_loss") is not None else r.get("eval_loss")),
             r.get("registered_as") or "",
             time.strftime("%m-%d %H:%M", time.localtime(r["created_at"])) if r.get("created_at") else ""]
            for r in runs]
    if not rows:
        return pd.DataFrame({"": ["No runs yet: choose a model and data above, then Start."]})
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def run_details(runs: RunManager, s: dict) -> str:
    """Markdown about one run: state, data, snapshot, registered model, and its exact command."""
    title = f"**{s['name']}** · `{s['run_id']}`" if s["name"] != s["run_id"] else f"`{s['run_id']}`"
    lines = [f"{title} · **{s['state']}**"]
    if s.get("message"):
        lines.append(f"{s['message']}")
    lines.append(f"{s['method']} on **{s['base_model']}**, template {s['template']}; {s.get('n_train')} train / "
                 f"{s.get('n_eval')} eval conversations, snapshot sha256 `{(s.get('snapshot_sha256') or '')[:16]}…`")
    if s.get("job_id"):
        lines.append(f"Job **{s['job_id']}** in the job list (also `wvstudio stop {s['job_id']}` / "
                     f"`wvstudio resume {s['job_id']}`).")
    if s.get("registered_as"):
        lines.append(f"✅ Registered as **{s['registered_as']}**: it is in the Chat tab and every model list now.")
    lines.append(f"```shell\n{s['command']}\n```")
    return "\n\n".join(lines)


def build(studio) -> dict:
    """Lay out the Train tab and wire its events. Returns ``{"refresh", "inputs", "outputs"}`` for tab select
    (model and source lists, the data count, and the run to show)."""
    runs: RunManager = studio.runs
    defaults = default_hyperparams()
    names = local_models(studio)

    gr.Markdown("Fine-tune with the **Vicuna v1.1 recipe** (FastChat `train_vicuna_13b.sh`: 3 epochs, lr 2e-5, "
                "cosine, global batch 128, loss on assistant turns only). A run trains on a frozen snapshot of "
                "the chosen conversations in its own process: closing this page doesn't stop it, and runs "
                "started while one is running wait in a queue (expansions don't wait for them).")
    with gr.Row():
        with gr.Column():
            base = gr.Dropdown(names, value=names[0] if names else None, label="Base model (local checkpoints)",
                               elem_id="train-base")
            method = gr.Radio(METHOD_CHOICES, value="lora", label="Method", elem_id="train-method")
            template = gr.Radio(TEMPLATE_LABELS, value=RUN_TEMPLATES[0], label="Conversation template",
                                elem_id="train-template")
            run_name = gr.Textbox("", label="Name (optional; the trained model's registry name)", max_lines=1,
                                  elem_id="train-name")
        with gr.Column():
            source = gr.Dropdown(source_choices(studio), value=0, label="Conversations from source",
                                 elem_id="train-source")
            status = gr.Dropdown(STATUS_CHOICES, value="all", label="Status", elem_id="train-status")
            origin = gr.Dropdown(ORIGIN_CHOICES, value="all", label="Origin", elem_id="train-origin")
            eval_fraction = gr.Number(0.05, minimum=0, maximum=0.5, step=0.01,
                                      label="Held out for evaluation (fraction; at least 1 from 10 conversations)",
                                      elem_id="train-eval-fraction")
            data_count = gr.Markdown(elem_id="train-count")
        with gr.Column():
            num_processes = gr.Number(1, precision=0, minimum=1, label="Processes (one per GPU)",
                                      elem_id="train-nproc")
            backend = gr.Dropdown(backends(), value="none", label="Distributed backend (training/configs/)",
                                  elem_id="train-backend")
            gr.Markdown(_hardware_line(), elem_id="train-hardware")
            gr.HTML(LOG_CSS, padding=False, container=False)  # a monospace log box

    groups = _hp_groups(defaults)
    hp_keys = [k for _, _, fields in groups for k, *_ in fields]
    hp_inputs, accordions = [], {}
    for title, open_, fields in groups:
        with gr.Accordion(f"Hyperparameters: {title}", open=open_) as acc:
            accordions[title] = acc
            with gr.Row():
                for key, label, kind, extra in fields:
                    v = _ui_value(key, defaults.get(key), kind)
                    eid = f"train-hp-{key.replace('_', '-')}"
                    if kind == "choice":
                        extra = {k: (x() if callable(x) else x) for k, x in extra.items()}
                        comp = gr.Dropdown(value=v, label=label, elem_id=eid, min_width=180, **extra)
                    elif kind in ("int", "opt_int"):
                        comp = gr.Number(v, precision=0, label=label, elem_id=eid, min_width=160)
                    else:
                        comp = gr.Number(v, label=label, elem_id=eid, min_width=160)
                    hp_inputs.append(comp)
    reset_hp = gr.Button("Reset hyperparameters to the recipe", size="sm", elem_id="train-reset-hp")

    with gr.Accordion("Command (exactly what runs; copy it to run the same run elsewhere)", open=True):
        command = gr.Code(language="shell", lines=2, label="Command", elem_id="train-command", interactive=False)
        config_view = gr.Code(language="json", lines=8, max_lines=16, label="config.json written into the run folder",
                              elem_id="train-config", interactive=False)

    start_btn = gr.Button("Start (queue)", variant="primary", elem_id="train-start")
    panel = JobPanel(studio, "train", table=False, empty="No run yet.", job_visible=False,
                     stop_label="Stop (saves a checkpoint)", resume_label="Resume from last checkpoint")
    run_pick = gr.Dropdown([], value=None, label="Run shown below (click a row in Past runs to pick another)",
                           elem_id="train-run", allow_custom_value=True)
    with gr.Row():
        with gr.Column(scale=3):
            # starts as None: a plot created with an empty DataFrame draws no lines later (Gradio 6)
            plot = gr.LinePlot(None, x="step", y="value",
                               color="series", x_title="step", y_title="loss", title="Loss",
                               color_map={"loss": "#2563eb", "eval loss": "#ea580c"}, height=300,
                               elem_id="train-plot")
        with gr.Column(scale=2):
            details = gr.Markdown(elem_id="train-details")
    log = gr.Textbox("", lines=14, max_lines=14, autoscroll=True, interactive=False, buttons=["copy"],
                     label="Log (last lines of train.log)", elem_id="train-log")
    runs_table = gr.Dataframe(runs_frame([]), interactive=False, label="Past runs (click one to show it)",
                              elem_id="train-runs", max_height=320)
    panel.add_table()
    with gr.Accordion("Merge and export the selected run's model", open=False, elem_id="train-export-acc"):
        gr.Markdown("**Merge** writes a full checkpoint (adapter + base) and registers it. **Export** writes "
                    "the model to a folder (adapters merged), and uploads it when you name a Hub repo and "
                    "`HF_TOKEN` is set.")
        with gr.Row():
            merge_btn = gr.Button("Merge adapter into its base", elem_id="train-merge")
            export_dir = gr.Textbox("", label="Export folder", placeholder="/path/to/folder",
                                    elem_id="train-export-dir")
            push_repo = gr.Textbox("", label="Push to Hub repo (optional)", placeholder="user/name",
                                   elem_id="train-push-repo")
            export_btn = gr.Button("Export", elem_id="train-export")
        export_out = gr.Markdown(elem_id="train-export-out")
    seen = gr.State({})
    timer = gr.Timer(1.0, active=True)

    # ----------------------------------------------------------------------------- handlers
    def _hp(values) -> dict:
        hp = {}
        for key, v in zip(hp_keys, values):
            if isinstance(v, float) and v.is_integer() and isinstance(defaults.get(key), int):
                v = int(v)
            hp[key] = v
        return hp

    def _filters(src, status_v, origin_v) -> dict:
        return normalize_filters({"source_id": src, "status": status_v, "origin": origin_v})

    def preview(base_v, method_v, template_v, src, status_v, origin_v, nproc, backend_v, *hp_values):
        try:
            cmd, cfg = runs.preview(base_v, method_v, _filters(src, status_v, origin_v), _hp(hp_values), template_v,
                                    int(nproc or 1), backend_v)
        except Exception as e:  # shown in place, not as a toast: this runs on every change
            return f"# ⚠ {e}", ""
        return cmd, json.dumps(cfg, indent=2)

    def count(src, status_v, origin_v, frac):
        try:
            n = studio.store.count_conversations(**_filters(src, status_v, origin_v))
            k = eval_count(n, float(frac or 0))
        except Exception as e:
            return f"⚠ {e}"
        if n == 0:
            return "**0** conversations match: import or expand some in the Data tab."
        return f"**{n}** conversations match: {n - k} train, {k} held out for evaluation."

    def _choices(all_runs):
        return [(f"{r['name']} · {r['state']}" if r["name"] != r["run_id"] else f"{r['run_id']} · {r['state']}",
                 r["run_id"]) for r in all_runs]

    def poll(run_id, seen_v, force=False, select=False) -> dict:
        """Everything the tab shows about ``run_id``. The run picker's value is only set when this call chose
        the run (``select``, or none was picked): a timer tick that started before a Start click must not
        switch the page back to the run it was showing."""
        seen_v = dict(seen_v or {})
        all_runs = runs.list_runs()
        # the table is re-sent when a run changes state, and every 5 s while one is running
        tick = int(time.time() / 5)
        sig = [(r["run_id"], r["state"], r.get("registered_as"), tick if r["state"] in ("running", "stopping") else 0)
               for r in all_runs]
        if not run_id or run_id not in {r["run_id"] for r in all_runs}:
            run_id = runs.default_run()
            select = bool(run_id)
        out: dict = {}
        if sig != seen_v.get("sig") or force:
            out[runs_table] = runs_frame(all_runs)
            out[run_pick] = (gr.update(choices=_choices(all_runs), value=run_id) if select
                             else gr.update(choices=_choices(all_runs)))
        else:
            out[run_pick] = gr.update(value=run_id) if select else gr.update()
        seen_v["sig"] = sig
        if not run_id:
            out.update(panel.view(0))
            out.update({panel.job: 0, details: "", log: "", seen: seen_v,
                        panel.progress: progress_html(0, "No run yet: choose a model and data above, then Start.")})
            return out
        s = next((r for r in all_runs if r["run_id"] == run_id), None) or runs.status(run_id)
        out.update(panel.view(s["job_id"] or 0))
        out[panel.job] = s["job_id"] or 0
        if not s["job_id"]:
            out[panel.progress] = progress_html(0, f"{runs.line(s)}; press Start to queue it")
        curve = runs.curve(run_id)
        key = (run_id, len(curve), s["state"])
        if key != seen_v.get("plot") or force:
            out[plot] = curve if len(curve) else None
        seen_v["plot"] = key
        out.update({details: run_details(runs, s), log: runs.log_tail(run_id, 14), seen: seen_v})
        return out

    @friendly
    def start(base_v, method_v, template_v, name_v, src, status_v, origin_v, frac, nproc, backend_v, seen_v,
              *hp_values):
        guard_writes(studio)
        run_id = runs.create_run(base_v, method_v, _filters(src, status_v, origin_v), _hp(hp_values), template_v,
                                 num_processes=int(nproc or 1), backend=backend_v, eval_fraction=float(frac or 0),
                                 name=name_v or None)
        try:
            runs.start(run_id)
        except ValueError as e:
            gr.Warning(f"Run {run_id} was created but not started: {e}")
        return poll(run_id, seen_v, force=True, select=True)

    def _selected(run_id):
        if not run_id:
            raise ValueError("no run selected: pick one in Past runs")
        return run_id

    def pick_job(jid, run_id, seen_v) -> dict:
        """A click in the job list: a training job shows its run; another kind is followed in the Expand tab."""
        rid = runs.run_of_job(int(jid)) if jid else None
        if rid is None:
            if jid:
                gr.Info(f"job {int(jid)} is not a training run: follow it in the Expand tab")
            return poll(run_id, seen_v, force=True)
        return poll(rid, seen_v, force=True, select=True)

    @friendly
    def merge(run_id):
        guard_writes(studio)
        name = runs.merge(_selected(run_id))
        return f"✅ Merged into a full checkpoint, registered as **{name}**."

    @friendly
    def export(run_id, folder, repo):
        guard_writes(studio)
        s = runs.status(_selected(run_id))
        if not s.get("registered_as"):
            raise ValueError(f"run {run_id} has no registered model yet ({s['state']})")
        if not (folder or "").strip():
            raise ValueError("give an export folder")
        res = runs.export(s["registered_as"], folder.strip(), push_to_hub=(repo or "").strip() or None)
        return f"✅ Exported **{s['registered_as']}** to `{res['path']}`" + (
            f" and pushed to {res['url']}" if res["url"] else "") + "."

    def pick_run(evt: gr.SelectData):
        try:
            return evt.row_value[0] if evt.row_value and evt.row_value[0] else gr.update()
        except (TypeError, IndexError):
            return gr.update()

    # ----------------------------------------------------------------------------- wiring
    preview_inputs = [base, method, template, source, status, origin, num_processes, backend, *hp_inputs]
    for c in preview_inputs:
        c.change(preview, preview_inputs, [command, config_view], show_progress="hidden")
    for c in (source, status, origin, eval_fraction):
        c.change(count, [source, status, origin, eval_fraction], [data_count], show_progress="hidden")
    poll_outputs = panel.outputs + [run_pick, plot, details, log, runs_table, seen]
    start_btn.click(start, [base, method, template, run_name, source, status, origin, eval_fraction, num_processes,
                            backend, seen, *hp_inputs], poll_outputs)
    panel.wire(lambda r, s: poll(r, s, force=True), [run_pick, seen], poll_outputs,
               on_pick=(pick_job, [panel.job, run_pick, seen], poll_outputs))
    timer.tick(poll, [run_pick, seen], poll_outputs, show_progress="hidden")
    run_pick.input(lambda r, s: poll(r, s, force=True), [run_pick, seen], poll_outputs, show_progress="hidden")
    runs_table.select(pick_run, None, [run_pick]).then(lambda r, s: poll(r, s, force=True), [run_pick, seen],
                                                        poll_outputs, show_progress="hidden")
    reset_hp.click(lambda: [_ui_value(k, defaults.get(k), kind) for _, _, f in groups for k, _, kind, _ in f],
                   None, hp_inputs)
    if "LoRA" in accordions:  # LoRA settings only matter for LoRA and QLoRA
        method.change(lambda m: gr.update(visible=m != "full"), [method], [accordions["LoRA"]],
                      show_progress="hidden")
    merge_btn.click(merge, [run_pick], [export_out])
    export_btn.click(export, [run_pick, export_dir, push_repo], [export_out])

    init = [names[0] if names else None, "lora", RUN_TEMPLATES[0], 0, "all", "all", 1, "none",
            *[_ui_value(k, defaults.get(k), kind) for _, _, f in groups for k, _, kind, _ in f]]
    command.value, config_view.value = preview(*init)  # the page opens with the default run's command
    data_count.value = count(0, "all", "all", 0.05)

    def refresh(base_v, src, status_v, origin_v, frac, method_v, template_v, nproc, backend_v, *hp_values):
        names_now = local_models(studio)
        b = base_v if base_v in names_now else (names_now[0] if names_now else None)
        srcs = source_choices(studio)
        s = src if src in [c[1] for c in srcs] else 0
        cmd, cfg = preview(b, method_v, template_v, s, status_v, origin_v, nproc, backend_v, *hp_values)
        return {base: gr.update(choices=names_now, value=b), source: gr.update(choices=srcs, value=s),
                data_count: count(s, status_v, origin_v, frac), command: cmd, config_view: cfg}

    refresh_inputs = [base, source, status, origin, eval_fraction, method, template, num_processes, backend, *hp_inputs]
    return {"refresh": refresh, "inputs": refresh_inputs,
            "outputs": [base, source, data_count, command, config_view]}


def _hardware_line() -> str:
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:  # torch broken: say nothing wrong
        n = 0
    if n:
        return f"This machine: **{n} CUDA GPU{'s' if n > 1 else ''}**."
    return ("This machine: **no CUDA GPU**: training runs on the CPU in 1 process (QLoRA and several processes "
            "need GPUs; the command can still be copied to a GPU machine).")
