"""The page: one Blocks with a tab per task, all sharing one ``Studio`` (store, registry, jobs), served
with the OpenAI-compatible ``/v1`` routes on the same port."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from ..config import Settings  # noqa: E402
from ..core import Studio  # noqa: E402
from . import chat, data, expand, models, train  # noqa: E402

ASSETS = Path(__file__).resolve().parents[2] / "assets"

CSS = """
.wv-progress { display: flex; flex-wrap: wrap; align-items: center; gap: 8px; }
.wv-progress progress { flex: 1; height: 18px; accent-color: var(--color-accent); }
.wv-progress .wv-pct { min-width: 3em; font-weight: 600; }
.wv-progress .wv-line { width: 100%; font-size: 0.9em; opacity: 0.85; }
footer { display: none !important; }
.wv-diff { font-family: ui-monospace, monospace; font-size: 0.85em; white-space: pre-wrap; max-height: 420px;
           overflow: auto; border: 1px solid var(--border-color-primary); padding: 6px; }
.wv-diff-add { background: rgba(46, 160, 67, 0.18); }
.wv-diff-del { background: rgba(248, 81, 73, 0.18); }
"""

HEADER = """# WizardVicuna Studio
Seeds in, multi-turn conversations out: import instructions, expand them with a teacher, curate, fine-tune and
chat — the WizardVicunaLM recipe on your own machine."""


def build_app(studio: Studio) -> gr.Blocks:
    """Assemble the tabs (Data, Expand, Train, Chat, Models) on one shared studio. Tabs refresh their model and
    source lists when selected, so a model or file added in one tab is at once in the others."""
    with gr.Blocks(title="WizardVicuna Studio") as demo:
        gr.Markdown(HEADER, elem_id="wv-header")
        with gr.Tabs(elem_id="wv-tabs"):
            with gr.Tab("Data", id="data", elem_id="tab-data") as t_data:
                d = data.build(studio)
            with gr.Tab("Expand", id="expand", elem_id="tab-expand") as t_expand:
                e = expand.build(studio)
            with gr.Tab("Train", id="train", elem_id="tab-train") as t_train:
                tr = train.build(studio)
            with gr.Tab("Chat", id="chat", elem_id="tab-chat") as t_chat:
                c = chat.build(studio)
            with gr.Tab("Models", id="models", elem_id="tab-models") as t_models:
                m = models.build(studio)
        t_data.select(d["refresh"], d["inputs"], d["outputs"], show_progress="hidden")
        t_expand.select(e["refresh"], e["inputs"], e["outputs"], show_progress="hidden")
        t_train.select(tr["refresh"], tr["inputs"], tr["outputs"], show_progress="hidden")
        t_chat.select(c["refresh"], c["inputs"], c["outputs"], show_progress="hidden")
        t_models.select(m["refresh"], m["inputs"], m["outputs"], show_progress="hidden")
        demo.load(d["refresh"], d["inputs"], d["outputs"], show_progress="hidden")
    return demo


def create_server(settings: Settings | None = None, studio: Studio | None = None):
    """The FastAPI app serving the page at ``/`` and the OpenAI-compatible API at ``/v1``.

    Returns:
        (fastapi_app, studio).
    """
    from fastapi import FastAPI

    from ..api import make_router

    studio = studio or Studio(settings or Settings())
    app = FastAPI(title="WizardVicuna Studio")
    app.include_router(make_router(studio))
    demo = build_app(studio)
    demo.queue(default_concurrency_limit=4)
    auth = None
    if studio.settings.auth and ":" in studio.settings.auth:
        auth = tuple(studio.settings.auth.split(":", 1))
    app = gr.mount_gradio_app(app, demo, path="/", auth=auth, css=CSS, theme=gr.themes.Soft(),
                              allowed_paths=[str(studio.settings.export_dir)], show_error=True,
                              footer_links=[], ssr_mode=False)
    return app, studio


def _warm_default(studio: Studio) -> None:
    """Load the embedded default model in the background so the first chat or expansion doesn't wait
    (the first start converts it from GGUF once, about 20-35 s; later starts load it in about a second)."""
    from ..registry import DEFAULT_MODEL_NAME

    t = time.perf_counter()
    try:
        studio.registry.load(DEFAULT_MODEL_NAME)
        print(f"default model {DEFAULT_MODEL_NAME} ready in {time.perf_counter() - t:.1f} s", flush=True)
    except Exception as e:  # noqa: BLE001 - the page still works; the Chat tab shows the reason
        print(f"default model not loaded: {e}", flush=True)


def launch(settings: Settings | None = None, host: str | None = None, port: int | None = None) -> None:
    """Start the studio and block: page on ``http://host:port/``, API on ``/v1``."""
    import uvicorn

    settings = settings or Settings()
    app, studio = create_server(settings)
    host = host or settings.host
    port = int(port or settings.port)
    print(f"WizardVicuna Studio on http://{host}:{port}  (data: {settings.data_dir})", flush=True)
    threading.Thread(target=_warm_default, args=(studio,), daemon=True).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")
