"""The preference loop in headless Chromium: 12 Arena votes between the default model and a LoRA checkpoint trained
here, a preference set built from them in the Preferences tab (ties and both-bad left out and counted; one pair
dropped), a DPO LoRA run of two steps started from the Train tab (method DPO, TRL's defaults in the fields, kept
small for the CPU), which finishes, registers with its lineage, plots its reward margin and accuracy, and answers
in the Chat tab and the Arena."""

from __future__ import annotations

import pytest

from studio.registry import DEFAULT_MODEL_NAME

from browser_util import chromium, new_page, serve
from test_browser_arena import _ask_and_wait, _max_new, _new_round
from test_train_runs import FAST, add_conversations, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SFT = "loop-lora"
DPO = "loop-dpo"
VOTES = ["a", "b", "a", "tie", "a", "b", "bothbad", "a", "a", "tie", "b", "a"]  # 9 decisive, 2 ties, 1 both bad


@pytest.fixture(scope="module")
def loop_server(tmp_path_factory):
    """The studio on a free port with ``loop-lora``: a LoRA over the default model (three steps on 6
    conversations, the studio's own run path); yields ``(url, studio)``."""
    from studio.config import Settings
    from studio.server import create_server

    app, studio = create_server(Settings(data_dir=tmp_path_factory.mktemp("loop") / "data"))
    add_conversations(studio, 6)
    run_id = studio.runs.create_run(DEFAULT_MODEL_NAME, "lora", {}, {**FAST, "learning_rate": 1e-4}, name=SFT)
    studio.runs.start(run_id)
    wait_for(lambda: studio.runs.status(run_id)["state"] not in ("created", "queued", "running"), timeout=600,
             what="the LoRA run to end")
    assert studio.runs.status(run_id)["state"] == "finished", studio.runs.log_tail(run_id)
    with serve(app) as url:
        yield url, studio
    studio.runs.kill_all()
    studio.close()


def _number(page, elem: str, value) -> None:
    box = page.locator(f"#{elem} input[type=number]")
    box.fill(str(value))
    box.press("Tab")


def test_votes_to_preference_set_to_dpo_run_that_answers(loop_server):
    url, studio = loop_server
    with chromium() as browser:
        page = new_page(browser)
        page.goto(url)

        # 1. twelve votes: the LoRA (model A) against the default model (model B)
        page.get_by_role("tab", name="Arena").click()
        page.get_by_role("tab", name="Side by side (named)").click()
        page.click("#arena-named-finetune input")
        page.get_by_role("option", name=SFT, exact=True).click()
        page.wait_for_function(f"(document.querySelector('#arena-named-bot-b')?.innerText || '').includes("
                               f"'{DEFAULT_MODEL_NAME}')")
        _max_new(page, "arena-named", 16)
        for i, v in enumerate(VOTES):
            _ask_and_wait(page, "arena-named", f"Name a fruit, please ({i}).")
            page.click(f"#arena-named-vote-{v}")
            page.wait_for_function("(document.querySelector('#arena-named-status')?.innerText || '')"
                                   ".includes('Vote recorded')")
            _new_round(page, "arena-named")
        assert studio.store.battle_count() == 12
        assert {b["params"]["max_new_tokens"] for b in studio.store.battles(conversations=False)} == {16}

        # 2. a preference set from them; one pair dropped in the page
        page.get_by_role("tab", name="Preferences").click()
        page.fill("#prefs-name input", "twelve votes")
        page.click("#prefs-build")
        page.wait_for_function("(document.querySelector('#prefs-out')?.innerText || '').includes('9 pairs')")
        out = page.inner_text("#prefs-out")
        assert "votes: tie 2" in out and "votes: tie (bothbad) 1" in out, out
        page.wait_for_function("(document.querySelector('#prefs-summary')?.innerText || '').includes('9 pairs kept')")
        summary = page.inner_text("#prefs-summary")
        assert "votes 9" in summary and SFT in summary and DEFAULT_MODEL_NAME in summary, summary
        _number(page, "prefs-idx", 8)
        page.click("#prefs-drop")
        page.wait_for_function("(document.querySelector('#prefs-summary')?.innerText || '').includes('8 pairs kept')")
        pset = studio.store.preference_sets()[0]
        assert (pset["n_pairs"], pset["n_kept"]) == (9, 8)

        # 3. DPO from the Train tab: the LoRA tuned further on the set, two small steps
        page.get_by_role("tab", name="Train").click()
        page.get_by_label("DPO on a preference set").check()
        page.wait_for_selector("#train-dpo-set", state="visible")
        page.wait_for_function("(document.querySelector('#train-hp-learning-rate input')?.value || '') == '0.000001'"
                               " || (document.querySelector('#train-hp-learning-rate input')?.value || '') == '1e-6'")
        page.click("#train-base input")
        page.get_by_role("option", name=SFT, exact=True).click()
        _number(page, "train-hp-max-steps", 2)
        page.get_by_text("Hyperparameters: Batch, length and memory").click()  # open the accordion
        for elem, value in (("train-hp-max-length", 96), ("train-hp-global-batch-size", 2),
                            ("train-hp-per-device-train-batch-size", 2)):
            _number(page, elem, value)
        page.fill("#train-name input", DPO)
        page.wait_for_function("(() => { const t = document.querySelector('#train-config')?.innerText || ''; "
                               "return t.includes('\"objective\": \"dpo\"') && t.includes('\"max_steps\": 2') && "
                               f"t.includes('\"parent\": \"{SFT}\"') && t.includes('\"beta\": 0.1'); }})()")
        page.click("#train-start")
        wait_for(lambda: any(r["name"] == DPO for r in studio.runs.list_runs()), timeout=60, what="the DPO run")
        run_id = next(r["run_id"] for r in studio.runs.list_runs() if r["name"] == DPO)
        wait_for(lambda: studio.runs.status(run_id)["state"] not in ("created", "queued", "running", "stopping"),
                 timeout=600, what="the DPO run to end")
        s = studio.runs.status(run_id)
        assert s["state"] == "finished" and s["registered_as"] == DPO, studio.runs.log_tail(run_id, 60)
        spec = studio.registry.get(DPO)
        assert spec.kind == "adapter" and spec.base == DEFAULT_MODEL_NAME
        assert spec.lineage["parent"] == SFT and spec.lineage["snapshot_sha256"] == pset["sha256"]
        assert spec.lineage["config"]["template"] == "vicuna_v1.1"
        # the reward accuracy and margin are plotted beside the loss
        page.wait_for_function("(() => { const t = document.querySelector('#train-plot')?.innerText || ''; "
                               "return t.includes('reward accuracy') && t.includes('reward margin'); })()",
                               timeout=60_000)

        # 4. it answers in Chat
        page.get_by_role("tab", name="Chat").click()
        page.click("#chat-model input")
        page.get_by_role("option", name=DPO, exact=True).click()
        _number(page, "chat-max-new", 16)
        page.fill("#chat-input textarea", "Name a colour.")
        page.press("#chat-input textarea", "Enter")
        page.wait_for_function("!document.querySelector('#chat-bot .pending') && "
                               "document.querySelectorAll('#chat-bot .message-row').length == 2 && "
                               "document.querySelectorAll('#chat-bot .wv-by').length >= 1", timeout=120_000)
        assert page.locator("#chat-bot .wv-by").first.inner_text() == DPO

        # 5. and in the Arena, against its base
        page.get_by_role("tab", name="Arena").click()
        page.get_by_role("tab", name="Side by side (named)").click()
        page.click("#arena-named-finetune input")
        page.get_by_role("option", name=DPO, exact=True).click()
        page.wait_for_function(f"(document.querySelector('#arena-named-bot-a')?.innerText || '').includes('{DPO}')")
        _ask_and_wait(page, "arena-named", "Name a fruit, please.")
