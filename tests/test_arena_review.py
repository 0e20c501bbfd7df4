"""A hostile review of the Arena tab (issue 9): each test is a way the page broke before its fix.

* a vote refused for a round already voted on must write nothing (3-4 sides are several battles);
* Stop must end the answers even when a model's stream sends nothing more (a hung endpoint);
* the leaderboard must draw any model name (a ``$`` is not mathtext) and stay small with many models;
* a battle file's absurd ``turn`` is a bad row, not a crash.

Handlers are called on the real page (``ui.app.build_app``) through ``Blocks.call_function``, on a real DuckDB file.
"""

from __future__ import annotations

import json
import threading

import gradio as gr
import pytest

from studio.registry import GenParams
from studio.ui.arena import Side, stream_sides

from test_arena_ui import answered_round
from test_roles import call, component, default_inputs, find, open_studio


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from studio.ui.app import build_app

    studio = open_studio(tmp_path_factory.mktemp("arena-review"), read_only=False)
    demo = build_app(studio)
    yield studio, demo
    studio.close()


def vote_button(demo, elem_id: str):
    """The event of the vote button ``elem_id`` (e.g. ``arena-named-vote-d``)."""
    target = component(demo, elem_id)._id
    return next(bf for bf in demo.fns.values() if any(t[0] == target for t in bf.targets))


def battle_row(model_a: str, model_b: str, winner: str = "model_a", **more) -> dict:
    return {"model_a": model_a, "model_b": model_b, "winner": winner, "anony": True,
            "conversation_a": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": f"{model_a}."}],
            "conversation_b": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": f"{model_b}."}],
            **more}


def import_rows(studio, demo, tmp_path, rows: list, name: str = "battles.jsonl") -> str:
    f = tmp_path / name
    f.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    up = find(demo, "Importing battles")
    return str(call(demo, up, "bob", default_inputs(up, {"board-upload": str(f)})))


def test_a_second_vote_on_a_four_side_round_writes_nothing(page):
    """'D is best' was stored; the same round voted 'A is best' again (a session that lost its memory of the vote,
    or two clicks at once) used to add A's wins over B and C before the store refused A-D: two votes, mixed."""
    studio, demo = page
    st = answered_round(["w", "x", "y", "z"], anonymous=False)
    bf_d, bf_a = vote_button(demo, "arena-named-vote-d"), vote_button(demo, "arena-named-vote-a")
    call(demo, bf_d, "carol", default_inputs(bf_d, {"ArenaTabState": st, "str": "browser1234"}))
    before = studio.store.battles()
    assert len(before) == 3 and {b["winner"] for b in before} == {"model_b"}
    st.voted = ""
    with pytest.raises(gr.Error, match="already voted"):
        call(demo, bf_a, "carol", default_inputs(bf_a, {"ArenaTabState": st, "str": "browser1234"}))
    assert studio.store.battles() == before


def test_stop_ends_a_stream_that_sends_nothing_more():
    """A model that sent a piece and then hangs (an endpoint that stops sending without closing): Stop used to
    leave the handler waiting for it for ever (the event's worker thread never came back)."""
    release = threading.Event()

    class HungRegistry:
        def stream_chat(self, name, messages, params):
            yield f"{name} starts"
            release.wait()
            yield " and never ends"

    stop, done, seen = threading.Event(), threading.Event(), []

    def consume():
        for texts, _finished, _errors in stream_sides(HungRegistry(), [Side("a"), Side("b")],
                                                      [[{"role": "user", "content": "Hi"}]] * 2, GenParams(), stop):
            seen.append(list(texts))
            if all(texts):
                stop.set()  # both sides answered something: the user presses Stop
        done.set()

    threading.Thread(target=consume, daemon=True).start()
    try:
        assert done.wait(60), "Stop did not end the answers of a hung stream"
    finally:
        release.set()
    assert seen[-1] == ["a starts", "b starts"]


def test_the_leaderboard_draws_any_model_name(page, tmp_path):
    """A model named with ``$`` (mathtext to matplotlib) broke the leaderboard plots for every viewer."""
    studio, demo = page
    names = ["price $\\sqrt{$ model", "plain", "<b>tagged</b>"]
    out = import_rows(studio, demo, tmp_path, [battle_row(names[0], names[1]), battle_row(names[1], names[2]),
                                                battle_row(names[2], names[0], "tie")], "dollar.jsonl")
    assert "3 new battles imported" in out
    bf = find(demo, "Reading the leaderboard")
    got = call(demo, bf, "carol", default_inputs(bf, {"board-rounds": 0}))
    plots = [v for k, v in got.items() if isinstance(k, gr.Plot)]
    assert len(plots) == 2 and all(p is not None for p in plots)
    for fig in plots:
        gr.Plot().postprocess(fig)  # draws the figure as Gradio does before sending it
        labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        assert names[0] in labels


def test_the_leaderboard_plots_stay_small_with_many_models(tmp_path):
    """An imported file naming 60 models made a 6900 x 5600 pixel heat map (100 models: 4 GB and 90 s of drawing
    on each opening of the leaderboard); the plots show the best 25."""
    from studio.ui.app import build_app
    from studio.ui.leaderboard import PLOT_MODELS

    studio = open_studio(tmp_path, read_only=False)
    try:
        demo = build_app(studio)
        models = [f"m{i:02d}" for i in range(60)]
        rows = [battle_row(models[i], models[j]) for i in range(60) for j in (i + 1, i + 2) if j < 60]
        assert f"{len(rows)} new battles imported" in import_rows(studio, demo, tmp_path, rows)
        bf = find(demo, "Reading the leaderboard")
        got = call(demo, bf, "carol", default_inputs(bf, {"board-rounds": 0}))
        summary = next(v for k, v in got.items() if getattr(k, "elem_id", None) == "board-summary")
        assert "between 60 models" in summary and f"plots show the best {PLOT_MODELS}" in summary
        board = next(v for k, v in got.items() if getattr(k, "elem_id", None) == "board-table")
        assert len(board) == 60
        for k, fig in got.items():
            if isinstance(k, gr.Plot):
                w, h = fig.get_size_inches() * fig.dpi
                assert w <= 4000 and h <= 4000, (k.elem_id, w, h)
                assert len(fig.axes[0].get_yticklabels()) <= PLOT_MODELS
                assert "m00" in [t.get_text() for t in fig.axes[0].get_yticklabels()]  # the best one is drawn
    finally:
        studio.close()


def test_an_absurd_turn_is_a_bad_row_not_a_crash(page, tmp_path):
    """``"turn": 10**30`` crashed the import (OverflowError from the Arrow table); 2**40 overflowed the store's
    INTEGER. Both are bad rows now, and the good row is imported."""
    studio, demo = page
    out = import_rows(studio, demo, tmp_path, [battle_row("t1", "t2", turn=1), battle_row("t1", "t2", turn=10**30),
                                                battle_row("t2", "t1", turn=2**40)], "turns.jsonl")
    assert "1 new battles imported" in out and "2 bad lines left out" in out
    assert "line 2" in out and "turn" in out
    assert [b["turn"] for b in studio.store.battles() if b["model_a"] in ("t1", "t2")] == [1]
