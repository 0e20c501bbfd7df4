"""The page as a person uses it (issue 13, items 3, 5, 9 and 12), in headless Chromium (Debian's
``/usr/bin/chromium`` driven by Playwright): a run says how long it will take before it starts and counts
micro-batches while it runs, quality-filter findings can be read before acting, opening a conversation shows
the editor, and the layout holds at 1400x900 (headers on one line, nothing overlapping).

One studio (``studio.server.create_server``) on a fresh data folder serves every test of the module, with a
tiny random-weight Llama registered as ``tiny`` for the training run; each test opens its own page and waits on
what the page or the store shows, never on time."""

from __future__ import annotations

import json

import pytest

from browser_util import chromium, serve

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    """The studio (page + /v1) on a free loopback port for the whole module, ``tiny`` registered; yields
    ``(url, studio)``. Run processes still going at the end are killed."""
    from studio.config import Settings
    from studio.registry import ModelSpec
    from studio.server import create_server

    app, studio = create_server(Settings(data_dir=tmp_path_factory.mktemp("page13r") / "data"))
    studio.registry.add(ModelSpec(name="tiny", kind="hf", path=str(tiny_model_dir)))
    with serve(app) as url:
        yield url, studio
    studio.runs.kill_all()
    studio.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser):
    pg = browser.new_page(viewport={"width": 1400, "height": 900})
    pg.set_default_timeout(60_000)
    yield pg
    pg.close()


def _wait_text(page, sel: str, pattern: str, timeout: float = 60_000) -> str:
    """Wait until the element ``sel`` shows text matching the regular expression ``pattern``; returns its text."""
    from playwright.sync_api import TimeoutError as PwTimeout

    try:
        page.wait_for_function("([s, p]) => new RegExp(p).test(document.querySelector(s)?.innerText || '')",
                               arg=[sel, pattern], timeout=timeout)
    except PwTimeout:
        shown = page.evaluate("s => document.querySelector(s)?.innerText", sel)
        raise AssertionError(f"timed out waiting for {pattern!r} in {sel}; it shows {shown!r}") from None
    return page.inner_text(sel)


def _number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def _pick(page, elem_id: str, option: str) -> None:
    page.click(f"#{elem_id} input")
    page.get_by_role("option", name=option, exact=True).click()


def _conversation(i: int, words: str = "") -> list[dict]:
    return [{"role": "user", "content": f"Question number {i}: what is {i} plus {i}? {words}".strip()},
            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]


# ------------------------------------------------------------------------------------------------ item 3
def test_a_run_is_estimated_before_start_and_counts_micro_batches(server, page):
    """Before Start the tab says how many steps and about how long (a guess from the model's size, then a time
    measured by the last run of that model), with a warning when it is long; the run's program writes its
    micro-batches inside a step (``substep`` events); the progress line reads epochs out of the configured 3
    (not the Trainer's 1 when Max steps end the run sooner); the single eval-loss point is drawn as a mark."""
    url, studio = server
    for i in range(12):
        studio.store.add_conversation(_conversation(i), origin="imported")
    page.goto(url)
    page.get_by_role("tab", name="Train").click()
    page.wait_for_selector("#train-start")
    # the default model, 11 train conversations, 3 epochs, global batch 128: 3 steps, a guess from its size
    est = _wait_text(page, "#train-estimate", r"Estimate: \*?\*?3")
    assert "3 optimizer steps" in est and "guessed" in est and "135M parameters" in est, est
    assert "Long run" not in est
    _number(page, "train-hp-max-steps", 30)
    est = _wait_text(page, "#train-estimate", "30 optimizer steps")
    assert "⚠ Long run" in est and "lower Max steps" in est, est

    # a real run of the tiny model: 4 micro-batches per step (global batch 4, 1 per device), 2 steps of 3 epochs
    _pick(page, "train-base", "tiny")
    _wait_text(page, "#train-config", '"base_model": "tiny"')
    _number(page, "train-hp-max-steps", 2)
    page.get_by_text("Hyperparameters: Batch, length and memory").click()
    for eid, v in (("train-hp-global-batch-size", 4), ("train-hp-per-device-train-batch-size", 1),
                   ("train-hp-max-length", 64)):
        _number(page, eid, v)
    _wait_text(page, "#train-config", r'"global_batch_size": 4[\s\S]*"max_length": 64|"max_length": 64[\s\S]*'
                                      r'"global_batch_size": 4')
    _wait_text(page, "#train-estimate", r"2 optimizer steps \(8 sequences")
    page.click("#train-start")
    line = _wait_text(page, "#train-progress", r"done|finished|failed", timeout=240_000)
    assert "failed" not in line, line
    assert "epoch" in line and "/3" in line.split("epoch", 1)[1][:8], line

    run_id = studio.runs.list_runs()[0]["run_id"]
    events = [json.loads(x) for x in (studio.runs.run_dir(run_id) / "events.jsonl").read_text().splitlines()]
    subs = [e for e in events if e["type"] == "substep"]
    assert subs and all(e["of"] == 4 and 1 <= e["micro"] <= 3 for e in subs), subs
    assert [e for e in events if e["type"] == "eval"], "the run evaluated at its end"

    # the one eval-loss point is a visible mark (not a line of one point, which draws nothing)
    # (the plot's own point marks, not its legend's symbols; drawn: opaque, with a stroke a few pixels wide)
    marks = "[...document.querySelectorAll('#train-plot g.mark-symbol.role-mark path')]"
    try:
        page.wait_for_function(f"{marks}.some(p => {{ const c = getComputedStyle(p);"
                               " return c.opacity === '1' && parseFloat(c.strokeWidth) >= 4"
                               " && /234, 88, 12/.test(c.stroke); })", timeout=60_000)
    except Exception:
        shown = page.evaluate(f"{marks}.map(p => {{ const c = getComputedStyle(p);"
                              " return [c.opacity, c.strokeWidth, c.stroke, c.fill]; })")
        raise AssertionError(f"no eval-loss mark drawn; the plot's point marks: {shown}") from None

    # the next estimate of this model is measured on this machine by that run
    _number(page, "train-hp-max-steps", 3)
    est = _wait_text(page, "#train-estimate", "3 optimizer steps")
    assert f"measured on run {run_id}" in est, est


def test_micro_batches_move_a_training_job_s_bar_within_a_step():
    """A ``substep`` event of the step under way adds its share of a step to the run's fraction and the job's
    bar, and reads as "micro-batch k/n" in the progress line; one of an earlier step counts for nothing."""
    from studio.jobs import Progress
    from studio.runs import EventView

    v = EventView()
    v.apply({"type": "start", "step": 0, "max_steps": 3, "num_train_epochs": 1.0})
    v.apply({"type": "substep", "step": 0, "micro": 32, "of": 128})
    assert v.micro() == (32, 128)
    p = Progress(1, "train", "running", total=3, done=0, failed=0, unit="step",
                 metrics={"micro": 32, "micro_of": 128, "epoch": 0.4, "num_train_epochs": 3})
    assert p.fraction == pytest.approx(0.25 / 3)
    assert "step 0/3 (micro-batch 32/128 of step 1)" in p.line() and "epoch 0.40/3" in p.line()
    v.apply({"type": "progress", "step": 1, "max_steps": 3, "loss": 2.0})
    assert v.micro() is None


# ------------------------------------------------------------------------------------------------ item 5
def _in_view(page, sel: str) -> bool:
    """Whether the top of element ``sel`` is inside the viewport (it was scrolled to, or shown where visible)."""
    return page.evaluate("s => { const e = document.querySelector(s); if (!e) return false;"
                         " const r = e.getBoundingClientRect(); return r.height > 0 && r.top >= 0"
                         " && r.top < window.innerHeight - 40; }", sel)


def test_quality_findings_can_be_read_before_anything_is_marked(server, page):
    """The first filter shown (Exact duplicates) explains itself at once; the refusal phrase list shows only under
    the refusals filter; Find says "found" (nothing is flagged yet); a click on a found row shows that
    conversation below the table, scrolled into view, its text as text (HTML in it is not live) with the matched
    phrase marked; a dating tip to "prioritize safety" is not found as a refusal."""
    url, studio = server
    bad = [{"role": "user", "content": "Write me a poem <b>now</b>."},
           {"role": "assistant", "content": "I'm sorry, but I cannot write that <img src=x onerror=alert(1)>."}]
    tip = [{"role": "user", "content": "Tips for a first date?"},
           {"role": "assistant", "content": "Meet in public and prioritize safety over impressing your date."}]
    bad_id = studio.store.add_conversation(bad, origin="imported")
    tip_id = studio.store.add_conversation(tip, origin="imported")
    n = studio.store.count_conversations()
    page.goto(url)
    page.wait_for_selector("#data-table")
    page.get_by_text("Quality filters", exact=True).click()
    explain = _wait_text(page, "#quality-explain", "Exact duplicates")
    assert "start with the same user message" in explain, explain
    assert not page.locator("#quality-phrases").is_visible()

    _pick(page, "quality-filter", "Refusals and 'as an AI' boilerplate")
    page.wait_for_selector("#quality-phrases", state="visible")
    page.click("#quality-find")
    result = _wait_text(page, "#quality-result", r"conversations found by")
    assert f"1 of {n} conversations found" in result and "flagged" not in result, result
    table = page.inner_text("#quality-table")
    assert str(bad_id) in table and str(tip_id) not in table.split(), table
    assert studio.store.get_conversation(bad_id)["status"] != "flagged"

    page.locator("#quality-table").get_by_role("gridcell", name=str(bad_id), exact=True).click()
    page.wait_for_selector("#quality-view mark")
    assert page.locator("#quality-view mark").all_inner_texts() == ["I'm sorry, but I cannot"]
    view = page.inner_text("#quality-view")
    assert "<img src=x onerror=alert(1)>" in view and "<b>now</b>" in view, view
    assert page.locator("#quality-view img, #quality-view b:has-text('now')").count() == 0
    page.wait_for_function("() => { const r = document.querySelector('#quality-view').getBoundingClientRect();"
                           " return r.top >= 0 && r.top < window.innerHeight - 40; }")


# ------------------------------------------------------------------------------------------------ item 9
def test_opening_a_conversation_or_starting_an_expansion_scrolls_to_what_they_show(server, page, data_dir):
    """A click on a row of the table opens the editor about 1,000 px below it: the page scrolls to the editor.
    Starting an expansion scrolls its progress bar into view."""
    url, studio = server
    studio.store.add_conversation(_conversation(4242, "scroll probe"), origin="imported")
    page.goto(url)
    _wait_text(page, "#data-count", r"\d+ conversations")  # the page's first load is in, not overwriting the search
    page.fill("#data-search textarea, #data-search input", "4242")
    page.press("#data-search textarea, #data-search input", "Enter")
    _wait_text(page, "#data-count", r"^\D*1 conversation")
    _wait_text(page, "#data-table", "4242")
    assert not _in_view(page, "#data-editor")
    page.locator('#data-table [data-testid="cell-0-0"]').click()
    _wait_text(page, "#data-conv-header", "Conversation")
    page.wait_for_function("() => { const r = document.querySelector('#data-editor').getBoundingClientRect();"
                           " return r.top >= 0 && r.top < window.innerHeight - 40; }")

    src = studio.import_file(data_dir / "wizardlm_testset.jsonl").source_id
    page.get_by_role("tab", name="Expand").click()
    page.wait_for_selector("#expand-start")
    page.click("#expand-source input")
    page.get_by_role("option").first.click()
    _pick(page, "expand-teacher", "tiny")
    _number(page, "expand-n", 1)
    page.evaluate("window.scrollTo(0, 0)")
    assert not _in_view(page, "#expand-progress")
    page.click("#expand-start")
    _wait_text(page, "#expand-progress", r"job \d+")
    page.wait_for_function("() => { const r = document.querySelector('#expand-progress').getBoundingClientRect();"
                           " return r.top >= 0 && r.bottom <= window.innerHeight; }")
    for job in studio.store.list_jobs(kind="expand").itertuples():
        if job.status in ("queued", "running"):
            studio.jobs.stop(int(job.id))
    assert src


# ------------------------------------------------------------------------------------------------ item 12
def _header_heights(page, sel: str) -> dict:
    """``{header text: height in px}`` of the table ``sel``'s column header cells; a header whose text is cut
    (wider than its cell) counts as 999 px."""
    return page.evaluate("s => Object.fromEntries([...document.querySelectorAll(s + ' thead th')]"
                         ".filter(th => th.innerText.trim()).map(th => { const t = th.querySelector('span.header');"
                         " const cut = t && t.scrollWidth > th.getBoundingClientRect().width;"
                         " return [th.innerText.trim(), cut ? 999 : th.getBoundingClientRect().height]; }))", sel)


def test_headers_stay_on_one_line_and_a_saved_edit_keeps_its_token_count(server, page):
    """At 1400x900 the Data table's and the registry's column headers are one line each ("turns", "key
    variable": under 40 px, not a letter per line); saving an edit on the page (here: restoring the original
    version, a save like any other) counts the conversation's tokens again instead of leaving it without."""
    url, studio = server
    original = [{"role": "user", "content": "Token probe: name three colours of the rainbow please."},
                {"role": "assistant", "content": "Red, orange and yellow are three of them."}]
    cid = studio.store.add_conversation(original, origin="imported")
    long_title = "Explain in detail " + " ".join(f"word{i}" for i in range(60))
    studio.store.add_conversation([{"role": "user", "content": long_title}, {"role": "assistant", "content": "Ok."}],
                                  origin="imported")
    studio.store.bulk("tag", [cid], "a-tag")
    studio.count_tokens()
    studio.store.save_messages(cid, [original[0], {"role": "assistant", "content": "Red."}], expected_version=1)
    assert studio.store.get_conversation(cid).get("n_tokens") is None
    page.goto(url)
    page.wait_for_selector("#data-table thead th")
    _wait_text(page, "#data-table", "Explain in detail")
    heights = _header_heights(page, "#data-table")
    assert heights and max(heights.values()) < 40, heights
    # every column, the title last, inside the table's box (the title is cut with "…", not by the page's edge)
    right = page.evaluate("() => [document.querySelector('#data-table').getBoundingClientRect().right,"
                          " Math.max(...[...document.querySelectorAll('#data-table thead th')]"
                          ".map(th => th.getBoundingClientRect().right))]")
    assert right[1] <= right[0] + 1, right
    shown = page.inner_text("#data-table")
    assert "Explain in detail word0 word1 word2…" in shown and "word3" not in shown, shown

    page.fill("#data-search textarea, #data-search input", '"Token probe"')
    page.press("#data-search textarea, #data-search input", "Enter")
    _wait_text(page, "#data-count", r"^\D*1 conversation")
    page.locator('#data-table [data-testid="cell-0-0"]').click()
    _wait_text(page, "#data-conv-header", f"Conversation {cid}")
    page.get_by_text("History (every saved version)").click()
    page.wait_for_function("document.querySelector('#data-rev-a input')?.value === '1'")
    page.click("#data-rev-restore")
    _wait_text(page, "#data-edit-result", "Version 1 restored as version 3")
    conv = studio.store.get_conversation(cid)
    assert conv["messages"] == original and isinstance(conv.get("n_tokens"), int) and conv["n_tokens"] > 5, conv

    page.get_by_role("tab", name="Models").click()
    page.wait_for_selector("#models-table thead th")
    _wait_text(page, "#models-table", "tiny")
    heights = _header_heights(page, "#models-table")
    assert "key variable" in heights and max(heights.values()) < 40, heights
