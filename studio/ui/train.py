"""Train tab: fine-tune a registry model on a filter of the conversations with the Vicuna v1.1 recipe (LoRA,
QLoRA or full), see the exact command first, start (runs queue one at a time), watch progress, the loss and
eval-loss curves and the log, stop and resume; past runs with their curves; merge and export the result. Method "DPO" tunes any registry checkpoint
(adapters included) on a preference set instead (``ui.preferences.DpoControls``, ``studio.dpo``), with TRL's
defaults in the hyperparameter fields and the reward margin and accuracy plotted beside the loss.

The conversations are chosen with the one filter (``ui.filters.FilterControls``, every field the Data tab has,
element ids ``train-<option>``: ``train-source``, ``train-status``, ..., but ``train-filter-job`` for the job); a run trains on exactly
``filter.for_training()`` (flagged and deleted conversations stay out unless chosen), and the tab shows, as the
filter changes, how many conversations and tokens that is (``data_line``). Handlers return dicts keyed by
component; the tab's memory between polls is one ``gr.State(TrainTabState())``; names, messages and errors are
escaped before Markdown shows them (``ui.common``).

The page reads the run folders through ``Studio.runs`` (``studio.train.RunManager``, incremental reads on a 1 s
timer); a run is a job of kind ``train``, so its progress bar, Stop and Resume are the shared job panel's
(``ui.jobs.JobPanel``, with the list of jobs of every kind). A run is its own process, so closing or reloading
the page does not touch it, and the page re-attaches to the most recent running run."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from ..dpo import dpo_defaults, parent_checkpoints
from ..filters import FIELDS_BY_NAME, ConvFilter
from ..train import (LORA_TARGET_CHOICES, RUN_TEMPLATES, SCHEDULER_CHOICES, RunManager, backends, default_hyperparams,
                     eval_count, padding_choices, run_filter)
from ..jobs import fmt_duration
from .common import guarded, md_block, md_code, md_text, progress_html
from .filters import FilterControls
from .jobs import JobPanel
from .preferences import DpoControls

METHOD_CHOICES = [("LoRA", "lora"), ("QLoRA (4-bit, CUDA only)", "qlora"), ("Full fine-tune", "full"),
                  ("DPO on a preference set", "dpo")]
TEMPLATE_LABELS = [("Vicuna v1.1 (the recipe)", RUN_TEMPLATES[0]), ("Base model's chat template", RUN_TEMPLATES[1])]
MAIN_FILTERS = ("query", "source_id", "status", "origin", "tags")
"""Filter controls beside the model settings (``studio.filters.FILTER_FIELDS`` names)."""
MORE_FILTERS = ("teacher", "job_id", "min_rounds", "max_rounds", "min_tokens", "max_tokens", "min_chars",
                "max_chars", "edited", "flagged", "cut", "ids")
"""Filter controls under "More filters": with ``MAIN_FILTERS``, every field of the one filter."""
assert set(MAIN_FILTERS + MORE_FILTERS) == set(FIELDS_BY_NAME), "the Train tab lacks a filter field"
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
        ("eval_steps", "Evaluate every N steps (0 = each epoch)", "opt_int", {}),
        ("save_steps", "Save a checkpoint every N steps (0 = each epoch)", "opt_int", {}),
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
    if kind == "opt_int" and value is None:
        return 0  # the page shows an empty number box as 0: 0 is the box's "not set" (``OPT_INT_UNSET``)
    return value


OPT_INT_UNSET = 0
"""What an ``opt_int`` hyperparameter box (``eval_steps``, ``save_steps``) holds for "not set" (each epoch): a
Gradio number box cannot stay empty (the page sends an empty box as 0), so 0 and empty both mean None."""


def _from_ui(value, kind: str):
    """A hyperparameter box's value in the training program's terms: an ``opt_int`` box's 0 or empty is None."""
    if kind == "opt_int" and (value is None or value == OPT_INT_UNSET):
        return None
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


PLOT_COLORS = {"loss": "#2563eb", "eval loss": "#ea580c", "reward margin": "#16a34a", "reward accuracy": "#9333ea"}
"""The loss plot's series and their colours (the reward series: DPO runs, TRL's ``rewards/margins`` and
``rewards/accuracies``)."""
_REWARD_SERIES = ("reward margin", "reward accuracy")


def plot_frame(curve: pd.DataFrame) -> pd.DataFrame:
    """``RunManager.curve`` for the loss plot, with one empty row (value NaN, not drawn) for each series of
    ``PLOT_COLORS`` it lacks yet: Gradio's plot fixes its colour domain from the series of the first data it
    draws, so an eval loss that came after the first losses would get no colour and no mark at all."""
    have = set(curve["series"])
    wanted = ("loss", *_REWARD_SERIES) if have & set(_REWARD_SERIES) else ("loss", "eval loss")  # DPO: no eval
    missing = [s for s in wanted if s not in have]
    if not missing:
        return curve
    first = int(curve["step"].min()) if len(curve) else 0
    pad = pd.DataFrame({"step": [first] * len(missing), "value": [float("nan")] * len(missing), "series": missing})
    return pd.concat([curve, pad], ignore_index=True)


def _human(n: int) -> str:
    """``812``, ``45.3k``, ``300k``, ``1.2M``, ``3.4B``."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + unit
    return str(n)


def data_line(studio, f: ConvFilter, eval_fraction: float) -> str:
    """The Train tab's line about what a run with filter ``f`` trains on (``f.for_training()``, the rule of
    ``ConvFilter.for_training``), from one aggregate query (``Store.training_totals``), e.g. ``**312**
    conversations, **1.2M** tokens (5 without token counts yet; flagged and deleted left out: 14): 297 train, 15
    held out for evaluation.`` (Markdown).

    Raises:
        ValueError: ``eval_fraction`` is not a number.
    """
    t = studio.store.training_totals(f)
    n, left, without = t["conversations"], t["flagged_left_out"] + t["deleted_left_out"], t["without_tokens"]
    notes = [f"{without:,} without token counts yet"] if n and without else []
    notes += [f"flagged and deleted left out: {left:,}"] if left else []
    note = f" ({'; '.join(notes)})" if notes else ""
    convs = f"**{n:,}** conversation{'s' if n != 1 else ''}"
    if n == 0:
        hint = ("choose status Flagged or Deleted to train on those left out" if left
                else "import or expand some in the Data tab, or widen the filter")
        return f"{convs} to train on{note}: {hint}."
    k = eval_count(n, float(eval_fraction or 0))
    size = convs if without == n else f"{convs}, **{_human(t['tokens'])}** tokens"
    return f"{size}{note}: {n - k:,} train, {k:,} held out for evaluation."


def estimate_line(studio, f: ConvFilter, eval_fraction: float, base: str, hp: dict) -> str:
    """The line above Start about how long the run would take (``RunManager.estimate``), e.g. ``About **3**
    steps (36 sequences: 12 train conversations x 3 epochs, global batch 128), **~5m00s** on this machine
    (guessed: ...).`` and, over ``LONG_RUN_S``, a warning that says what to lower (Markdown).

    Raises:
        ValueError: ``eval_fraction`` is not a number; RunError/RegistryError as ``RunManager.estimate``.
    """
    t = studio.store.training_totals(f)
    n = t["conversations"] - eval_count(t["conversations"], float(eval_fraction or 0))
    with_tokens = t["conversations"] - t["without_tokens"]
    tokens = t["tokens"] / with_tokens if with_tokens > 0 and t["tokens"] else None
    e = studio.runs.estimate(base, n, hp, tokens)
    gb = hp.get("global_batch_size")
    if int(hp.get("max_steps") or -1) > 0:
        how = f"Max steps x {min(int(gb or 1), n) if n else gb} sequences per step"
    else:
        how = f"{n:,} train conversations x {hp.get('num_train_epochs')} epochs, global batch {gb}"
    plural = "s" if e["steps"] != 1 else ""
    line = f"Estimate: **{e['steps']:,}** optimizer step{plural} ({e['sequences']:,} sequences: {how})"
    if e["seconds"] is None:
        return line + ", time unknown (no run of this model here yet and no parameter count)."
    line += f", **~{fmt_duration(e['seconds'])}** ({md_text(e['source'])})."
    if e["long"]:
        line = (f"⚠ **Long run: ~{fmt_duration(e['seconds'])}.** To try the settings first, lower Max steps or "
                f"Global batch (Batch, length and memory), or train on fewer conversations.\n\n" + line)
    return line


def run_details(runs: RunManager, s: dict) -> str:
    """Markdown about one run: state, data (its filter), snapshot, registered model, and its exact command.
    Names, messages and the filter are escaped (``common.md_text``); the command is a code block."""
    # the run id in a code span (md_code): inside one, md_text's backslashes would show ("20261129\-2132…")
    name, run_id = md_text(s["name"]), md_code(s["run_id"])
    title = f"**{name}** · {run_id}" if s["name"] != s["run_id"] else run_id
    lines = [f"{title} · **{md_text(s['state'])}**"]
    if s.get("message"):
        lines.append(md_text(s["message"]))
    try:
        what = run_filter(s.get("filters")).describe()
    except ValueError as e:
        what = f"a filter that no longer reads ({e})"
    lines.append(f"{md_text(s['method'])} on **{md_text(s['base_model'])}**, template {md_text(s['template'])}; "
                 f"{s.get('n_train')} train / {s.get('n_eval')} eval conversations ({md_text(what)}), snapshot "
                 f"sha256 `{(s.get('snapshot_sha256') or '')[:16]}…`")
    if s.get("job_id"):
        lines.append(f"Job **{s['job_id']}** in the job list (also `wvstudio stop {s['job_id']}` / "
                     f"`wvstudio resume {s['job_id']}`).")
    if s.get("registered_as"):
        lines.append(f"✅ Registered as **{md_text(s['registered_as'])}**: it is in the Chat tab and every model "
                     "list now.")
    lines.append(md_block(s["command"], "shell"))
    return "\n\n".join(lines)


@dataclass
class TrainTabState:
    """What one open page of the Train tab remembers between polls (its one ``gr.State``).

    Attributes:
        runs_sig: the runs as last sent to the runs table and run picker (``(run id, state, registered as,
            5 s tick while live)`` each); they are re-sent when it changes.
        plot_key: ``(run id, points, state)`` of the loss curve last sent; the plot is re-sent when it changes.
    """

    runs_sig: list | None = None
    plot_key: tuple | None = None


def _filter_triggers(fc: FilterControls) -> list:
    """Events after which the data line and the preview follow the filter: a choice or a number changed, Enter
    in or leaving a text box (a search per keystroke is not needed)."""
    out = []
    for c in fc.inputs:
        out += [c.submit, c.blur] if isinstance(c, gr.Textbox) else [c.change]
    return out


def build(studio) -> dict:
    """Lay out the Train tab and wire its events. Returns ``{"refresh", "inputs", "outputs", "filters"}``: the
    tab-select handler (model list, filter choices, the data line and the command), its inputs (a set) and
    outputs, and the tab's ``FilterControls``."""
    runs: RunManager = studio.runs
    defaults = default_hyperparams()
    names = local_models(studio)

    gr.Markdown("Fine-tune with the **Vicuna v1.1 recipe** (FastChat `train_vicuna_13b.sh`: 3 epochs, lr 2e-5, "
                "cosine, global batch 128, loss on assistant turns only). A run trains on a frozen snapshot of "
                "the conversations the filter below chooses (the Data tab's filter; flagged and deleted "
                "conversations stay out unless you choose them by status or flag) in its own process: closing "
                "this page doesn't stop it, and runs started while one is running wait in a queue (expansions "
                "don't wait for them).")
    fc = FilterControls(studio, elem_prefix="train")
    with gr.Row():
        with gr.Column():
            base = gr.Dropdown(names, value=names[0] if names else None, label="Base model (local checkpoints)",
                               elem_id="train-base")
            method = gr.Radio(METHOD_CHOICES, value="lora", label="Method", elem_id="train-method")
            template = gr.Radio(TEMPLATE_LABELS, value=RUN_TEMPLATES[0], label="Conversation template",
                                elem_id="train-template")
            dpo_ui = DpoControls(studio)  # method DPO (ui/preferences.py): set, LoRA or full, beta, loss
            run_name = gr.Textbox("", label="Name (optional; the trained model's registry name)", max_lines=1,
                                  elem_id="train-name")
        with gr.Column():
            fc.render("query", placeholder='Search message text: words, "a phrase" (Enter)')
            fc.render("source_id", label="Conversations from source")
            with gr.Row():
                fc.render("status", info="flagged and deleted stay out unless chosen here")
                fc.render("origin")
            fc.render("tags")
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
    with gr.Accordion("More filters (teacher, job, rounds, tokens, characters, edited, flagged, ids; 0 = no bound)",
                      open=False, elem_id="train-more-filters"):
        for k in range(0, len(MORE_FILTERS), 6):
            with gr.Row():
                for name in MORE_FILTERS[k:k + 6]:
                    # the job panel's job id is #train-job already
                    fc.render(name, min_width=120, **({"elem_id": "train-filter-job"} if name == "job_id" else {}))

    groups = _hp_groups(defaults)
    hp_keys = [k for _, _, fields in groups for k, *_ in fields]
    hp_kinds = {k: kind for _, _, fields in groups for k, _, kind, _ in fields}
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
                    elif kind == "opt_int":
                        comp = gr.Number(v, precision=0, minimum=0, label=label, elem_id=eid, min_width=160)
                    elif kind == "int":
                        comp = gr.Number(v, precision=0, label=label, elem_id=eid, min_width=160)
                    else:
                        comp = gr.Number(v, label=label, elem_id=eid, min_width=160)
                    hp_inputs.append(comp)
    hp_recipe = {c: _ui_value(k, defaults.get(k), kind)
                 for c, (k, kind) in zip(hp_inputs, [(k, kind) for _, _, f in groups for k, _, kind, _ in f])}
    reset_hp = gr.Button("Reset hyperparameters to the recipe", size="sm", elem_id="train-reset-hp")

    with gr.Accordion("Command (exactly what runs; copy it to run the same run elsewhere)", open=True):
        command = gr.Code(language="shell", lines=2, label="Command", elem_id="train-command", interactive=False)
        config_view = gr.Code(language="json", lines=8, max_lines=16, label="config.json written into the run folder",
                              elem_id="train-config", interactive=False)

    estimate = gr.Markdown(elem_id="train-estimate")
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
                               color_map=PLOT_COLORS, height=300,
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
                    "the model (adapters merged) to a new folder of the name you give, in the studio's exports "
                    "folder, and uploads it when you name a Hub repo and `HF_TOKEN` is set.")
        with gr.Row():
            merge_btn = gr.Button("Merge adapter into its base", elem_id="train-merge")
            export_dir = gr.Textbox("", label="Export name (a new folder in the exports folder)",
                                    placeholder="my-vicuna-lora", max_lines=1, elem_id="train-export-dir")
            push_repo = gr.Textbox("", label="Push to Hub repo (optional)", placeholder="user/name",
                                   elem_id="train-push-repo")
            export_btn = gr.Button("Export", elem_id="train-export")
        export_out = gr.Markdown(elem_id="train-export-out")
    state = gr.State(TrainTabState())
    timer = gr.Timer(1.0, active=True)

    # every setting of a run; a handler given this set as inputs gets one {component: value} dict
    settings = {base, method, template, run_name, eval_fraction, num_processes, backend, *fc.inputs, *hp_inputs,
                *dpo_ui.inputs}

    # ----------------------------------------------------------------------------- handlers
    def _hp(v: dict) -> dict:
        hp = {}
        for key, c in zip(hp_keys, hp_inputs):
            x = _from_ui(v[c], hp_kinds[key])
            if isinstance(x, float) and x.is_integer() and isinstance(defaults.get(key), int):
                x = int(x)
            hp[key] = x
        return hp

    def preview(v: dict) -> dict:
        """The command and config.json a run with these settings gets (an error is shown in place, not as a
        toast: this runs on every change)."""
        try:
            if v[method] == "dpo":
                cmd, cfg = dpo_ui.preview(v, v[base], _hp(v))
            else:
                cmd, cfg = runs.preview(v[base], v[method], fc.to_filter(v), _hp(v), v[template],
                                        int(v[num_processes] or 1), v[backend])
        except Exception as e:  # noqa: BLE001 - any refusal is shown in the command box (text)
            return {command: f"# ⚠ {e}", config_view: "", estimate: ""}
        try:
            est = estimate_line(studio, fc.to_filter(v), v[eval_fraction], v[base], cfg["hyperparams"])
        except Exception as e:  # noqa: BLE001 - shown in place, like the preview's refusals
            est = f"⚠ No estimate: {md_text(str(e))}"
        return {command: cmd, config_view: json.dumps(cfg, indent=2), estimate: est}

    def count(v: dict) -> dict:
        """The data line: what the filter trains on (after the training rule)."""
        try:
            return {data_count: data_line(studio, fc.to_filter(v), v[eval_fraction])}
        except Exception as e:  # noqa: BLE001 - a bad filter value is shown in place
            return {data_count: f"⚠ {md_text(str(e))}"}

    def on_filter(v: dict) -> dict:
        return {**preview(v), **count(v)}

    def _choices(all_runs):
        return [(f"{r['name']} · {r['state']}" if r["name"] != r["run_id"] else f"{r['run_id']} · {r['state']}",
                 r["run_id"]) for r in all_runs]

    def poll(run_id, st: TrainTabState, force=False, select=False) -> dict:
        """Everything the tab shows about ``run_id``. The run picker's value is only set when this call chose
        the run (``select``, or none was picked): a timer tick that started before a Start click must not
        switch the page back to the run it was showing."""
        st = st if isinstance(st, TrainTabState) else TrainTabState()
        all_runs = runs.list_runs()
        # the table is re-sent when a run changes state, and every 5 s while one is running
        tick = int(time.time() / 5)
        sig = [(r["run_id"], r["state"], r.get("registered_as"), tick if r["state"] in ("running", "stopping") else 0)
               for r in all_runs]
        if not run_id or run_id not in {r["run_id"] for r in all_runs}:
            run_id = runs.default_run()
            select = bool(run_id)
        out: dict = {state: st}
        if sig != st.runs_sig or force:
            out[runs_table] = runs_frame(all_runs)
            out[run_pick] = (gr.update(choices=_choices(all_runs), value=run_id) if select
                             else gr.update(choices=_choices(all_runs)))
        else:
            out[run_pick] = gr.update(value=run_id) if select else gr.update()
        st.runs_sig = sig
        if not run_id:
            out.update(panel.view(0))
            out.update({panel.job: 0, details: "", log: "",
                        panel.progress: progress_html(0, "No run yet: choose a model and data above, then Start.")})
            return out
        s = next((r for r in all_runs if r["run_id"] == run_id), None) or runs.status(run_id)
        out.update(panel.view(s["job_id"] or 0))
        out[panel.job] = s["job_id"] or 0
        if not s["job_id"]:
            out[panel.progress] = progress_html(0, f"{runs.line(s)}; press Start to queue it")
        curve = runs.curve(run_id)
        key = (run_id, len(curve), s["state"])
        if key != st.plot_key or force:
            out[plot] = plot_frame(curve) if len(curve) else None
        st.plot_key = key
        out.update({details: run_details(runs, s), log: runs.log_tail(run_id, 14)})
        return out

    @guarded(studio, "admin", "Training")
    def start(v: dict) -> dict:
        run_id = dpo_ui.create(v, v[base], _hp(v), v[run_name] or None) if v[method] == "dpo" else runs.create_run(v[base], v[method], fc.to_filter(v), _hp(v), v[template],
                                 num_processes=int(v[num_processes] or 1), backend=v[backend],
                                 eval_fraction=float(v[eval_fraction] or 0), name=v[run_name] or None)
        try:
            runs.start(run_id)
        except ValueError as e:
            gr.Warning(f"Run {run_id} was created but not started: {e}")
        return poll(run_id, v[state], force=True, select=True)

    def _selected(run_id):
        if not run_id:
            raise ValueError("no run selected: pick one in Past runs")
        return run_id

    @guarded(studio, "viewer", "Following a run")
    def pick_job(jid, run_id, st) -> dict:
        """A click in the job list: a training job shows its run; another kind is followed in the Expand tab."""
        rid = runs.run_of_job(int(jid)) if jid else None
        if rid is None:
            if jid:
                gr.Info(f"job {int(jid)} is not a training run: follow it in the Expand tab")
            return poll(run_id, st, force=True)
        return poll(rid, st, force=True, select=True)

    @guarded(studio, "admin", "Merging an adapter")
    def merge(run_id) -> dict:
        name = runs.merge(_selected(run_id))
        return {export_out: f"✅ Merged into a full checkpoint, registered as **{md_text(name)}**."}

    @guarded(studio, "admin", "Export")
    def export(run_id, export_name, repo) -> dict:
        """Export the run's registered model to ``<data>/exports/<export_name>`` (``RunManager.export_named``:
        a name, never a server path; every bad name gets the one ``EXPORT_NAME_REFUSED`` text, a taken name is
        refused by name). The message names the folder as ``exports/<name>``, not by its server path."""
        s = runs.status(_selected(run_id))
        if not s.get("registered_as"):
            raise ValueError(f"run {run_id} has no registered model yet ({s['state']})")
        name = export_name.strip() if isinstance(export_name, str) else export_name
        res = runs.export_named(s["registered_as"], name, push_to_hub=(repo or "").strip() or None)
        pushed = f" and pushed to {md_text(res['url'])}" if res["url"] else ""
        return {export_out: f"✅ Exported **{md_text(s['registered_as'])}** to "
                            f"{md_code('exports/' + res['name'])}{pushed}."}

    @guarded(studio, "viewer", "Following a run")
    def pick_run(evt: gr.SelectData) -> dict:
        try:
            rid = evt.row_value[0] if evt.row_value and evt.row_value[0] else None
        except (TypeError, IndexError):
            rid = None
        return {run_pick: rid if rid else gr.update()}

    def show_again(run_id, st) -> dict:
        return poll(run_id, st, force=True)

    # ----------------------------------------------------------------------------- wiring
    preview_outputs = [command, config_view, estimate]
    previewing = guarded(studio, "viewer", "Previewing a run")
    # the preview's events and the tab's refresh on select (``PREVIEW_QUEUE``) run one at a time in the order they
    # came, so a refresh still running when the user edits a field can never land after the edit's preview
    gr.on([c.change for c in (base, method, template, num_processes, backend, *hp_inputs, *dpo_ui.inputs)],
          previewing(preview),
          settings, preview_outputs, show_progress="hidden", **PREVIEW_QUEUE)
    gr.on(_filter_triggers(fc), previewing(on_filter), settings, preview_outputs + [data_count],
          show_progress="hidden", **PREVIEW_QUEUE)
    eval_fraction.change(previewing(on_filter), settings, preview_outputs + [data_count], show_progress="hidden",
                         **PREVIEW_QUEUE)
    poll_outputs = panel.outputs + [run_pick, plot, details, log, runs_table, state]
    start_btn.click(start, settings | {state}, poll_outputs)
    panel.wire(show_again, [run_pick, state], poll_outputs,
               on_pick=(pick_job, [panel.job, run_pick, state], poll_outputs))
    following = guarded(studio, "viewer", "Following a run")
    timer.tick(following(poll), [run_pick, state], poll_outputs, show_progress="hidden")
    run_pick.input(following(show_again), [run_pick, state], poll_outputs, show_progress="hidden")
    runs_table.select(pick_run, None, [run_pick]).then(following(show_again), [run_pick, state], poll_outputs,
                                                        show_progress="hidden")
    reset_hp.click(previewing(lambda: dict(hp_recipe)), None, hp_inputs)
    if "LoRA" in accordions:  # LoRA settings only matter for LoRA and QLoRA
        lora_acc = accordions["LoRA"]
        method.change(previewing(lambda m: {lora_acc: gr.update(visible=m != "full")}), [method], [lora_acc],
                      show_progress="hidden")
    last_method = gr.State("lora")

    def on_method(m, last, b) -> dict:
        """DPO: its own defaults (TRL's), parent checkpoints (adapters too) and controls; back: the recipe's."""
        out: dict = {last_method: m, dpo_ui.group: gr.update(visible=m == "dpo")}
        if (m == "dpo") != (last == "dpo"):
            hp = dpo_defaults()["hyperparams"] if m == "dpo" else defaults
            out.update({c: _ui_value(k, hp.get(k), hp_kinds[k]) for c, k in zip(hp_inputs, hp_keys)})
            names_now = parent_checkpoints(studio.registry) if m == "dpo" else local_models(studio)
            out[base] = gr.update(choices=names_now, value=b if b in names_now else (names_now[0] if names_now
                                                                                    else None))
        return out

    method.change(previewing(on_method), [method, last_method, base], [last_method, dpo_ui.group, base, *hp_inputs],
                  show_progress="hidden")
    merge_btn.click(merge, [run_pick], [export_out])
    export_btn.click(export, [run_pick, export_dir, push_repo], [export_out])

    # the page opens with the default run's command and the data line of the open filter
    opening = on_filter({c: c.value for c in settings})
    command.value = opening[command]
    config_view.value = opening[config_view]
    estimate.value = opening[estimate]
    data_count.value = opening[data_count]

    @guarded(studio, "viewer", "Viewing the Train tab")
    def refresh(v: dict) -> dict:
        """On tab select: the model list, fresh source/teacher/tag choices, the data line and the command."""
        names_now = parent_checkpoints(studio.registry) if v[method] == "dpo" else local_models(studio)
        b = v[base] if v[base] in names_now else (names_now[0] if names_now else None)
        out = {base: gr.update(choices=names_now, value=b), **fc.refresh(studio), **dpo_ui.refresh(v[dpo_ui.set])}
        out.update(on_filter({**v, base: b}))
        return out

    return {"refresh": refresh, "inputs": settings,
            "outputs": [base, *fc.choice_outputs, data_count, command, config_view, estimate, dpo_ui.set],
            "filters": fc}


PREVIEW_QUEUE = {"concurrency_limit": 1, "concurrency_id": "train-preview"}
"""One queue slot for the Train tab's preview and refresh events (see the wiring in ``build``)."""


def _hardware_line() -> str:
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:  # torch broken: say nothing wrong
        n = 0
    if n:
        return f"This machine: **{n} CUDA GPU{'s' if n > 1 else ''}**."
    return ("This machine: **no CUDA GPU**: training runs on the CPU (several processes without a backend: DDP "
            "over gloo, slow; QLoRA and the DeepSpeed/FSDP backends need GPUs; the command can still be copied to "
            "a GPU machine).")
