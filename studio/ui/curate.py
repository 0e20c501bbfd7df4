"""The Data tab's curation tools, all working on the tab's current filter (or the selected ids):
bulk actions with undo, the quality filters of the Vicuna/WizardVicuna pipelines, statistics plots, and
export (ShareGPT, OpenAI JSONL, Parquet, a Hugging Face datasets folder with a card)."""

from __future__ import annotations

import os

import gradio as gr
import pandas as pd

from .. import quality
from ..store import ConvFilter
from .common import friendly, guard_writes, model_choices

BULK_CHOICES = [("Tag", "tag"), ("Remove tag", "untag"), ("Flag", "flag"), ("Remove flag", "unflag"),
                ("Delete", "delete"), ("Restore", "restore")]
QUALITY_SCAN_LIMIT = 200_000


def _scope_filter(studio, make_filter, fvals, scope, selection, parse_ids) -> ConvFilter:
    f = make_filter(*fvals)
    if scope == "Selected ids":
        ids = parse_ids(selection)
        if not ids:
            raise ValueError("no ids selected: click rows with 'Add to selection', or type ids")
        return ConvFilter(ids=ids, status="deleted" if f.status == "deleted" else "all")
    return f


def build(studio, filter_inputs, make_filter, selection, parse_ids) -> dict:
    """Lay out the curation accordions under the Data tab's table.

    Returns:
        ``{"changed": [event dependencies after which the table should reload]}``.
    """
    store = studio.store
    changed = []

    # ------------------------------------------------------------------ bulk actions
    with gr.Accordion("Bulk actions (with undo)", open=False, elem_id="bulk-acc"):
        with gr.Row():
            scope = gr.Radio(["Current filter", "Selected ids"], value="Current filter", label="Apply to",
                             elem_id="bulk-scope")
            action = gr.Dropdown(BULK_CHOICES, value="tag", label="Action", elem_id="bulk-action")
            arg = gr.Textbox(label="Tag or flag reason", elem_id="bulk-arg", max_lines=1)
            apply_btn = gr.Button("Apply", variant="primary", elem_id="bulk-apply")
        bulk_out = gr.Markdown(elem_id="bulk-result")
        last_op = gr.State(None)
        with gr.Row():
            undo_btn = gr.Button("Undo the last bulk action", elem_id="bulk-undo")
            undo_id = gr.Number(None, precision=0, label="…or undo operation #", elem_id="bulk-undo-id")
            undo_id_btn = gr.Button("Undo that one", elem_id="bulk-undo-id-btn")
        ops_table = gr.Dataframe(interactive=False, label="Recent bulk actions", elem_id="bulk-ops", max_height=240)

    def ops_df():
        df = store.list_bulk_ops(10)
        if len(df):
            df = df.assign(created_at=df["created_at"].dt.strftime("%H:%M:%S"),
                           undone_at=df["undone_at"].dt.strftime("%H:%M:%S"))
        return df

    @friendly
    def do_bulk(scope_v, action_v, arg_v, sel, *fvals):
        guard_writes(studio)
        f = _scope_filter(studio, make_filter, fvals, scope_v, sel, parse_ids)
        if action_v == "restore" and scope_v == "Current filter" and f.status != "deleted":
            f.status = "deleted"  # restoring acts on deleted conversations
        ids = store.conversation_ids(f)
        if not ids:
            raise ValueError("no conversation matches: nothing to do")
        op, n = store.bulk(action_v, ids, arg_v)
        label = {v: k for k, v in BULK_CHOICES}[action_v]
        return (f"✅ {label}: **{n}** of {len(ids)} conversations changed (operation #{op}). "
                f"**Undo** puts them back.", op, ops_df())

    @friendly
    def do_undo(op):
        guard_writes(studio)
        if not op:
            raise ValueError("no bulk action to undo yet")
        n = store.undo_bulk(int(op))
        return f"↩️ Operation #{int(op)} undone: {n} conversations restored to their earlier state.", None, ops_df()

    changed.append(apply_btn.click(do_bulk, [scope, action, arg, selection] + filter_inputs,
                                   [bulk_out, last_op, ops_table]))
    changed.append(undo_btn.click(do_undo, [last_op], [bulk_out, last_op, ops_table]))
    changed.append(undo_id_btn.click(do_undo, [undo_id], [bulk_out, last_op, ops_table]))

    # ------------------------------------------------------------------ quality filters
    with gr.Accordion("Quality filters", open=False, elem_id="quality-acc"):
        gr.Markdown("The checks the Vicuna and WizardVicuna pipelines ran on their data. **Find** lists what a "
                    "filter flags in the current filter; **Flag** or **Tag** marks them (undoable, see Bulk "
                    "actions) so you can review, export without them, or delete them.")
        names = list(quality.FILTERS)
        q_name = gr.Dropdown([(quality.FILTERS[n].title, n) for n in names], value=names[0], label="Filter",
                             elem_id="quality-filter")
        q_explain = gr.Markdown(elem_id="quality-explain")
        q_model = gr.Dropdown(model_choices(studio), value=(model_choices(studio) or [None])[0],
                              label="Tokenizer of (for token counts)", elem_id="quality-model", visible=False)
        param_groups, param_comps = {}, []
        for n in names:
            qf = quality.FILTERS[n]
            with gr.Group(visible=(n == names[0])) as grp:
                comps = []
                with gr.Row():
                    for p in qf.params:
                        if p.name == "tokenizer":
                            continue
                        label = f"{p.name}: {p.help}"
                        eid = f"quality-{n}-{p.name}"
                        if p.choices:
                            c = gr.Dropdown(list(p.choices), value=p.default, label=label, elem_id=eid)
                        elif isinstance(p.default, bool):
                            c = gr.Checkbox(p.default, label=label, elem_id=eid)
                        elif isinstance(p.default, (int, float)):
                            c = gr.Number(p.default, label=label, minimum=p.minimum, maximum=p.maximum,
                                          precision=0 if isinstance(p.default, int) else None, elem_id=eid)
                        else:
                            c = gr.Textbox(p.default, label=label, lines=1, elem_id=eid)
                        comps.append((n, p.name, c))
            param_groups[n] = grp
            param_comps.extend(comps)
        if "refusals" in quality.FILTERS and hasattr(quality, "REFUSAL_PHRASES"):
            with gr.Accordion("Refusal phrases searched", open=False):
                gr.Markdown(", ".join(f"“{p}”" for p in quality.REFUSAL_PHRASES))
        with gr.Row():
            q_find = gr.Button("Find", variant="primary", elem_id="quality-find")
            q_mark_as = gr.Dropdown([("Flag them", "flag"), ("Tag them", "tag"), ("Delete them", "delete"),
                                     ("Split them into whole-round chunks (long conversations)", "split")],
                                    value="flag", label="Then", elem_id="quality-mark-as")
            q_apply = gr.Button("Apply to the found ones", elem_id="quality-apply")
        q_out = gr.Markdown(elem_id="quality-result")
        q_found = gr.State([])
        q_table = gr.Dataframe(interactive=False, label="Found (first 200)", elem_id="quality-table", max_height=300)

    def show_filter(n):
        qf = quality.FILTERS[n]
        return [f"**{qf.title}.** {qf.explanation}\n\n_Source: {qf.source}_",
                gr.update(visible=qf.needs_tokenizer)] + [gr.update(visible=(k == n)) for k in names]

    @friendly
    def do_find(n, model_v, sel, scope_v, *vals):
        fvals, pvals = vals[:len(filter_inputs)], vals[len(filter_inputs):]
        qf = quality.FILTERS[n]
        params = {pn: v for (fn, pn, _), v in zip(param_comps, pvals) if fn == n}
        for p in qf.params:
            if p.name in params and isinstance(p.default, int) and not isinstance(p.default, bool) \
                    and params[p.name] is not None:
                params[p.name] = int(params[p.name])
        if qf.needs_tokenizer:
            params["tokenizer"] = studio.registry.load(model_v).tokenizer if model_v else None
            if params["tokenizer"] is None:
                raise ValueError("choose the model whose tokenizer counts tokens")
        f = _scope_filter(studio, make_filter, fvals, scope_v, sel, parse_ids)
        n_conv = store.count_conversations(f)
        if n_conv > QUALITY_SCAN_LIMIT:
            raise ValueError(f"{n_conv} conversations: narrow the filter to at most {QUALITY_SCAN_LIMIT}")
        convs = list(store.iter_conversations(f, with_ids=True))
        flags = quality.run_filter(n, convs, **params)
        df = pd.DataFrame(flags[:200], columns=["id", "reason"])
        return (f"**{len(flags)}** of {n_conv} conversations flagged by *{qf.title}*.", [int(i) for i, _ in flags],
                df)

    @friendly
    def do_apply(found, mark_as, n, model_v, *pvals):
        guard_writes(studio)
        if not found:
            raise ValueError("run Find first: nothing is found yet")
        label = quality.FILTERS[n].title
        if mark_as == "split":
            if n != "long_conversations":
                raise ValueError("splitting is for the 'Longer than the training context' filter")
            params = {pn: v for (fn, pn, _), v in zip(param_comps, pvals) if fn == n}
            tok = studio.registry.load(model_v).tokenizer
            convs = list(store.iter_conversations(ConvFilter(ids=found), with_ids=True))
            plans = [(cid, [ch for _, ch in quality.split_conversations([(cid, msgs)], tok,
                                                                       int(params.get("max_tokens") or 2048))])
                     for cid, msgs in convs]
            plans = [(cid, chunks) for cid, chunks in plans if len(chunks) > 1]
            op, new_ids = store.split(plans)
            return (f"✂️ {len(plans)} conversations split into {len(new_ids)} chunks (origin *split*); the originals "
                    f"are deleted (operation #{op}: **Undo** under Bulk actions puts them back).", op, ops_df())
        op, k = store.bulk(mark_as, found, label if mark_as != "delete" else None)
        return (f"✅ {k} conversations {'flagged' if mark_as == 'flag' else 'tagged' if mark_as == 'tag' else 'deleted'}"
                f" as “{label}” (operation #{op}; undo it under Bulk actions).", op, ops_df())

    q_name.change(show_filter, [q_name], [q_explain, q_model] + [param_groups[k] for k in names])
    q_find.click(do_find, [q_name, q_model, selection, scope] + filter_inputs + [c for _, _, c in param_comps],
                 [q_out, q_found, q_table])
    changed.append(q_apply.click(do_apply, [q_found, q_mark_as, q_name, q_model] + [c for _, _, c in param_comps],
                                 [q_out, last_op, ops_table]))

    # ------------------------------------------------------------------ statistics
    with gr.Accordion("Statistics", open=False, elem_id="stats-acc"):
        with gr.Row():
            stats_btn = gr.Button("Compute for the current filter", variant="primary", elem_id="stats-run")
            count_btn = gr.Button("Count tokens now", elem_id="stats-count-tokens")
            count_model = gr.Dropdown(model_choices(studio), value=(model_choices(studio) or [None])[0],
                                      label="Tokenizer of", elem_id="stats-model")
        stats_md = gr.Markdown(elem_id="stats-totals")
        with gr.Row():
            p_source = gr.BarPlot(x="source", y="n", color="origin", title="Conversations per source and origin",
                                  elem_id="stats-by-source", height=260)
            p_rounds = gr.BarPlot(x="rounds", y="n", title="Rounds per conversation", elem_id="stats-rounds",
                                  height=260)
        with gr.Row():
            p_tokens = gr.BarPlot(x="bucket", y="n", title="Tokens per conversation (≥ bucket)",
                                  elem_id="stats-tokens", height=260)
            p_turn_tokens = gr.BarPlot(x="bucket", y="n", color="role", title="Tokens per turn (sample of 2,000)",
                                       elem_id="stats-turn-tokens", height=260)
        p_edits = gr.BarPlot(x="day", y="n", title="Edits over time", elem_id="stats-edits", height=220)

    @friendly
    def do_stats(model_v, *fvals):
        f = make_filter(*fvals)
        st = store.stats(f)
        t = st["totals"].iloc[0]
        tokens = "not counted yet" if pd.isna(t["tokens"]) else f"{int(t['tokens']):,}"
        md = (f"**{int(t['conversations']):,}** conversations · {int(t['rounds']):,} rounds · "
              f"{int(t['chars']):,} characters · tokens: {tokens} · {int(t['edited']):,} edited · "
              f"{int(t['flagged']):,} flagged")
        turn = pd.DataFrame(columns=["bucket", "role", "n"])
        if model_v and int(t["conversations"]):
            tok = studio.registry.load(model_v).tokenizer
            sample = list(store.iter_conversations(ConvFilter(ids=store.conversation_ids(f)[:2000])))
            texts = [(m["role"], m["content"]) for _, msgs in sample for m in msgs if m["role"] != "system"]
            if texts:
                lens = [len(x) for x in tok([c for _, c in texts], add_special_tokens=False)["input_ids"]]
                df = pd.DataFrame({"role": [r for r, _ in texts], "len": lens})
                df["bucket"] = (2 ** (df["len"].clip(lower=1).apply(lambda v: int(v).bit_length() - 1))).astype(str)
                turn = df.groupby(["bucket", "role"], as_index=False).size().rename(columns={"size": "n"})
                turn = turn.sort_values("bucket", key=lambda s: s.astype(int))
        chars_or_tokens = st["tokens"].assign(bucket=st["tokens"]["bucket"].astype(str))
        return (md, st["by_source"], st["rounds"].assign(rounds=st["rounds"]["rounds"].astype(str)),
                chars_or_tokens, turn, st["edits"].assign(day=st["edits"]["day"].astype(str)))

    @friendly
    def do_count(model_v):
        n = studio.count_tokens(model_v or None, recount=True)
        return f"Counted tokens for {n} conversations with {model_v}."

    stats_btn.click(do_stats, [count_model] + filter_inputs,
                    [stats_md, p_source, p_rounds, p_tokens, p_turn_tokens, p_edits])
    count_btn.click(do_count, [count_model], [stats_md])

    # ------------------------------------------------------------------ export
    with gr.Accordion("Export", open=False, elem_id="data-export-acc"):
        gr.Markdown("Writes the conversations of the current filter. **ShareGPT** is the WizardVicunaLM "
                    "`wizard_vicuna_70k` layout: a JSON list of `{id, conversations: [{from: human|gpt, value}]}`. "
                    "The **datasets folder** (Hugging Face `save_to_disk`) comes with a dataset card listing "
                    "sources, teachers, counts and the filter; give a hub repo to push it (needs `HF_TOKEN`).")
        with gr.Row():
            export_fmt = gr.Dropdown([("ShareGPT JSON (WizardVicunaLM)", "sharegpt"),
                                      ("OpenAI messages JSONL", "openai"), ("Parquet", "parquet"),
                                      ("Hugging Face datasets folder (+ card)", "hf")], value="sharegpt",
                                     label="Format", elem_id="data-export-format")
            push_repo = gr.Textbox(label="Push to hub repo (optional, datasets folder only)",
                                   placeholder="user/wizard-vicuna-mine", elem_id="data-export-repo")
            export_btn = gr.Button("Export", variant="primary", elem_id="data-export")
        export_file = gr.File(label="Download", interactive=False, elem_id="data-export-file")
        export_out = gr.Markdown(elem_id="data-export-result")

    @friendly
    def do_export(fmt, repo, *fvals):
        f = make_filter(*fvals)
        path, n = studio.export(fmt=fmt, filter=f, push_to_hub=(repo or "").strip() or None)
        if n == 0:
            return None, "Nothing to export: the current filter matches no conversations."
        download = str(path)
        if path.is_dir():
            import shutil

            download = shutil.make_archive(str(path), "zip", root_dir=path)
        pushed = f" and pushed to `{repo}`" if (repo or "").strip() else ""
        return download, f"Exported **{n}** conversations to `{path}`{pushed}."

    export_btn.click(do_export, [export_fmt, push_repo] + filter_inputs, [export_file, export_out])
    if os.environ.get("HF_TOKEN") is None:
        push_repo.info = "set HF_TOKEN to push"

    return {"changed": changed}
