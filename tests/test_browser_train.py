"""The Train tab in headless Chromium (Debian's ``/usr/bin/chromium`` driven by Playwright), with the real
training program on a tiny random-weight Llama registered as an ``hf`` entry.

The page is the whole studio (``studio.server.create_server``); the tests open its Train tab.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from studio.registry import ModelSpec

from browser_util import chromium, new_page, serve
from test_train_runs import add_conversations

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
@pytest.fixture
def train_server(settings, tiny_model_dir):  # noqa: F811
    """The studio's page (``studio.server.create_server``) on a free loopback port, with ``tiny`` registered and
    12 conversations; yields ``(url, studio)``. Run processes still going at the end are killed."""
    from studio.train import RunManager
    from studio.server import create_server

    app, studio = create_server(settings)
    studio.registry.add(ModelSpec(name="tiny", kind="hf", path=str(tiny_model_dir)))
    add_conversations(studio, 12)
    assert isinstance(studio.runs, RunManager)
    with serve(app) as url:
        yield url, studio
    studio.runs.kill_all()
    studio.close()


@pytest.fixture
def page():
    with chromium() as browser:
        yield new_page(browser)


def _pick(page, elem_id: str, option: str) -> None:
    """Choose ``option`` in a Gradio dropdown."""
    page.click(f"#{elem_id} input")
    page.get_by_role("option", name=option, exact=True).click()


def _number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def _text(page, sel: str) -> str:
    return page.inner_text(sel)


def _wait_js(page, js: str, arg=None, timeout: float = 120_000, what: str = "") -> None:
    """``page.wait_for_function`` that, on a timeout, fails with what the page and the runs show."""
    from playwright.sync_api import TimeoutError as PwTimeout

    try:
        page.wait_for_function(js, arg=arg, timeout=timeout)
    except PwTimeout:
        shown = {sel: page.locator(sel).inner_text() for sel in ("#train-progress", "#train-details", "#train-runs")}
        raise AssertionError(f"timed out waiting for {what or js}; the page shows {shown}") from None


def _wait_text(page, sel: str, pattern: str, timeout: float = 120_000) -> str:
    _wait_js(page, "([s, p]) => new RegExp(p).test(document.querySelector(s)?.innerText || '')", [sel, pattern],
             timeout, f"{pattern!r} in {sel}")
    return _text(page, sel)


def _step(page) -> int:
    m = re.search(r"step (\d+)/", _text(page, "#train-progress"))
    return int(m.group(1)) if m else 0


def test_train_tab_filter_says_what_a_run_trains_on(train_server, page):
    """The Train tab's filter is the Data tab's: a bulk flag (as the quality filters flag) keeps conversations
    out of status "all", the line under the filter says so, and choosing status Flagged takes them."""
    url, studio = train_server
    ids = studio.store.conversation_ids()
    studio.store.bulk("flag", ids[:2], "near duplicate of conversation 12")
    studio.store.set_token_counts({i: 1500 for i in ids[2:8]})
    page.goto(url)
    page.get_by_role("tab", name="Train").click()
    page.wait_for_selector("#train-start")
    # the whole line, anchored: while the count recomputes, Gradio's "processing | 0.1s" overlay sits in the
    # same element, so a partial match can read the overlay's text with it
    expected = ("10 conversations, 9k tokens (4 without token counts yet; flagged and deleted left out: 2): "
                "9 train, 1 held out for evaluation.")
    line = _wait_text(page, "#train-count", r"^\s*" + re.escape(expected) + r"\s*$")
    assert line.strip() == expected
    _wait_text(page, "#train-config", r'"flagged": false')
    _pick(page, "train-status", "Flagged")
    line = _wait_text(page, "#train-count", r"^\s*2 conversations")
    assert "2 train, 0 held out" in line and "left out" not in line
    _wait_text(page, "#train-config", r'"status": "flagged"')
    # the search box counts on Enter
    page.fill("#train-search input, #train-search textarea", "What is 1 plus")
    page.press("#train-search input, #train-search textarea", "Enter")
    _wait_text(page, "#train-count", r"^\s*1 conversation \(1 without token counts yet\)")


@pytest.mark.slow
def test_train_tab_runs_stops_resumes_and_reattaches(train_server, page):
    url, studio = train_server
    runs = studio.runs
    page.goto(url)
    page.get_by_role("tab", name="Train").click()
    page.wait_for_selector("#train-start")
    _wait_text(page, "#train-count", r"12\D*conversations \(12 without token counts yet\): 11 train, 1 held out")
    assert "accelerate launch --num_processes 1 -m training.train --run-dir" in _text(page, "#train-command")
    assert '"num_train_epochs": 3' in _text(page, "#train-config")  # the recipe's defaults

    # settings: the tiny model, a LoRA run of 6 steps; the preview follows every change
    _pick(page, "train-base", "tiny")
    _wait_text(page, "#train-config", '"base_model": "tiny"')
    for eid, v in (("train-hp-max-steps", 6), ("train-hp-learning-rate", 0.01)):
        _number(page, eid, v)
    page.get_by_text("Hyperparameters: Batch, length and memory").click()
    for eid, v in (("train-hp-global-batch-size", 2), ("train-hp-max-length", 64)):
        _number(page, eid, v)
    _wait_text(page, "#train-config", r'"max_steps": 6[\s\S]*"max_length": 64|"max_length": 64[\s\S]*"max_steps": 6')
    page.fill("#train-name textarea, #train-name input", "tiny-browser")

    page.click("#train-start")
    _wait_text(page, "#train-progress", r"running|queued")
    # the run is a job in the one job list (every kind), with the same progress line as the CLI's
    _wait_text(page, "#train-jobs", r"train")
    _wait_text(page, "#train-progress", r"finished", timeout=180_000)
    assert "100%" in _text(page, "#train-progress")
    details = _wait_text(page, "#train-details", "Registered as")
    assert "tiny-browser" in details and "accelerate launch" in details
    assert studio.registry.get("tiny-browser").kind == "adapter"
    # the loss plot drew its lines (vega renders into an svg or canvas), the log and the past runs show the run
    _wait_js(page, "document.querySelectorAll('#train-plot svg path, #train-plot canvas').length > 0",
             what="the loss plot")
    assert "finished at step 6" in page.locator("#train-log textarea").input_value()
    table = _wait_text(page, "#train-runs", "tiny-browser")
    assert "finished" in table
    page.locator("#wv-header").scroll_into_view_if_needed()
    page.screenshot(path=str(studio.settings.data_dir / "tab-train.png"), full_page=True)  # kept out of assets/

    # the trained adapter is in the Chat tab at once, and answers there
    page.get_by_role("tab", name="Chat").click()
    _pick(page, "chat-model", "tiny-browser")
    _wait_text(page, "#chat-info", "adapter")
    _number(page, "chat-max-new", 16)
    page.fill("#chat-input textarea", "What is 2 plus 0?")
    page.press("#chat-input textarea", "Enter")
    _wait_js(page, "document.querySelectorAll('#chat-bot .message-row, #chat-bot [data-testid=bot]').length >= 2",
             what="the adapter's reply in the Chat tab", timeout=60_000)
    assert "tiny-browser" in studio.registry.loaded_names()  # the reply came from the trained adapter
    page.get_by_role("tab", name="Train").click()

    # a longer run: stop with the button, resume with the button
    _number(page, "train-hp-max-steps", 100000)  # goes on until stopped
    _number(page, "train-hp-global-batch-size", 1)
    _number(page, "train-hp-per-device-train-batch-size", 1)
    page.fill("#train-name textarea, #train-name input", "")
    _wait_text(page, "#train-config", '"max_steps": 100000')
    page.click("#train-start")
    _wait_js(page, "() => { const m = /running: step (\\d+)\\//.exec(document.querySelector('#train-progress')"
             ".innerText); return m && +m[1] >= 2; }", what="step 2 of the long run")
    long_run = runs.default_run()
    assert runs.status(long_run)["state"] == "running"

    # reloading the page re-attaches to the running run
    page.reload()
    page.get_by_role("tab", name="Train").click()
    page.wait_for_selector("#train-start")
    _wait_text(page, "#train-progress", r"running: step \d+/100000")
    assert long_run in _text(page, "#train-details")

    page.click("#train-stop")
    _wait_text(page, "#train-progress", r"stopped", timeout=120_000)
    stopped_at = runs.status(long_run)["step"]
    assert runs.checkpoints(long_run) and "resume continues from checkpoint-" in _text(page, "#train-progress")

    page.click("#train-resume")
    _wait_js(page, "n => { const m = /running: step (\\d+)\\//.exec(document.querySelector('#train-progress')"
             ".innerText); return m && +m[1] > n; }", stopped_at, what=f"a step after {stopped_at} once resumed")
    page.click("#train-stop")
    _wait_text(page, "#train-progress", r"stopped", timeout=120_000)
    s = runs.status(long_run)
    assert s["state"] == "stopped" and s["step"] > stopped_at and s["attempts"] == 2
    starts = [e["step"] for e in runs.events(long_run)[0] if e["type"] == "start"]
    assert starts == [0, stopped_at]
