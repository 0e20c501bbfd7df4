"""The Chat tab in headless Chromium, as a person uses it: each answer says which model wrote it, Retry keeps the
answer it replaces (folded under the new one), a failing model leaves the conversation on screen with the failure
said under it, and 👍/👎 store a rating with the model's name and the note."""

from __future__ import annotations

import time

import pytest

from studio.registry import DEFAULT_MODEL_NAME

from browser_util import chromium, free_port, new_page, serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def server(settings):
    from studio.server import create_server

    app, studio = create_server(settings)
    # an endpoint nobody listens on: every request is refused at once
    studio.registry.add_endpoint("dead-endpoint", f"http://127.0.0.1:{free_port()}/v1", "nothing")
    with serve(app) as url:
        yield url, studio
    studio.close()


ROWS = "document.querySelectorAll('#chat-bot .message-row').length"


def _answered(page, studio, before: int, rows: int) -> None:
    """A new local reply was generated (server counters) and the chat shows ``rows`` messages, none pending."""
    deadline = time.monotonic() + 120
    while studio.registry.streams_started <= before or studio.registry.streaming():
        assert time.monotonic() < deadline, "no reply was generated within 120 s"
        time.sleep(0.05)
    page.wait_for_function(f"!document.querySelector('#chat-bot .pending') && {ROWS} == {rows} && "
                           f"document.querySelectorAll('#chat-bot .wv-by').length >= 1")


def test_chat_labels_answers_keeps_retried_ones_survives_a_failure_and_rates(server):
    url, studio = server
    with chromium() as browser:
        page = new_page(browser)
        page.goto(url)
        page.get_by_role("tab", name="Chat").click()
        page.wait_for_function("(document.querySelector('#chat-info')?.innerText || '').includes('template')")
        box = page.locator("#chat-max-new input[type=number]")
        box.fill("16")
        box.press("Tab")

        n = studio.registry.streams_started
        page.fill("#chat-input textarea", "Name a colour.")
        page.press("#chat-input textarea", "Enter")
        _answered(page, studio, n, 2)
        assert page.locator("#chat-bot .wv-by").first.inner_text() == DEFAULT_MODEL_NAME
        first = page.locator("#chat-bot .message-row").nth(1).inner_text()

        n = studio.registry.streams_started
        page.click("#chat-retry")
        _answered(page, studio, n, 2)
        page.wait_for_selector("#chat-bot details.wv-earlier")
        assert "1 earlier answer" in page.inner_text("#chat-bot details.wv-earlier summary")
        page.click("#chat-bot details.wv-earlier summary")  # unfold: the replaced answer is still there
        assert first.replace(DEFAULT_MODEL_NAME, "").strip()[:20] in page.inner_text("#chat-bot details.wv-earlier")

        # rate the answer: 👎 with a note
        page.fill("#chat-note textarea", "too short")
        page.locator("#chat-bot button[aria-label='Dislike']").first.click()
        page.wait_for_function("(document.querySelector('#chat-rated')?.innerText || '').includes('saved')")
        r = studio.store.ratings(DEFAULT_MODEL_NAME)[-1]
        assert (r["rating"], r["note"]) == (-1, "too short")
        assert r["conversation"][0]["content"] == "Name a colour." and r["voter"].startswith("browser:")

        # a model that fails: the conversation stays, the failure is said under it
        page.click("#chat-model input")
        page.get_by_role("option", name="dead-endpoint", exact=True).click()
        page.fill("#chat-input textarea", "Are you there?")
        page.press("#chat-input textarea", "Enter")
        page.wait_for_selector("#chat-bot .wv-error")
        text = page.inner_text("#chat-bot")
        assert "Name a colour." in text and "Are you there?" in text and "dead-endpoint" in text
        assert page.evaluate(ROWS) == 4
