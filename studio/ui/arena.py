"""Arena tab: the same prompt to 2-4 registry models, answers streamed side by side at the same time, one vote per
round, and the leaderboard (``ui.leaderboard``).

Two panels, as in Chatbot Arena (FastChat ``fastchat/serve/gradio_block_arena_anony.py`` and
``gradio_block_arena_named.py``):

* **Battle (anonymous):** the studio draws two models (weights: ``Settings.arena_weights``) in random left/right
  order. Until the vote, nothing the page receives names them: the panels say "Model A" and "Model B", a failure
  is reported without the model's message, and the round (models included) lives only in the server-side
  ``gr.State``. The vote reveals the names.
* **Side by side (named):** 2-4 models picked by name (or a fine-tune and its base in one pick).

Answers stream concurrently: one thread per side reads ``Registry.stream_chat`` and the handler merges their
pieces as they come, so an endpoint does not wait for a local model, and two local models (each with its own
lock) decode in turns. A round can be voted on once (``ArenaTabState.voted``, and the store's unique round id);
Stop, a failure or an empty answer closes voting for the round with the reason shown. All text from models is
shown through ``common.chat_messages`` (untrusted).
"""

from __future__ import annotations

import queue
import random
import threading
import time
import uuid
from dataclasses import dataclass, field

import gradio as gr

from ..battles import battle_problem
from ..questions import Question, load_set, set_choices
from ..registry import GenParams
from .common import chat_messages, chatbot, current_caller, guarded, md_text, model_choices

LETTERS = "ABCD"
STOP_POLL_S = 0.25
"""How often ``stream_sides`` looks at Stop while no side sends anything (seconds)."""
MAX_SIDES = 4
VOTES = ("tie", "bothbad")


@dataclass
class Side:
    """One answer column of a round.

    Attributes:
        model: the registry entry answering (never sent to the page of an anonymous round before the vote).
        history: this side's conversation, ``[{"role": "user"|"assistant", "content": str}]``.
        error: why its last answer failed ("" if it did not), the full message.
    """

    model: str
    history: list[dict] = field(default_factory=list)
    error: str = ""


@dataclass
class ArenaTabState:
    """What one browser session of an Arena panel keeps between events (the panel's one ``gr.State``; server-side
    only, Gradio never sends a State's value to the browser).

    Attributes:
        anonymous: a battle (names hidden until the vote) or a named comparison.
        round_id: this round's id (a new one per round; the vote is stored under it), "" before the first prompt.
        sides: the 2-4 columns.
        voted: the vote given in this round ("" = none yet).
        no_vote: why this round cannot be voted on ("" = it can, once every side has answered).
        answering: an answer is being streamed (voting waits for it).
        settled: the last answer event has completed, so the vote buttons may open (see ``settle``).
        stop: set by Stop to end the streams at their next piece.
        question: the question drawn from a set for this round, if any (its id is stored with the vote).
        params: the generation parameters of the last answer (stored with the vote), incl. the system prompt.
        preview: the models picked for the next named round (shown before the first prompt).
        kept: the round whose winning answer was kept as training data ("" = none), so it is kept once.
    """

    anonymous: bool
    round_id: str = ""
    sides: list[Side] = field(default_factory=list)
    voted: str = ""
    no_vote: str = ""
    answering: bool = False
    settled: bool = True
    stop: threading.Event | None = None
    question: Question | None = None
    params: dict = field(default_factory=dict)
    preview: list[str] = field(default_factory=list)
    kept: str = ""

    def answered(self) -> bool:
        """Every side's last message is a (complete) answer."""
        return bool(self.sides) and all(s.history and s.history[-1]["role"] == "assistant" for s in self.sides)


def sample_pair(names: list[str], weight, rng: random.Random) -> list[str]:
    """Two different entries for an anonymous battle: the first drawn with probability proportional to its weight,
    the second likewise among the others, then put in random left/right order (FastChat
    ``gradio_block_arena_anony.py`` ``get_battle_pair`` samples by weight the same way).

    Args:
        names: registry entry names.
        weight: ``name -> float`` (``Settings.arena_weight``); entries weighing 0 are never drawn.
        rng: the random source.

    Raises:
        ValueError: fewer than two entries with a positive weight.
    """
    pool = [n for n in names if weight(n) > 0]
    if len(pool) < 2:
        raise ValueError("an anonymous battle needs at least two models in the registry with a sampling weight "
                         "above 0 (add a model in the Models tab, or check STUDIO_ARENA_WEIGHTS)")
    first = rng.choices(pool, weights=[weight(n) for n in pool])[0]
    rest = [n for n in pool if n != first]
    second = rng.choices(rest, weights=[weight(n) for n in rest])[0]
    pair = [first, second]
    rng.shuffle(pair)
    return pair


def battles_of_vote(st: ArenaTabState, vote: str, *, voter: str, language: str) -> list[dict]:
    """The battle rows a vote becomes (``Store.add_battle`` items, Chatbot Arena's fields).

    Two sides: one battle, ``winner`` = ``model_a`` (vote ``"0"``), ``model_b`` (``"1"``), ``tie`` or
    ``tie (bothbad)``. Three or four sides: "X is best" becomes a win of X over each other side (the pairs without
    X say nothing and are left out); a tie or "all bad" ties every pair. Each battle of a round has its own id
    (``<round>`` for two sides, ``<round>:<i><j>`` otherwise).

    Args:
        vote: ``"0"``-``"3"`` (the best side's index), ``"tie"`` or ``"bothbad"``.
    """
    n = len(st.sides)
    now = time.time()
    turn = sum(1 for m in st.sides[0].history if m["role"] == "user")
    out = []
    for i in range(n):
        for j in range(i + 1, n):
            if vote == "tie":
                winner = "tie"
            elif vote == "bothbad":
                winner = "tie (bothbad)"
            elif int(vote) in (i, j):
                winner = "model_a" if int(vote) == i else "model_b"
            else:
                continue
            out.append({
                "round_id": st.round_id if n == 2 else f"{st.round_id}:{i}{j}",
                "model_a": st.sides[i].model, "model_b": st.sides[j].model, "winner": winner, "judge": voter,
                "conversation_a": [dict(m) for m in st.sides[i].history],
                "conversation_b": [dict(m) for m in st.sides[j].history],
                "turn": turn, "anony": st.anonymous, "language": language, "tstamp": now, "params": dict(st.params),
                "question_id": st.question.question_id if st.question else None, "origin": "studio"})
    return out


def stream_sides(registry, sides: list[Side], messages: list[list[dict]], params: GenParams, stop: threading.Event):
    """Stream every side's answer at the same time: one thread per side reads ``registry.stream_chat``; yields
    ``(texts, finished, errors)`` after each batch of new pieces (lists indexed like ``sides``; ``errors[i]`` is
    the side's exception or None). Setting ``stop`` (or closing this generator) ends each stream within one decoding step (a local model's
    engine checks it at every step) or at its next piece (an endpoint), which cancels its generation; a side that sends nothing more is left unfinished when ``stop`` is set (its
    thread ends at its next piece). ``stop`` is only read here, so after the end it still says whether Stop was
    pressed."""
    q: queue.Queue = queue.Queue()
    closing = threading.Event()

    def work(i: int, side: Side) -> None:
        err = None
        try:
            it = registry.stream_chat(side.model, messages[i], params,
                                      should_stop=lambda: stop.is_set() or closing.is_set())
            try:
                for piece in it:
                    if stop.is_set() or closing.is_set():
                        break
                    q.put((i, piece, None))
            finally:
                it.close()
        except Exception as e:  # noqa: BLE001 - reported in the side's column
            err = e
        finally:
            # always the side's last message, whatever failed where (calling stream_chat, a piece, closing it):
            # without it the reader would wait for this side for ever
            q.put((i, None, err))

    n = len(sides)
    texts, finished, errors = [""] * n, [False] * n, [None] * n
    threads = [threading.Thread(target=work, args=(i, s), daemon=True, name=f"arena-{i}") for i, s in enumerate(sides)]
    try:
        for t in threads:
            t.start()
        while not all(finished):
            try:
                items = [q.get(timeout=STOP_POLL_S)]
            except queue.Empty:
                if stop.is_set():  # a stream that sends nothing more (a hung endpoint) ends at Stop all the same
                    break
                continue
            while True:
                try:
                    items.append(q.get_nowait())
                except queue.Empty:
                    break
            for i, piece, err in items:
                if piece is not None:
                    texts[i] += piece
                else:
                    finished[i], errors[i] = True, err
            yield texts, finished, errors
    finally:
        closing.set()


def build(studio, browser_id) -> dict:
    """Lay out the Arena tab (battle, side by side, leaderboard) and wire its events.

    Args:
        studio: the shared ``Studio``.
        browser_id: the page's ``gr.BrowserState`` holding a per-browser id (the voter when nobody signs in).

    Returns:
        ``{"refresh", "inputs", "outputs"}`` for the tab's select event.
    """
    from . import leaderboard

    with gr.Tabs(elem_id="arena-tabs"):
        with gr.Tab("Battle (anonymous)", id="arena-battle", elem_id="arena-battle"):
            anon = _panel(studio, browser_id, anonymous=True)
        with gr.Tab("Side by side (named)", id="arena-named", elem_id="arena-named"):
            named = _panel(studio, browser_id, anonymous=False)
        with gr.Tab("Leaderboard", id="arena-leaderboard", elem_id="arena-leaderboard") as t_board:
            board = leaderboard.build(studio)
    t_board.select(board["refresh"], board["inputs"], board["outputs"], show_progress="hidden")

    @guarded(studio, "viewer", "Browsing the arena")
    def refresh(v):
        out = {}
        for p in (anon, named):
            out.update(p["refresh"](v))
        return out

    return {"refresh": refresh, "inputs": {*anon["inputs"], *named["inputs"]},
            "outputs": [*anon["outputs"], *named["outputs"]]}


def _panel(studio, browser_id, *, anonymous: bool) -> dict:
    """One comparison panel (anonymous battle or named side by side); returns its refresh hook."""
    registry, store = studio.registry, studio.store
    key = "arena-anon" if anonymous else "arena-named"
    n_cols = 2 if anonymous else MAX_SIDES
    names = model_choices(studio)
    models = pair_pick = None
    if not anonymous:
        with gr.Row():
            models = gr.Dropdown(names, value=names[:2] if len(names) >= 2 else names, multiselect=True,
                                 max_choices=MAX_SIDES, label="Models (2 to 4)", scale=3, elem_id=f"{key}-models")
            pair_pick = gr.Dropdown(_finetunes(registry), value=None, label="Or: a fine-tune against its base",
                                    scale=2, elem_id=f"{key}-finetune")
    else:
        gr.Markdown("Two models drawn at random answer the same prompt; their names show after your vote.",
                    elem_id=f"{key}-intro")
    bots, cols = [], []
    with gr.Row(equal_height=True):
        for i in range(n_cols):
            with gr.Column(visible=i < 2, min_width=260) as col:
                first = f"Model {LETTERS[i]}" + (f": {names[i]}" if not anonymous and i < min(2, len(names)) else "")
                bots.append(chatbot(label=first, height=420, elem_id=f"{key}-bot-{LETTERS[i].lower()}"))
            cols.append(col)
    with gr.Row():
        vote_btns = [gr.Button(_best_label(i, 2), interactive=False, visible=i < 2, elem_id=f"{key}-vote-{LETTERS[i].lower()}")
                     for i in range(n_cols)]
        tie_btn = gr.Button("🤝 Tie", interactive=False, elem_id=f"{key}-vote-tie")
        bad_btn = gr.Button("👎 Both are bad", interactive=False, elem_id=f"{key}-vote-bothbad")
    status = gr.Markdown("", elem_id=f"{key}-status")
    with gr.Row():
        msg = gr.Textbox(placeholder="Type a prompt for all models and press Enter", show_label=False, scale=5,
                         elem_id=f"{key}-input")
        send = gr.Button("Send", variant="primary", scale=1, elem_id=f"{key}-send")
    with gr.Row():
        qset = gr.Dropdown(set_choices(store), value="mt_bench", label="Question set", scale=3,
                           elem_id=f"{key}-qset")
        draw = gr.Button("🎲 Draw a question", scale=1, elem_id=f"{key}-draw")
        regen = gr.Button("🔄 Regenerate", scale=1, elem_id=f"{key}-regen")
        stop = gr.Button("⏹ Stop", scale=1, elem_id=f"{key}-stop")
        new = gr.Button("🆕 New round", scale=1, elem_id=f"{key}-new")
        keep = gr.Button("➕ Keep the winning answer as training data", interactive=False, scale=2,
                         elem_id=f"{key}-keep")
    with gr.Accordion("Sampling (shared by all models)", open=False, elem_id=f"{key}-sampling"):
        system = gr.Textbox("", lines=2, label="System prompt (empty = each template's default)",
                            elem_id=f"{key}-system")
        with gr.Row():
            max_new = gr.Slider(16, 4096, value=256, step=16, label="Max new tokens", elem_id=f"{key}-max-new")
            temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)",
                                    elem_id=f"{key}-temperature")
            top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p", elem_id=f"{key}-top-p")
            rep = gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty (local models)",
                            elem_id=f"{key}-rep")
    state = gr.State(ArenaTabState(anonymous=anonymous, preview=[] if anonymous else names[:2]))
    rng = random.Random()
    vote_lock = threading.Lock()  # one vote at a time: two clicks at once cannot both pass the checks

    # ------------------------------------------------------------------ what the page shows
    def label(st: ArenaTabState, i: int) -> str:
        names_ = [s.model for s in st.sides] or st.preview
        if i >= len(names_) or (st.anonymous and not st.voted):
            return f"Model {LETTERS[i]}"
        return f"Model {LETTERS[i]}: {names_[i]}"

    def shown(st: ArenaTabState, i: int, partial: str | None = None) -> list[dict]:
        if i >= len(st.sides):
            return []
        side = st.sides[i]
        msgs = list(side.history) + ([{"role": "assistant", "content": partial}] if partial is not None else [])
        if side.error and partial is None:
            why = side.error if not st.anonymous or st.voted else "the error is hidden until the round is over"
            msgs.append({"role": "assistant", "content": f"⚠️ This model could not answer: {why}"})
        return chat_messages(msgs)

    def can_vote(st: ArenaTabState) -> bool:
        return (bool(st.sides) and not st.voted and not st.no_vote and not st.answering and st.settled
                and st.answered())

    def view(st: ArenaTabState, partial: list[str] | None = None, note: str | None = None) -> dict:
        n = max(2, len(st.sides) or len(st.preview))
        out = {}
        for i in range(n_cols):
            out[bots[i]] = gr.update(value=shown(st, i, partial[i] if partial else None), label=label(st, i))
            out[cols[i]] = gr.update(visible=i < n)
            out[vote_btns[i]] = gr.update(value=_best_label(i, n), visible=i < n, interactive=can_vote(st))
        out[tie_btn] = gr.update(interactive=can_vote(st), value="🤝 Tie" if n == 2 else "🤝 All tie")
        out[bad_btn] = gr.update(interactive=can_vote(st), value="👎 Both are bad" if n == 2 else "👎 All are bad")
        out[keep] = gr.update(interactive=bool(st.voted) and st.voted not in VOTES)
        out[status] = note if note is not None else describe(st)
        return out

    def describe(st: ArenaTabState) -> str:
        if not st.sides:
            return ""
        if st.voted:
            names = " · ".join(f"**{LETTERS[i]}**: {md_text(s.model)}" for i, s in enumerate(st.sides))
            return f"✅ Vote recorded: {md_text(_vote_words(st.voted, len(st.sides)))}. {names}"
        if st.no_vote:
            return f"🚫 No vote for this round: {md_text(st.no_vote)}. Start a new round."
        if st.answering:
            return "⏳ Answering…"
        if st.answered():
            return "Which answer is better? Vote below, or keep chatting (multi-turn) and vote later."
        return ""

    # ------------------------------------------------------------------ handlers
    viewing = guarded(studio, "viewer", "Comparing models")

    def start_round(st: ArenaTabState, v: dict) -> None:
        if anonymous:
            picked = sample_pair(registry.names(), studio.settings.arena_weight, rng)
        else:
            picked = list(dict.fromkeys(v[models] or []))
            if not 2 <= len(picked) <= MAX_SIDES:
                raise ValueError(f"pick 2 to {MAX_SIDES} different models to compare (picked {len(picked)})")
            for name in picked:
                registry.get(name)  # a clear error for an entry removed meanwhile
        st.round_id, st.sides, st.voted, st.no_vote = uuid.uuid4().hex, [Side(m) for m in picked], "", ""

    @viewing
    def add_user(v):
        st: ArenaTabState = v[state]
        text = (v[msg] or "").strip()
        if not text:
            return view(st)
        if st.answering and st.stop is not None:
            st.stop.set()  # an answer still streaming (or one whose event was cancelled) ends here
            st.answering = False
        drawn = st.question
        if not st.sides or st.voted or st.no_vote or (not anonymous and [s.model for s in st.sides]
                                                       != list(dict.fromkeys(v[models] or []))):
            start_round(st, v)
            st.question = drawn if drawn and text == drawn.turns[0] else None
        for side in st.sides:
            side.history.append({"role": "user", "content": text})
            side.error = ""
        st.answering = True
        return {**view(st), msg: ""}

    def _answer(v):
        st: ArenaTabState = v[state]
        if not st.sides or st.sides[0].history[-1:] == [] or st.sides[0].history[-1]["role"] != "user":
            st.answering = False
            yield view(st)
            return
        system_v = (v[system] or "").strip()
        params = GenParams(max_new_tokens=int(v[max_new]), temperature=float(v[temperature]),
                           top_p=float(v[top_p]), repetition_penalty=float(v[rep]))
        st.params = {**params.as_dict(), "system": system_v}
        head = [{"role": "system", "content": system_v}] if system_v else []
        st.stop = stop_ev = threading.Event()
        st.answering, st.settled = True, False
        texts: list[str] = [""] * len(st.sides)
        errors: list = [None] * len(st.sides)
        try:
            for texts, finished, errors in stream_sides(registry, st.sides, [head + s.history for s in st.sides],
                                                        params, stop_ev):
                yield view(st, partial=list(texts) + [""] * (n_cols - len(texts)))
        except BaseException:  # cancelled (Stop, New round) or failed
            st.answering, st.settled = False, True
            raise
        reasons = []
        for i, side in enumerate(st.sides):
            if errors[i] is not None:
                side.error = str(errors[i])
                reasons.append(f"model {LETTERS[i]} could not answer")
                continue
            side.history.append({"role": "assistant", "content": texts[i].strip()})
            if not texts[i].strip() and not stop_ev.is_set():
                reasons.append(f"model {LETTERS[i]} gave an empty answer")
        if stop_ev.is_set() and not st.no_vote:
            reasons.append("the answers were stopped")
        if reasons and not st.no_vote:
            st.no_vote = "; ".join(reasons)
        st.answering = False  # only now: a vote in between would have counted a failed or empty answer
        yield view(st)

    answer = viewing(_answer)

    @viewing
    def settle(v):
        """Open the vote buttons once the answer event has completed. Gradio applies a generator's last output
        again when its event completes: had that output opened the buttons, a quick vote would show "Vote
        recorded" and then be undone on screen by it (the vote stored, the buttons open again)."""
        st: ArenaTabState = v[state]
        st.settled = True
        return view(st)

    @viewing
    def regenerate(v):
        st: ArenaTabState = v[state]
        if not st.sides:
            yield view(st)
            return
        if st.voted:
            raise ValueError("this round was voted on; start a new round")
        if st.answering and st.stop is not None:
            st.stop.set()
        for side in st.sides:
            while side.history and side.history[-1]["role"] == "assistant":
                side.history.pop()
            side.error = ""
        st.no_vote = ""
        st.answering = True
        yield view(st)
        yield from _answer(v)

    @viewing
    def do_stop(v):
        st: ArenaTabState = v[state]
        if st.answering and st.stop is not None:
            st.stop.set()
            st.no_vote = st.no_vote or "the answers were stopped"
        st.answering, st.settled = False, True
        return view(st)

    @viewing
    def new_round(v):
        st: ArenaTabState = v[state]
        if st.stop is not None:
            st.stop.set()
        st.round_id, st.sides, st.voted, st.no_vote, st.answering, st.question = "", [], "", "", False, None
        st.settled = True
        out = view(st)
        return {**out, msg: ""}

    def make_vote(choice: str):
        def do_vote(v):
            with vote_lock:
                return _vote(v)

        def _vote(v):
            st: ArenaTabState = v[state]
            if st.voted:
                raise ValueError("this round was already voted on; start a new round to vote again")
            if not st.sides or not st.answered() or st.answering:
                raise ValueError("there is nothing to vote on yet: send a prompt and wait for the answers")
            if st.no_vote:
                raise ValueError(f"no vote for this round: {st.no_vote}")
            if choice not in VOTES and int(choice) >= len(st.sides):
                raise ValueError(f"there is no model {LETTERS[int(choice)]} in this round")
            caller = current_caller()
            voter = caller.name or f"browser:{(v[browser_id] or 'unknown')[:64]}"
            from ..quality import detect_language

            first = next((m["content"] for m in st.sides[0].history if m["role"] == "user"), "")
            language = detect_language(first)[0] if len(first) >= 20 else "unknown"
            rows = battles_of_vote(st, choice, voter=voter, language=language)
            n = len(st.sides)
            ids = [st.round_id] if n == 2 else [f"{st.round_id}:{i}{j}" for i in range(n) for j in range(i + 1, n)]
            if any(store.has_vote(x) for x in ids):  # every battle of the round or none (3-4 sides: several rows)
                raise ValueError("this round was already voted on; only the first vote counts and it is kept")
            for row in rows:
                problem = battle_problem(row)
                if problem:
                    raise ValueError(f"this vote cannot be stored: {problem}")
            for row in rows:
                store.add_battle(row)
            st.voted = choice
            return view(st)
        return guarded(studio, "viewer", "Voting")(do_vote)

    @guarded(studio, "editor", "Keeping an arena answer")
    def keep_winner(v):
        with vote_lock:
            return _keep(v)

    def _keep(v):
        st: ArenaTabState = v[state]
        if not st.voted or st.voted in VOTES:
            raise ValueError("keep needs a vote with a winner (not a tie)")
        if st.kept == st.round_id:
            raise ValueError("this round's winning answer was already kept as training data (see the Data tab)")
        side = st.sides[int(st.voted)]
        messages = ([{"role": "system", "content": st.params["system"]}] if st.params.get("system") else []) \
            + [dict(m) for m in side.history]
        cid = store.add_conversation(messages, origin="arena", teacher=side.model,
                                     gen_params={k: v_ for k, v_ in st.params.items() if k != "system"})
        st.kept = st.round_id
        return {status: f"{describe(st)}\n\nKept {md_text(side.model)}'s conversation as #{cid} (origin arena) in "
                        f"the Data tab."}

    @viewing
    def draw_question(v):
        st: ArenaTabState = v[state]
        q = st.question
        done = sum(1 for m in st.sides[0].history if m["role"] == "user") if st.sides else 0
        if q and not st.voted and not st.no_vote and st.answered() and done < len(q.turns):
            return {msg: q.turns[done]}  # the drawn question's next turn (MT-bench has two)
        questions = load_set(v[qset] or "mt_bench", store)
        q = rng.choice(questions)
        st.question = q
        return {msg: q.turns[0]}

    @viewing
    def pick_finetune(v):
        name = v[pair_pick]
        if not name:
            return {}
        base = _base_of(registry, name)
        if base is None:
            raise ValueError(f"'{name}' has no base model in the registry to compare against")
        return {models: gr.update(value=[name, base])}

    @viewing
    def on_models(v):
        st: ArenaTabState = v[state]
        st.preview = list(dict.fromkeys(v[models] or []))[:MAX_SIDES]
        # a round on screen stays as it is: no update (a non-empty dict, since Gradio reads an empty one as a
        # single value and raises "didn't return enough output values")
        return view(st) if not st.sides else {status: gr.update()}

    @viewing
    def refresh(v):
        names_now = model_choices(studio)
        out = {qset: gr.update(choices=set_choices(store))}
        if not anonymous:
            keep_v = [n for n in (v[models] or []) if n in names_now]
            keep_v = keep_v if len(keep_v) >= 2 else list(dict.fromkeys(keep_v + names_now))[:2]
            out[models] = gr.update(choices=names_now, value=keep_v)
            out[pair_pick] = gr.update(choices=_finetunes(registry))
        return out

    shown_outputs = [*bots, *cols, *vote_btns, tie_btn, bad_btn, keep, status]
    gen_inputs = {state, system, max_new, temperature, top_p, rep}
    add_inputs = {state, msg} | ({models} if models is not None else set())
    e1 = msg.submit(add_user, add_inputs, shown_outputs + [msg]).then(answer, gen_inputs, shown_outputs)
    e2 = send.click(add_user, add_inputs, shown_outputs + [msg]).then(answer, gen_inputs, shown_outputs)
    e3 = regen.click(regenerate, gen_inputs, shown_outputs)
    for e in (e1, e2, e3):
        e.then(settle, {state}, shown_outputs)
    stop.click(do_stop, {state}, shown_outputs, cancels=[e1, e2, e3])
    new.click(new_round, {state}, shown_outputs + [msg], cancels=[e1, e2, e3])
    for i, b in enumerate(vote_btns):
        b.click(make_vote(str(i)), {state, browser_id}, shown_outputs)
    tie_btn.click(make_vote("tie"), {state, browser_id}, shown_outputs)
    bad_btn.click(make_vote("bothbad"), {state, browser_id}, shown_outputs)
    keep.click(keep_winner, {state}, [status])
    draw.click(draw_question, {state, qset}, [msg])
    if pair_pick is not None:
        pair_pick.change(pick_finetune, {pair_pick}, [models])
        models.change(on_models, {state, models}, shown_outputs)
    inputs = {models} if models is not None else set()
    outputs = [qset] + ([models, pair_pick] if models is not None else [])
    return {"refresh": refresh.__wv_fn__, "inputs": inputs, "outputs": outputs}


def _best_label(i: int, n: int) -> str:
    if n == 2:
        return "👈 A is better" if i == 0 else "👉 B is better"
    return f"🏆 {LETTERS[i]} is best"


def _vote_words(vote: str, n: int) -> str:
    if vote == "tie":
        return "a tie"
    if vote == "bothbad":
        return "both are bad" if n == 2 else "all are bad"
    return f"{LETTERS[int(vote)]} is better" if n == 2 else f"{LETTERS[int(vote)]} is best"


def _base_of(registry, name: str) -> str | None:
    """The registry entry a fine-tune was trained from: an adapter's base, else its lineage's ``base``."""
    try:
        spec = registry.get(name)
    except Exception:  # noqa: BLE001 - removed meanwhile
        return None
    base = spec.base if spec.kind == "adapter" else (spec.lineage or {}).get("base")
    return base if base and base in registry.names() and base != name else None


def _finetunes(registry) -> list[str]:
    """Entries with a base model in the registry (trained here, or adapters): the choices of "a fine-tune
    against its base"."""
    return [n for n in registry.names() if _base_of(registry, n)]
