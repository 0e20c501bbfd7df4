"""The real page in headless Chromium (Debian's ``/usr/bin/chromium`` driven by Playwright).

The studio is served by uvicorn on loopback from a fresh data folder; the tests upload real files through
the file input, click through the tabs and read what the page shows.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from browser_util import chromium, new_page, serve, wait_uploaded

pytestmark = pytest.mark.browser

@pytest.fixture
def server(settings):
    """The studio (page + /v1) on a free loopback port; yields ``(url, studio)``."""
    from studio.server import create_server

    app, studio = create_server(settings)
    with serve(app) as url:
        yield url, studio
    studio.close()


@pytest.fixture
def page():
    with chromium() as browser:
        yield new_page(browser)


def _import(page, path: Path, expect: str) -> str:
    """Upload and import a file; wait until the result shows ``expect`` and no pending timer."""
    page.locator("#data-upload input[type=file]").set_input_files(str(path))
    wait_uploaded(page, "#data-upload", path.name)
    page.click("#data-import")
    page.wait_for_function(
        "e => { const t = document.querySelector('#data-import-result')?.innerText || ''; "
        "return t.includes(e) && !/^(processing|[0-9.]+s)/.test(t); }", arg=expect)
    return page.inner_text("#data-import-result")


def test_page_imports_a_file_and_shows_its_rows(server, page, data_dir, tmp_path):
    url, studio = server
    page.goto(url)
    page.wait_for_selector("#data-table")
    assert page.get_by_role("tab", name="Expand").is_visible()

    # a ShareGPT file with one bad row: the good rows appear, the bad one is reported with its row number
    rows = [
        {"id": "a1", "conversations": [{"from": "human", "value": "What is DuckDB?"},
                                       {"from": "gpt", "value": "An in-process analytical database."}]},
        {"id": "a2", "conversations": [{"from": "human", "value": "Name a prime."},
                                       {"from": "human", "value": "Any prime?"}]},
        {"id": "a3", "conversations": [{"from": "human", "value": "Capital of Peru?"},
                                       {"from": "gpt", "value": "Lima."}]},
    ]
    f = tmp_path / "chats.json"
    f.write_text(json.dumps(rows))
    result = _import(page, f, "chats.json")
    assert "2 conversations imported" in result
    assert "1 bad rows skipped" in result and "roles must alternate" in result
    page.wait_for_function("document.querySelector('#data-table').innerText.includes('Capital of Peru?')")
    table = page.inner_text("#data-table")
    assert "What is DuckDB?" in table and "Name a prime." not in table
    assert "2" in page.inner_text("#data-count")

    # the WizardLM test set: its seeds are listed in the Seeds view
    result = _import(page, data_dir / "wizardlm_testset.jsonl", "218 seeds")
    assert "218 seeds" in result
    page.get_by_text("Seeds", exact=True).click()
    page.wait_for_function("document.querySelector('#data-count').innerText.includes('218')")
    first = json.loads((data_dir / "wizardlm_testset.jsonl").read_text().splitlines()[0])["Instruction"]
    page.wait_for_function("t => document.querySelector('#data-table').innerText.includes(t)",
                           arg=first[:40])

    # importing the same file again adds nothing
    result = _import(page, data_dir / "wizardlm_testset.jsonl", "already imported")
    assert "already imported" in result
    assert studio.store.list_seeds()[1] == 218


@pytest.mark.slow
def test_expand_edit_export_in_the_browser(server, page, data_dir, tmp_path):
    """The main job end to end: import the test set, expand 2 seeds into 2-round conversations with the
    default model, open one, edit a message (a revision is kept), export ShareGPT."""
    url, studio = server
    page.goto(url)
    page.wait_for_selector("#data-table")
    assert "218 seeds" in _import(page, data_dir / "wizardlm_testset.jsonl", "218 seeds")

    page.get_by_role("tab", name="Expand").click()
    page.wait_for_function("document.querySelector('#expand-seeds-info').innerText.includes('218 seeds')")
    page.fill("#expand-n input", "2")
    for sel, value in (("#expand-rounds", "2"), ("#expand-max-new", "24"), ("#expand-q-max", "24")):
        box = page.locator(f"{sel} input[type=number]")
        box.fill(value)
        box.press("Enter")
    page.fill("#expand-seed textarea, #expand-seed input", "0")
    page.click("#expand-start")
    page.wait_for_function("document.querySelector('#expand-progress').innerText.includes('done: 2/2')",
                           timeout=240_000)
    assert studio.store.count_conversations(origin="expanded") == 2

    page.get_by_role("tab", name="Data").click()
    page.get_by_text("Conversations", exact=True).click()
    page.wait_for_function("document.querySelector('#data-count').innerText.includes('2')")
    page.locator('#data-table [data-testid="cell-0-0"]').click()
    page.wait_for_selector("#data-editor", state="visible")
    page.wait_for_function("document.querySelector('#data-conv-header').innerText.includes('version 1')")
    conv_id = studio.store.list_conversations(origin="expanded")[0]["id"].iloc[0]
    before = studio.store.get_conversation(int(conv_id))["messages"]
    assert len(before) == 4

    # edit the first assistant message in the table editor and save
    cell = page.locator('#data-edit-table [data-testid="cell-1-1"]')
    cell.dblclick()
    editor = page.locator("#data-edit-table textarea, #data-edit-table input[type=text]").first
    editor.fill("An edited answer from the browser.")
    editor.press("Enter")
    page.wait_for_function("document.querySelector('#data-edit-table [data-testid=\"cell-1-1\"]')?.innerText"
                           ".includes('An edited answer from the browser.')")
    page.click("#data-save")
    page.wait_for_function("document.querySelector('#data-edit-result').innerText.includes('version 2')")
    after = studio.store.get_conversation(int(conv_id))
    assert after["messages"][1]["content"] == "An edited answer from the browser."
    assert after["version"] == 2 and after["status"] == "edited"
    assert studio.store.get_revision(int(conv_id), 1) == before

    # export the ShareGPT file and read it back
    page.get_by_text("Export", exact=True).first.click()
    page.click("#data-export")
    page.wait_for_function("document.querySelector('#data-export-result').innerText.includes('Exported')")
    exported = sorted(studio.settings.export_dir.glob("*.json"))
    assert exported, "no export file written"
    data = json.loads(exported[-1].read_text())
    assert len(data) == 2
    assert {m["from"] for c in data for m in c["conversations"]} == {"human", "gpt"}
    assert any(m["value"] == "An edited answer from the browser." for c in data for m in c["conversations"])
    shutil.copy(exported[-1], tmp_path / "export.json")


def _count(page) -> str:
    return page.inner_text("#data-count")


def _wait_count(page, text: str) -> None:
    page.wait_for_function("t => (document.querySelector('#data-count')?.innerText || '').includes(t)", arg=text)


def _enter(page, box: str, value: str) -> None:
    inp = page.locator(f"#data-{box} input")
    inp.fill(value)
    inp.press("Enter")


def test_filter_controls_bulk_tag_and_undo_in_the_page(server, page, tmp_path):
    """The Data tab's filter controls (built from FILTER_FIELDS): a rounds range narrows the table; a minimum
    above the maximum is refused with a toast naming the control and the table and boxes stay as they were; a
    bulk tag of the filter makes the new tag a choice of the Tags control without a reload; the page's last bulk
    action is undone."""
    url, studio = server
    rows = [{"id": f"r{n}", "conversations": [m for k in range(n) for m in
                                              ({"from": "human", "value": f"Question {k} of a {n}-round chat?"},
                                               {"from": "gpt", "value": f"Answer {k}."})]} for n in (1, 2, 3)]
    f = tmp_path / "rounds.json"
    f.write_text(json.dumps(rows))
    page.goto(url)
    page.wait_for_selector("#data-table")
    assert "3 conversations imported" in _import(page, f, "rounds.json")
    _wait_count(page, "3 conversations")

    page.get_by_text("More filters and sorting").click()
    _enter(page, "min-rounds", "2")
    _wait_count(page, "2 conversations")
    _enter(page, "max-rounds", "1")
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"toast-body\"]')]"
                           ".some(e => e.innerText.includes('Min rounds (min_rounds)'))")
    toast = page.locator('[data-testid="toast-body"]').filter(has_text="Min rounds").first.inner_text()
    assert "the minimum (2) is above the maximum (1)" in toast
    assert "2 conversations" in _count(page) and page.locator("#data-min-rounds input").input_value() == "2"
    _enter(page, "max-rounds", "0")        # 0 = no bound

    page.get_by_text("Bulk actions (with undo)").click()
    page.locator("#bulk-arg textarea, #bulk-arg input").first.fill("deep")
    page.click("#bulk-apply")
    page.wait_for_function("t => (document.querySelector('#bulk-result')?.innerText || '').includes(t)",
                           arg="Tag: 2 of 2 conversations changed")
    assert studio.store.list_tags() == [("deep", 2)]

    _enter(page, "min-rounds", "0")
    _wait_count(page, "3 conversations")
    page.locator("#data-tags input").click()
    page.get_by_role("option", name="deep").click()     # the new tag is a choice, no reload
    _wait_count(page, "2 conversations")

    page.click("#bulk-undo")
    page.wait_for_function("t => (document.querySelector('#bulk-result')?.innerText || '').includes(t)",
                           arg="undone: 2 conversations")
    assert studio.store.list_tags() == []
    _wait_count(page, "0 conversations")   # the table reloads: nothing has the tag any more


def test_chat_tab_answers_retries_and_clears(server, page):
    """The Chat tab on the default model: a reply is streamed into the chat and kept in the session's history
    (Retry replaces it instead of adding a turn), and Clear empties the chat."""
    url, studio = server
    page.goto(url)
    page.get_by_role("tab", name="Chat").click()
    page.wait_for_function("(document.querySelector('#chat-info')?.innerText || '').includes('template')")
    box = page.locator("#chat-max-new input[type=number]")
    box.fill("16")
    box.press("Tab")
    rows = "document.querySelectorAll('#chat-bot .message-row').length"
    busy = "document.querySelector('#chat-bot .progress-text, #chat-bot .pending')"
    done = f"!{busy} && {rows} >= 2"     # between Retry's two steps the chat shows the question alone

    def answered(before: int) -> None:
        """A new reply was generated (the model started a stream after ``before`` and has finished it) and is
        on the page. The server's counters, not the page's busy marker, which can be too brief to see."""
        deadline = time.monotonic() + 120
        while studio.registry.streams_started <= before or studio.registry.streaming():
            assert time.monotonic() < deadline, "no reply was generated within 120 s"
            time.sleep(0.05)
        page.wait_for_function(done, timeout=30_000)

    n = studio.registry.streams_started
    page.fill("#chat-input textarea", "Name a colour.")
    page.press("#chat-input textarea", "Enter")
    answered(n)
    assert page.evaluate(rows) == 2 and "Name a colour." in page.inner_text("#chat-bot")

    n = studio.registry.streams_started
    page.click("#chat-retry")
    answered(n)
    assert page.evaluate(rows) == 2     # the retried reply replaces the first: no extra turn

    page.click("#chat-clear")
    page.wait_for_function(f"{rows} == 0")
