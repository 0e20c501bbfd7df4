"""The main job in the real page, timed: import the WizardLM test set, expand 5 instructions into 3-round
conversations with the default model (the Expand tab's defaults), open and edit one, export ShareGPT.
Takes a screenshot of every tab on the way (the README's tour).

Usage: python scripts/walkthrough.py [URL] [OUT_DIR]   (defaults: http://127.0.0.1:7860, assets/)
The studio must be running (``make run``) on a data folder without the test set imported.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
TESTSET = ROOT.parent / "shared" / "data" / "wizardlm_testset.jsonl"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def main(url: str = "http://127.0.0.1:7860", out: str = "assets") -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    times: list[tuple[str, float]] = []

    def step(name, t0):
        times.append((name, time.perf_counter() - t0))
        print(f"{name}: {times[-1][1]:.1f} s", flush=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        t = time.perf_counter()
        page.goto(url)
        page.wait_for_selector("#data-table")
        step("page loaded", t)

        t = time.perf_counter()
        page.locator("#data-upload input[type=file]").set_input_files(str(TESTSET))
        page.wait_for_timeout(300)
        page.click("#data-import")
        page.wait_for_function("document.querySelector('#data-import-result').innerText.includes('218 seeds')")
        step("import wizardlm_testset.jsonl (218 seeds)", t)

        page.get_by_role("tab", name="Expand").click()
        page.wait_for_function("document.querySelector('#expand-seeds-info').innerText.includes('218 seeds')")
        t = time.perf_counter()
        page.click("#expand-start")
        page.wait_for_function("document.querySelector('#expand-progress').innerText.includes('done: 5/5')",
                               timeout=3_600_000)
        step("expand 5 seeds x 3 rounds (default model, Expand tab defaults)", t)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out_dir / "tab-expand.png"), full_page=True)

        page.get_by_role("tab", name="Data").click()
        page.wait_for_function("document.querySelector('#data-count').innerText.includes('5')")
        t = time.perf_counter()
        page.locator('#data-table [data-testid="cell-0-0"]').click()
        page.wait_for_selector("#data-editor", state="visible")
        cell = page.locator('#data-edit-table [data-testid="cell-1-1"]')
        cell.dblclick()
        editor = page.locator("#data-edit-table textarea, #data-edit-table input[type=text]").first
        editor.fill("An answer corrected by hand in the walkthrough.")
        editor.press("Enter")
        page.wait_for_timeout(300)
        page.click("#data-save")
        page.wait_for_function("document.querySelector('#data-edit-result').innerText.includes('version 2')")
        step("open one conversation, edit a message, save (version 2)", t)
        page.screenshot(path=str(out_dir / "tab-data.png"), full_page=True)

        t = time.perf_counter()
        page.get_by_text("Export", exact=True).first.click()
        page.click("#data-export")
        page.wait_for_function("document.querySelector('#data-export-result').innerText.includes('Exported')")
        step("export ShareGPT JSON", t)
        print(page.inner_text("#data-export-result"))

        for tab in ("Train", "Chat", "Models"):
            page.get_by_role("tab", name=tab).click()
            page.wait_for_timeout(1500)
            if tab == "Chat":
                page.fill("#chat-input textarea", "Give me three tips for writing clear instructions.")
                page.press("#chat-input textarea", "Enter")
                page.wait_for_timeout(8000)
            page.screenshot(path=str(out_dir / f"tab-{tab.lower()}.png"), full_page=True)
        browser.close()
    print("\n| step | wall time |\n|---|---|")
    for name, secs in times:
        print(f"| {name} | {secs:.1f} s |")


if __name__ == "__main__":
    main(*sys.argv[1:])
