"""What the browser tests share: the studio served by uvicorn on a free loopback port, and Debian's Chromium
driven by Playwright (``/usr/bin/chromium``; Playwright's own browser download does not work offline)."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(app, start_timeout: float = 60.0):
    """Run an ASGI app with uvicorn on a free loopback port in a thread; yields its URL."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.time() + start_timeout
    while not srv.started and t.is_alive() and time.time() < deadline:  # a server that failed ends its thread
        time.sleep(0.1)
    assert srv.started, "server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        t.join(timeout=10)


@contextmanager
def chromium():
    """A headless Chromium browser (fails the test with the install hint when Chromium is missing)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser, timeout_ms: int = 30_000):
    """A 1400x1000 page with a default timeout."""
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(timeout_ms)
    return pg


def wait_text(page, sel: str, pattern: str, timeout: float = 60_000) -> str:
    """Wait until the element ``sel`` shows text matching the regular expression ``pattern``; returns its text."""
    page.wait_for_function("([s, p]) => new RegExp(p).test(document.querySelector(s)?.innerText || '')",
                           arg=[sel, pattern], timeout=timeout)
    return page.inner_text(sel)


def wait_uploaded(page, sel: str, filename: str, timeout: float = 60_000) -> None:
    """Wait until the ``gr.File`` component ``sel`` holds the uploaded ``filename``: its "Uploading…" line gone and
    the file listed with its size (the list shows the name's stem and extension on separate lines)."""
    stem = filename.rsplit(".", 1)[0]
    page.wait_for_function("([s, stem]) => { const t = document.querySelector(s)?.innerText || ''; "
                           "return !t.includes('Uploading') && t.includes(stem) && /[0-9.]+\\s*[KMG]?B/.test(t); }",
                           arg=[sel, stem], timeout=timeout)
