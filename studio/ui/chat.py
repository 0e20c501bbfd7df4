"""Chat tab: talk to any registry model, streamed, with a system prompt and sampling parameters.

Handlers return ``{component: value}`` dicts; the conversation so far is the tab's one ``ChatTabState``. The chat
shows the messages through ``common.chat_messages`` (the user's text and the model's reply are untrusted: Markdown
formats, HTML and images are shown as text)."""

from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from ..registry import GenParams
from .common import chat_messages, chatbot, current_caller, guarded, md_code, md_text, model_choices


@dataclass
class ChatTabState:
    """What one browser session of the Chat tab keeps between events (the tab's one ``gr.State``).

    Attributes:
        history: the finished turns, ``[{"role": "user"|"assistant", "content": str}]``; a reply being streamed
            joins it when it is complete (a stopped reply does not).
        answered_by: ``{index in history: registry entry}`` of each answer (what a rating is about).
    """

    history: list[dict] = field(default_factory=list)
    answered_by: dict[int, str] = field(default_factory=dict)


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
            return {bot: chat_messages(st.history)}
        st.history = st.history + [{"role": "user", "content": text}]
        return {msg: "", bot: chat_messages(st.history)}

    def _reply(v):
        st = v[state]
        hist = list(st.history)
        if not hist or hist[-1]["role"] != "user":
            yield {bot: chat_messages(hist)}
            return
        if not v[model]:
            raise ValueError("choose a model")
        system_v = v[system]
        messages = ([{"role": "system", "content": system_v}] if (system_v or "").strip() else []) + hist
        params = GenParams(max_new_tokens=int(v[max_new]), temperature=float(v[temperature]),
                           top_p=float(v[top_p]), repetition_penalty=float(v[rep]))
        reply = ""
        shown = hist + [{"role": "assistant", "content": ""}]
        for piece in registry.stream_chat(v[model], messages, params):
            reply += piece
            shown[-1] = {"role": "assistant", "content": reply}
            yield {bot: chat_messages(shown)}
        st.history = shown
        st.answered_by[len(shown) - 1] = v[model]
        yield {bot: chat_messages(shown)}

    respond = chatting(_reply)

    @chatting
    def do_retry(v):
        """Drop the last answer and answer again, as one event (Stop cancels it; the page is busy throughout)."""
        st = v[state]
        while st.history and st.history[-1]["role"] == "assistant":
            st.history = st.history[:-1]
            st.answered_by.pop(len(st.history), None)
        yield {bot: chat_messages(st.history)}
        yield from _reply(v)

    @chatting
    def do_clear(v):
        v[state].history = []
        v[state].answered_by = {}
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
