"""Fine-tuning in the real page, timed: import 50 conversations, a LoRA run of one epoch on them with the
default model from the Train tab, then a full fine-tune of a few steps; each checkpoint answers in the Chat
tab. Prints the losses (first and last logged) and wall times.

Usage: python scripts/train_walkthrough.py URL DATA_DIR   (the studio at URL must use DATA_DIR)
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "alpaca_en_demo.json"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def fifty_conversations() -> Path:
    rows = json.loads(ALPACA.read_text(encoding="utf-8"))[:50]
    out = [{"id": f"alpaca_{i}", "conversations": [
        {"from": "human", "value": (r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")).strip()},
        {"from": "gpt", "value": r["output"]}]} for i, r in enumerate(rows)]
    path = Path(tempfile.mkdtemp()) / "fifty_alpaca_chats.json"
    path.write_text(json.dumps(out), encoding="utf-8")
    return path


def main(url: str, data_dir: str) -> None:
    times = []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector("#data-table")
        page.locator("#data-upload input[type=file]").set_input_files(str(fifty_conversations()))
        page.wait_for_timeout(300)
        page.click("#data-import")
        page.wait_for_function("/(50 conversations|already imported)/.test("
                               "document.querySelector('#data-import-result').innerText)")

        def pick(elem_id, option):
            page.click(f"#{elem_id} input")
            page.get_by_role("option", name=option).first.click()

        def number(elem_id, value):
            box = page.locator(f"#{elem_id} input[type=number]")
            box.fill(str(value))
            box.press("Tab")

        def run(name, method, settings, question):
            page.get_by_role("tab", name="Train").click()
            page.wait_for_selector("#train-start")
            pick("train-source", "fifty_alpaca_chats.json")
            page.wait_for_function("document.querySelector('#train-count').innerText.includes('50')")
            page.locator("#train-method").get_by_label(method, exact=True).check()
            for eid, v in settings.items():
                number(eid, v)
            page.fill("#train-name textarea, #train-name input", name)
            page.wait_for_timeout(500)
            t = time.perf_counter()
            page.click("#train-start")
            page.wait_for_function("n => document.querySelector('#train-details').innerText.includes(n) && "
                                   "document.querySelector('#train-progress').innerText.includes('finished')",
                                   arg=name, timeout=3_600_000)
            dt = time.perf_counter() - t
            run_id = re.search(r"(\d{8}-\d{6}-[\w-]+)", page.inner_text("#train-details")).group(1)
            page.wait_for_timeout(1000)
            events = [json.loads(x) for x in (Path(data_dir) / "runs" / run_id / "events.jsonl").read_text()
                      .splitlines() if x.strip()]
            losses = [e["loss"] for e in events if e["type"] == "progress" and e.get("loss") is not None]
            end = next(e for e in events if e["type"] == "end")
            first_eval = next((e["eval_loss"] for e in events if e["type"] == "eval"), None)
            print(f"{name}: {len(losses)} logged steps, loss {losses[0]:.3f} -> {losses[-1]:.3f} (mean of the first "
                  f"half {sum(losses[:len(losses) // 2]) / max(1, len(losses) // 2):.3f}, second half "
                  f"{sum(losses[len(losses) // 2:]) / max(1, len(losses) - len(losses) // 2):.3f}), eval loss "
                  f"{first_eval} -> {end.get('final_eval_loss')}, {dt:.0f} s", flush=True)
            times.append((f"{name}: train ({len(losses)} steps, loss {losses[0]:.2f} -> {losses[-1]:.2f})", dt))
            page.screenshot(path=f"/tmp/train-{name}.png", full_page=True)
            page.get_by_role("tab", name="Chat").click()
            page.wait_for_timeout(800)
            pick("chat-model", name)
            number("chat-max-new", 48)
            t = time.perf_counter()
            page.fill("#chat-input textarea", question)
            page.press("#chat-input textarea", "Enter")
            page.wait_for_function("document.querySelectorAll('#chat-bot .message-row, "
                                   "#chat-bot [data-testid=bot]').length >= 2", timeout=300_000)
            page.wait_for_timeout(4000)
            print(f"{name} answers in the Chat tab: {page.inner_text('#chat-bot')[-300:]!r}", flush=True)
            times.append((f"{name}: first answer in the Chat tab", time.perf_counter() - t))
            page.click("#chat-clear")

        first_q = json.loads(ALPACA.read_text(encoding="utf-8"))[0]["instruction"]
        page.get_by_role("tab", name="Train").click()
        page.get_by_text("Hyperparameters: Batch, length and memory").click()
        # on a CPU: batches of 8 (not the recipe's 128, which would make one step of 50 conversations) and
        # LoRA's usual learning rate
        run("smol-lora-50", "LoRA", {"train-hp-num-train-epochs": 1, "train-hp-learning-rate": 0.0002,
                                     "train-hp-max-steps": -1, "train-hp-global-batch-size": 8,
                                     "train-hp-max-length": 512}, first_q)
        run("smol-full-8", "Full fine-tune", {"train-hp-max-steps": 8, "train-hp-learning-rate": 0.00002,
                                              "train-hp-global-batch-size": 4, "train-hp-max-length": 512},
            first_q)
        browser.close()
    print("\n| step | wall time |\n|---|---|")
    for name, secs in times:
        print(f"| {name} | {secs:.0f} s |")


if __name__ == "__main__":
    main(*sys.argv[1:])
