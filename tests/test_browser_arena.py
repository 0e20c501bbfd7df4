"""The Arena and Judge tabs in headless Chromium (one module: they share the server and its trained LoRA): the embedded default model against a LoRA checkpoint trained here (the real
training program, three steps on a few conversations), ten votes across the named and anonymous panels, the
leaderboard changing, and anonymity checked on what the browser received.

Every byte the server sends is recorded below the page (an ASGI wrapper around the served app), so the test can
say what the browser *received* during an anonymous round, not only what it shows.
"""

from __future__ import annotations

import time

import pytest

from studio.registry import DEFAULT_MODEL_NAME

from browser_util import chromium, new_page, serve
from test_train_runs import FAST, add_conversations, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LORA = "arena-lora"


class Recorder:
    """An ASGI wrapper keeping every response body chunk the app sends (``chunks``, in order)."""

    def __init__(self, app):
        self.app, self.chunks = app, []

    async def __call__(self, scope, receive, send):
        async def sending(message):
            if message.get("type") == "http.response.body" and message.get("body"):
                self.chunks.append(bytes(message["body"]))
            await send(message)

        await self.app(scope, receive, sending)

    def since(self, mark: int) -> str:
        return b"".join(self.chunks[mark:]).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def arena_server(tmp_path_factory):
    """The whole studio on a free port, with ``arena-lora``: a LoRA over the default model trained by the studio's
    own run path on 6 conversations; yields ``(url, studio, recorder)``."""
    from studio.config import Settings
    from studio.server import create_server

    app, studio = create_server(Settings(data_dir=tmp_path_factory.mktemp("arena") / "data"))
    add_conversations(studio, 6)
    # a gentle learning rate: the adapter must stay a chat model (at FAST's 1e-2 it learnt to end at once, and an
    # empty answer rightly closes voting)
    run_id = studio.runs.create_run(DEFAULT_MODEL_NAME, "lora", {}, {**FAST, "learning_rate": 1e-4}, name=LORA)
    studio.runs.start(run_id)
    wait_for(lambda: studio.runs.status(run_id)["state"] not in ("created", "queued", "running"), timeout=600,
             what="the LoRA run to end")
    assert studio.runs.status(run_id)["state"] == "finished", studio.runs.log_tail(run_id)
    assert LORA in studio.registry.names()
    rec = Recorder(app)
    with serve(rec) as url:
        yield url, studio, rec
    studio.runs.kill_all()
    studio.close()


def _max_new(page, key: str, n: int) -> None:
    """Set the panel's max new tokens to ``n`` and check the slider took it (a value off its 16-token steps or
    below its minimum is refused and the default of 256 stays, which made each round ~20x slower)."""
    from playwright.sync_api import TimeoutError as PwTimeout

    page.locator(f"#{key}-sampling").get_by_text("Sampling (shared by all models)").click()  # open the accordion
    box = page.locator(f"#{key}-max-new input[type=number]")
    rng = f"#{key}-max-new input[type=range]"
    # a tab's content is drawn on its first visit: a value typed while it is still being drawn can be lost, so
    # type it again until the slider holds it (a lasting state), at most three times
    for attempt in range(3):
        box.fill(str(n))
        box.press("Tab")
        try:
            page.wait_for_function("([s, n]) => document.querySelector(s)?.value == String(n)", arg=[rng, n],
                                   timeout=10_000)
            return
        except PwTimeout:
            if attempt == 2:
                raise AssertionError(f"max new tokens did not take {n}: the slider shows "
                                     f"{page.locator(rng).input_value()!r}") from None


def _ask_and_wait(page, key: str, prompt: str) -> None:
    """Send ``prompt`` and wait until the vote buttons are enabled (every side answered: a lasting state)."""
    page.fill(f"#{key}-input textarea", prompt)
    page.press(f"#{key}-input textarea", "Enter")
    page.wait_for_function(f"document.querySelector('#{key}-vote-tie:not([disabled])') || "
                           f"(document.querySelector('#{key}-status')?.innerText || '').includes('No vote') || "
                           f"document.querySelector('.toast-body')", timeout=180_000)
    toasts = page.locator(".toast-body").all_inner_texts()
    assert page.locator(f"#{key}-vote-tie:not([disabled])").count() == 1, (
        f"no vote possible: {page.inner_text(f'#{key}-status')!r}, toasts {toasts}, "
        f"A: {page.inner_text(f'#{key}-bot-a')!r}, B: {page.inner_text(f'#{key}-bot-b')!r}")


def _new_round(page, key: str) -> None:
    """Start a new round and wait until it shows (empty chats, no status): the round's lasting state."""
    page.click(f"#{key}-new")
    page.wait_for_function(f"document.querySelectorAll('#{key}-bot-a .message-row').length == 0 && "
                           f"(document.querySelector('#{key}-status')?.innerText || '').trim() == ''")


def _leaderboard(page, votes: int) -> dict[str, int]:
    """``{model: battles}`` as the leaderboard table shows it, once it counts ``votes`` votes."""
    page.click("#board-refresh")
    page.wait_for_function(f"(document.querySelector('#board-summary')?.innerText || '').startsWith('{votes} votes')")
    return _rows(page)


def _rows(page) -> dict[str, int]:
    rows = page.locator("#board-table [role=row][data-index]")  # the table's rows (virtualised: divs)
    out = {}
    for i in range(rows.count()):
        cells = [c.strip() for c in rows.nth(i).locator("[role=gridcell]").all_inner_texts()]
        if len(cells) >= 6 and cells[1]:
            out[cells[1]] = int(cells[5].replace(",", ""))
    return out


def test_arena_named_and_anonymous_votes_move_the_leaderboard(arena_server):
    url, studio, rec = arena_server
    with chromium() as browser:
        page = new_page(browser)
        page.goto(url)
        page.get_by_role("tab", name="Arena").click()

        # named: a fine-tune against its base in two clicks
        page.get_by_role("tab", name="Side by side (named)").click()
        page.click("#arena-named-finetune input")
        page.get_by_role("option", name=LORA, exact=True).click()
        page.wait_for_function(f"(document.querySelector('#arena-named-bot-b')?.innerText || '').includes("
                               f"'{DEFAULT_MODEL_NAME}')")
        _max_new(page, "arena-named", 16)
        named_votes = ["#arena-named-vote-a", "#arena-named-vote-b", "#arena-named-vote-tie", "#arena-named-vote-a",
                       "#arena-named-vote-bothbad"]
        for i, button in enumerate(named_votes):
            _ask_and_wait(page, "arena-named", f"Name a colour, please ({i}).")
            page.click(button)
            page.wait_for_function("(document.querySelector('#arena-named-status')?.innerText || '')"
                                   ".includes('Vote recorded')")
            _new_round(page, "arena-named")
        assert studio.store.battle_count() == 5

        page.get_by_role("tab", name="Leaderboard").click()
        board = _leaderboard(page, 5)
        assert board == {LORA: 5, DEFAULT_MODEL_NAME: 5}, board

        # anonymous: names absent from the panel and from everything the browser received until the vote
        page.get_by_role("tab", name="Battle (anonymous)").click()
        _max_new(page, "arena-anon", 16)
        names = (DEFAULT_MODEL_NAME, LORA)
        for i, button in enumerate(["#arena-anon-vote-a", "#arena-anon-vote-b", "#arena-anon-vote-a",
                                    "#arena-anon-vote-tie", "#arena-anon-vote-b"]):
            mark = len(rec.chunks)
            _ask_and_wait(page, "arena-anon", f"Say hello in one word ({i}).")
            received = rec.since(mark)
            assert f"Say hello in one word ({i})." in received  # the round's payloads were recorded
            assert "Model A" in page.inner_text("#arena-battle")
            dom = page.inner_html("#arena-battle")
            for name in names:
                assert name not in received, f"round {i}: '{name}' was sent to the browser before the vote"
                assert name not in dom, f"round {i}: '{name}' is in the battle panel before the vote"
            page.click(button)
            page.wait_for_function("(document.querySelector('#arena-anon-status')?.innerText || '')"
                                   ".includes('Vote recorded')")
            shown = page.inner_text("#arena-anon-status")
            assert all(name in shown for name in names), shown  # revealed after the vote
            _new_round(page, "arena-anon")

        battles = studio.store.battles()
        assert len(battles) == 10 and sum(b["anony"] for b in battles) == 5
        assert {b["params"]["max_new_tokens"] for b in battles} == {16}
        assert {b["winner"] for b in battles if b["anony"]} <= {"model_a", "model_b", "tie"}
        assert all(len(b["conversation_a"]) == 2 and b["conversation_a"][0]["role"] == "user" for b in battles)
        assert all(b["judge"].startswith("browser:") for b in battles)  # nobody signed in: the per-browser id

        page.get_by_role("tab", name="Leaderboard").click()
        after = _leaderboard(page, 10)
        assert after == {LORA: 10, DEFAULT_MODEL_NAME: 10}, after
        page.check("#board-anony input")
        page.wait_for_function("(document.querySelector('#board-summary')?.innerText || '').startsWith("
                               "'5 votes (anonymous battles only)')")
        assert _rows(page) == {LORA: 5, DEFAULT_MODEL_NAME: 5}


def test_judge_tab_runs_a_10_question_mt_bench_run_and_shows_table_and_plots(arena_server):
    """Offline: the default model and the LoRA answer 10 MT-bench questions (both turns), the default model judges
    them in the WizardVicunaLM table mode (both answers in one prompt, 1-100 each); the page shows the score table
    with its average row and the plots."""
    url, studio, _ = arena_server
    with chromium() as browser:
        page = new_page(browser)
        page.goto(url)
        page.get_by_role("tab", name="Judge").click()
        page.click("#judge-models input")
        page.get_by_role("option", name=LORA, exact=True).click()
        page.keyboard.press("Escape")
        page.get_by_label("All answers in one prompt, 1-100 (WizardVicunaLM table)").check()
        for elem, value in (("judge-max-new", 16), ("judge-judge-max", 24), ("judge-limit", 10)):
            box = page.locator(f"#{elem} input[type=number]")
            box.fill(str(value))
            box.press("Tab")
        page.click("#judge-start")
        # start_run stores the run, then queues its job, then records the job id: wait for the last step
        wait_for(lambda: studio.store.latest_judge_run_id() is not None
                 and studio.store.judge_run(studio.store.latest_judge_run_id())["job_id"] is not None,
                 timeout=60, what="the judge run and its job to start")
        run = studio.store.judge_run(studio.store.latest_judge_run_id())
        assert sorted(run["models"]) == sorted([DEFAULT_MODEL_NAME, LORA]) and len(run["questions"]) == 10
        assert (run["params"]["max_new_tokens"], run["params"]["judge_max_new_tokens"]) == (16, 24)
        job = run["job_id"]
        wait_for(lambda: studio.jobs.progress(job).status not in ("queued", "running"), timeout=900,
                 what="the judge run to end")
        assert studio.jobs.progress(job).status == "done", studio.jobs.progress(job).line()
        from studio import judge as J

        t = J.score_table(studio.store, run["id"])  # the run is done: its stored scores are final
        want = f"{sum(t.n_scored.values())} scores"
        page.click("#judge-show")
        # wait for the finished run's summary itself: the page may still show a summary rendered while the run
        # was going (fewer scores) until the click's answer arrives
        page.wait_for_function(f"(document.querySelector('#judge-summary')?.innerText || '').includes('{want}')")
        rows = page.locator("#judge-table [role=row][data-index]")
        page.wait_for_function("document.querySelectorAll('#judge-table [role=row][data-index]').length == 11")
        assert rows.nth(10).locator("[role=gridcell]").first.inner_text().strip() == "Average"
        # one bar per model, each drawn from 0 (an automatic axis spans only the averages: the lowest bar, or both
        # when they are equal, had no height)
        page.wait_for_selector("#judge-bars g.mark-rect path")
        heights = [b["height"] for b in (p.bounding_box() for p in page.locator("#judge-bars g.mark-rect path").all())
                   if b]
        assert len(heights) == 2 and min(heights) > 5, heights
        assert page.locator("#judge-radar img").count() == 1  # MT-bench categories: a radar of the first 10
        shown = page.inner_text("#judge-summary")
        assert want in shown
