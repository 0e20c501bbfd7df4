"""Take a screenshot of each tab of a running studio (for the README tour).

Usage: python scripts/screenshots.py [URL] [OUT_DIR]   (defaults: http://127.0.0.1:7860, assets/)
Uses Debian's Chromium through Playwright (``/usr/bin/chromium``).
"""

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def main(url: str = "http://127.0.0.1:7860", out: str = "assets") -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_selector("#data-table", timeout=60_000)
        page.wait_for_timeout(1500)
        for tab in ("Data", "Expand", "Train", "Chat", "Arena", "Judge", "Models"):
            page.get_by_role("tab", name=tab).click()
            page.wait_for_timeout(1500)
            path = out_dir / f"tab-{tab.lower()}.png"
            page.screenshot(path=str(path), full_page=True)
            print(path)
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
