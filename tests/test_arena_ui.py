"""The Arena tab's and the Chat tab's rating handlers on the real page (``ui.app.build_app``), called as Gradio calls
a queued event (``Blocks.call_function``, with a ``gr.Request``), on a real DuckDB file: one vote per round, votes of
3-4 sides as pairwise battles, keeping the winner as training data, battle files in and out, Chat thumbs; and the
battle pair sampling."""

from __future__ import annotations

import json
import random

import gradio as gr
import pytest

from studio import battles as battle_files
from studio.ui.arena import ArenaTabState, Side, battles_of_vote, sample_pair

from test_roles import call, default_inputs, find, open_studio


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from studio.ui.app import build_app

    studio = open_studio(tmp_path_factory.mktemp("arena-ui"), read_only=False)
    demo = build_app(studio)
    yield studio, demo
    studio.close()


def answered_round(models: list[str], anonymous: bool = True) -> ArenaTabState:
    st = ArenaTabState(anonymous=anonymous, round_id=f"round-{random.random()}")
    st.sides = [Side(m, [{"role": "user", "content": "What is a fox?"},
                         {"role": "assistant", "content": f"{m} says: a small wild dog."}]) for m in models]
    st.params = {"max_new_tokens": 16, "temperature": 0.7, "system": ""}
    return st


def vote(demo, st: ArenaTabState, action_index: int, who: str = "carol"):
    bf = find(demo, "Voting", action_index)
    return call(demo, bf, who, default_inputs(bf, {"ArenaTabState": st, "str": "browser1234"}))


def test_a_round_takes_one_vote(page):
    studio, demo = page
    st = answered_round(["m1", "m2"])
    before = studio.store.battle_count()
    vote(demo, st, 0)  # the battle panel's "A is better"
    assert studio.store.battle_count() == before + 1
    b = studio.store.battles()[-1]
    assert (b["model_a"], b["model_b"], b["winner"], b["anony"], b["judge"]) == ("m1", "m2", "model_a", True, "carol")
    assert b["conversation_a"][-1]["content"] == "m1 says: a small wild dog."
    with pytest.raises(gr.Error, match="already voted"):
        vote(demo, st, 1)  # "B is better" on the same round
    st.voted = ""  # even a session that lost its memory of the vote: the store refuses the round again
    with pytest.raises(gr.Error, match="already voted"):
        vote(demo, st, 1)
    assert studio.store.battle_count() == before + 1 and studio.store.battles()[-1]["winner"] == "model_a"


def test_no_vote_before_answers_or_after_a_failure(page):
    studio, demo = page
    before = studio.store.battle_count()
    st = answered_round(["m1", "m2"])
    st.sides[1].history.pop()  # B has not answered
    with pytest.raises(gr.Error, match="nothing to vote on"):
        vote(demo, st, 0)
    st = answered_round(["m1", "m2"])
    st.no_vote = "the answers were stopped"
    with pytest.raises(gr.Error, match="stopped"):
        vote(demo, st, 0)
    assert studio.store.battle_count() == before


def test_best_of_four_becomes_pairwise_battles():
    st = answered_round(["w", "x", "y", "z"], anonymous=False)
    rows = battles_of_vote(st, "2", voter="bob", language="en")
    assert {(r["model_a"], r["model_b"], r["winner"]) for r in rows} == {
        ("w", "y", "model_b"), ("x", "y", "model_b"), ("y", "z", "model_a")}
    assert len({r["round_id"] for r in rows}) == 3 and not any(r["anony"] for r in rows)
    ties = battles_of_vote(st, "bothbad", voter="bob", language="en")
    assert len(ties) == 6 and {r["winner"] for r in ties} == {"tie (bothbad)"}


def test_keep_the_winner_as_a_training_conversation(page):
    studio, demo = page
    st = answered_round(["m1", "m2"], anonymous=False)
    st.voted = "1"
    bf = find(demo, "Keeping an arena answer")
    with pytest.raises(gr.Error, match="editor"):
        call(demo, bf, "carol", default_inputs(bf, {"ArenaTabState": st}))
    out = call(demo, bf, "bob", default_inputs(bf, {"ArenaTabState": st}))
    assert "origin arena" in str(out)
    df, _ = studio.store.list_conversations(origin="arena")
    conv = studio.store.get_conversation(int(df["id"].iloc[0]))
    assert conv["messages"][-1]["content"] == "m2 says: a small wild dog." and conv["teacher"] == "m2"


def test_sample_pair_respects_weights():
    rng = random.Random(0)
    weights = {"a": 1.0, "b": 1.0, "c": 0.0, "d": 8.0}
    pairs = [tuple(sample_pair(list(weights), weights.get, rng)) for _ in range(400)]
    assert all(len(set(p)) == 2 and "c" not in p for p in pairs)
    assert sum("d" in p for p in pairs) > 350          # heavy weight: in nearly every battle
    assert 120 < sum(p[0] == "d" for p in pairs) < 280  # left or right at random
    with pytest.raises(ValueError, match="at least two models"):
        sample_pair(["a", "c"], weights.get, rng)


def test_battle_file_in_and_out_through_the_leaderboard(page, tmp_path):
    studio, demo = page
    rows = [{"question_id": "q1", "model_a": "alpha", "model_b": "beta", "winner": "model_b", "judge": "j1",
             "conversation_a": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
             "conversation_b": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hi there!"}],
             "turn": 1, "anony": True, "language": "English", "tstamp": 1700000000.5}]
    f = tmp_path / "battles.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    up = find(demo, "Importing battles")
    with pytest.raises(gr.Error, match="editor"):
        call(demo, up, "carol", default_inputs(up, {"board-upload": str(f)}))
    out = call(demo, up, "bob", default_inputs(up, {"board-upload": str(f)}))
    text = str(out)
    assert "1 new battles imported" in text and "1 bad line" in text
    ex = find(demo, "Exporting battles")
    with pytest.raises(gr.Error, match="admin"):
        call(demo, ex, "bob", default_inputs(ex))
    call(demo, ex, "alice", default_inputs(ex))
    written = sorted(studio.settings.export_dir.glob("arena-battles-*.jsonl"))[-1]
    back = [json.loads(x) for x in written.read_text().splitlines()]
    assert [r for r in back if r["model_a"] == "alpha"] == rows
    pairs = find(demo, "Exporting preference pairs")
    call(demo, pairs, "alice", default_inputs(pairs))
    p = [json.loads(x) for x in sorted(studio.settings.export_dir.glob("arena-pairs-*.jsonl"))[-1].read_text()
         .splitlines()]
    assert {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hi there!"}],
            "rejected": [{"role": "assistant", "content": "Hello."}]} in p
    assert battle_files.preference_pairs(studio.store.battles())[0] == p


def test_chat_thumbs_are_stored_with_the_model(page):
    from studio.ui.chat import ChatTabState

    studio, demo = page
    st = ChatTabState(history=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                      answered_by={1: "some-model"})
    bf = find(demo, "Rating an answer")
    inputs = default_inputs(bf, {"ChatTabState": st, "chat-note": "friendly", "str": "browser1234"})
    liked = gr.LikeData(None, {"index": 1, "value": "Hello!", "liked": False})
    import asyncio

    from test_roles import request_for

    asyncio.run(demo.call_function(bf, inputs, requests=request_for("anonymous"), event_data=liked))
    r = studio.store.ratings("some-model")[-1]
    assert (r["rating"], r["note"], r["conversation"][-1]["content"]) == (-1, "friendly", "Hello!")
    assert r["voter"].startswith("browser:")
    bad = gr.LikeData(None, {"index": 0, "value": "Hi", "liked": True})  # the user's own message
    with pytest.raises(gr.Error, match="only a finished answer"):
        asyncio.run(demo.call_function(bf, inputs, requests=request_for("anonymous"), event_data=bad))
