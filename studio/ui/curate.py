"""The Data tab's curation tools, all working on the tab's filter controls (``filters.FilterControls``) or the
selected ids: bulk actions with undo, the quality filters of the Vicuna/WizardVicuna pipelines, statistics plots,
and export (ShareGPT, OpenAI JSONL, Parquet, a Hugging Face datasets folder with a card).

Handlers take one ``{component: value}`` dict and return ``{component: value}`` dicts; the session's last bulk
operation and the quality filter's finds live in the Data tab's ``DataTabState``."""

from __future__ import annotations

import os

import gradio as gr
import pandas as pd

from .. import quality
from ..filters import ConvFilter, parse_ids
from .common import downloadable, guarded, scroll_js, md_code, md_text, model_choices, require_role

BULK_CHOICES = [("Tag", "tag"), ("Remove tag", "untag"), ("Flag", "flag"), ("Remove flag", "unflag"),
                ("Delete", "delete"), ("Restore", "restore")]
QUALITY_SCAN_LIMIT = 200_000
CONFIRM_ACTIONS = ("delete",)
"""Bulk actions that first say how many conversations they cover and wait for Confirm."""


def scope_filter(filters, values: dict, scope: str, selection: str) -> ConvFilter:
    """The conversations an action covers: the filter controls' ``ConvFilter`` ("Current filter"), or the
    selected ids ("Selected ids"; deleted ones only when the Status control says "Deleted").

    Raises:
        ValueError: a bad filter value (naming the control), no ids selected, or a selection that is not ids.
    """
    f = filters.to_filter(values)
    if scope == "Selected ids":
        if not (selection or "").strip():
            raise ValueError("no ids selected: click rows with 'Add to selection', or type ids")
        try:
            ids = parse_ids(selection)
        except ValueError as e:
            raise ValueError(f"Selected ids: {e}") from None
        return ConvFilter(ids=ids, status="deleted" if f.status == "deleted" else None)
    return f


NUMERIC_ORDER = [str(2 ** k) for k in range(40)] + [str(k) for k in range(1, 1001) if k & (k - 1)]
"""The order of bar labels that are numbers (log2 buckets of tokens, rounds): a plot orders its categories as
text (128, 16, 256, ...) unless given the order, and the order is given once, when the plot is made (an order
sent with new data is not applied to the old categories)."""


def numeric_bars(df: pd.DataFrame, x: str) -> pd.DataFrame:
    """``df`` whose ``x`` column holds numbers (rounds, log2 buckets of tokens) for a bar plot made with
    ``sort=NUMERIC_ORDER``: the numbers as category labels, rows in numeric order."""
    df = df.sort_values(x, key=lambda s: s.astype(int), kind="stable") if len(df) else df
    return df.assign(**{x: df[x].astype(int).astype(str) if len(df) else df[x].astype(str)})


def filter_explanation(name: str) -> str:
    """What quality filter ``name`` finds and its source (Markdown), shown under the filter's name."""
    qf = quality.FILTERS[name]
    return f"**{qf.title}.** {qf.explanation}\n\n_Source: {qf.source}_"


def found_html(cid: int, messages: list[dict], reason: str) -> str:
    """Conversation ``cid`` as a quality filter found it: each message as text (HTML-escaped), the phrase the
    reason quotes (e.g. ``assistant turn 2: "i cannot provide"``) marked with ``<mark>`` wherever it occurs,
    case-insensitively, curly and straight apostrophes alike."""
    import html
    import re

    quoted = re.search(r'"([^"]+)"\s*$', reason or "")
    pattern = None
    if quoted:
        parts = [re.escape(c) if c != "'" else "['\u2019\u2018]" for c in quoted.group(1)]
        pattern = re.compile("".join(parts), re.IGNORECASE)
    out = [f'<div class="wv-found"><div class="wv-found-head">Conversation {int(cid)}: '
           f'{html.escape(reason or "")}</div>']
    for m in messages:
        text, pieces, at = str(m.get("content") or ""), [], 0
        for hit in (pattern.finditer(text) if pattern else ()):
            pieces += [html.escape(text[at:hit.start()]), f"<mark>{html.escape(hit.group(0))}</mark>"]
            at = hit.end()
        pieces.append(html.escape(text[at:]))
        out.append(f'<div class="wv-found-msg"><b>{html.escape(str(m.get("role")))}</b>'
                   f'<div class="wv-found-text">{"".join(pieces)}</div></div>')
    return "".join(out) + "</div>"


def build(studio, filters, selection, state) -> dict:
    """Lay out the curation accordions under the Data tab's table.

    Args:
        filters: the tab's ``FilterControls``; selection: the selected-ids textbox; state: the tab's
            ``gr.State`` holding a ``data.DataTabState``.

    Returns:
        ``{"changed": [event dependencies after which the table and the filter choices should reload]}``.
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
        with gr.Row(visible=False, elem_id="bulk-confirm-row") as confirm_row:
            confirm_btn = gr.Button("Confirm", variant="stop", elem_id="bulk-confirm")
            cancel_btn = gr.Button("Cancel", elem_id="bulk-cancel")
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

    def run_bulk(st, action_v: str, ids: list[int], arg_v) -> dict:
        op, n = store.bulk(action_v, ids, arg_v)
        st.last_op = op
        label = {val: k for k, val in BULK_CHOICES}[action_v]
        return {bulk_out: f"✅ {label}: **{n}** of {len(ids)} conversations changed (operation #{op}). "
                          f"**Undo** puts them back.", ops_table: ops_df(), confirm_row: gr.update(visible=False)}

    @guarded(studio, "editor", "Bulk actions")
    def do_bulk(v):
        """Apply: a tag or flag (and their removal, and restore) runs at once; a delete (``CONFIRM_ACTIONS``) only
        says how many conversations it would delete and shows Confirm (the ids are kept in the session's
        ``DataTabState.pending_bulk``: Confirm deletes exactly those)."""
        action_v, st = v[action], v[state]
        st.pending_bulk = None
        if action_v == "delete":
            require_role("admin", "Bulk delete")
        f = scope_filter(filters, v, v[scope], v[selection])
        if action_v == "restore" and v[scope] == "Current filter" and f.status != "deleted":
            f.status = "deleted"  # restoring acts on deleted conversations
        ids = store.conversation_ids(f)
        if not ids:
            raise ValueError("no conversation matches: nothing to do")
        if action_v in CONFIRM_ACTIONS:
            st.pending_bulk = {"action": action_v, "ids": ids, "arg": v[arg]}
            what = ("the selected ids" if v[scope] == "Selected ids"
                    else "every conversation: the filter is open" if f.describe() == "all conversations"
                    else f"the current filter: {md_text(f.describe())}")
            n = len(ids)
            return {bulk_out: f"⚠️ This will delete **{n:,}** conversation{'s' if n != 1 else ''} ({what}). "
                              "Press **Confirm** to delete them (Undo can bring them back), or **Cancel**.",
                    ops_table: gr.skip(), confirm_row: gr.update(visible=True)}
        return run_bulk(st, action_v, ids, v[arg])

    @guarded(studio, "editor", "Confirming a bulk action")
    def do_confirm(v):
        st = v[state]
        pending, st.pending_bulk = st.pending_bulk, None
        if not pending:
            raise ValueError("nothing to confirm: press Apply first")
        if pending["action"] == "delete":
            require_role("admin", "Bulk delete")
        return run_bulk(st, pending["action"], pending["ids"], pending["arg"])

    @guarded(studio, "viewer", "Cancelling a bulk action")
    def do_cancel(v):
        had, v[state].pending_bulk = v[state].pending_bulk, None
        return {bulk_out: "Cancelled: nothing was changed." if had else gr.skip(),
                confirm_row: gr.update(visible=False)}

    def undo(op, st) -> dict:
        n = store.undo_bulk(int(op))
        if st.last_op == int(op):
            st.last_op = None
        return {bulk_out: f"↩️ Operation #{int(op)} undone: {n} conversations restored to their earlier state.",
                ops_table: ops_df()}

    @guarded(studio, "editor", "Undoing a bulk action")
    def do_undo_last(v):
        if v[state].last_op is None:
            raise ValueError("no bulk action of this page to undo yet (give an operation # to undo an older one)")
        return undo(v[state].last_op, v[state])

    @guarded(studio, "editor", "Undoing a bulk action")
    def do_undo_id(v):
        if not v[undo_id]:
            raise ValueError("give the operation # to undo (see Recent bulk actions)")
        return undo(v[undo_id], v[state])

    bulk_inputs = {scope, action, arg, selection, state, *filters.inputs}
    changed.append(apply_btn.click(do_bulk, bulk_inputs, [bulk_out, ops_table, confirm_row]))
    changed.append(confirm_btn.click(do_confirm, {state}, [bulk_out, ops_table, confirm_row]))
    cancel_btn.click(do_cancel, {state}, [bulk_out, confirm_row])
    # another action or scope makes a pending confirmation void: Confirm must never delete after the action
    # shown beside it became a tag
    gr.on([scope.change, action.change], do_cancel, {state}, [bulk_out, confirm_row], show_progress="hidden")
    changed.append(undo_btn.click(do_undo_last, {state}, [bulk_out, ops_table]))
    changed.append(undo_id_btn.click(do_undo_id, {undo_id, state}, [bulk_out, ops_table]))

    # ------------------------------------------------------------------ quality filters
    with gr.Accordion("Quality filters", open=False, elem_id="quality-acc"):
        gr.Markdown("The checks the Vicuna and WizardVicuna pipelines ran on their data. **Find** lists what a "
                    "filter flags in the current filter; **Flag** or **Tag** marks them (undoable, see Bulk "
                    "actions) so you can review, export without them, or delete them.")
        names = list(quality.FILTERS)
        q_name = gr.Dropdown([(quality.FILTERS[n].title, n) for n in names], value=names[0], label="Filter",
                             elem_id="quality-filter")
        q_explain = gr.Markdown(filter_explanation(names[0]), elem_id="quality-explain")
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
        phrases_acc = None
        if "refusals" in quality.FILTERS and hasattr(quality, "REFUSAL_PHRASES"):
            # only the refusals filter searches these phrases
            with gr.Accordion("Refusal phrases searched", open=False, visible=names[0] == "refusals",
                              elem_id="quality-phrases") as phrases_acc:
                gr.Markdown(", ".join(f"“{p}”" for p in quality.REFUSAL_PHRASES))
        with gr.Row():
            q_find = gr.Button("Find", variant="primary", elem_id="quality-find")
            q_mark_as = gr.Dropdown([("Flag them", "flag"), ("Tag them", "tag"), ("Delete them", "delete"),
                                     ("Split them into whole-round chunks (long conversations)", "split")],
                                    value="flag", label="Then", elem_id="quality-mark-as")
            q_apply = gr.Button("Apply to the found ones", elem_id="quality-apply")
        q_out = gr.Markdown(elem_id="quality-result")
        q_table = gr.Dataframe(interactive=False, label="Found (first 200; click a row to read it)",
                               elem_id="quality-table", max_height=300, column_widths=["90px", "100%"])
        q_view = gr.HTML(elem_id="quality-view")

    @guarded(studio, "viewer", "Choosing a quality filter")
    def show_filter(n):
        qf = quality.FILTERS[n]
        out = {q_explain: filter_explanation(n), q_model: gr.update(visible=qf.needs_tokenizer),
               **{param_groups[k]: gr.update(visible=(k == n)) for k in names}}
        if phrases_acc is not None:
            out[phrases_acc] = gr.update(visible=n == "refusals")
        return out

    def quality_params(v, n) -> dict:
        """The parameter controls' values of quality filter ``n``, by parameter name."""
        return {pn: v[c] for fn, pn, c in param_comps if fn == n}

    @guarded(studio, "viewer", "Finding with a quality filter")
    def do_find(v):
        n, model_v = v[q_name], v[q_model]
        qf = quality.FILTERS[n]
        params = quality_params(v, n)
        for p in qf.params:
            if p.name in params and isinstance(p.default, int) and not isinstance(p.default, bool) \
                    and params[p.name] is not None:
                params[p.name] = int(params[p.name])
        if qf.needs_tokenizer:
            params["tokenizer"] = studio.registry.load(model_v).tokenizer if model_v else None
            if params["tokenizer"] is None:
                raise ValueError("choose the model whose tokenizer counts tokens")
        f = scope_filter(filters, v, v[scope], v[selection])
        n_conv = store.count_conversations(f)
        if n_conv > QUALITY_SCAN_LIMIT:
            raise ValueError(f"{n_conv} conversations: narrow the filter to at most {QUALITY_SCAN_LIMIT}")
        convs = list(store.iter_conversations(f, with_ids=True))
        flags = quality.run_filter(n, convs, **params)
        v[state].found = [int(i) for i, _ in flags]
        # nothing is flagged yet: Find only finds; "Apply to the found ones" marks them
        return {q_out: f"**{len(flags)}** of {n_conv} conversations found by *{qf.title}* (nothing is marked "
                       "until **Apply to the found ones**; click a row to read it).",
                q_table: pd.DataFrame(flags[:200], columns=["id", "reason"]), q_view: ""}

    @guarded(studio, "viewer", "Reading a found conversation")
    def show_found(evt: gr.SelectData):
        try:
            cid, reason = int(evt.row_value[0]), str(evt.row_value[1])
        except (TypeError, ValueError, IndexError):
            return {q_view: gr.skip()}
        return {q_view: found_html(cid, store.get_conversation(cid)["messages"], reason)}

    @guarded(studio, "editor", "Marking the found conversations")
    def do_apply(v):
        st, mark_as, n, model_v = v[state], v[q_mark_as], v[q_name], v[q_model]
        if mark_as == "delete":
            require_role("admin", "Deleting the found conversations (a bulk delete)")
        found = list(st.found)
        if not found:
            raise ValueError("run Find first: nothing is found yet")
        label = quality.FILTERS[n].title
        if mark_as == "split":
            if n != "long_conversations":
                raise ValueError("splitting is for the 'Longer than the training context' filter")
            params = quality_params(v, n)
            tok = studio.registry.load(model_v).tokenizer
            convs = list(store.iter_conversations(ConvFilter(ids=found), with_ids=True))
            plans = [(cid, [ch for _, ch in quality.split_conversations([(cid, msgs)], tok,
                                                                       int(params.get("max_tokens") or 2048))])
                     for cid, msgs in convs]
            plans = [(cid, chunks) for cid, chunks in plans if len(chunks) > 1]
            op, new_ids = store.split(plans)
            st.last_op = op
            return {q_out: f"✂️ {len(plans)} conversations split into {len(new_ids)} chunks (origin *split*); the "
                           f"originals are deleted (operation #{op}: **Undo** under Bulk actions puts them back).",
                    ops_table: ops_df()}
        op, k = store.bulk(mark_as, found, label if mark_as != "delete" else None)
        st.last_op = op
        done = {"flag": "flagged", "tag": "tagged"}.get(mark_as, "deleted")
        return {q_out: f"✅ {k} conversations {done} as “{label}” (operation #{op}; undo it under Bulk actions).",
                ops_table: ops_df()}

    param_inputs = {c for _, _, c in param_comps}
    q_name.change(show_filter, [q_name], [q_explain, q_model] + [param_groups[k] for k in names]
                  + ([phrases_acc] if phrases_acc is not None else []))
    q_find.click(do_find, {q_name, q_model, selection, scope, state, *filters.inputs} | param_inputs,
                 [q_out, q_table, q_view])
    q_table.select(show_found, None, [q_view]).then(None, None, None, js=scroll_js("#quality-view"))
    changed.append(q_apply.click(do_apply, {state, q_mark_as, q_name, q_model} | param_inputs, [q_out, ops_table]))

    # ------------------------------------------------------------------ statistics
    with gr.Accordion("Statistics", open=False, elem_id="stats-acc"):
        with gr.Row():
            stats_btn = gr.Button("Compute for the current filter", variant="primary", elem_id="stats-run")
            count_btn = gr.Button("Count tokens now", elem_id="stats-count-tokens")
            count_model = gr.Dropdown(model_choices(studio), value=(model_choices(studio) or [None])[0],
                                      label="Tokenizer of", elem_id="stats-model")
        stats_md = gr.Markdown(elem_id="stats-totals")
        # bars start at 0 (a single count would otherwise make a zero-height bar on a one-value axis)
        bars = dict(y_lim=[0, None])
        with gr.Row():
            p_source = gr.BarPlot(x="source", y="n", color="origin", title="Conversations per source and origin",
                                  elem_id="stats-by-source", height=260, **bars)
            p_rounds = gr.BarPlot(x="rounds", y="n", title="Rounds per conversation", elem_id="stats-rounds",
                                  height=260, sort=NUMERIC_ORDER, **bars)
        with gr.Row():
            p_tokens = gr.BarPlot(x="bucket", y="n", title="Tokens per conversation (≥ bucket)",
                                  elem_id="stats-tokens", height=260, sort=NUMERIC_ORDER, **bars)
            p_turn_tokens = gr.BarPlot(x="bucket", y="n", color="role", title="Tokens per turn (sample of 2,000)",
                                       elem_id="stats-turn-tokens", height=260, sort=NUMERIC_ORDER, **bars)
        p_edits = gr.BarPlot(x="day", y="n", title="Edits per day", x_title="day", y_title="edits",
                             elem_id="stats-edits", height=220, sort="x", **bars)

    @guarded(studio, "viewer", "Statistics")
    def do_stats(v):
        model_v = v[count_model]
        f = filters.to_filter(v)
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
        v[state].stats_shown = True
        edits = st["edits"]
        edits = edits.assign(day=pd.to_datetime(edits["day"]).dt.strftime("%Y-%m-%d")) if len(edits) else \
            pd.DataFrame({"day": pd.Series(dtype=str), "n": pd.Series(dtype=int)})
        return {stats_md: md, p_source: st["by_source"], p_rounds: numeric_bars(st["rounds"], "rounds"),
                p_tokens: numeric_bars(st["tokens"], "bucket"), p_turn_tokens: numeric_bars(turn, "bucket"),
                p_edits: edits}

    stats_outputs = [stats_md, p_source, p_rounds, p_tokens, p_turn_tokens, p_edits]

    @guarded(studio, "viewer", "Refreshing the statistics")
    def refresh_stats(v):
        """After a bulk action: the figures again, if this page computed them (else nothing is sent)."""
        if not v[state].stats_shown:
            return {c: gr.skip() for c in stats_outputs}
        return do_stats.__wv_fn__(v)

    @guarded(studio, "admin", "Counting tokens")
    def do_count(model_v):
        n = studio.count_tokens(model_v or None, recount=True)
        return {stats_md: f"Counted tokens for {n} conversations with {md_text(model_v)}."}

    stats_btn.click(do_stats, {count_model, state, *filters.inputs}, stats_outputs)
    for ev in changed:  # the figures follow bulk actions and their undo
        ev.success(refresh_stats, {count_model, state, *filters.inputs}, stats_outputs, show_progress="hidden")
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

    @guarded(studio, "admin", "Export")
    def do_export(v):
        repo = (v[push_repo] or "").strip()
        path, n = studio.export(fmt=v[export_fmt], filter=filters.to_filter(v), push_to_hub=repo or None)
        if n == 0:
            return {export_file: None, export_out: "Nothing to export: the current filter matches no conversations."}
        download = str(path)
        if path.is_dir():
            import shutil

            download = shutil.make_archive(str(path), "zip", root_dir=path)
        pushed = f" and pushed to {md_code(repo)}" if repo else ""
        return {export_file: downloadable(download), export_out: f"Exported **{n}** conversations to {md_code(path)}{pushed}."}

    export_btn.click(do_export, {export_fmt, push_repo, *filters.inputs}, [export_file, export_out])
    if os.environ.get("HF_TOKEN") is None:
        push_repo.info = "set HF_TOKEN to push"

    return {"changed": changed}
