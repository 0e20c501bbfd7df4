"""Data tab: import files, browse conversations and seeds page by page, open one as a chat, edit any message
(every save keeps a revision), delete and restore, and export the WizardVicunaLM ShareGPT layout."""

from __future__ import annotations

import math

import gradio as gr
import pandas as pd

from ..formats import FormatError
from .common import friendly, guard_writes, source_choices

PAGE_SIZES = [10, 25, 50, 100]
STATUS_CHOICES = [("All (not deleted)", "all"), ("New", "new"), ("Edited", "edited"), ("Deleted", "deleted")]
ORIGIN_CHOICES = [("All origins", "all"), ("Imported", "imported"), ("Expanded", "expanded")]
EDIT_HEADERS = ["role", "content"]


def _bad_rows_md(result) -> str:
    if not result.bad_rows:
        return ""
    lines = [f"| {row} | {reason.replace('|', '/')} |" for row, reason in result.bad_rows[:50]]
    more = f"\n\n… and {len(result.bad_rows) - 50} more." if len(result.bad_rows) > 50 else ""
    return "\n\n**Rows skipped** (row number in the file, reason):\n\n| row | reason |\n|---|---|\n" + \
        "\n".join(lines) + more


def build(studio) -> dict:
    """Lay out the Data tab inside the current Blocks context and wire its events.

    Returns:
        the components other tabs refresh: ``{"refresh": callable, "outputs": [...], "source": Dropdown}``.
    """
    store = studio.store

    with gr.Row():
        with gr.Column(scale=2):
            upload = gr.File(label="Import a file (WizardLM Evol-Instruct, Alpaca, WizardLM test set, ShareGPT, "
                                   "OpenAI messages: .json or .jsonl)", file_types=[".json", ".jsonl"],
                             file_count="multiple", elem_id="data-upload")
            import_btn = gr.Button("Import", variant="primary", elem_id="data-import")
        with gr.Column(scale=3):
            import_out = gr.Markdown(elem_id="data-import-result")

    with gr.Row():
        view = gr.Radio(["Conversations", "Seeds"], value="Conversations", label="Show", elem_id="data-view")
        source = gr.Dropdown(source_choices(studio), value=0, label="Source", elem_id="data-source")
        status = gr.Dropdown(STATUS_CHOICES, value="all", label="Status", elem_id="data-status")
        origin = gr.Dropdown(ORIGIN_CHOICES, value="all", label="Origin", elem_id="data-origin")
        page_size = gr.Dropdown(PAGE_SIZES, value=25, label="Rows per page", elem_id="data-page-size")
    with gr.Row():
        prev_btn = gr.Button("◀ Previous", size="sm", elem_id="data-prev")
        page = gr.Number(value=1, precision=0, minimum=1, label="Page", elem_id="data-page", scale=0,
                         min_width=90)
        next_btn = gr.Button("Next ▶", size="sm", elem_id="data-next")
        refresh_btn = gr.Button("↻ Refresh", size="sm", elem_id="data-refresh")
        count = gr.Markdown(elem_id="data-count")
    table = gr.Dataframe(interactive=False, wrap=True, max_height=520, elem_id="data-table",
                         label="Click a row to open it")

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
            save_btn = gr.Button("Save changes", variant="primary", elem_id="data-save")
            delete_btn = gr.Button("Delete", variant="stop", elem_id="data-delete")
            restore_btn = gr.Button("Restore (undo delete)", elem_id="data-restore")
            close_btn = gr.Button("Close", elem_id="data-close")
        edit_out = gr.Markdown(elem_id="data-edit-result")
        with gr.Accordion("History (every saved version)", open=False):
            revisions = gr.Dataframe(interactive=False, elem_id="data-revisions")
            with gr.Row():
                rev_pick = gr.Number(label="Version", precision=0, minimum=1, elem_id="data-rev-pick")
                rev_restore_btn = gr.Button("Restore this version (saved as a new version)",
                                            elem_id="data-rev-restore")

    with gr.Accordion("Export", open=False, elem_id="data-export-acc"):
        gr.Markdown("Writes the conversations of the current filter. **ShareGPT** is the WizardVicunaLM "
                    "`wizard_vicuna_70k` layout: a JSON list of `{id, conversations: [{from: human|gpt, value}]}`.")
        with gr.Row():
            export_fmt = gr.Dropdown([("ShareGPT JSON (WizardVicunaLM)", "sharegpt"),
                                      ("OpenAI messages JSONL", "openai")], value="sharegpt", label="Format",
                                     elem_id="data-export-format")
            export_btn = gr.Button("Export", variant="primary", elem_id="data-export")
        export_file = gr.File(label="Download", interactive=False, elem_id="data-export-file")
        export_out = gr.Markdown(elem_id="data-export-result")

    # ----------------------------------------------------------------------------- handlers
    def _filters(source_id, status_v, origin_v):
        return dict(source_id=int(source_id) if source_id else None, status=status_v, origin=origin_v)

    @friendly
    def load_page(view_v, source_id, status_v, origin_v, size, page_no):
        size = int(size or 25)
        page_no = max(1, int(page_no or 1))
        if view_v == "Seeds":
            df, total = store.list_seeds(int(source_id) if source_id else None, limit=size,
                                         offset=(page_no - 1) * size)
            what = "seeds"
        else:
            df, total = store.list_conversations(**_filters(source_id, status_v, origin_v), limit=size,
                                                 offset=(page_no - 1) * size)
            what = "conversations"
            if len(df):
                df = df.assign(updated_at=df["updated_at"].dt.strftime("%Y-%m-%d %H:%M"))
                df = df.drop(columns=["version"])
                df = df[[c for c in df.columns if c != "title"] + ["title"]]  # long text last
        pages = max(1, math.ceil(total / size))
        if page_no > pages:
            return load_page(view_v, source_id, status_v, origin_v, size, pages)
        if not len(df):
            df = pd.DataFrame({"": [f"No {what} yet: import a file above" if total == 0 else "Nothing here"]})
        return df, page_no, f"**{total}** {what} · page {page_no} of {pages}"

    page_inputs = [view, source, status, origin, page_size, page]
    page_outputs = [table, page, count]

    def refresh_sources(current):
        choices = source_choices(studio)
        value = current if current in [c[1] for c in choices] else 0
        return gr.update(choices=choices, value=value)

    @friendly
    def do_import(files, view_v, status_v, origin_v, size, current_source):
        guard_writes(studio)
        if not files:
            raise ValueError("choose a file to import first")
        parts = []
        last_source = current_source
        for f in files if isinstance(files, list) else [files]:
            path = f if isinstance(f, str) else f.name
            try:
                res = studio.import_file(path, keep_copy=True)
            except (FormatError, FileNotFoundError) as e:
                parts.append(f"❌ {e}")
                continue
            parts.append(("✅ " if not res.duplicate else "ℹ️ ") + res.summary() + _bad_rows_md(res))
            last_source = res.source_id
        choices = source_choices(studio)
        df, page_no, cnt = load_page(view_v, last_source, status_v, origin_v, size, 1)
        return (None, "\n\n".join(parts), gr.update(choices=choices, value=last_source), df, page_no, cnt)

    def go(delta):
        def f(view_v, source_id, status_v, origin_v, size, page_no):
            return load_page(view_v, source_id, status_v, origin_v, size, max(1, int(page_no or 1) + delta))
        return f

    def _open(cid):
        conv = store.get_conversation(cid)
        msgs = conv["messages"]
        header = (f"### Conversation {cid} · {conv.get('source') or 'no source'} · {conv['origin']} · "
                  f"{'deleted' if conv['deleted_at'] else conv['status']} · version {conv['version']}")
        if conv.get("teacher"):
            header += f"\nTeacher **{conv['teacher']}**, prompts `{conv.get('prompt_version')}`"
        chat = [{"role": m["role"], "content": m["content"]} for m in msgs if m["role"] != "system"]
        system = next((m["content"] for m in msgs if m["role"] == "system"), None)
        if system:
            header += f"\n\nSystem: _{system[:300]}_"
        edit_df = pd.DataFrame([[m["role"], m["content"]] for m in msgs], columns=EDIT_HEADERS)
        revs = store.list_revisions(cid)
        revs = revs.assign(created_at=revs["created_at"].dt.strftime("%Y-%m-%d %H:%M:%S"))
        return (gr.update(visible=True), header, cid, conv["version"], chat, edit_df, revs, "")

    @friendly
    def on_select(evt: gr.SelectData, view_v):
        if view_v != "Conversations" or evt.row_value is None:
            return [gr.update()] * 8
        try:
            cid = int(evt.row_value[0])
        except (TypeError, ValueError):
            return [gr.update()] * 8
        return _open(cid)

    @friendly
    def do_save(cid, version, edit_df, *page_args):
        guard_writes(studio)
        if cid is None:
            raise ValueError("open a conversation first")
        rows = edit_df.values.tolist() if isinstance(edit_df, pd.DataFrame) else list(edit_df or [])
        messages = []
        for i, row in enumerate(rows, 1):
            role = str(row[0] or "").strip().lower()
            content = "" if row[1] is None else str(row[1])
            if not role and not content.strip():
                continue  # an empty row added by mistake
            messages.append({"role": role, "content": content})
        new_version = store.save_messages(cid, messages, expected_version=int(version),
                                          max_message_chars=studio.settings.max_message_chars)
        out = _open(cid)
        return (*out[:7], f"✅ Saved as version {new_version}.", *load_page(*page_args))

    @friendly
    def do_delete(cid, *page_args):
        guard_writes(studio)
        if cid is None:
            raise ValueError("open a conversation first")
        store.delete_conversations([cid])
        out = _open(cid)
        return (*out[:7], f"🗑️ Conversation {cid} deleted. **Restore** brings it back.", *load_page(*page_args))

    @friendly
    def do_restore(cid, *page_args):
        guard_writes(studio)
        if cid is None:
            raise ValueError("open a conversation first")
        n = store.restore_conversations([cid])
        out = _open(cid)
        msg = f"♻️ Conversation {cid} restored." if n else f"Conversation {cid} was not deleted."
        return (*out[:7], msg, *load_page(*page_args))

    @friendly
    def do_restore_version(cid, version, rev, *page_args):
        guard_writes(studio)
        if cid is None or rev is None:
            raise ValueError("open a conversation and give a version number from its history")
        old = store.get_revision(cid, int(rev))
        new_version = store.save_messages(cid, old, expected_version=int(version), note=f"restored version {int(rev)}",
                                          max_message_chars=studio.settings.max_message_chars)
        out = _open(cid)
        return (*out[:7], f"↩️ Version {int(rev)} restored as version {new_version}.", *load_page(*page_args))

    @friendly
    def do_export(fmt, source_id, status_v, origin_v):
        path, n = studio.export(fmt=fmt, **_filters(source_id, status_v, origin_v))
        if n == 0:
            return None, "Nothing to export: the current filter matches no conversations."
        return str(path), f"Exported **{n}** conversations to `{path}`."

    # ----------------------------------------------------------------------------- wiring
    editor_outputs = [editor, conv_header, conv_id, conv_version, chat_view, edit_table, revisions]
    import_btn.click(do_import, [upload, view, status, origin, page_size, source],
                     [upload, import_out, source, table, page, count])
    for comp in (view, source, status, origin, page_size):
        comp.change(lambda *a: load_page(*a[:-1], 1), page_inputs, page_outputs)
    page.submit(load_page, page_inputs, page_outputs)
    prev_btn.click(go(-1), page_inputs, page_outputs)
    next_btn.click(go(+1), page_inputs, page_outputs)
    refresh_btn.click(load_page, page_inputs, page_outputs)
    table.select(on_select, [view], editor_outputs + [edit_out])
    save_btn.click(do_save, [conv_id, conv_version, edit_table] + page_inputs,
                   editor_outputs + [edit_out] + page_outputs)
    delete_btn.click(do_delete, [conv_id] + page_inputs, editor_outputs + [edit_out] + page_outputs)
    restore_btn.click(do_restore, [conv_id] + page_inputs, editor_outputs + [edit_out] + page_outputs)
    rev_restore_btn.click(do_restore_version, [conv_id, conv_version, rev_pick] + page_inputs,
                          editor_outputs + [edit_out] + page_outputs)
    close_btn.click(lambda: (gr.update(visible=False), None), None, [editor, conv_id])
    export_btn.click(do_export, [export_fmt, source, status, origin], [export_file, export_out])

    def refresh(view_v, source_id, status_v, origin_v, size, page_no):
        src = refresh_sources(source_id)
        return (src, *load_page(view_v, src["value"], status_v, origin_v, size, page_no))

    return {"refresh": refresh, "inputs": page_inputs, "outputs": [source] + page_outputs, "table": table}

