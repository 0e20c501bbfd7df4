"""Data tab: import files; search, filter, sort and page through conversations (or seeds); open one as a
chat; edit, add, remove and reorder its turns (every save is a revision; a stale save is refused); compare and
restore versions; delete and restore. Bulk actions, quality filters, statistics and export live in
``curate.py`` and work on the same filter controls (``filters.FilterControls``).

Handlers take their inputs as one ``{component: value}`` dict (the event's inputs given as a set) and return
``{component: value}`` dicts; what a browser session holds between events is one ``DataTabState``."""

from __future__ import annotations

import difflib
import html
import math
from pathlib import Path
from dataclasses import dataclass, field

import gradio as gr
import pandas as pd

from ..formats import FormatError
from ..search import HIGHLIGHT_CLOSE, HIGHLIGHT_OPEN
from ..filters import ConvFilter, parse_ids
from ..store import SORT_COLUMNS
from . import curate
from .common import chat_messages, chatbot, guarded, md_table, md_text, scroll_js, toast_text
from .filters import FilterControls

PAGE_SIZES = [10, 25, 50, 100, 200]
FILTER_ROW = ("source_id", "status", "origin", "teacher", "tags")
"""Filter controls shown beside "Show"; the search box has its own row."""
MORE_FILTERS = ("min_rounds", "max_rounds", "min_tokens", "max_tokens", "min_chars", "max_chars", "edited",
                "flagged", "cut", "job_id")
"""Filter controls under "More filters and sorting"."""
EDIT_HEADERS = ["role", "content"]


def _bad_rows_md(result) -> str:
    if not result.bad_rows:
        return ""
    lines = [f"| {md_text(row)} | {md_text(reason)} |" for row, reason in result.bad_rows[:50]]
    more = f"\n\n… and {len(result.bad_rows) - 50} more." if len(result.bad_rows) > 50 else ""
    return "\n\n**Rows skipped** (row number in the file, reason):\n\n| row | reason |\n|---|---|\n" + \
        "\n".join(lines) + more


def _md_snippet(snippet: str) -> str:
    """A search snippet as Markdown for a table cell: the text shown literally (``md_text``), matches in bold."""
    return md_text(snippet).replace(HIGHLIGHT_OPEN, "**").replace(HIGHLIGHT_CLOSE, "**")


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


@dataclass
class DataTabState:
    """What one browser session of the Data tab keeps between events (the tab's one ``gr.State``).

    Handlers update the fields they own in place (Gradio hands every handler the session's object), so a slow
    handler (a bulk tag of 70k rows) never writes back a stale copy of fields another handler changed meanwhile.

    Attributes:
        conv_id: the conversation open in the editor (None: none open).
        conv_version: its version when it was opened or last saved; a save based on an older one is refused.
        last_op: the session's last bulk operation (what "Undo the last bulk action" undoes), or None.
        found: conversation ids the last quality "Find" flagged (what "Apply to the found ones" acts on).
        pending_bulk: a bulk action counted and waiting for Confirm (``{"action", "ids", "arg"}``), or None.
        stats_shown: the Statistics figures were computed on this page (bulk actions then refresh them).
    """

    conv_id: int | None = None
    conv_version: int | None = None
    last_op: int | None = None
    found: list[int] = field(default_factory=list)
    pending_bulk: dict | None = None
    stats_shown: bool = False


TITLE_CHARS = 40
"""The Data table shows a title (the first user message) up to this many characters, cut at a word with "…", so
the table's columns fit a 1400 px page instead of the title running off its right edge."""


def short_title(title) -> str:
    """``title`` cut to ``TITLE_CHARS`` at the last word boundary, with "…" when cut."""
    t = "" if title is None else str(title)
    if len(t) <= TITLE_CHARS:
        return t
    cut = t[:TITLE_CHARS].rsplit(" ", 1)[0] if " " in t[:TITLE_CHARS] else t[:TITLE_CHARS]
    return cut.rstrip() + "…"


def build(studio) -> dict:
    """Lay out the Data tab inside the current Blocks context and wire its events.

    Returns:
        ``{"refresh": callable, "inputs": set, "outputs": list}`` for the tab's select event and the page load:
        fresh source/teacher/tag choices and the current page of the table.
    """
    store = studio.store

    with gr.Row():
        with gr.Column(scale=2):
            upload = gr.File(label="Import a file: .json, .jsonl, .txt or .parquet (format detected)",
                             file_types=[".json", ".jsonl", ".txt", ".parquet"],
                             file_count="multiple", elem_id="data-upload", height=140)
            import_btn = gr.Button("Import", variant="primary", elem_id="data-import")
        with gr.Column(scale=3):
            import_out = gr.Markdown(elem_id="data-import-result")

    fc = FilterControls(studio, elem_prefix="data")
    with gr.Row():
        query = fc.render("query", placeholder='Search message text: words, "a phrase" (press Enter)',
                          show_label=False, scale=5)
        search_btn = gr.Button("Search", scale=1, elem_id="data-search-btn")
    with gr.Row():
        view = gr.Radio(["Conversations", "Seeds"], value="Conversations", label="Show", elem_id="data-view")
        for name in FILTER_ROW:
            fc.render(name)
    with gr.Accordion("More filters and sorting", open=False, elem_id="data-more"):
        with gr.Row():
            for name in MORE_FILTERS:
                fc.render(name, min_width=120)
        with gr.Row():
            sort = gr.Dropdown([("Best match when searching, else id", "auto")] + [(c, c) for c in SORT_COLUMNS],
                               value="auto", label="Sort by", elem_id="data-sort")
            descending = gr.Checkbox(False, label="Descending", elem_id="data-desc")
            page_size = gr.Dropdown(PAGE_SIZES, value=25, label="Rows per page", elem_id="data-page-size")
            gr.Markdown("Token counts are filled in after an import (default model's tokenizer). A 0 in a range "
                        "box means no bound.")
    with gr.Row():
        prev_btn = gr.Button("◀ Previous", size="sm", elem_id="data-prev")
        page = gr.Number(value=1, precision=0, minimum=1, label="Page", elem_id="data-page", scale=0,
                         min_width=90)
        next_btn = gr.Button("Next ▶", size="sm", elem_id="data-next")
        refresh_btn = gr.Button("↻ Refresh", size="sm", elem_id="data-refresh")
        count = gr.Markdown(elem_id="data-count")
    # every cell is Markdown, escaped by ``md_table`` (the search snippets' highlight is Markdown): one datatype
    # for all columns, never changed, as the page measures column widths with the datatype it has at that moment
    table = gr.Dataframe(interactive=False, wrap=True, max_height=560, elem_id="data-table", datatype="markdown",
                         label="Click a row to open it (or to add it to the selection)")
    with gr.Row():
        click_mode = gr.Radio(["Open it", "Add to selection"], value="Open it", label="Clicking a row",
                              elem_id="data-click-mode")
        selection = gr.Textbox(label="Selected ids (e.g. 3, 5, 9-12)", elem_id="data-selection", scale=3)
        clear_sel = gr.Button("Clear selection", size="sm", elem_id="data-clear-selection")
    state = gr.State(DataTabState())

    with gr.Group(visible=False, elem_id="data-editor") as editor:
        conv_header = gr.Markdown(elem_id="data-conv-header")
        chat_view = chatbot(label="Chat view", height=380, elem_id="data-chat", group_consecutive_messages=False)
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
                rev_a = gr.Number(label="Version A (older; default the original)", precision=0, minimum=1, elem_id="data-rev-a")
                rev_b = gr.Number(label="Version B (newer; default the latest)", precision=0, minimum=1, elem_id="data-rev-b")
                diff_btn = gr.Button("Show the difference", elem_id="data-diff")
                rev_restore_btn = gr.Button("Restore version A (saved as a new version)", elem_id="data-rev-restore")
            diff_view = gr.HTML(elem_id="data-diff-view")

    curate_events = curate.build(studio, fc, selection, state)

    # ----------------------------------------------------------------------------- handlers
    page_inputs = {view, *fc.inputs, sort, descending, page_size, page}
    page_outputs = [table, page, count]
    reload_outputs = fc.choice_outputs + page_outputs
    editor_outputs = [editor, conv_header, chat_view, edit_table, revisions, edit_out, rev_a, rev_b]

    def load_page(v: dict, page_no: int | None = None) -> dict:
        """The table, page box and count for the page inputs ``v`` (``page_no`` overrides the page box)."""
        size = int(v[page_size] or 25)
        page_no = max(1, int(page_no if page_no is not None else v[page] or 1))
        f = fc.to_filter(v)
        if v[view] == "Seeds":
            df, total = store.list_seeds(f.source_id, limit=size, offset=(page_no - 1) * size)
            what = "seeds"
        else:
            sort_v = v[sort]
            df, total = store.list_conversations(f, limit=size, offset=(page_no - 1) * size,
                                                 sort=None if sort_v in (None, "auto") or (sort_v == "relevance"
                                                                                          and not f.query) else sort_v,
                                                 descending=bool(v[descending]))
            what = "conversations"
            if len(df):
                df = df.assign(updated_at=df["updated_at"].dt.strftime("%Y-%m-%d %H:%M"))
                if "title" in df.columns:  # the whole table fits the page; the editor shows the full text
                    df = df.assign(title=[short_title(t) for t in df["title"]])
                df = df.drop(columns=["version"])
                for col in ("flag", "tags", "teacher", "tokens"):
                    if df[col].isna().all():
                        df = df.drop(columns=[col])
                if f.query:
                    snips = store.search_snippets(f.query, [int(i) for i in df["id"]])
                    df = md_table(df.drop(columns=["title"]))
                    df = df.assign(match=[_md_snippet(snips.get(int(i), "")) for i in df["id"]])
        pages = max(1, math.ceil(total / size))
        if page_no > pages and total:
            return load_page(v, pages)
        if not len(df):
            df = pd.DataFrame({"": [_empty_line(what, f)]})
        if "match" not in df.columns:
            df = md_table(df)
        label = f"**{total}** {what}" + (f" matching “{md_text(f.query)}”" if f.query else "")
        return {table: df, page: page_no, count: f"{label} · page {page_no} of {pages}"}

    def _empty_line(what: str, f) -> str:
        """What an empty table says: "No … yet: import a file above" only when the store holds none at all
        (deleted ones count: they can be restored), otherwise that the filter matches none."""
        if what == "seeds":
            return ("No seeds yet: import a file above" if f.source_id is None or not store.list_seeds(limit=1)[1]
                    else "No seed matches the source chosen")
        held = store.count_conversations(ConvFilter()) + store.count_conversations(ConvFilter(status="deleted"))
        if not held:
            return "No conversations yet: import a file above"
        return "No conversation matches the filter"

    def reload_after_change(v: dict) -> dict:
        """Fresh filter choices (a new tag, source or teacher) and the table after a change made elsewhere; a
        filter control holding a bad value leaves the table as it is, with a warning (the change is done)."""
        out = fc.refresh(studio)
        try:
            out.update(load_page(v))
        except ValueError as e:
            gr.Warning(toast_text(f"The table was not reloaded: {e}"))
        return out

    browse = guarded(studio, "viewer", "Browsing conversations")
    first_page = browse(lambda v: load_page(v, 1))
    this_page = browse(lambda v: load_page(v))
    refresh = browse(reload_after_change)

    def go(delta):
        @browse
        def f(v):
            return load_page(v, max(1, int(v[page] or 1) + delta))
        return f

    @guarded(studio, "editor", "Importing a file")
    def do_import(v):
        files = v[upload]
        if not files:
            raise ValueError("choose a file to import first")
        parts = []
        last_source = v[fc["source_id"]]
        for fl in files if isinstance(files, list) else [files]:
            path = fl if isinstance(fl, str) else fl.name
            try:
                # Gradio keeps the visitor's file name as the upload's name; messages show it, never the temp path
                res = studio.import_upload(path, getattr(fl, "orig_name", None) or Path(path).name)
            except (FormatError, FileNotFoundError) as e:
                parts.append(f"❌ {md_text(e)}")
                continue
            parts.append(("✅ " if not res.duplicate else "ℹ️ ") + md_text(res.summary()) + _bad_rows_md(res))
            last_source = res.source_id
        studio.count_tokens_async()
        out = {upload: None, import_out: "\n\n".join(parts), **fc.refresh(studio)}
        out[fc["source_id"]] = gr.update(choices=out[fc["source_id"]]["choices"], value=last_source)
        try:
            out.update(load_page({**v, fc["source_id"]: last_source}, 1))
        except ValueError as e:
            gr.Warning(toast_text(f"The table was not reloaded: {e}"))
        return out

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

    def open_conversation(st: DataTabState, cid: int, message: str = "") -> dict:
        """Show conversation ``cid`` in the editor and make it the session's open one (``st`` updated)."""
        conv = store.get_conversation(cid)
        msgs = conv["messages"]
        status = "deleted" if conv["deleted_at"] else conv["status"]
        header = (f"### Conversation {cid} · {md_text(conv.get('source') or 'no source')} · "
                  f"{md_text(conv['origin'])} · {md_text(status)} · version {conv['version']}")
        if conv.get("flag"):
            header += f" · ⚑ {md_text(conv['flag'])}"
        if conv.get("teacher"):
            header += f"\n\nTeacher **{md_text(conv['teacher'])}**, prompts {md_text(conv.get('prompt_version'))}"
        chat = chat_messages([m for m in msgs if m["role"] != "system"])
        system = next((m["content"] for m in msgs if m["role"] == "system"), None)
        if system:
            header += f"\n\nSystem: _{md_text(system[:300])}_"
        revs = store.list_revisions(cid)
        revs = revs.assign(created_at=revs["created_at"].dt.strftime("%Y-%m-%d %H:%M:%S"))
        st.conv_id, st.conv_version = cid, conv["version"]
        return {editor: gr.update(visible=True), conv_header: header, chat_view: chat,
                edit_table: pd.DataFrame([[m["role"], m["content"]] for m in msgs], columns=EDIT_HEADERS),
                revisions: revs, edit_out: message,
                # A is the original and B the newest: the diff shows the edits as added (green), and "Restore
                # version A" with these defaults brings the original back
                rev_a: int(revs["version"].min()) if len(revs) else 1, rev_b: conv["version"]}

    def _recount(cid: int) -> None:
        """A save clears the conversation's token count: count it again now, as an import does (best effort: a
        tokenizer that cannot load leaves the count empty, as before)."""
        try:
            studio.count_tokens_of([cid])
        except Exception as e:  # noqa: BLE001 - the save itself succeeded
            print(f"token count after saving conversation {cid} failed: {e}", flush=True)

    def _open_id(st: DataTabState) -> int:
        if st.conv_id is None:
            raise ValueError("open a conversation first: click a row of the table")
        return st.conv_id

    @guarded(studio, "viewer", "Opening a conversation")
    def on_select(evt: gr.SelectData, v: dict):
        if v[view] != "Conversations" or evt.row_value is None:
            return {selection: gr.skip()}
        try:
            cid = int(evt.row_value[0])
        except (TypeError, ValueError):
            return {selection: gr.skip()}
        if v[click_mode] == "Add to selection":
            sel = v[selection]
            ids = parse_ids(sel) if (sel or "").strip() else []
            ids = [i for i in ids if i != cid] if cid in ids else ids + [cid]
            return {selection: ", ".join(map(str, sorted(ids)))}
        return open_conversation(v[state], cid)

    def row_op(op):
        @guarded(studio, "editor", "Editing a conversation's rows")
        def f(v):
            msgs = _rows_to_messages(v[edit_table])
            i = int(v[row_no] or 1) - 1
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
            return {edit_table: pd.DataFrame([[m["role"], m["content"]] for m in msgs] or [["user", ""]],
                                             columns=EDIT_HEADERS)}
        return f

    @guarded(studio, "editor", "Saving a conversation")
    def do_save(v):
        st = v[state]
        cid = _open_id(st)
        new_version = store.save_messages(cid, _rows_to_messages(v[edit_table]), expected_version=st.conv_version,
                                          max_message_chars=studio.settings.max_message_chars)
        _recount(cid)
        return {**open_conversation(st, cid, f"✅ Saved as version {new_version}."), **reload_after_change(v)}

    def delete_or_restore(action):
        @guarded(studio, *(("admin", "Deleting a conversation") if action == "delete"
                           else ("editor", "Restoring a deleted conversation")))
        def f(v):
            st = v[state]
            cid = _open_id(st)
            if action == "delete":
                store.delete_conversations([cid])
                message = f"🗑️ Conversation {cid} deleted. **Restore** brings it back."
            else:
                n = store.restore_conversations([cid])
                message = f"♻️ Conversation {cid} restored." if n else f"Conversation {cid} was not deleted."
            return {**open_conversation(st, cid, message), **reload_after_change(v)}
        return f

    @guarded(studio, "viewer", "Comparing versions")
    def do_diff(v):
        st, a, b = v[state], v[rev_a], v[rev_b]
        if st.conv_id is None or not a or not b:
            raise ValueError("open a conversation and give two version numbers")
        return {diff_view: _diff_html(store.get_revision(st.conv_id, int(a)), store.get_revision(st.conv_id, int(b)),
                                      int(a), int(b))}

    @guarded(studio, "editor", "Restoring a version")
    def do_restore_version(v):
        st, rev = v[state], v[rev_a]
        cid = _open_id(st)
        if not rev:
            raise ValueError("give a version number from the conversation's history as Version A")
        old = store.get_revision(cid, int(rev))
        new_version = store.save_messages(cid, old, expected_version=st.conv_version,
                                          note=f"restored version {int(rev)}",
                                          max_message_chars=studio.settings.max_message_chars)
        _recount(cid)
        message = f"↩️ Version {int(rev)} restored as version {new_version}."
        return {**open_conversation(st, cid, message), **reload_after_change(v)}

    @guarded(studio, "viewer", "Closing the editor")
    def close(v):
        v[state].conv_id = v[state].conv_version = None
        return {editor: gr.update(visible=False)}

    # ----------------------------------------------------------------------------- wiring
    # The table's loads run one at a time in the order they were asked for (one queue slot): a slow load that
    # finishes after a newer one would otherwise show a stale page (typing a filter fires change and submit).
    in_order = dict(concurrency_limit=1, concurrency_id="data-table")
    gr.on([view.change, sort.change, descending.change, page_size.change]
          + [t for t in fc.triggers if t.event_name == "change"],
          first_page, page_inputs, page_outputs, show_progress="hidden", **in_order)
    gr.on([search_btn.click] + [t for t in fc.triggers if t.event_name != "change"],
          first_page, page_inputs, page_outputs, **in_order)
    page.submit(this_page, page_inputs, page_outputs, **in_order)
    refresh_btn.click(refresh, page_inputs, reload_outputs, **in_order)
    prev_btn.click(go(-1), page_inputs, page_outputs, **in_order)
    next_btn.click(go(+1), page_inputs, page_outputs, **in_order)
    import_btn.click(do_import, page_inputs | {upload}, [upload, import_out] + reload_outputs)
    # an opened conversation's editor is below the table: the page scrolls to it (not in "Add to selection" mode)
    table.select(on_select, {view, click_mode, selection, state}, editor_outputs + [selection]).then(
        None, None, None, js=scroll_js("#data-editor", only_if="document.querySelector('#data-click-mode "
                                                               "input:checked')?.value !== 'Add to selection'"))
    clear_sel.click(guarded(studio, "viewer", "Clearing the selection")(lambda: {selection: ""}), None, [selection])
    for button, op in ((add_round, "add_round"), (insert_row, "insert"), (remove_row, "remove"), (up_row, "up"),
                       (down_row, "down")):
        button.click(row_op(op), {edit_table, row_no}, [edit_table])
    save_btn.click(do_save, page_inputs | {state, edit_table}, editor_outputs + reload_outputs)
    delete_btn.click(delete_or_restore("delete"), page_inputs | {state}, editor_outputs + reload_outputs)
    restore_btn.click(delete_or_restore("restore"), page_inputs | {state}, editor_outputs + reload_outputs)
    diff_btn.click(do_diff, {state, rev_a, rev_b}, [diff_view])
    rev_restore_btn.click(do_restore_version, page_inputs | {state, rev_a}, editor_outputs + reload_outputs)
    close_btn.click(close, {state}, [editor])
    for ev in curate_events["changed"]:
        ev.then(refresh, page_inputs, reload_outputs, show_progress="hidden")

    return {"refresh": refresh, "inputs": page_inputs, "outputs": reload_outputs}
