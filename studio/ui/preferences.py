"""Preferences tab and the Train tab's DPO controls: preference sets for DPO (``studio.preferences``).

The tab builds a set from Arena votes, Chat thumbs and pairwise judge runs (what was left out is counted and
shown), or imports a TRL-format file; shows a set's pairs with counts per source and per model; and edits one pair
(swap chosen and rejected, drop it from the set, restore it). Every edit keeps the set's hash current.

``DpoControls`` is rendered inside the Train tab (``ui.train``) for the method "DPO": the preference set, whether
to train a LoRA adapter or all weights, and TRL's ``beta`` and loss type. Handlers return dicts keyed by
component; names and texts from the data are escaped (``ui.common``).
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from ..preferences import PreferenceError, build_set, counts, import_set
from .common import guarded, md_table, md_text

PAIR_COLUMNS = ["#", "kept", "source", "chosen by", "rejected by", "prompt", "chosen", "rejected"]
DPO_TUNE_CHOICES = [("LoRA adapter (no second model in memory)", "lora"), ("All weights (full)", "full")]


def _short(text: str, n: int = 160) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= n else text[:n - 1] + "…"


def set_choices(studio) -> list[tuple[str, int]]:
    """``(label, id)`` of every preference set, newest first."""
    return [(f"#{s['id']} {s['name']} · {s['n_kept']} pairs", s["id"]) for s in studio.store.preference_sets()]


def pairwise_runs(studio) -> list[tuple[str, int]]:
    """``(label, id)`` of the pairwise judge runs."""
    return [(f"run {r['id']}: {', '.join(r['models'])} ({r['question_set']})", r["id"])
            for r in studio.store.judge_runs() if r["mode"] == "pairwise"]


def pairs_frame(pairs: list[dict]) -> pd.DataFrame:
    """One row per pair (``PAIR_COLUMNS``), texts shortened and escaped."""
    rows = [[p["idx"], "no" if p["dropped"] else "yes", p["source"], p.get("model_chosen") or "",
             p.get("model_rejected") or "", _short(p["prompt"][-1]["content"]), _short(p["chosen"]),
             _short(p["rejected"])] for p in pairs]
    if not rows:
        return pd.DataFrame({"": ["No pairs: build or import a set above."]})
    return md_table(pd.DataFrame(rows, columns=PAIR_COLUMNS))


def summary_md(studio, set_id) -> str:
    """The set's name, hash, kept/dropped counts, counts per source and per model, and what was left out."""
    if not set_id:
        return "No preference set yet."
    s = studio.store.preference_set(int(set_id))
    c = counts(studio.store.preference_pairs(int(set_id)))
    lines = [f"**{md_text(s['name'])}** (set {s['id']}): **{c['total']}** pairs kept, "
             f"{s['n_pairs'] - c['total']} dropped · sha256 `{s['sha256'][:12]}`",
             "By source: " + ", ".join(f"{md_text(k)} **{v}**" for k, v in c["by_source"].items())]
    if c["by_model"]:
        lines.append("By model (chosen / rejected): " + ", ".join(
            f"{md_text(m)} **{v['chosen']}** / {v['rejected']}" for m, v in c["by_model"].items()))
    left = {k: v for k, v in (s["skipped"] or {}).items() if v}
    if left:
        lines.append("Left out while building: " + ", ".join(f"{md_text(k)} {v}" for k, v in left.items()))
    return "\n\n".join(lines)


def build(studio) -> dict:
    """Lay out the Preferences tab. Returns ``{"refresh", "inputs", "outputs"}`` for the tab's select event."""
    gr.Markdown("**Preference pairs for DPO.** Build a set from what people and judges preferred: Arena votes "
                "(winner over loser; ties and both-bad left out), Chat thumbs (an answer rated up over one rated "
                "down on the same prompt) and pairwise judge runs (a win agreed in both orders), or import a TRL "
                "file (`prompt`/`chosen`/`rejected`). Tune a checkpoint on a set in the Train tab (method DPO).")
    with gr.Row():
        with gr.Column():
            name = gr.Textbox("votes", label="New set's name", max_lines=1, elem_id="prefs-name")
            with gr.Row():
                use_votes = gr.Checkbox(True, label="Arena votes", elem_id="prefs-votes")
                use_thumbs = gr.Checkbox(True, label="Chat thumbs", elem_id="prefs-thumbs")
            judge_runs = gr.Dropdown([], value=[], multiselect=True, label="Pairwise judge runs",
                                     elem_id="prefs-judge-runs")
            build_btn = gr.Button("Build set", variant="primary", elem_id="prefs-build")
        with gr.Column():
            upload = gr.File(label="Import a preference file (.jsonl, .json, .parquet: TRL prompt/chosen/rejected "
                             "or UltraFeedback binarized)", elem_id="prefs-upload", height=120)
            import_btn = gr.Button("Import file as a set", elem_id="prefs-import")
    out_md = gr.Markdown(elem_id="prefs-out")
    set_pick = gr.Dropdown([], value=None, label="Preference set", elem_id="prefs-set")
    summary = gr.Markdown(elem_id="prefs-summary")
    with gr.Row():
        idx = gr.Number(0, precision=0, minimum=0, label="Pair # (click a row)", elem_id="prefs-idx", min_width=120)
        swap_btn = gr.Button("Swap chosen/rejected", elem_id="prefs-swap")
        drop_btn = gr.Button("Drop", elem_id="prefs-drop")
        restore_btn = gr.Button("Restore", elem_id="prefs-restore")
    table = gr.Dataframe(pairs_frame([]), interactive=False, datatype="markdown", wrap=True, max_height=480,
                         label="Pairs", elem_id="prefs-pairs")

    def show(set_id) -> dict:
        pairs = studio.store.preference_pairs(int(set_id)) if set_id else []
        return {summary: summary_md(studio, set_id), table: pairs_frame(pairs)}

    def _pick(set_id) -> dict:
        return {set_pick: gr.update(choices=set_choices(studio), value=set_id), **show(set_id)}

    @guarded(studio, "editor", "Building a preference set")
    def do_build(n, v, t, runs) -> dict:
        try:
            set_id, skipped = build_set(studio.store, (n or "").strip() or "preferences", votes=bool(v),
                                        thumbs=bool(t), judge_runs=[int(r) for r in runs or []])
        except PreferenceError as e:
            return {out_md: f"❌ {md_text(e)}"}
        left = ", ".join(f"{md_text(k)} {c}" for k, c in skipped.items() if c) or "nothing"
        s = studio.store.preference_set(set_id)
        return {out_md: f"✅ Set {set_id} **{md_text(s['name'])}**: {s['n_pairs']} pairs. Left out: {left}.",
                **_pick(set_id)}

    @guarded(studio, "editor", "Importing a preference file")
    def do_import(fl) -> dict:
        if not fl:
            raise ValueError("choose a file to import first")
        path = fl if isinstance(fl, str) else fl.name
        shown = Path(getattr(fl, "orig_name", None) or Path(path).name).name
        if not Path(path).is_file():
            raise ValueError(f"{shown}: not a file")
        try:
            set_id = import_set(studio.store, path, shown, display_name=shown,
                                max_bytes=int(float(studio.settings.max_upload_mb) * 1024 * 1024))
        except PreferenceError as e:
            return {out_md: f"❌ {md_text(e)}", upload: None}
        s = studio.store.preference_set(set_id)
        return {out_md: f"✅ Imported {s['n_pairs']} pairs as set {set_id} **{md_text(s['name'])}**.", upload: None,
                **_pick(set_id)}

    def editor(action: str):
        @guarded(studio, "editor", "Editing a preference pair")
        def edit(set_id, i) -> dict:
            if not set_id:
                raise ValueError("pick a preference set first")
            studio.store.edit_preference_pair(int(set_id), int(i or 0), action)
            return {out_md: f"✅ Pair {int(i or 0)}: {action} done.", **_pick(int(set_id))}
        return edit

    @guarded(studio, "viewer", "Viewing a preference set")
    def on_pick(set_id) -> dict:
        return show(set_id)

    @guarded(studio, "viewer", "Viewing a preference set")
    def on_row(evt: gr.SelectData) -> dict:
        try:
            return {idx: int(str(evt.row_value[0]).replace("\\", ""))}
        except (TypeError, ValueError, IndexError):
            return {idx: gr.update()}

    @guarded(studio, "viewer", "Viewing the Preferences tab")
    def refresh(set_id) -> dict:
        choices = set_choices(studio)
        ids = [c[1] for c in choices]
        sid = set_id if set_id in ids else (ids[0] if ids else None)
        return {set_pick: gr.update(choices=choices, value=sid), judge_runs: gr.update(choices=pairwise_runs(studio)),
                **show(sid)}

    view = [summary, table]
    build_btn.click(do_build, [name, use_votes, use_thumbs, judge_runs], [out_md, set_pick, *view])
    import_btn.click(do_import, [upload], [out_md, upload, set_pick, *view])
    for btn, action in ((swap_btn, "swap"), (drop_btn, "drop"), (restore_btn, "restore")):
        btn.click(editor(action), [set_pick, idx], [out_md, set_pick, *view])
    set_pick.input(on_pick, [set_pick], view)
    table.select(on_row, None, [idx])
    return {"refresh": refresh, "inputs": [set_pick], "outputs": [set_pick, judge_runs, *view]}


class DpoControls:
    """The Train tab's settings for method "DPO": ``set`` (preference set), ``tune`` (``lora``/``full``),
    ``beta`` and ``loss`` (TRL ``DPOConfig``), in a group shown only for that method (``group``)."""

    def __init__(self, studio):
        from training.dpo import LOSS_TYPES

        from ..dpo import dpo_defaults

        self.studio = studio
        d = dpo_defaults()["dpo"]
        choices = set_choices(studio)
        with gr.Group(visible=False, elem_id="train-dpo") as self.group:
            self.set = gr.Dropdown(choices, value=choices[0][1] if choices else None,
                                   label="Preference set (Preferences tab)", elem_id="train-dpo-set")
            self.tune = gr.Radio(DPO_TUNE_CHOICES, value="lora", label="DPO trains", elem_id="train-dpo-tune")
            with gr.Row():
                self.beta = gr.Number(d["beta"], label="beta (TRL default 0.1)", elem_id="train-dpo-beta")
                self.loss = gr.Dropdown(list(LOSS_TYPES), value=d["loss_type"], label="Loss (TRL default sigmoid)",
                                        elem_id="train-dpo-loss")
        self.inputs = [self.set, self.tune, self.beta, self.loss]

    def dpo(self, v: dict) -> dict:
        """``{"beta", "loss_type"}`` from the fields."""
        return {"beta": v[self.beta], "loss_type": v[self.loss]}

    def preview(self, v: dict, parent: str, hyperparams: dict) -> tuple[str, dict]:
        """``studio.dpo.preview_dpo`` with the fields' values. Raises as it does (no set: RunError)."""
        from ..dpo import preview_dpo

        return preview_dpo(self.studio, v[self.set], parent, v[self.tune], hyperparams, self.dpo(v))

    def create(self, v: dict, parent: str, hyperparams: dict, name: str | None) -> str:
        """``studio.dpo.create_dpo_run`` with the fields' values; returns the run id."""
        from ..dpo import create_dpo_run

        return create_dpo_run(self.studio, v[self.set], parent, v[self.tune], hyperparams, self.dpo(v), name)

    def refresh(self, current) -> dict:
        """Fresh set choices (the current one kept when it still exists)."""
        choices = set_choices(self.studio)
        ids = [c[1] for c in choices]
        return {self.set: gr.update(choices=choices, value=current if current in ids else (ids[0] if ids else None))}
