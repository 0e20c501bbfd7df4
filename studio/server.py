"""The served studio: the page (``studio.ui``), the OpenAI-compatible ``/v1`` API (``studio.api``) and the
command line's route (``studio.remote``) on one FastAPI app and one port.

This is the one module that joins the page and the command line; neither imports the other.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from . import remote  # noqa: E402
from .config import Settings  # noqa: E402
from .core import Studio  # noqa: E402


def create_server(settings: Settings | None = None, studio: Studio | None = None, *, host: str | None = None,
                  control_url: str | None = None):
    """The FastAPI app serving the page at ``/``, the API at ``/v1`` and the command line's route.

    Args:
        settings: used when ``studio`` is not given.
        studio: an open studio to serve (default: one opened on ``settings``).
        host: the address the server will listen on (default ``settings.host``); beyond loopback ``/v1``
            requires an API key (``studio.api.make_router``).
        control_url: where this server will listen, as a loopback URL; when given, the control file
            ``<data>/.studio-server.json`` is written so that ``wvstudio`` commands run here while this server
            holds the database (``app.state.control`` keeps what was written; ``close_control(app)`` removes it).

    Returns:
        (fastapi_app, studio).

    Raises:
        access.ConfigError: the settings cannot be served safely (``/v1`` reachable without any API key).
    """
    from fastapi import FastAPI

    from . import access
    from .api import make_router
    from .cli import run_payload
    from .ui.app import CSS, build_app

    studio = studio or Studio(settings or Settings())
    app = FastAPI(title="WizardVicuna Studio")
    app.include_router(make_router(studio, host=host))
    control = remote.write_control(studio.settings.data_dir, control_url) if control_url else None
    app.state.control = control
    if control is not None:
        app.include_router(remote.make_router(control["token"], lambda payload, interrupt: run_payload(payload, studio, interrupt)))
    demo = build_app(studio)
    demo.queue(default_concurrency_limit=4)
    app = gr.mount_gradio_app(app, demo, path="/", auth=access.gradio_auth(studio.settings),
                              css=CSS, theme=gr.themes.Soft(),
                              max_file_size=studio.settings.max_upload_bytes,  # refused before it reaches disk
                              show_error=True,  # no allowed_paths: exports reach only their caller (ui.common.downloadable)
                              footer_links=[], ssr_mode=False)
    app.state.control = control
    return app, studio


def close_control(app, studio: Studio) -> None:
    """Remove the control file written by ``create_server`` (if it is still this server's)."""
    control = getattr(app.state, "control", None)
    if control:
        remote.remove_control(studio.settings.data_dir, control)


def _warm_default(studio: Studio) -> None:
    """Load the embedded default model in the background so the first chat or expansion doesn't wait
    (the first start converts it from GGUF once, about 20-35 s; later starts load it in about a second)."""
    from .registry import DEFAULT_MODEL_NAME

    t = time.perf_counter()
    try:
        studio.registry.load(DEFAULT_MODEL_NAME)
        print(f"default model {DEFAULT_MODEL_NAME} ready in {time.perf_counter() - t:.1f} s", flush=True)
    except Exception as e:  # noqa: BLE001 - the page still works; the Chat tab shows the reason
        print(f"default model not loaded: {e}", flush=True)


EXIT_SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""Signals after which ``launch`` removes its control file before the process ends."""


def remove_control_on_exit(data_dir) -> None:
    """Make this process remove its control file (``remote.remove_own_control``: only a file whose pid is ours)
    when it ends: at a normal exit (``atexit``) and on SIGTERM/SIGINT, which otherwise leave it behind (uvicorn
    stops gracefully on them, restores the handlers it found, then raises the signal again; under the default
    SIGTERM action the process dies without running ``finally`` blocks or ``atexit``).

    Each handler removes the file, then does what the handler it replaced would have done: call it (SIGINT's
    ``KeyboardInterrupt``), ignore the signal, or restore the default action and raise the signal again (so the
    process still ends by that signal, exit status -15 for SIGTERM). Install it in the main thread before
    uvicorn starts (uvicorn saves and later restores it); elsewhere only ``atexit`` is registered.
    """
    atexit.register(remote.remove_own_control, data_dir)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in EXIT_SIGNALS:
        previous = signal.getsignal(sig)

        def handler(signum, frame, previous=previous):
            remote.remove_own_control(data_dir)
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:  # SIG_DFL (or None: a handler not set from Python)
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

        signal.signal(sig, handler)


def launch(settings: Settings | None = None, host: str | None = None, port: int | None = None) -> None:
    """Start the studio and block: page on ``http://host:port/``, API on ``/v1``; the control file for the
    command line is written at start and removed when the server ends: a clean stop, SIGTERM or SIGINT
    (``remove_control_on_exit``; SIGKILL leaves it, and ``remote.find_server`` then sees its pid is gone)."""
    import uvicorn

    settings = settings or Settings()
    host = host or settings.host
    port = int(port or settings.port)
    remove_control_on_exit(settings.data_dir)  # before the file is written: a signal while the page builds too
    app, studio = create_server(settings, host=host, control_url=remote.loopback_url(host, port))
    print(f"WizardVicuna Studio on http://{host}:{port}  (data: {settings.data_dir})", flush=True)
    threading.Thread(target=_warm_default, args=(studio,), daemon=True).start()
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        close_control(app, studio)
