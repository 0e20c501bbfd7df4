"""Models tab: the one registry every tab uses. List entries, add a checkpoint folder / hub id or an
OpenAI-compatible endpoint (with its timeout, concurrency, retries and prices per 1M tokens), check that one works
(an endpoint: its models listed and one short chat; a wrong URL, a refused key or an unknown model said in the
result box), remove one. Handlers return ``{component: value}`` dicts; the selected entry is the "Selected" box
(no hidden state).

A check or removal that fails (nothing selected, a dead endpoint) is said in the status line under the buttons
(``common.failed_md``), not raised; a refused addition is a toast that fades. Gradio marks every output of a
failed event with an error badge, so the registry table is never an output of a step that can fail: it is
reloaded after a step that succeeded."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ..registry import (DEFAULT_ENDPOINT_CONCURRENCY, DEFAULT_ENDPOINT_MAX_RETRIES, DEFAULT_ENDPOINT_TIMEOUT_S,
                        TEMPLATE_CHOICES, ModelSpec)
from .common import USER_ERRORS, failed_md, guarded, md_code, md_text


def _number(value, what: str, default, cast):
    """A form number: ``default`` when empty, else ``cast(value)``; ValueError naming the field otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: '{value}' is not a number") from None
    if cast is int:
        if f != int(f):
            raise ValueError(f"{what}: {value} is not a whole number")
        return int(f)
    return f


def build(studio) -> dict:
    """Lay out the Models tab and wire its events. Returns the components refreshed on tab select."""
    registry = studio.registry

    def table():
        loaded = set(registry.loaded_names())
        rows = [[s.name, s.kind, s.where, s.template if s.kind != "endpoint" else "server's",
                 s.api_key_env or "", s.request_settings, "yes" if s.name in loaded else "", s.description]
                for s in registry.list()]
        return pd.DataFrame(rows, columns=["name", "kind", "where", "template", "key variable", "requests",
                                           "loaded", "description"])

    # widths that fit the page (1400 px): the description wraps instead of running off the right edge
    models_table = gr.Dataframe(table(), interactive=False, wrap=True, elem_id="models-table",
                                label="Registry (click a row to select it)",
                                column_widths=["14%", "5%", "20%", "10%", "11%", "9%", "7%", "24%"])
    with gr.Row():
        selected = gr.Textbox(label="Selected", elem_id="models-selected", scale=3)
        ping_btn = gr.Button("Check it works", elem_id="models-ping")
        remove_btn = gr.Button("Remove", variant="stop", elem_id="models-remove")
    out = gr.Markdown(elem_id="models-out")
    with gr.Row():
        with gr.Column():
            gr.Markdown("#### Add an OpenAI-compatible endpoint\nChatGPT, vLLM, llama.cpp server, Ollama, or "
                        "another studio's `/v1`. The key is read from the environment variable you name; it is "
                        "never stored. Only variables the admin allowed (`STUDIO_ENDPOINT_KEY_ENVS`) can be "
                        "named.")
            ep_name = gr.Textbox(label="Name", elem_id="models-ep-name")
            ep_url = gr.Textbox(label="Base URL", placeholder="http://127.0.0.1:8000/v1", elem_id="models-ep-url")
            ep_model = gr.Textbox(label="Model name on the server", placeholder="gpt-4o-mini",
                                  elem_id="models-ep-model")
            ep_env = gr.Textbox(label="Environment variable holding the API key (optional)",
                                placeholder="OPENAI_API_KEY", elem_id="models-ep-env")
            with gr.Row():
                ep_timeout = gr.Number(DEFAULT_ENDPOINT_TIMEOUT_S, label="Timeout (s)", minimum=0, maximum=3600,
                                       elem_id="models-ep-timeout")
                ep_conc = gr.Number(DEFAULT_ENDPOINT_CONCURRENCY, label="Requests at once", precision=0, minimum=1,
                                    maximum=256, elem_id="models-ep-concurrency")
                ep_retries = gr.Number(DEFAULT_ENDPOINT_MAX_RETRIES, label="Retries (429, 5xx, timeouts)",
                                       precision=0, minimum=0, maximum=10, elem_id="models-ep-retries")
            with gr.Row():
                ep_price_in = gr.Number(0.0, label="Price per 1M input tokens ($)", minimum=0,
                                        elem_id="models-ep-price-in")
                ep_price_out = gr.Number(0.0, label="Price per 1M output tokens ($)", minimum=0,
                                         elem_id="models-ep-price-out")
            ep_btn = gr.Button("Add endpoint", variant="primary", elem_id="models-ep-add")
        with gr.Column():
            gr.Markdown("#### Add a Hugging Face checkpoint\nA local folder (with `config.json`) or a hub id "
                        "(downloaded on first use; needs a network), or a `.gguf` file (converted once).")
            hf_name = gr.Textbox(label="Name", elem_id="models-hf-name")
            hf_path = gr.Textbox(label="Folder, hub id or .gguf file", elem_id="models-hf-path")
            hf_tpl = gr.Dropdown(list(TEMPLATE_CHOICES), value="auto", label="Chat template",
                                 elem_id="models-hf-template")
            hf_btn = gr.Button("Add checkpoint", variant="primary", elem_id="models-hf-add")

    @guarded(studio, "admin", "Adding an endpoint")
    def add_endpoint(name, url, model, env, timeout, concurrency, retries, price_in, price_out):
        spec = registry.add_endpoint(
            (name or "").strip(), (url or "").strip(), (model or "").strip(), (env or "").strip() or None,
            timeout=_number(timeout, "Timeout", DEFAULT_ENDPOINT_TIMEOUT_S, float),
            concurrency=_number(concurrency, "Requests at once", DEFAULT_ENDPOINT_CONCURRENCY, int),
            max_retries=_number(retries, "Retries", DEFAULT_ENDPOINT_MAX_RETRIES, int),
            price_in_per_m=_number(price_in, "Price per 1M input tokens", 0.0, float),
            price_out_per_m=_number(price_out, "Price per 1M output tokens", 0.0, float))
        return {out: f"✅ Added endpoint **{md_text(spec.name)}** ({md_code(spec.where)}; "
                                            f"{md_text(spec.request_settings)})."}

    @guarded(studio, "admin", "Adding a checkpoint")
    def add_hf(name, path, tpl):
        path = (path or "").strip()
        kind = "gguf" if path.endswith(".gguf") else "hf"
        spec = registry.add(ModelSpec(name=(name or "").strip(), kind=kind, path=path, template=tpl))
        return {out: f"✅ Added **{md_text(spec.name)}** ({md_code(spec.where)})."}

    @guarded(studio, "admin", "Checking a model")
    def ping(name):
        if not name:
            return {out: "❌ Check it works: select a model in the table first (click its row)."}
        try:
            return {out: "✅ " + md_text(registry.ping(name))}
        except USER_ERRORS as e:
            return {out: failed_md(f"Checking **{md_text(name)}** failed", e)}

    @guarded(studio, "admin", "Removing a model")
    def remove(name):
        if not name:
            return {out: "❌ Remove: select a model in the table first (click its row)."}
        try:
            registry.remove(name)
        except USER_ERRORS as e:
            return {out: failed_md(f"Removing **{md_text(name)}** failed", e)}
        return {selected: "", out: f"Removed **{md_text(name)}** from the registry (its files, if any, stay on "
                                   "disk)."}

    @guarded(studio, "viewer", "Selecting a model")
    def pick(evt: gr.SelectData):
        return {selected: evt.row_value[0] if evt.row_value else ""}

    refresh = guarded(studio, "viewer", "Viewing the registry")(lambda: {models_table: table()})
    # the table is reloaded after each step that succeeded (a model added, removed or loaded by a check), and is
    # never an output of the step itself
    ep_btn.click(add_endpoint, [ep_name, ep_url, ep_model, ep_env, ep_timeout, ep_conc, ep_retries, ep_price_in,
                                ep_price_out], [out]).success(refresh, None, [models_table],
                                                                                   show_progress="hidden")
    hf_btn.click(add_hf, [hf_name, hf_path, hf_tpl], [out]).success(refresh, None, [models_table],
                                                                    show_progress="hidden")
    ping_btn.click(ping, [selected], [out]).success(refresh, None, [models_table], show_progress="hidden")
    remove_btn.click(remove, [selected], [out, selected]).success(refresh, None, [models_table],
                                                                  show_progress="hidden")
    models_table.select(pick, None, [selected])
    return {"refresh": refresh, "inputs": [], "outputs": [models_table]}
