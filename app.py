"""WizardVicuna Studio entry point: ``python app.py`` here, and Hugging Face Spaces (``app_file: app.py``).

Serves the page on http://127.0.0.1:7860 (``STUDIO_HOST``/``STUDIO_PORT``; on a Space, 0.0.0.0) with the
embedded default model and a DuckDB file under ``./data`` (``STUDIO_DATA_DIR``). On a Space (``SPACE_ID`` set) the
data goes to ``/data/wvstudio`` when persistent storage is mounted, otherwise the page says that it is lost on
restart (``studio.config.default_data_dir``, ``data_lost_on_restart``); ``/v1`` is off until the operator sets
``STUDIO_API_KEYS_FILE`` and ``STUDIO_API=1``. README "Hosting" has the whole story.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
if os.environ.get("SPACE_ID"):  # Hugging Face Spaces: listen on all interfaces
    os.environ.setdefault("STUDIO_HOST", "0.0.0.0")
    # /v1 on a public Space needs API keys (STUDIO_API_KEYS_FILE); until the operator makes some it is off
    os.environ.setdefault("STUDIO_API", "0")

from studio.server import launch  # noqa: E402

if __name__ == "__main__":
    launch()
