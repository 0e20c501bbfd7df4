"""The page as a person uses it (issue 13), in headless Chromium (Debian's ``/usr/bin/chromium`` driven by
Playwright): optional hyperparameters that do not block a run, errors that leave the page as it was and fade,
bulk actions that count and ask first, version history in the right order, statistics a person can read, and
tag choices that follow a bulk tag.

One studio (``studio.server.create_server``) on a fresh data folder serves every test of the module; each test
opens its own page and waits on what the page or the store shows, never on time."""

from __future__ import annotations

import pytest

from browser_util import chromium, new_page, serve
from browser_util import wait_text as _wait_text

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The studio (page + /v1) on a free loopback port for the whole module; yields ``(url, studio)``."""
    from studio.config import Settings
    from studio.server import create_server

    app, studio = create_server(Settings(data_dir=tmp_path_factory.mktemp("page13") / "data"))
    with serve(app) as url:
        yield url, studio
    studio.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser):
    pg = new_page(browser, 60_000)
    yield pg
    pg.close()


def _number(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


# ------------------------------------------------------------------------------------------------ item 1
def test_untouched_optional_hyperparameters_never_block_a_run(server, page):
    """Changing Max steps with "Evaluate every N steps" and "Save every N steps" untouched (the page shows them
    as 0) previews a run that evaluates and saves each epoch, not an error about eval_steps."""
    url, _ = server
    page.goto(url)
    page.get_by_role("tab", name="Train").click()
    page.wait_for_selector("#train-start")
    page.get_by_text("Hyperparameters: Logging, evaluation and checkpoints").click()
    assert "0 = each epoch" in page.inner_text("#train-hp-eval-steps")
    _number(page, "train-hp-max-steps", 7)
    _wait_text(page, "#train-command", r"⚠|--run-dir")
    _wait_text(page, "#train-config", r'"max_steps": 7')
    assert "⚠" not in page.inner_text("#train-command")
    cfg = page.inner_text("#train-config")
    assert '"eval_steps": null' in cfg and '"save_steps": null' in cfg, cfg
    # 0 typed in on purpose also means "each epoch"
    _number(page, "train-hp-eval-steps", 0)
    _number(page, "train-hp-max-steps", 8)
    _wait_text(page, "#train-config", r'"max_steps": 8')
    assert "⚠" not in page.inner_text("#train-command")
    # a number of steps is still taken as given
    _number(page, "train-hp-eval-steps", 5)
    _wait_text(page, "#train-config", r'"eval_steps": 5')


# ------------------------------------------------------------------------------------------------ item 2
def _error_badge(page, sel: str) -> bool:
    """Whether Gradio's status tracker of component ``sel`` shows its "Error" badge."""
    return page.evaluate("s => [...document.querySelectorAll(s + ' [data-testid=status-tracker]')]"
                         ".some(e => /\\bError\\b/.test(e.innerText))", sel)


def test_a_failed_check_leaves_the_registry_table_and_says_why_beside_the_button(server, page):
    """"Check it works" with nothing selected, then on an endpoint nobody serves: each failure is said in the
    status line under the buttons, the registry table keeps its rows (no "Error" badge over it), no toast."""
    from browser_util import free_port
    from studio.registry import DEFAULT_MODEL_NAME

    url, studio = server
    if "dead-endpoint" not in studio.registry.names():
        studio.registry.add_endpoint("dead-endpoint", f"http://127.0.0.1:{free_port()}/v1", "m", None)
    page.goto(url)
    page.get_by_role("tab", name="Models").click()
    _wait_text(page, "#models-table", "dead-endpoint")
    page.click("#models-ping")
    _wait_text(page, "#models-out", "select a model in the table first")
    assert not _error_badge(page, "#models-table")
    assert DEFAULT_MODEL_NAME in page.inner_text("#models-table")
    assert page.locator('[data-testid="toast-body"]').count() == 0

    page.get_by_role("gridcell", name="dead-endpoint", exact=True).click()
    page.wait_for_function("document.querySelector('#models-selected textarea, #models-selected input')"
                           "?.value === 'dead-endpoint'")
    page.click("#models-ping")
    _wait_text(page, "#models-out", r"Checking dead.endpoint failed: \S")
    assert not _error_badge(page, "#models-table") and not _error_badge(page, "#models-out")
    assert "dead-endpoint" in page.inner_text("#models-table")
    assert DEFAULT_MODEL_NAME in page.inner_text("#models-table")
    assert page.locator('[data-testid="toast-body"]').count() == 0


def test_error_toasts_fade_on_their_own(server, page):
    """A user error still raised as a toast (Undo with no bulk action of this page) says why, and goes away by
    itself: it does not follow the user to the other tabs."""
    url, _ = server
    page.goto(url)
    page.wait_for_selector("#data-table")
    page.click("#bulk-acc")
    page.click("#bulk-undo")
    _wait_text(page, '[data-testid="toast-body"]', "no bulk action of this page to undo")
    page.wait_for_selector('[data-testid="toast-body"]', state="detached", timeout=20_000)


# ------------------------------------------------------------------------------------------------ item 3
def _conversation(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Question number {i}: what is {i} plus {i}?"},
            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]


def test_bulk_delete_counts_and_asks_first(server, page):
    """An empty store says "import a file"; Delete on the open filter first says how many conversations it would
    delete and changes nothing until Confirm; afterwards the empty table says no conversation matches the filter
    (the deleted ones are still held), not "import a file"."""
    url, studio = server
    assert studio.store.count_conversations() == 0  # the module's studio starts empty; this test fills it
    page.goto(url)
    _wait_text(page, "#data-table", "No conversations yet: import a file above")
    ids = [studio.store.add_conversation(_conversation(i), origin="imported") for i in range(5)]
    page.click("#data-refresh")
    _wait_text(page, "#data-count", r"\b5 conversations")
    page.get_by_text("Bulk actions (with undo)").click()
    page.click("#bulk-action input")
    page.get_by_role("option", name="Delete", exact=True).click()
    page.click("#bulk-apply")
    shown = _wait_text(page, "#bulk-result", "This will delete")
    assert "This will delete 5 conversations" in shown
    assert studio.store.count_conversations() == 5
    page.wait_for_selector("#bulk-confirm", state="visible")

    # Cancel leaves everything; the next Apply asks again
    page.click("#bulk-cancel")
    _wait_text(page, "#bulk-result", "Cancelled: nothing was changed")
    page.wait_for_selector("#bulk-confirm", state="hidden")
    assert studio.store.count_conversations() == 5
    page.click("#bulk-apply")
    _wait_text(page, "#bulk-result", "This will delete 5 conversations")
    page.click("#bulk-confirm")
    _wait_text(page, "#bulk-result", "Delete: 5 of 5 conversations changed")
    assert studio.store.count_conversations() == 0
    table = _wait_text(page, "#data-table", "No conversation matches the filter")
    assert "import a file" not in table
    page.wait_for_selector("#bulk-confirm", state="hidden")
    assert studio.store.restore_conversations(ids) == 5


# ------------------------------------------------------------------------------------------------ item 4
def _open_conversation(page, text: str) -> None:
    """Click the table row showing ``text`` (the table in "Open it" mode) and wait for the editor."""
    _wait_text(page, "#data-table", text)
    page.locator("#data-table").get_by_role("gridcell").filter(has_text=text).first.click()
    _wait_text(page, "#data-conv-header", "Conversation")


def test_history_defaults_compare_the_original_with_the_edit(server, page):
    """After one edit, History's defaults are A = the original, B = the newest: the edit shows as added (green),
    the original text as removed, and "Restore version A" with the defaults brings the original back."""
    url, studio = server
    original = [{"role": "user", "content": "History probe: name a colour."},
                {"role": "assistant", "content": "Blue."}]
    cid = studio.store.add_conversation(original, origin="imported")
    edited = [original[0], {"role": "assistant", "content": "Vermilion, a bright red."}]
    assert studio.store.save_messages(cid, edited, expected_version=1) == 2
    page.goto(url)
    _open_conversation(page, "History probe")
    page.get_by_text("History (every saved version)").click()
    page.wait_for_function("document.querySelector('#data-rev-a input')?.value === '1' && "
                           "document.querySelector('#data-rev-b input')?.value === '2'")
    page.click("#data-diff")
    page.wait_for_selector("#data-diff-view .wv-diff")
    added = page.locator("#data-diff-view .wv-diff-add").all_inner_texts()
    removed = page.locator("#data-diff-view .wv-diff-del").all_inner_texts()
    assert any("Vermilion" in t for t in added), added
    assert any("Blue." in t for t in removed) and not any("Vermilion" in t for t in removed), removed

    page.click("#data-rev-restore")
    _wait_text(page, "#data-edit-result", "Version 1 restored as version 3")
    assert studio.store.get_conversation(cid)["messages"][1]["content"] == "Blue."


# ------------------------------------------------------------------------------------------------ item 5
def _x_labels(page, plot: str) -> list[str]:
    """The x-axis labels of a bar plot (Vega's SVG), left to right."""
    return _svg_texts(page, f'#{plot} g[aria-label^="X-axis"] .role-axis-label text')


def _svg_texts(page, sel: str) -> list[str]:
    """The text of each SVG element ``sel`` (SVG elements have no innerText)."""
    return page.eval_on_selector_all(sel, "es => es.map(e => e.textContent)")


def test_statistics_order_buckets_show_edit_bars_and_follow_a_bulk_delete(server, page):
    """Token buckets read 16, 32, ..., 512 (numeric order, not text order), "Edits per day" shows a day and a
    bar of non-zero height from 0, and a bulk delete redraws the figures without pressing Compute again."""
    url, studio = server
    words = {16: 20, 32: 40, 64: 70, 128: 130, 256: 300, 512: 600}
    ids = [studio.store.add_conversation(_conversation(100 + k), origin="imported") for k in range(len(words))]
    studio.store.save_messages(ids[0], _conversation(999), expected_version=1)  # one edit today
    studio.store.set_token_counts(dict(zip(ids, words.values())))  # after the edit, which clears its count
    total = studio.store.count_conversations()
    page.goto(url)
    page.wait_for_selector("#data-table")
    page.get_by_text("Statistics", exact=True).click()
    page.click("#stats-run")
    _wait_text(page, "#stats-totals", rf"\b{total} conversations")
    page.wait_for_function("document.querySelectorAll('#stats-tokens g[aria-label^=\"X-axis\"] "
                           ".role-axis-label text').length >= 6")
    labels = _x_labels(page, "stats-tokens")
    assert [int(t) for t in labels] == sorted(int(t) for t in labels) and {"16", "512"} <= set(labels), labels

    page.wait_for_selector("#stats-edits g.mark-rect path")
    day = _x_labels(page, "stats-edits")
    assert day and all(len(d) == 10 and d[4] == "-" for d in day), day   # YYYY-MM-DD
    heights = [b["height"] for b in (p.bounding_box() for p in page.locator("#stats-edits g.mark-rect path").all())
               if b]
    assert heights and max(heights) > 5, heights
    y = _svg_texts(page, '#stats-edits g[aria-label^="Y-axis"] .role-axis-label text')
    assert "0" in y or "0.0" in y, y

    # a bulk delete of two of them (selected ids, confirmed): the totals and figures follow
    page.locator("#data-selection textarea, #data-selection input").first.fill(f"{ids[0]}, {ids[1]}")
    page.get_by_text("Bulk actions (with undo)").click()
    page.locator("#bulk-scope").get_by_text("Selected ids").click()
    page.click("#bulk-action input")
    page.get_by_role("option", name="Delete", exact=True).click()
    page.click("#bulk-apply")
    _wait_text(page, "#bulk-result", "This will delete 2 conversations")
    page.click("#bulk-confirm")
    _wait_text(page, "#bulk-result", "Delete: 2 of 2 conversations changed")
    _wait_text(page, "#stats-totals", rf"\b{total - 2} conversations")
    try:
        page.wait_for_function("![...document.querySelectorAll('#stats-tokens g[aria-label^=\"X-axis\"] "
                               ".role-axis-label text')].some(e => e.textContent === '16')", timeout=30_000)
    except Exception:
        raise AssertionError(f"the token figure still shows {_x_labels(page, 'stats-tokens')}") from None
    studio.store.restore_conversations(ids[:2])


# ------------------------------------------------------------------------------------------------ item 6
def _tag_options(page, elem_id: str) -> list[str]:
    """The options the tags drop-down ``elem_id`` offers now (opened, read, closed)."""
    page.locator(f"#{elem_id} input").click()
    page.wait_for_selector("[role=option]")
    names = [t.replace("✓", "").strip() for t in page.get_by_role("option").all_inner_texts()]
    page.keyboard.press("Escape")
    return names


def test_the_tags_filter_offers_new_tags_after_a_bulk_tag_and_on_refresh(server, page):
    """A bulk tag on the page makes its tag a choice of the Tags filter at once (no reload); a tag added elsewhere
    (the command line, another page) becomes one on Refresh; the Train tab offers both."""
    url, studio = server
    for i in range(2):
        studio.store.add_conversation(_conversation(700 + i), origin="imported")
    page.goto(url)
    _wait_text(page, "#data-count", r"\d+ conversations")
    page.get_by_text("Bulk actions (with undo)").click()
    page.locator("#bulk-arg textarea, #bulk-arg input").first.fill("page13-fresh")
    page.click("#bulk-apply")
    _wait_text(page, "#bulk-result", r"Tag: \d+ of \d+ conversations changed")
    # the choices come with the table's reload that follows the tag: the open list shows the new one
    page.locator("#data-tags input").click()
    page.get_by_role("option", name="page13-fresh").wait_for()
    page.keyboard.press("Escape")

    # a tag (and a conversation) added elsewhere: Refresh brings both, in one reply
    n = studio.store.count_conversations()
    cid = studio.store.add_conversation(_conversation(777), origin="imported")
    studio.store.bulk("tag", [cid], "page13-elsewhere")
    page.click("#data-refresh")
    _wait_text(page, "#data-count", rf"\b{n + 1} conversations")
    assert "page13-elsewhere" in _tag_options(page, "data-tags")
    page.get_by_role("tab", name="Train").click()
    page.wait_for_selector("#train-start")
    page.locator("#train-tags input").click()
    page.get_by_role("option", name="page13-elsewhere").wait_for()
    assert page.get_by_role("option", name="page13-fresh").count() == 1
