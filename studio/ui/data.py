"""Data tab: import files; search, filter, sort and page through conversations (or seeds); open one as a
chat; edit, add, remove and reorder its turns (every save is a revision; a stale save is refused); compare and
restore versions; delete and restore. Bulk actions, quality filters, statistics and export live in
``curate.py`` and work on the same filter."""

from __future__ import annotations

import difflib
import html
import math
import re

import gradio as gr
import pandas as pd

from ..formats import FormatError
from ..search import HIGHLIGHT_CLOSE, HIGHLIGHT_OPEN
from ..store import SORT_COLUMNS, ConvFilter
from ..cli import parse_ids
from . import curate
from .common import friendly, guard_writes, source_choices

PAGE_SIZES = [10, 25, 50, 100, 200]
STATUS_CHOICES = [("All (not deleted)", "all"), ("New", "new"), ("Edited", "edited"), ("Flagged", "flagged"),
                  ("Deleted", "deleted")]
ORIGIN_CHOICES = [("All origins", "all"), ("Imported", "imported"), ("Expanded", "expanded"), ("Split", "split")]
EDITED_CHOICES = [("Any", "any"), ("Edited", "yes"), ("Never edited", "no")]
EDIT_HEADERS = ["role", "content"]


def _bad_rows_md(result) -> str:
    if not result.bad_rows:
        return ""
    lines = [f"| {row} | {reason.replace('|', '/')} |" for row, reason in result.bad_rows[:50]]
    more = f"\n\n… and {len(result.bad_rows) - 50} more." if len(result.bad_rows) > 50 else ""
    return "\n\n**Rows skipped** (row number in the file, reason):\n\n| row | reason |\n|---|---|\n" + \
        "\n".join(lines) + more


def _md_snippet(snippet: str) -> str:
    """A search snippet as Markdown: text escaped, matches in bold."""
    text = re.sub(r"([\\`*_{}\[\]<>|#])", r"\\\1", snippet.replace("\n", " "))
    return text.replace(HIGHLIGHT_OPEN, "**").replace(HIGHLIGHT_CLOSE, "**")


def _num(v, zero_is_open: bool = False):
    """A range box's value: None when empty (Gradio 6 shows and sends an empty Number as 0, so an upper bound
    of 0 also means "no bound")."""
    if v in (None, "") or (isinstance(v, float) and math.isnan(v)):
        return None
    return None if zero_is_open and int(v) == 0 else int(v)


def make_filter(query, source_id, status, origin, teacher, tags, min_rounds, max_rounds, min_tokens, max_tokens,
                min_chars, max_chars, edited) -> ConvFilter:
    """The ``ConvFilter`` of the Data tab's filter controls (in the order of ``filter_inputs``)."""
    return ConvFilter(
        query=(query or "").strip() or None, source_id=int(source_id) if source_id else None,
        status=status or "all", origin=origin if origin and origin != "all" else None,
        teacher=teacher or None, tags=list(tags) or None if tags else None,
        min_rounds=_num(min_rounds, True), max_rounds=_num(max_rounds, True), min_tokens=_num(min_tokens, True),
        max_tokens=_num(max_tokens, True), min_chars=_num(min_chars, True), max_chars=_num(max_chars, True),
        edited={"yes": True, "no": False}.get(edited))


def _diff_html(a: list[dict], b: list[dict], va: int, vb: int) -> str:
    def lines(msgs):
        out = []
        for i, m in enumerate(msgs, 1):
            out.append(f"── {i} · {m['role']} ──")
            out.extend(m["content"].splitlines() or [""])
        return out

    diff = difflib.unified_diff(lines(a), lines(b), f"version {va}", f"version {vb}", lineterm="", n=2)
    rows = []
    for line in diff:
        cls = "add" if line.startswith("+") and not line.startswith("+++") else \
            "del" if line.startswith("-") and not line.startswith("---") else "ctx"
        rows.append(f'<div class="wv-diff-{cls}">{html.escape(line) or "&nbsp;"}</div>')
    if not rows:
        return "<p>The two versions are identical.</p>"
    return '<div class="wv-diff">' + "".join(rows) + "</div>"


def build(studio) -> dict:
    """Lay out the Data tab inside the current Blocks context and wire its events.

    Returns:
        ``{"refresh": callable, "inputs": [...], "outputs": [...]}`` for the tab's select event.
    """
    store = studio.store

    with gr.Row():
        with gr.Column(scale=2):
            upload = gr.File(label="Import a file (WizardLM Evol-Instruct, Alpaca, WizardLM test set, ShareGPT, "
                                   "OpenAI messages: .json or .jsonl)", file_types=[".json", ".jsonl"],
                             file_count="multiple", elem_id="data-upload", height=140)
            import_btn = gr.Button("Import", variant="primary", elem_id="data-import")
        with gr.Column(scale=3):
            import_out = gr.Markdown(elem_id="data-import-result")

    with gr.Row():
        query = gr.Textbox(placeholder='Search message text: words, "a phrase" (press Enter)', show_label=False,
                           scale=5, elem_id="data-search", max_lines=1)
        search_btn = gr.Button("Search", scale=1, elem_id="data-search-btn")
    with gr.Row():
        view = gr.Radio(["Conversations", "Seeds"], value="Conversations", label="Show", elem_id="data-view")
        source = gr.Dropdown(source_choices(studio), value=0, label="Source", elem_id="data-source")
        status = gr.Dropdown(STATUS_CHOICES, value="all", label="Status", elem_id="data-status")
        origin = gr.Dropdown(ORIGIN_CHOICES, value="all", label="Origin", elem_id="data-origin")
        teacher = gr.Dropdown([("Any teacher", "")] + [(t, t) for t in store.teachers()], value="",
                              label="Teacher", elem_id="data-teacher")
        tags = gr.Dropdown([t for t, _ in store.list_tags()], multiselect=True, label="Tags (any of)",
                           elem_id="data-tags", allow_custom_value=True)
    with gr.Accordion("More filters and sorting", open=False, elem_id="data-more"):
        with gr.Row():
            min_rounds = gr.Number(None, precision=0, minimum=0, label="Rounds ≥", elem_id="data-min-rounds")
            max_rounds = gr.Number(None, precision=0, minimum=0, label="Rounds ≤ (0 = any)", elem_id="data-max-rounds")
            min_tokens = gr.Number(None, precision=0, minimum=0, label="Tokens ≥", elem_id="data-min-tokens")
            max_tokens = gr.Number(None, precision=0, minimum=0, label="Tokens ≤ (0 = any)", elem_id="data-max-tokens")
            min_chars = gr.Number(None, precision=0, minimum=0, label="Characters ≥", elem_id="data-min-chars")
            max_chars = gr.Number(None, precision=0, minimum=0, label="Characters ≤ (0 = any)", elem_id="data-max-chars")
            edited = gr.Dropdown(EDITED_CHOICES, value="any", label="Edited", elem_id="data-edited")
        with gr.Row():
            sort = gr.Dropdown([("Best match when searching, else id", "auto")] + [(c, c) for c in SORT_COLUMNS],
                               value="auto", label="Sort by", elem_id="data-sort")
            descending = gr.Checkbox(False, label="Descending", elem_id="data-desc")
            page_size = gr.Dropdown(PAGE_SIZES, value=25, label="Rows per page", elem_id="data-page-size")
            gr.Markdown("Token counts are filled in after an import (default model's tokenizer).")
    with gr.Row():
        prev_btn = gr.Button("◀ Previous", size="sm", elem_id="data-prev")
        page = gr.Number(value=1, precision=0, minimum=1, label="Page", elem_id="data-page", scale=0,
                         min_width=90)
        next_btn = gr.Button("Next ▶", size="sm", elem_id="data-next")
        refresh_btn = gr.Button("↻ Refresh", size="sm", elem_id="data-refresh")
        count = gr.Markdown(elem_id="data-count")
    table = gr.Dataframe(interactive=False, wrap=True, max_height=560, elem_id="data-table",
                         label="Click a row to open it (or to add it to the selection)")
    with gr.Row():
        click_mode = gr.Radio(["Open it", "Add to selection"], value="Open it", label="Clicking a row",
                              elem_id="data-click-mode")
        selection = gr.Textbox(label="Selected ids (e.g. 3, 5, 9-12)", elem_id="data-selection", scale=3)
        clear_sel = gr.Button("Clear selection", size="sm", elem_id="data-clear-selection")

    with gr.Group(visible=False, elem_id="data-editor") as editor:
        conv_header = gr.Markdown(elem_id="data-conv-header")
        conv_id = gr.State(None)
        conv_version = gr.State(None)
        chat_view = gr.Chatbot(label="Chat view", height=380, elem_id="data-chat", feedback_options=None,
                               group_consecutive_messages=False)
        edit_table = gr.Dataframe(headers=EDIT_HEADERS, datatype=["str", "str"], interactive=True, wrap=True,
                                  label="Edit messages (double-click a cell; roles: system, user, assistant)",
                                  column_widths=["12%", "88%"], elem_id="data-edit-table", max_height=600)
        with gr.Row():
            row_no = gr.Number(1, precision=0, minimum=1, label="Row", elem_id="data-row-no", scale=0, min_width=80)
            add_round = gr.Button("Add a round at the end", size="sm", elem_id="data-add-round")
            insert_row = gr.Button("Insert a row before", size="sm", elem_id="data-insert-row")
            remove_row = gr.Button("Remove row", size="sm", elem_id="data-remove-row")
            up_row = gr.Button("Move up", size="sm", elem_id="data-up-row")
            down_row = gr.Button("Move down", size="sm", elem_id="data-down-row")
        gr.Markdown("Row changes are not saved until **Save changes**; roles must alternate user/assistant "
                    "(after an optional system message) and every turn needs text.")
        with gr.Row():
            save_btn = gr.Button("Save changes", variant="primary", elem_id="data-save")
            delete_btn = gr.Button("Delete", variant="stop", elem_id="data-delete")
            restore_btn = gr.Button("Restore (undo delete)", elem_id="data-restore")
            close_btn = gr.Button("Close", elem_id="data-close")
        edit_out = gr.Markdown(elem_id="data-edit-result")
        with gr.Accordion("History (every saved version)", open=False, elem_id="data-history"):
            revisions = gr.Dataframe(interactive=False, elem_id="data-revisions")
            with gr.Row():
                rev_a = gr.Number(label="Version A", precision=0, minimum=1, elem_id="data-rev-a")
                rev_b = gr.Number(label="Version B", precision=0, minimum=1, elem_id="data-rev-b")
                diff_btn = gr.Button("Show the difference", elem_id="data-diff")
                rev_restore_btn = gr.Button("Restore version A (saved as a new version)", elem_id="data-rev-restore")
            diff_view = gr.HTML(elem_id="data-diff-view")

    filter_inputs = [query, source, status, origin, teacher, tags, min_rounds, max_rounds, min_tokens, max_tokens,
                     min_chars, max_chars, edited]
    curate_outputs = curate.build(studio, filter_inputs, make_filter, selection, parse_ids)

    # ----------------------------------------------------------------------------- handlers
    page_inputs = [view, *filter_inputs, sort, descending, page_size, page]
    page_outputs = [table, page, count]

    @friendly
    def load_page(view_v, *args):
        *fvals, sort_v, desc_v, size, page_no = args
        size = int(size or 25)
        page_no = max(1, int(page_no or 1))
        f = make_filter(*fvals)
        if view_v == "Seeds":
            df, total = store.list_seeds(f.source_id, limit=size, offset=(page_no - 1) * size)
            what = "seeds"
        else:
            df, total = store.list_conversations(f, limit=size, offset=(page_no - 1) * size,
                                                 sort=None if sort_v in (None, "auto") or (sort_v == "relevance"
                                                                                          and not f.query) else sort_v,
                                                 descending=bool(desc_v))
            what = "conversations"
            if len(df):
                df = df.assign(updated_at=df["updated_at"].dt.strftime("%Y-%m-%d %H:%M"))
                df = df.drop(columns=["version"])
                for col in ("flag", "tags", "teacher", "tokens"):
                    if df[col].isna().all():
                        df = df.drop(columns=[col])
                if f.query:
                    snips = store.search_snippets(f.query, [int(i) for i in df["id"]])
                    df = df.assign(match=[_md_snippet(snips.get(int(i), "")) for i in df["id"]])
                    df = df.drop(columns=["title"])
        pages = max(1, math.ceil(total / size))
        if page_no > pages and total:
            return load_page(view_v, *fvals, sort_v, desc_v, size, pages)
        if not len(df):
            df = pd.DataFrame({"": [f"No {what} yet: import a file above" if total == 0 and not f.query
                                    else "Nothing matches"]})
        datatype = ["markdown" if c == "match" else "str" for c in df.columns]
        label = f"**{total}** {what}" + (f" matching “{html.escape(f.query)}”" if f.query else "")
        return gr.update(value=df, datatype=datatype), page_no, f"{label} · page {page_no} of {pages}"

    def refresh_choices(current_source, current_teacher, current_tags):
        choices = source_choices(studio)
        value = current_source if current_source in [c[1] for c in choices] else 0
        teachers = [("Any teacher", "")] + [(t, t) for t in store.teachers()]
        tag_names = [t for t, _ in store.list_tags()]
        return (gr.update(choices=choices, value=value),
                gr.update(choices=teachers, value=current_teacher if current_teacher in [t[1] for t in teachers]
                          else ""),
                gr.update(choices=tag_names, value=[t for t in (current_tags or []) if t in tag_names]))

    @friendly
    def do_import(files, *page_args):
        guard_writes(studio)
        if not files:
            raise ValueError("choose a file to import first")
        parts = []
        view_v, q, cur_source, *rest = page_args
        last_source = cur_source
        for fl in files if isinstance(files, list) else [files]:
            path = fl if isinstance(fl, str) else fl.name
            try:
                res = studio.import_file(path, keep_copy=True)
            except (FormatError, FileNotFoundError) as e:
                parts.append(f"❌ {e}")
                continue
            parts.append(("✅ " if not res.duplicate else "ℹ️ ") + res.summary() + _bad_rows_md(res))
            last_source = res.source_id
        studio.count_tokens_async()
        choices = source_choices(studio)
        df, page_no, cnt = load_page(view_v, q, last_source, *rest[:-1], 1)
        return (None, "\n\n".join(parts), gr.update(choices=choices, value=last_source), df, page_no, cnt)

    def go(delta):
        def f(*args):
            *rest, page_no = args
            return load_page(*rest, max(1, int(page_no or 1) + delta))
        return f

    def _rows_to_messages(edit_df) -> list[dict]:
        rows = edit_df.values.tolist() if isinstance(edit_df, pd.DataFrame) else list(edit_df or [])
        messages = []
        for row in rows:
            role = str(row[0] or "").strip().lower() if len(row) > 0 else ""
            content = "" if len(row) < 2 or row[1] is None else str(row[1])
            if not role and not content.strip():
                continue  # an empty row added by mistake
            messages.append({"role": role, "content": content})
        return messages

    def _open(cid):
        conv = store.get_conversation(cid)
        msgs = conv["messages"]
        state = "deleted" if conv["deleted_at"] else conv["status"]
        header = (f"### Conversation {cid} · {conv.get('source') or 'no source'} · {conv['origin']} · {state} · "
                  f"version {conv['version']}")
        if conv.get("flag"):
            header += f" · ⚑ {conv['flag']}"
        if conv.get("teacher"):
            header += f"\nTeacher **{conv['teacher']}**, prompts `{conv.get('prompt_version')}`"
        chat = [{"role": m["role"], "content": m["content"]} for m in msgs if m["role"] != "system"]
        system = next((m["content"] for m in msgs if m["role"] == "system"), None)
        if system:
            header += f"\n\nSystem: _{system[:300]}_"
        edit_df = pd.DataFrame([[m["role"], m["content"]] for m in msgs], columns=EDIT_HEADERS)
        revs = store.list_revisions(cid)
        revs = revs.assign(created_at=revs["created_at"].dt.strftime("%Y-%m-%d %H:%M:%S"))
        return (gr.update(visible=True), header, cid, conv["version"], chat, edit_df, revs, "",
                conv["version"], max(1, conv["version"] - 1) if conv["version"] > 1 else 1)

    @friendly
    def on_select(evt: gr.SelectData, view_v, mode, sel):
        nothing = [gr.update()] * 10 + [gr.update()]
        if view_v != "Conversations" or evt.row_value is None:
            return nothing
        try:
            cid = int(evt.row_value[0])
        except (TypeError, ValueError):
            return nothing
        if mode == "Add to selection":
            ids = parse_ids(sel) if (sel or "").strip() else []
            ids = [i for i in ids if i != cid] if cid in ids else ids + [cid]
            return [gr.update()] * 10 + [", ".join(map(str, sorted(ids)))]
        return (*_open(cid), gr.update())

    def row_op(op):
        @friendly
        def f(edit_df, n):
            msgs = _rows_to_messages(edit_df)
            i = int(n or 1) - 1
            if op == "add_round":
                msgs += [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]
            elif not 0 <= i < max(1, len(msgs)) and op != "insert":
                raise ValueError(f"there is no row {i + 1} (rows 1-{len(msgs)})")
            elif op == "insert":
                i = max(0, min(i, len(msgs)))
                role = "assistant" if i > 0 and msgs[i - 1]["role"] == "user" else "user"
                msgs.insert(i, {"role": role, "content": ""})
            elif op == "remove":
                msgs.pop(i)
            elif op in ("up", "down"):
                j = i - 1 if op == "up" else i + 1
                if not 0 <= j < len(msgs):
                    raise ValueError(f"row {i + 1} cannot move {op}")
                msgs[i], msgs[j] = msgs[j], msgs[i]
            return pd.DataFrame([[m["role"], m["content"]] for m in msgs] or [["user", ""]], columns=EDIT_HEADERS)
        return f

    @friendly
    def do_save(cid, version, edit_df, *page_args):
        guard_writes(studio)
        if cid is None:
            raise ValueError("open a conversation first")
        new_version = store.save_messages(cid, _rows_to_messages(edit_df), expected_version=int(version),
                                          max_message_chars=studio.settings.max_message_chars)
        out = _open(cid)
        return (*out[:7], f"✅ Saved as version {new_version}.", *out[8:], *load_page(*page_args))

    def _simple(action, message):
        @friendly
        def f(cid, *page_args):
            guard_writes(studio)
            if cid is None:
                raise ValueError("open a conversation first")
            n = store.delete_conversations([cid]) if action == "delete" else store.restore_conversations([cid])
            out = _open(cid)
            return (*out[:7], message(cid, n), *out[8:], *load_page(*page_args))
        return f

    @friendly
    def do_diff(cid, a, b):
        if cid is None or not a or not b:
            raise ValueError("open a conversation and give two version numbers")
        return _diff_html(store.get_revision(cid, int(a)), store.get_revision(cid, int(b)), int(a), int(b))

    @friendly
    def do_restore_version(cid, version, rev, *page_args):
        guard_writes(studio)
        if cid is None or not rev:
            raise ValueError("open a conversation and give a version number from its history")
        old = store.get_revision(cid, int(rev))
        new_version = store.save_messages(cid, old, expected_version=int(version),
                                          note=f"restored version {int(rev)}",
                                          max_message_chars=studio.settings.max_message_chars)
        out = _open(cid)
        return (*out[:7], f"↩️ Version {int(rev)} restored as version {new_version}.", *out[8:],
                *load_page(*page_args))

    # ----------------------------------------------------------------------------- wiring
    editor_outputs = [editor, conv_header, conv_id, conv_version, chat_view, edit_table, revisions]
    full_editor = editor_outputs + [edit_out, rev_a, rev_b]
    import_btn.click(do_import, [upload] + page_inputs, [upload, import_out, source, table, page, count])
    for comp in (view, source, status, origin, teacher, tags, edited, sort, descending, page_size):
        comp.change(lambda *a: load_page(*a[:-1], 1), page_inputs, page_outputs, show_progress="hidden")
    for comp in (min_rounds, max_rounds, min_tokens, max_tokens, min_chars, max_chars, query):
        comp.submit(lambda *a: load_page(*a[:-1], 1), page_inputs, page_outputs)
    page.submit(load_page, page_inputs, page_outputs)
    search_btn.click(lambda *a: load_page(*a[:-1], 1), page_inputs, page_outputs)
    prev_btn.click(go(-1), page_inputs, page_outputs)
    next_btn.click(go(+1), page_inputs, page_outputs)
    refresh_btn.click(load_page, page_inputs, page_outputs)
    table.select(on_select, [view, click_mode, selection], full_editor + [selection])
    clear_sel.click(lambda: "", None, [selection])
    add_round.click(row_op("add_round"), [edit_table, row_no], [edit_table])
    insert_row.click(row_op("insert"), [edit_table, row_no], [edit_table])
    remove_row.click(row_op("remove"), [edit_table, row_no], [edit_table])
    up_row.click(row_op("up"), [edit_table, row_no], [edit_table])
    down_row.click(row_op("down"), [edit_table, row_no], [edit_table])
    save_btn.click(do_save, [conv_id, conv_version, edit_table] + page_inputs, full_editor + page_outputs)
    delete_btn.click(_simple("delete", lambda c, n: f"🗑️ Conversation {c} deleted. **Restore** brings it back."),
                     [conv_id] + page_inputs, full_editor + page_outputs)
    restore_btn.click(_simple("restore", lambda c, n: f"♻️ Conversation {c} restored." if n else
                              f"Conversation {c} was not deleted."), [conv_id] + page_inputs,
                      full_editor + page_outputs)
    diff_btn.click(do_diff, [conv_id, rev_a, rev_b], [diff_view])
    rev_restore_btn.click(do_restore_version, [conv_id, conv_version, rev_a] + page_inputs,
                          full_editor + page_outputs)
    close_btn.click(lambda: (gr.update(visible=False), None), None, [editor, conv_id])
    for ev in curate_outputs["changed"]:
        ev.then(load_page, page_inputs, page_outputs, show_progress="hidden")

    def refresh(*args):
        cur_source, cur_teacher, cur_tags, *pargs = args
        src, tch, tg = refresh_choices(cur_source, cur_teacher, cur_tags)
        view_v, q, _s, st, orig, _t, _tags, *rest = pargs
        return (src, tch, tg, *load_page(view_v, q, src["value"], st, orig, tch["value"], tg["value"], *rest))

    return {"refresh": refresh, "inputs": [source, teacher, tags] + page_inputs,
            "outputs": [source, teacher, tags] + page_outputs}
