"""WizardVicuna Studio entry point: ``python app.py`` here, and Hugging Face Spaces (``app_file: app.py``).

Serves the page on http://127.0.0.1:7860 (``STUDIO_HOST``/``STUDIO_PORT``; on a Space, 0.0.0.0) with the
embedded default model and a DuckDB file under ``./data`` (``STUDIO_DATA_DIR``).
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
