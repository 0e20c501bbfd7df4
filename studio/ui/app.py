"""The page: one Blocks with a tab per task, all sharing one ``Studio`` (store, registry, jobs).

``studio.server`` serves it with the OpenAI-compatible ``/v1`` routes and the command line's route on one port."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from ..core import Studio  # noqa: E402
import uuid  # noqa: E402

from . import arena, chat, data, expand, judge, models, preferences, train  # noqa: E402
from .common import guarded  # noqa: E402

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
.wv-by { font-size: 0.8em; font-weight: 600; opacity: 0.7; margin-bottom: 4px; }
.wv-earlier { margin-top: 8px; font-size: 0.9em; opacity: 0.8; }
.wv-error { color: var(--error-text-color, #b91c1c); }
/* the loss plot marks every point (a single eval-loss point draws no line): Gradio's LinePlot puts an invisible
   point under each one for its hover; the zero-length symbol path with a round cap draws a dot */
#train-plot g.mark-symbol.role-mark path { opacity: 1 !important; stroke-width: 7px; stroke-linecap: round; }
.wv-found { border: 1px solid var(--border-color-primary); padding: 8px; max-height: 480px; overflow: auto; }
.wv-found-head { font-weight: 600; margin-bottom: 6px; }
.wv-found-msg { margin: 6px 0; }
.wv-found-text { white-space: pre-wrap; }
.wv-found mark { background: #fde047; color: inherit; padding: 0 2px; }
/* a column header is one line as wide as its words: Gradio sizes an empty or short column to its cells (32 px for
   an empty one) and lets the header break between any two letters ("tu/rn/s", a 250 px "key variable") */
.gradio-container table thead th.header-cell { min-width: max-content !important; }
.gradio-container table thead th .header-content span.header { white-space: nowrap; word-break: normal;
                                                               overflow-wrap: normal; }
#wv-ephemeral-banner { border: 1px solid #d29922; background: rgba(210, 153, 34, 0.15); border-radius: 6px;
                       padding: 4px 12px; }
"""

HEADER = """# WizardVicuna Studio
Seeds in, multi-turn conversations out: import instructions, expand them with a teacher, curate, fine-tune and
chat — the WizardVicunaLM recipe on your own machine."""


EPHEMERAL_BANNER = """⚠️ **This Space has no persistent storage: everything saved here (imported data, edits, models,
runs, exports) is lost when the Space restarts.** Its owner can add persistent storage in the Space's settings;
the studio then keeps its data in `/data/wvstudio`."""
"""Shown at the top of the page when ``Settings.ephemeral`` (a Space without persistent storage)."""


def build_app(studio: Studio) -> gr.Blocks:
    """Assemble the tabs (Data, Expand, Train, Chat, Arena, Judge, Preferences, Models) on one shared studio. Tabs refresh their model
    and source lists when selected, so a model or file added in one tab is at once in the others.

    The page keeps one per-browser id (``gr.BrowserState``, in the browser's local storage; a random hex string set
    on the first load): the voter of Arena votes and Chat ratings when nobody signs in. On a Space without
    persistent storage (``studio.settings.ephemeral``) the page starts with ``EPHEMERAL_BANNER``."""
    with gr.Blocks(title="WizardVicuna Studio") as demo:
        if studio.settings.ephemeral:
            gr.Markdown(EPHEMERAL_BANNER, elem_id="wv-ephemeral-banner")
        gr.Markdown(HEADER, elem_id="wv-header")
        browser_id = gr.BrowserState("", storage_key="wvstudio-browser-id")
        with gr.Tabs(elem_id="wv-tabs"):
            with gr.Tab("Data", id="data", elem_id="tab-data") as t_data:
                d = data.build(studio)
            with gr.Tab("Expand", id="expand", elem_id="tab-expand") as t_expand:
                e = expand.build(studio)
            with gr.Tab("Train", id="train", elem_id="tab-train") as t_train:
                tr = train.build(studio)
            with gr.Tab("Chat", id="chat", elem_id="tab-chat") as t_chat:
                c = chat.build(studio, browser_id)
            with gr.Tab("Arena", id="arena", elem_id="tab-arena") as t_arena:
                a = arena.build(studio, browser_id)
            with gr.Tab("Judge", id="judge", elem_id="tab-judge") as t_judge:
                j = judge.build(studio)
            with gr.Tab("Preferences", id="preferences", elem_id="tab-preferences") as t_prefs:
                pf = preferences.build(studio)
            with gr.Tab("Models", id="models", elem_id="tab-models") as t_models:
                m = models.build(studio)
        t_data.select(d["refresh"], d["inputs"], d["outputs"], show_progress="hidden")
        t_expand.select(e["refresh"], e["inputs"], e["outputs"], show_progress="hidden")
        t_train.select(tr["refresh"], tr["inputs"], tr["outputs"], show_progress="hidden", **train.PREVIEW_QUEUE)
        t_chat.select(c["refresh"], c["inputs"], c["outputs"], show_progress="hidden")
        t_models.select(m["refresh"], m["inputs"], m["outputs"], show_progress="hidden")
        t_arena.select(a["refresh"], a["inputs"], a["outputs"], show_progress="hidden")
        t_judge.select(j["refresh"], j["inputs"], j["outputs"], show_progress="hidden")
        t_prefs.select(pf["refresh"], pf["inputs"], pf["outputs"], show_progress="hidden")
        demo.load(d["refresh"], d["inputs"], d["outputs"], show_progress="hidden")

        @guarded(studio, "viewer", "Opening the page")
        def browser_id_once(current):
            return current if isinstance(current, str) and 8 <= len(current) <= 64 and current.isalnum() \
                else uuid.uuid4().hex

        demo.load(browser_id_once, [browser_id], [browser_id], show_progress="hidden")
    return demo
