"""Chat tab: talk to any registry model, streamed, with a system prompt and sampling parameters.

Handlers return ``{component: value}`` dicts; the conversation so far is the tab's one ``ChatTabState``. The chat
shows the messages through ``chat_view`` (``common.message_html``) (the user's text and the model's reply are untrusted: Markdown
formats, HTML and images are shown as text)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import gradio as gr

from ..registry import GenParams, RegistryError
from .common import chatbot, current_caller, guarded, md_code, md_text, message_html, model_choices


@dataclass
class ChatTabState:
    """What one browser session of the Chat tab keeps between events (the tab's one ``gr.State``).

    Attributes:
        history: the finished turns, ``[{"role": "user"|"assistant", "content": str}]``; a reply being streamed
            joins it when it is complete (a stopped reply does not).
        answered_by: ``{index in history: registry entry}`` of each answer (what a rating is about; shown above the
            answer).
        earlier: ``{index in history: [(entry, text), ...]}``: the answers Retry replaced at that place, oldest
            first (kept and shown folded under the current answer).
    """

    history: list[dict] = field(default_factory=list)
    answered_by: dict[int, str] = field(default_factory=dict)
    earlier: dict[int, list[tuple[str, str]]] = field(default_factory=dict)


def _answer_html(model: str | None, text: str, earlier: list[tuple[str, str]]) -> str:
    """An answer as the chat shows it: the model's name above it, the answers it replaced folded below."""
    by = f'<div class="wv-by">{html.escape(model)}</div>' if model else ""
    folded = ""
    if earlier:
        items = "".join(f'<div class="wv-by">{html.escape(m)}</div>{message_html(t)}' for m, t in earlier)
        n = len(earlier)
        folded = (f'<details class="wv-earlier"><summary>{n} earlier answer{"s" if n != 1 else ""}</summary>'
                  f"{items}</details>")
    return by + message_html(text) + folded


def chat_view(st: ChatTabState, partial: str | None = None, partial_model: str | None = None,
              error: str | None = None) -> list[dict]:
    """The chat's messages for the page: each answer labelled with its model and carrying the answers Retry
    replaced; ``partial`` is an answer being streamed (by ``partial_model``); ``error`` a failure shown after the
    conversation (not kept in it). All text through ``common.message_html`` (untrusted)."""
    out = []
    for i, m in enumerate(st.history):
        body = message_html(m["content"])
        if m["role"] == "assistant":
            body = _answer_html(st.answered_by.get(i), m["content"], st.earlier.get(i, []))
        out.append({"role": m["role"], "content": body})
    if partial is not None:
        out.append({"role": "assistant",
                    "content": _answer_html(partial_model, partial, st.earlier.get(len(st.history), []))})
    if error:
        out.append({"role": "assistant", "content": f'<div class="wv-error">⚠️ {html.escape(error)}</div>'})
    return out


def build(studio, browser_id=None) -> dict:
    """Lay out the Chat tab and wire its events. Returns the components refreshed on tab select.

    Args:
        browser_id: the page's per-browser id (``gr.BrowserState``): who rated an answer when nobody signs in.
    """
    registry = studio.registry
    names = model_choices(studio)
    with gr.Row():
        with gr.Column(scale=3):
            model = gr.Dropdown(names, value=names[0] if names else None, label="Model", elem_id="chat-model")
            bot = chatbot(label="Chat", height=460, elem_id="chat-bot", feedback_options=("Like", "Dislike"))
            with gr.Row():
                msg = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, scale=5,
                                 elem_id="chat-input", autofocus=True)
                send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
            with gr.Row():
                stop = gr.Button("Stop", elem_id="chat-stop")
                retry = gr.Button("Retry last", elem_id="chat-retry")
                clear = gr.Button("Clear", elem_id="chat-clear")
        with gr.Column(scale=1):
            system = gr.Textbox("", lines=4, label="System prompt (empty = the template's default)",
                                elem_id="chat-system")
            max_new = gr.Slider(16, 4096, value=256, step=16, label="Max new tokens", elem_id="chat-max-new")
            temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)",
                                    elem_id="chat-temperature")
            top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p", elem_id="chat-top-p")
            rep = gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty (local models)",
                            elem_id="chat-rep")
            info = gr.Markdown(elem_id="chat-info")
            note = gr.Textbox("", lines=2, label="Note with your 👍/👎 rating (optional)", elem_id="chat-note")
            rated = gr.Markdown("Rate any answer with 👍 or 👎 under it; ratings are kept with the model's name.",
                                elem_id="chat-rated")
    state = gr.State(ChatTabState())

    chatting = guarded(studio, "viewer", "Chat")

    @chatting
    def add_user(v):
        text = (v[msg] or "").strip()
        st = v[state]
        if not text:
            return {bot: chat_view(st)}
        st.history = st.history + [{"role": "user", "content": text}]
        return {msg: "", bot: chat_view(st)}

    def _reply(v):
        st = v[state]
        hist = list(st.history)
        if not hist or hist[-1]["role"] != "user":
            yield {bot: chat_view(st)}
            return
        if not v[model]:
            raise ValueError("choose a model")
        system_v = v[system]
        messages = ([{"role": "system", "content": system_v}] if (system_v or "").strip() else []) + hist
        params = GenParams(max_new_tokens=int(v[max_new]), temperature=float(v[temperature]),
                           top_p=float(v[top_p]), repetition_penalty=float(v[rep]))
        reply = ""
        name = v[model]
        try:
            for piece in registry.stream_chat(name, messages, params):
                reply += piece
                yield {bot: chat_view(st, partial=reply, partial_model=name)}
        except RegistryError as e:
            # the conversation stays on screen (the question included, so Retry can ask again); the failure is
            # said where it happened, under it, and is not kept in the conversation
            yield {bot: chat_view(st, error=str(e))}
            return
        st.history = hist + [{"role": "assistant", "content": reply}]
        st.answered_by[len(st.history) - 1] = name
        yield {bot: chat_view(st)}

    respond = chatting(_reply)

    @chatting
    def do_retry(v):
        """Drop the last answer and answer again, as one event (Stop cancels it; the page is busy throughout)."""
        st = v[state]
        while st.history and st.history[-1]["role"] == "assistant":
            k = len(st.history) - 1
            st.earlier.setdefault(k, []).append((st.answered_by.pop(k, None) or "?", st.history[k]["content"]))
            st.history = st.history[:-1]
        yield {bot: chat_view(st)}
        yield from _reply(v)

    @chatting
    def do_clear(v):
        v[state].history = []
        v[state].answered_by = {}
        v[state].earlier = {}
        return {bot: []}

    def describe(model_v) -> str:
        if not model_v:
            return ""
        try:
            spec = registry.get(model_v)
        except Exception as e:  # noqa: BLE001 - shown, not raised
            return f"⚠️ {md_text(e)}"
        loaded = " · loaded" if model_v in registry.loaded_names() else ""
        return f"**{md_text(spec.kind)}** · {md_code(spec.where)} · template {md_text(spec.template)}{loaded}"

    gen_inputs = {model, state, system, max_new, temperature, top_p, rep}
    e1 = msg.submit(add_user, {msg, state}, [msg, bot]).then(respond, gen_inputs, [bot])
    e2 = send.click(add_user, {msg, state}, [msg, bot]).then(respond, gen_inputs, [bot])
    e3 = retry.click(do_retry, gen_inputs, [bot])
    stop.click(None, None, None, cancels=[e1, e2, e3])
    clear.click(do_clear, {state}, [bot], cancels=[e1, e2, e3])
    model.change(chatting(lambda model_v: {info: describe(model_v)}), [model], [info])

    @guarded(studio, "viewer", "Rating an answer")
    def rate(v, like: gr.LikeData):
        st: ChatTabState = v[state]
        idx = like.index if isinstance(like.index, int) else like.index[0]
        if not (0 <= idx < len(st.history)) or st.history[idx]["role"] != "assistant" or idx not in st.answered_by:
            raise ValueError("only a finished answer of this chat can be rated")
        if like.liked not in (True, False):
            raise ValueError(f"unknown rating {like.liked!r}: use 👍 or 👎")
        caller = current_caller()
        voter = caller.name or f"browser:{(v[browser_id] if browser_id is not None else '') or 'unknown'}"[:72]
        name = st.answered_by[idx]
        rid = studio.store.add_rating(name, [dict(m) for m in st.history[:idx + 1]], 1 if like.liked else -1,
                                      (v[note] or "").strip(), voter)
        return {rated: f"{'👍' if like.liked else '👎'} Rating #{rid} of {md_text(name)}'s answer saved.", note: ""}

    bot.like(rate, {state, note} | ({browser_id} if browser_id is not None else set()), [rated, note])

    @chatting
    def refresh(model_v):
        names_now = model_choices(studio)
        value = model_v if model_v in names_now else (names_now[0] if names_now else None)
        return {model: gr.update(choices=names_now, value=value), info: describe(value)}

    return {"refresh": refresh, "inputs": [model], "outputs": [model, info]}
