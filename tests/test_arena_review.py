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
        def stream_chat(self, name, messages, params, should_stop=None):
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


def test_a_huge_model_name_is_cut_in_the_plots(page, tmp_path):
    """A huge model name (a battle file may hold one: 200,000 characters took about two minutes of drawing at each
    opening of the leaderboard): the plots cut names to ``PLOT_LABEL_CHARS``, the table keeps them whole."""
    from studio.ui.leaderboard import PLOT_LABEL_CHARS

    studio, demo = page
    huge = "h" * 90_000
    out = import_rows(studio, demo, tmp_path, [battle_row(huge, "small")], "huge.jsonl")
    assert "1 new battles imported" in out, out[:500]
    bf = find(demo, "Reading the leaderboard")
    got = call(demo, bf, "carol", default_inputs(bf, {"board-rounds": 0}))
    board = next(v for k, v in got.items() if getattr(k, "elem_id", None) == "board-table")
    assert huge in list(board["model"])
    for k, fig in got.items():
        if isinstance(k, gr.Plot):
            labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
            assert max(map(len, labels)) <= PLOT_LABEL_CHARS and "h" * (PLOT_LABEL_CHARS - 1) + "…" in labels


def test_an_absurd_turn_is_a_bad_row_not_a_crash(page, tmp_path):
    """``"turn": 10**30`` crashed the import (OverflowError from the Arrow table); 2**40 overflowed the store's
    INTEGER. Both are bad rows now, and the good row is imported."""
    studio, demo = page
    out = import_rows(studio, demo, tmp_path, [battle_row("t1", "t2", turn=1), battle_row("t1", "t2", turn=10**30),
                                                battle_row("t2", "t1", turn=2**40)], "turns.jsonl")
    assert "1 new battles imported" in out and "2 bad lines left out" in out
    assert "line 2" in out and "turn" in out
    assert [b["turn"] for b in studio.store.battles() if b["model_a"] in ("t1", "t2")] == [1]


def test_the_winning_answer_is_kept_once(page):
    """Keep, clicked twice (or twice at once), added the same conversation twice: twice its weight in training."""
    studio, demo = page
    st = answered_round(["k1", "k2"], anonymous=False)
    st.voted = "0"
    bf = find(demo, "Keeping an arena answer")
    call(demo, bf, "bob", default_inputs(bf, {"ArenaTabState": st}))
    with pytest.raises(gr.Error, match="already kept"):
        call(demo, bf, "bob", default_inputs(bf, {"ArenaTabState": st}))
    df, _ = studio.store.list_conversations(origin="arena")
    assert list(df["teacher"]).count("k1") == 1


def test_no_bootstrap_shows_no_interval(page, tmp_path):
    """With 0 bootstrap rounds the table claimed a 95% interval of zero width ("1507 to 1507 (+0/-0)")."""
    studio, demo = page
    import_rows(studio, demo, tmp_path, [battle_row("b1", "b2")], "boot.jsonl")
    bf = find(demo, "Reading the leaderboard")
    for rounds, interval in ((0, "none"), (10, " to ")):
        got = call(demo, bf, "carol", default_inputs(bf, {"board-rounds": rounds}))
        board = next(v for k, v in got.items() if getattr(k, "elem_id", None) == "board-table")
        assert all(interval in cell for cell in board["95% interval"]), (rounds, list(board["95% interval"]))


def test_an_anonymous_round_names_no_model_before_the_vote(page, monkeypatch):
    """The battle panel's real handlers (send, answer, vote) with the registry's streams replaced: nothing the page
    receives names a model (labels, answers, a failure naming itself, status) until the vote; no vote while
    answering or after a failure; the vote reveals both."""
    from studio.registry import RegistryError

    studio, demo = page
    secret = "secret-endpoint-7"
    if secret not in studio.registry.names():
        studio.registry.add_endpoint(secret, "http://127.0.0.1:9/v1", "secret-upstream-model")
    names = studio.registry.names()
    assert len(names) == 2
    fail = {"on": True}

    def stream_chat(name, messages, params=None, should_stop=None):
        yield "Blue"
        if name == secret and fail["on"]:
            raise RegistryError(f"endpoint '{secret}' (secret-upstream-model at http://127.0.0.1:9/v1) refused")
        yield " sky."

    monkeypatch.setattr(studio.registry, "stream_chat", stream_chat)
    target = component(demo, "arena-anon-send")._id
    send = next(bf for bf in demo.fns.values() if any(t[0] == target for t in bf.targets))
    answer = next(bf for bf in demo.fns.values() if bf.fn is not None
                  and getattr(bf.fn, "__wv_fn__", None).__name__ == "_answer"
                  and component(demo, "arena-anon-max-new") in bf.inputs)
    vote_a = vote_button(demo, "arena-anon-vote-a")
    st_comp = next(c for c in send.inputs if isinstance(c, gr.State))
    st = type(st_comp.value)(anonymous=True)

    def play(prompt: str) -> list:
        outs = [send.fn.__wv_fn__({st_comp: st, component(demo, "arena-anon-input"): prompt})]
        v = {c: (st if isinstance(c, gr.State) else c.value) for c in answer.inputs}
        for out in answer.fn.__wv_fn__(v):
            outs.append(out)
            if st.answering:
                with pytest.raises(gr.Error, match="nothing to vote on"):
                    call(demo, vote_a, "carol", default_inputs(vote_a, {"ArenaTabState": st, "str": "b1"}))
        return outs

    seen = repr(play("Name a colour."))
    assert "could not answer" in seen and st.no_vote
    assert not any(n in seen for n in (*names, "secret-upstream-model", "127.0.0.1:9"))
    with pytest.raises(gr.Error, match="nothing to vote on|no vote for this round"):
        call(demo, vote_a, "carol", default_inputs(vote_a, {"ArenaTabState": st, "str": "b1"}))
    fail["on"] = False
    seen = repr(play("Name another colour."))  # a new round: the last one cannot be voted on
    assert not st.no_vote and not any(n in seen for n in names)
    after = repr(call(demo, vote_a, "carol", default_inputs(vote_a, {"ArenaTabState": st, "str": "b1"})))
    assert all(n in after for n in names)
