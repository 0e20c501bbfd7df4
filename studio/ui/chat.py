"""Chat tab: talk to any registry model, streamed, with a system prompt and sampling parameters."""

from __future__ import annotations

import gradio as gr

from ..registry import GenParams
from .common import friendly, model_choices


def build(studio) -> dict:
    """Lay out the Chat tab and wire its events. Returns the components refreshed on tab select."""
    registry = studio.registry
    names = model_choices(studio)
    with gr.Row():
        with gr.Column(scale=3):
            model = gr.Dropdown(names, value=names[0] if names else None, label="Model", elem_id="chat-model")
            chatbot = gr.Chatbot(label="Chat", height=460, elem_id="chat-bot", feedback_options=None)
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
    history = gr.State([])

    def add_user(text, hist):
        text = (text or "").strip()
        if not text:
            return gr.update(), hist, hist
        hist = hist + [{"role": "user", "content": text}]
        return "", hist, hist

    @friendly
    def respond(model_v, hist, system_v, max_new_v, temp_v, top_p_v, rep_v):
        if not hist or hist[-1]["role"] != "user":
            yield hist, hist
            return
        if not model_v:
            raise ValueError("choose a model")
        messages = ([{"role": "system", "content": system_v}] if (system_v or "").strip() else []) + hist
        params = GenParams(max_new_tokens=int(max_new_v), temperature=float(temp_v), top_p=float(top_p_v),
                           repetition_penalty=float(rep_v))
        reply = ""
        shown = hist + [{"role": "assistant", "content": ""}]
        for piece in registry.stream_chat(model_v, messages, params):
            reply += piece
            shown[-1] = {"role": "assistant", "content": reply}
            yield shown, hist
        yield shown, shown

    def do_retry(hist):
        while hist and hist[-1]["role"] == "assistant":
            hist = hist[:-1]
        return hist, hist

    def describe(model_v):
        if not model_v:
            return ""
        try:
            spec = registry.get(model_v)
        except Exception as e:  # noqa: BLE001 - shown, not raised
            return f"⚠️ {e}"
        loaded = " · loaded" if model_v in registry.loaded_names() else ""
        return f"**{spec.kind}** · `{spec.where}` · template {spec.template}{loaded}"

    gen_inputs = [model, history, system, max_new, temperature, top_p, rep]
    e1 = msg.submit(add_user, [msg, history], [msg, history, chatbot]).then(respond, gen_inputs, [chatbot, history])
    e2 = send.click(add_user, [msg, history], [msg, history, chatbot]).then(respond, gen_inputs, [chatbot, history])
    e3 = retry.click(do_retry, [history], [history, chatbot]).then(respond, gen_inputs, [chatbot, history])
    stop.click(None, None, None, cancels=[e1, e2, e3])
    clear.click(lambda: ([], []), None, [chatbot, history], cancels=[e1, e2, e3])
    model.change(describe, [model], [info])

    def refresh(model_v):
        names_now = model_choices(studio)
        v = model_v if model_v in names_now else (names_now[0] if names_now else None)
        return gr.update(choices=names_now, value=v), describe(v)

    return {"refresh": refresh, "inputs": [model], "outputs": [model, info]}
