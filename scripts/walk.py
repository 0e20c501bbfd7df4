"""Walk the studio's six user flows in the real page, timed, and retake the README's screenshots.

The studio is started in this process on a fresh data folder (``studio.server.create_server``, served by uvicorn on
a free loopback port) and driven in headless Chromium (Debian's ``/usr/bin/chromium`` through Playwright) the way a
person uses it: clicks, typing and uploads only. The script waits on what the page shows (a result line, a progress
line, an enabled button), never on the studio's internals.

The flows (issue 13's closing note):

1. import and edit: the Alpaca demo file (``../shared/data/alpaca_en_demo.json``) in the Data tab; open a
   conversation, edit its answer, save (version 2), read the history and the difference.
2. quality filters: "Refusals and 'as an AI' boilerplate": find, read a found conversation, flag the found ones,
   undo the flag.
3. evolve and expand with a stop: expand 3 seeds with the default model as teacher (2 rounds, short answers, one
   seed at a time), Stop after the first, Resume until done; evolve one seed (Evol-Instruct).
4. a short LoRA run into Chat: the Train tab, LoRA over the default model, 3 steps of 2 sequences of at most 256
   tokens; the new checkpoint answers in the Chat tab (16 new tokens).
5. an endpoint check: the Models tab; an entry on a port nobody serves is checked (the error says why) and removed;
   an entry on this studio's own OpenAI-compatible ``/v1`` is checked and answers.
6. statistics and export: the Data tab's statistics for the current filter, and a ShareGPT export, downloaded
   from the page and counted.

Then two named Arena votes (the LoRA against the default model, 16 new tokens), the
leaderboard, a Judge run in the WizardVicunaLM table mode (2 MT-bench questions, answers of 16 tokens, judgments of
24), a preference set built from the votes; and a full-page screenshot of every tab into ``--out``
(``tab-data.png``, ``tab-expand.png``, ``tab-train.png``, ``tab-chat.png``, ``tab-arena.png``,
``tab-arena-leaderboard.png``, ``tab-judge.png``, ``tab-preferences.png``, ``tab-models.png``), each taken when
its flow ends; the Data tab's last, reloaded, with the edited conversation open.

It prints a progress line per step and, at the end, a Markdown table ``| flow | steps | seconds | what the page
showed |``; the same timings are written to ``<out>/walk-timings.json``. On a failure it says which flow and step
failed and what the page showed there, saves ``<out>/walk-failure.png`` and exits with status 1.

Usage (from the repository root; about 13 minutes on a 2-core CPU)::

    .venv/bin/python scripts/walk.py --out assets [--data-dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("STUDIO_MODEL_DIR", str(ROOT / ".cache" / "models"))  # the converted default model, shared
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
# the tests' loopback server and Chromium settings, one copy for both
from browser_util import CHROMIUM, CHROMIUM_ARGS, serve  # noqa: E402
VIEWPORT = {"width": 1400, "height": 1000}
SHARED = Path(os.environ.get("STUDIO_SHARED_DATA") or ROOT.parent / "shared" / "data")
ALPACA = SHARED / "alpaca_en_demo.json"
LORA = "walk-lora"
EDITED = "An answer edited in the browser by the walk: crêpes need flour, eggs, milk and a hot pan."
SHOTS = ("tab-data.png", "tab-expand.png", "tab-train.png", "tab-chat.png", "tab-arena.png",
         "tab-arena-leaderboard.png", "tab-judge.png", "tab-preferences.png", "tab-models.png")


OVERLAY = re.compile(r"^\s*(processing\s*\|?\s*)?(\d+(\.\d+)?/)?\d+(\.\d+)?s\s*")
"""Gradio's timing overlay ("processing | 0.3/0.2s", "0.1s") at the start of an element's text while it updates."""


class WalkError(Exception):
    """A step did not reach what the page should show."""


def short(text: str, n: int = 110) -> str:
    """``text`` on one line, at most ``n`` characters, without Markdown table pipes."""
    one = " ".join(str(text or "").split()).replace("|", "/")
    return one if len(one) <= n else one[:n - 1] + "…"


class Walk:
    """The page, the current flow and step, the timings, and the waits on what the page shows."""

    def __init__(self, page, out: Path):
        self.page, self.out = page, out
        self.rows: list[dict] = []
        self.flow_name, self.step_name, self.steps, self.watch = "start", "open the page", 0, ()

    # ------------------------------------------------------------------------------------- flows and steps
    @contextmanager
    def flow(self, name: str):
        """Time flow ``name``; the block sets ``self.shown`` to what the page showed at its end."""
        self.flow_name, self.steps, self.shown = name, 0, ""
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        yield
        secs = time.perf_counter() - t0
        self.rows.append({"flow": name, "steps": self.steps, "seconds": round(secs, 1), "shown": self.shown})
        print(f"   {name}: {self.steps} steps, {secs:.1f} s", flush=True)

    def step(self, name: str, *watch: str) -> None:
        """Start step ``name``; ``watch``: the elements whose text a failure report shows."""
        self.step_name, self.watch = name, watch
        self.steps += 1
        print(f"   [{self.flow_name}] {self.steps}. {name}", flush=True)

    def report(self) -> str:
        """What the page shows now in the step's watched elements and toasts (for a failure message)."""
        parts = []
        for sel in self.watch:
            try:
                loc = self.page.locator(sel).first
                parts.append(f"{sel}: {short(loc.inner_text(timeout=2000), 400)!r}")
            except Exception as e:  # noqa: BLE001 - a report must not fail
                parts.append(f"{sel}: (not readable: {type(e).__name__})")
        try:
            toasts = self.page.locator('[data-testid="toast-body"]').all_inner_texts()
            if toasts:
                parts.append(f"toasts: {[short(t, 300) for t in toasts]}")
        except Exception:  # noqa: BLE001
            pass
        return "\n".join(parts) or "(no element watched)"

    # ------------------------------------------------------------------------------------- waits and inputs
    def wait_js(self, js: str, arg=None, timeout: float = 60, what: str = "") -> None:
        """Wait until the page function ``js`` holds, at most ``timeout`` seconds."""
        from playwright.sync_api import TimeoutError as PwTimeout

        try:
            self.page.wait_for_function(js, arg=arg, timeout=timeout * 1000)
        except PwTimeout:
            raise WalkError(f"timed out after {timeout:g} s waiting for {what or js}") from None

    def wait_text(self, sel: str, pattern: str, timeout: float = 60) -> str:
        """Wait until element ``sel`` shows text matching the regular expression ``pattern``; returns its text
        (a progress bar's line alone, without Gradio's "processing | 0.1s" overlay)."""
        self.wait_js("([s, p]) => new RegExp(p).test(document.querySelector(s)?.innerText || '')", [sel, pattern],
                     timeout, f"{pattern!r} in {sel}")
        return self.text(sel)

    def text(self, sel: str) -> str:
        """What element ``sel`` says: a progress bar's line (``.wv-line``), else its text without the timing
        overlay Gradio puts in an element while an event runs."""
        line = self.page.locator(f"{sel} .wv-line")
        if line.count():
            return line.first.inner_text()
        return OVERLAY.sub("", self.page.inner_text(sel))

    def tab(self, name: str) -> None:
        """Open the top-level (or nested) tab called ``name``."""
        self.page.get_by_role("tab", name=name, exact=True).click()

    def open_acc(self, elem_id: str) -> None:
        """Open accordion ``elem_id`` (a click on its header) unless it is open."""
        header = self.page.locator(f"#{elem_id} button.label-wrap").first
        if "open" not in (header.get_attribute("class") or "").split():
            header.click()

    def pick(self, elem_id: str, option: str) -> None:
        """Choose ``option`` in the Gradio dropdown ``elem_id``."""
        self.page.click(f"#{elem_id} input")
        self.page.get_by_role("option", name=option, exact=True).click()

    def number(self, elem_id: str, value, enter: bool = False) -> None:
        """Type ``value`` into the number box of ``elem_id`` (a Number or a Slider's box), then Tab or Enter."""
        box = self.page.locator(f"#{elem_id} input[type=number]")
        box.fill(str(value))
        box.press("Enter" if enter else "Tab")

    def slider(self, elem_id: str, value) -> None:
        """Set slider ``elem_id`` to ``value`` in its number box and check the slider took it (a value off its
        steps or range is refused and the old value stays)."""
        self.number(elem_id, value, enter=True)
        self.wait_js("([s, n]) => document.querySelector(s)?.value == String(n)",
                     [f"#{elem_id} input[type=range]", value], 10, f"slider {elem_id} at {value}")

    def fill(self, elem_id: str, text: str) -> None:
        """Type ``text`` into the textbox ``elem_id``."""
        self.page.locator(f"#{elem_id} textarea, #{elem_id} input").first.fill(text)

    def shot(self, name: str) -> None:
        """A full-page screenshot ``<out>/<name>`` from the top of the page, after a short settle."""
        self.page.locator("#wv-header").scroll_into_view_if_needed()
        self.page.wait_for_timeout(800)  # plots and fonts settle
        path = self.out / name
        self.page.screenshot(path=str(path), full_page=True)
        print(f"   screenshot {path}", flush=True)


# ----------------------------------------------------------------------------------------------------- flows
def flow_import_and_edit(w: Walk, url: str) -> None:
    page = w.page
    with w.flow("1. import and edit"):
        w.step("open the page", "body")
        page.goto(url)
        page.wait_for_selector("#data-table")
        w.step(f"upload {ALPACA.name} and import it", "#data-upload", "#data-import-result")
        page.locator("#data-upload input[type=file]").set_input_files(str(ALPACA))
        w.wait_text("#data-upload", re.escape(ALPACA.name), 30)
        page.click("#data-import")
        result = w.wait_text("#data-import-result", r"^(?!processing|[0-9.]+s)[\s\S]*conversations imported", 120)
        counted = w.wait_text("#data-count", r"\d+ conversations · page 1")
        w.step("open the first conversation", "#data-conv-header")
        page.locator('#data-table [data-testid="cell-0-0"]').click()
        page.wait_for_selector("#data-editor", state="visible")
        header = w.wait_text("#data-conv-header", r"Conversation 1 .*version 1")
        w.step("edit its answer (row 2) in the table editor", "#data-edit-table")
        page.locator('#data-edit-table [data-testid="cell-1-1"]').dblclick()
        editor = page.locator("#data-edit-table textarea, #data-edit-table input[type=text]").first
        editor.fill(EDITED)
        editor.press("Enter")
        w.wait_text("#data-edit-table", re.escape(EDITED[:40]), 10)
        w.step("save", "#data-edit-result")
        page.click("#data-save")
        saved = w.wait_text("#data-edit-result", r"Saved as version 2")
        w.wait_text("#data-conv-header", r"edited · version 2")
        w.step("read the history and the difference", "#data-revisions", "#data-diff-view")
        w.open_acc("data-history")
        w.wait_js("document.querySelectorAll('#data-revisions [data-testid^=\"cell-\"][data-testid$=\"-0\"]')"
                  ".length >= 2", what="two versions in the history")
        page.click("#data-diff")
        page.wait_for_selector("#data-diff-view .wv-diff-add")
        added = page.locator("#data-diff-view .wv-diff-add").first.inner_text()
        w.shown = (f"{short(result, 90)} / {short(counted, 40)} / {short(header, 60)} → {saved.strip()}; "
                   f"history: 2 versions, diff {short(added, 50)}")


def flow_quality(w: Walk) -> None:
    page = w.page
    with w.flow("2. quality filters"):
        w.step("open Quality filters, choose the refusals filter", "#quality-explain")
        w.open_acc("quality-acc")
        w.pick("quality-filter", "Refusals and 'as an AI' boilerplate")
        w.wait_text("#quality-explain", r"Refusals and 'as an AI' boilerplate\.")
        w.step("find", "#quality-result")
        page.click("#quality-find")
        found = w.wait_text("#quality-result", r"\d+ of \d+ conversations found")
        w.step("read the first found conversation", "#quality-table", "#quality-view")
        page.locator('#quality-table [data-testid="cell-0-1"]').click()
        page.wait_for_selector("#quality-view mark")
        mark = page.locator("#quality-view mark").first.inner_text()
        head = page.locator("#quality-view .wv-found-head").inner_text()
        w.step("flag the found ones", "#quality-result")
        page.click("#quality-apply")
        flagged = w.wait_text("#quality-result", r"\d+ conversations flagged")
        w.step("undo the flag (Bulk actions)", "#bulk-result")
        w.open_acc("bulk-acc")
        page.click("#bulk-undo")
        undone = w.wait_text("#bulk-result", r"undone: \d+ conversations")
        w.shown = (f"{short(found, 70)}; read {short(head, 60)} (marked “{mark}”); {short(flagged, 60)}; "
                   f"{short(undone, 60)}")


def flow_expand(w: Walk) -> None:
    page = w.page
    with w.flow("3. evolve and expand with a stop"):
        w.step("open the Expand tab", "#expand-seeds-info")
        w.tab("Expand")
        seeds = w.wait_text("#expand-seeds-info", r"\d+ seeds in this source, \d+ not expanded")
        w.wait_js("(document.querySelector('#expand-teacher input')?.value || '').includes('SmolLM2')",
                  what="the default model as teacher")
        w.step("3 seeds, 2 rounds, 32 new tokens, one seed at a time", "#expand-n")
        page.fill("#expand-n input", "3")
        for eid, v in (("expand-rounds", 2), ("expand-batch", 1), ("expand-max-new", 32), ("expand-q-max", 16)):
            w.slider(eid, v)
        w.fill("expand-seed", "0")
        w.step("start, stop after the first conversation", "#expand-progress")
        page.click("#expand-start")
        w.wait_text("#expand-progress", r"running: 1/3 done", 240)
        page.click("#expand-stop")
        stopped = w.wait_text("#expand-progress", r"job \d+ stopped: \d/3 done", 180)
        w.step("resume until done", "#expand-progress")
        page.click("#expand-resume")
        done = w.wait_text("#expand-progress", r"job \d+ done: 3/3 done", 300)
        page.wait_for_selector("#expand-latest .message-row")
        w.step("evolve one seed (Evol-Instruct, no answer)", "#evol-progress", "#evol-new", "#evol-dropped")
        w.open_acc("evol-acc")
        page.fill("#evol-n input", "1")
        w.slider("evol-max-new", 32)
        page.locator("#evol-respond input").uncheck()
        page.click("#evol-start")
        evolved = w.wait_text("#evol-progress", r"job \d+ (done|failed|paused)", 180)
        w.shown = (f"{short(seeds, 50)}; stop → {short(stopped, 50)}; resume → {short(done, 60)}; "
                   f"evolution: {short(evolved, 160)}")
    w.shot("tab-expand.png")


def flow_train_and_chat(w: Walk) -> None:
    page = w.page
    with w.flow("4. a short LoRA run into Chat"):
        w.step("open the Train tab", "#train-count", "#train-config")
        w.tab("Train")
        page.wait_for_selector("#train-start")
        w.wait_text("#train-count", r"^\s*[\d,]+ conversations?[^:]*: \d+ train, \d+ held out")
        w.wait_text("#train-config", r'"base_model": "SmolLM2-135M-Instruct"')
        w.step("LoRA, 3 steps of 2 sequences of 256 tokens, 1% held out, named", "#train-count", "#train-config")
        w.number("train-hp-max-steps", 3)
        w.number("train-eval-fraction", 0.01)
        # the whole line, anchored (Gradio's "processing" overlay sits in the same element while it recounts)
        count = w.wait_text("#train-count", r"^\s*[\d,]+ conversations?[^:]*: \d+ train, ([1-9]|1\d) held out")
        page.get_by_text("Hyperparameters: Batch, length and memory").click()  # open the accordion
        for eid, v in (("train-hp-global-batch-size", 2), ("train-hp-per-device-train-batch-size", 2),
                       ("train-hp-max-length", 256)):
            w.number(eid, v)
        w.fill("train-name", LORA)
        w.wait_js("(() => { const t = document.querySelector('#train-config')?.innerText || ''; "
                  "return t.includes('\"max_steps\": 3') && t.includes('\"max_length\": 256'); })()",
                  what="the run's settings in the config preview")
        w.step("start and wait until finished", "#train-progress", "#train-details")
        page.click("#train-start")
        w.wait_text("#train-progress", r"running|queued", 60)
        progress = w.wait_text("#train-progress", r"finished", 420)
        details = w.wait_text("#train-details", r"Registered as")
        w.wait_js("document.querySelectorAll('#train-plot svg path, #train-plot canvas').length > 0",
                  what="the loss plot")
        w.shot("tab-train.png")
        w.step(f"Chat tab: pick {LORA}, ask with 16 new tokens", "#chat-info", "#chat-bot")
        w.tab("Chat")
        w.pick("chat-model", LORA)
        w.wait_text("#chat-info", r"adapter")
        w.slider("chat-max-new", 16)
        page.fill("#chat-input textarea", "Name a colour.")
        page.press("#chat-input textarea", "Enter")
        answer = wait_chat_answer(w)
        w.shown = (f"{short(count, 60)}; {short(progress, 80)}; {short(details.split(chr(10))[0], 60)}; "
                   f"{LORA} answered: {short(answer, 60)}")
    w.shot("tab-chat.png")


def wait_chat_answer(w: Walk, timeout: float = 120) -> str:
    """Wait until the Chat tab shows the question and a finished answer (no pending marker, the answer's model
    label, and the text unchanged for 3 s); returns the answer's text (the model's name above it included)."""
    busy = ("document.querySelector('#chat-bot.pending, #chat-bot .pending, #chat-bot.generating, "
            "#chat-bot .generating, #chat-bot .progress-text, #chat-bot .eta-bar')")
    w.wait_js(f"!{busy} && document.querySelectorAll('#chat-bot .message-row').length == 2 && "
              "document.querySelectorAll('#chat-bot .wv-by').length >= 1", timeout=timeout,
              what="the answer in the Chat tab")
    # the page shows no mark while an answer streams (the chat's status tracker is "minimal"): the answer is
    # taken as finished when its text has not changed for 3 s
    seen, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:
        seen.append(w.page.locator("#chat-bot .message-row").nth(1).inner_text())
        if len(seen) >= 4 and len(set(seen[-4:])) == 1:
            return seen[-1]
        w.page.wait_for_timeout(1000)
    raise WalkError("the Chat answer kept changing for 60 s")


def flow_endpoint(w: Walk, url: str) -> None:
    from studio.registry import DEFAULT_MODEL_NAME

    page = w.page
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with w.flow("5. an endpoint check"):
        w.step("Models tab: add an endpoint on a port nobody serves", "#models-out", "#models-table")
        w.tab("Models")
        page.wait_for_selector("#models-table")
        _add_endpoint(w, "wrong-url", dead, DEFAULT_MODEL_NAME)
        w.step("check it: the error says why", "#models-out")
        _select_model(w, "wrong-url")
        page.click("#models-ping")
        wrong = w.wait_text("#models-out", r"Checking wrong.url failed: \S", 60)
        w.step("remove it", "#models-out", "#models-table")
        page.click("#models-remove")
        w.wait_text("#models-out", r"Removed wrong.url")
        w.wait_js("!(document.querySelector('#models-table')?.innerText || '').includes('wrong-url')",
                  what="wrong-url gone from the table")
        w.step("add this studio's own /v1 as an endpoint", "#models-out", "#models-table")
        _add_endpoint(w, "studio-v1", f"{url}/v1", DEFAULT_MODEL_NAME)
        w.step("check it works", "#models-out")
        _select_model(w, "studio-v1")
        page.click("#models-ping")
        ok = w.wait_text("#models-out", r"reachable and works|failed", 120)
        if "reachable and works" not in ok:
            raise WalkError(f"the check of studio-v1 failed: {short(ok, 300)}")
        w.shown = f"wrong URL: {short(wrong, 120)}; own /v1: {short(ok, 110)}"
    w.shot("tab-models.png")


def _add_endpoint(w: Walk, name: str, base_url: str, model: str) -> None:
    w.fill("models-ep-name", name)
    w.fill("models-ep-url", base_url)
    w.fill("models-ep-model", model)
    w.page.click("#models-ep-add")
    w.wait_text("#models-out", rf"Added endpoint {re.escape(name)}")
    w.wait_text("#models-table", re.escape(name))


def _select_model(w: Walk, name: str) -> None:
    w.page.get_by_role("gridcell", name=name, exact=True).click()
    w.wait_js("n => (document.querySelector('#models-selected textarea, #models-selected input')?.value) === n",
              name, 10, f"{name} selected")


def flow_stats_export(w: Walk) -> None:
    page = w.page
    with w.flow("6. statistics and export"):
        w.step("Data tab: Statistics for the current filter", "#stats-totals")
        w.tab("Data")
        w.open_acc("stats-acc")
        page.click("#stats-run")
        totals = w.wait_text("#stats-totals", r"[\d,]+ conversations · [\d,]+ rounds", 120)
        w.wait_js("['#stats-by-source', '#stats-rounds', '#stats-tokens'].every(s => "
                  "document.querySelectorAll(s + ' svg path, ' + s + ' canvas').length > 0)", what="the plots")
        w.step("export ShareGPT", "#data-export-result", "#data-export-file")
        w.open_acc("data-export-acc")
        page.click("#data-export")
        exported = w.wait_text("#data-export-result", r"Exported [\d,]+ conversations", 120)
        w.step("download the export and count it", "#data-export-file")
        link = page.locator("#data-export-file a[download], #data-export-file a").first
        link.wait_for()
        with page.expect_download() as dl:
            link.click()
        path = dl.value.path()
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
        said = int(re.search(r"Exported ([\d,]+)", exported).group(1).replace(",", ""))
        if len(rows) != said:
            raise WalkError(f"the page said {said} conversations were exported, the download holds {len(rows)}")
        w.shown = f"{short(totals, 110)}; {short(exported, 70)}; downloaded {dl.value.suggested_filename}: {len(rows)}"


# ----------------------------------------------------------------------------------------------- screenshots
def extras(w: Walk) -> None:
    """Arena votes, the leaderboard, a Judge run and a preference set: the state the remaining shots show."""
    from studio.registry import DEFAULT_MODEL_NAME

    page = w.page
    with w.flow("Arena: 2 named votes"):
        w.step(f"side by side: {LORA} against its base, 16 new tokens", "#arena-named-bot-a", "#arena-named-bot-b")
        w.tab("Arena")
        w.tab("Side by side (named)")
        w.pick("arena-named-finetune", LORA)
        w.wait_text("#arena-named-bot-b", re.escape(DEFAULT_MODEL_NAME))
        w.open_acc("arena-named-sampling")
        w.slider("arena-named-max-new", 16)
        for i, vote in enumerate(("a", "b")):
            w.step(f"ask, wait for both answers, vote {vote.upper()}", "#arena-named-status", "#arena-named-bot-a",
                   "#arena-named-bot-b")
            if i:
                page.click("#arena-named-new")
                w.wait_js("document.querySelectorAll('#arena-named-bot-a .message-row').length == 0 && "
                          "(document.querySelector('#arena-named-status')?.innerText || '').trim() == ''",
                          what="a new round")
            page.fill("#arena-named-input textarea", ("Name a colour, please.", "Name a fruit, please.")[i])
            page.press("#arena-named-input textarea", "Enter")
            w.wait_js("document.querySelector('#arena-named-vote-tie:not([disabled])') || "
                      "(document.querySelector('#arena-named-status')?.innerText || '').includes('No vote')",
                      timeout=180, what="both answers")
            if not page.locator("#arena-named-vote-tie:not([disabled])").count():
                raise WalkError("voting was closed for the round")
            page.click(f"#arena-named-vote-{vote}")
            status = w.wait_text("#arena-named-status", r"Vote recorded")
        w.shown = short(status, 160)
    w.shot("tab-arena.png")

    with w.flow("Arena: leaderboard"):
        w.step("refresh the leaderboard", "#board-summary")
        w.tab("Leaderboard")
        page.click("#board-refresh")
        board = w.wait_text("#board-summary", r"^\s*2 votes")
        w.wait_js("document.querySelectorAll('#board-ratings img, #board-ratings svg, #board-ratings canvas')"
                  ".length > 0", what="the ratings plot")
        w.shown = short(board, 160)
    w.shot("tab-arena-leaderboard.png")

    with w.flow("Judge: table mode, 2 questions"):
        w.step(f"models: default and {LORA}; table mode; 2 questions; 16/24 tokens", "#judge-models")
        w.tab("Judge")
        page.click("#judge-models input")
        page.get_by_role("option", name=LORA, exact=True).click()
        page.keyboard.press("Escape")
        page.get_by_label("All answers in one prompt, 1-100 (WizardVicunaLM table)").check()
        for eid, v in (("judge-max-new", 16), ("judge-judge-max", 24), ("judge-limit", 2)):
            w.number(eid, v)
        w.step("start and wait until the job ends", "#judge-progress")
        page.click("#judge-start")
        judged = w.wait_text("#judge-progress", r"job \d+ (done|failed|paused|stopped)", 420)
        w.step("show the table", "#judge-summary", "#judge-table")
        page.click("#judge-show")
        summary = w.wait_text("#judge-summary", r"\d+ scores")
        w.wait_js("document.querySelectorAll('#judge-table [role=row][data-index]').length == 3",
                  what="2 questions and the Average row")
        w.shown = f"{short(judged, 60)}; {short(summary, 100)}"
    w.shot("tab-judge.png")

    with w.flow("Preferences: a set from the votes"):
        w.step("build a set from the Arena votes", "#prefs-out", "#prefs-summary")
        w.tab("Preferences")
        w.fill("prefs-name", "walk votes")
        page.click("#prefs-build")
        built = w.wait_text("#prefs-out", r"Set \d+ .*pairs")
        summary = w.wait_text("#prefs-summary", r"pairs kept")
        w.shown = f"{short(built, 80)}; {short(summary, 80)}"
    w.shot("tab-preferences.png")


def screenshot_data(w: Walk) -> None:
    """The Data tab's screenshot: the page reloaded, the edited conversation open (the other tabs' screenshots
    are taken as their flows end, each tab showing what its flow left)."""
    page = w.page
    with w.flow("Data tab screenshot"):
        w.step("reload, open the edited conversation", "#data-count", "#data-conv-header")
        page.reload()
        page.wait_for_selector("#data-table")
        w.wait_text("#data-count", r"\d+ conversations · page 1")
        page.locator('#data-table [data-testid="cell-0-0"]').click()
        header = w.wait_text("#data-conv-header", r"Conversation 1 .*version 2")
        w.shown = short(header, 100)
    w.shot("tab-data.png")


# ------------------------------------------------------------------------------------------------------ main
def table(rows: list[dict]) -> str:
    """The timings as a Markdown table."""
    lines = ["| flow | steps | seconds | what the page showed |", "|---|---:|---:|---|"]
    lines += [f"| {r['flow']} | {r['steps']} | {r['seconds']:.1f} | {r['shown']} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="assets", help="folder for the screenshots and walk-timings.json")
    ap.add_argument("--data-dir", default=None, help="the studio's data folder (must be new or empty; default: a "
                                                    "temporary folder, removed after a successful walk)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: install Debian's chromium package", file=sys.stderr)
        return 2
    if not ALPACA.exists():
        print(f"{ALPACA} is missing (set STUDIO_SHARED_DATA to the reference data folder)", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.data_dir:
        data_dir = Path(args.data_dir).resolve()
        if data_dir.exists() and any(data_dir.iterdir()):
            print(f"--data-dir {data_dir} is not empty: the walk needs a fresh data folder", file=sys.stderr)
            return 2
        temp = False
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="studio-walk-")) / "data"
        temp = True
    print(f"data folder {data_dir}; screenshots to {out}", flush=True)

    from playwright.sync_api import sync_playwright

    from studio.config import Settings
    from studio.server import create_server

    t_all = time.perf_counter()
    app, studio = create_server(Settings(data_dir=data_dir))
    walk, ok = None, False
    try:
        with serve(app) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(30_000)
            walk = Walk(page, out)
            try:
                flow_import_and_edit(walk, url)
                flow_quality(walk)
                flow_expand(walk)
                flow_train_and_chat(walk)
                flow_endpoint(walk, url)
                flow_stats_export(walk)
                extras(walk)
                screenshot_data(walk)
                missing = [n for n in SHOTS if not (out / n).exists()]
                if missing:
                    raise WalkError(f"screenshots missing: {', '.join(missing)}")
                ok = True
            except Exception as e:  # noqa: BLE001 - reported with the flow, the step and the page
                print(f"\nFAILED in flow '{walk.flow_name}', step {walk.steps} '{walk.step_name}': "
                      f"{type(e).__name__}: {e}", file=sys.stderr)
                print("the page showed:\n" + walk.report(), file=sys.stderr)
                try:
                    page.screenshot(path=str(out / "walk-failure.png"), full_page=True)
                    print(f"screenshot: {out / 'walk-failure.png'}", file=sys.stderr)
                except Exception as shot_error:  # noqa: BLE001
                    print(f"(no failure screenshot: {shot_error})", file=sys.stderr)
            finally:
                browser.close()
    finally:
        studio.runs.kill_all()
        studio.close()
    total = time.perf_counter() - t_all
    if walk is not None and walk.rows:
        print("\n" + table(walk.rows))
        print(f"\nwhole walk (with the studio's start): {total:.1f} s")
        (out / "walk-timings.json").write_text(json.dumps(
            {"ok": ok, "total_seconds": round(total, 1), "flows": walk.rows}, indent=2, ensure_ascii=False) + "\n",
            encoding="utf-8")
    if ok and temp and not args.keep:
        shutil.rmtree(data_dir.parent, ignore_errors=True)
    elif not ok:
        print(f"data folder kept: {data_dir}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
