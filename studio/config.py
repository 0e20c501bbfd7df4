"""One Settings object for the whole studio.

Every value can be set from the environment with the ``STUDIO_`` prefix, e.g. ``STUDIO_DATA_DIR=/srv/wv``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path


def _env(name: str, default: str) -> str:
    return os.environ.get(f"STUDIO_{name}", default)


@dataclass(frozen=True)
class Settings:
    """Where the studio keeps its files and how it serves.

    Attributes:
        data_dir: folder for the DuckDB file, exports and runs (``STUDIO_DATA_DIR``, default ``./data``).
        db_path: the DuckDB database file (``STUDIO_DB``, default ``<data_dir>/studio.duckdb``).
        model_dir: folder for converted and trained checkpoints (``STUDIO_MODEL_DIR``,
            default ``<data_dir>/models``).
        host, port: where the web app listens (``STUDIO_HOST``/``STUDIO_PORT``, default 127.0.0.1:7860).
        auth: ``"user:password"`` for the page's login, empty for none (``STUDIO_AUTH``).
        read_only: refuse every write from the page (``STUDIO_READ_ONLY=1``), for public Spaces.
        model_cache_bytes: memory budget of the loaded-model cache, bytes (``STUDIO_MODEL_CACHE_GB``).
        max_message_chars: longest message accepted on import or edit, characters.
    """

    data_dir: Path = field(default_factory=lambda: Path(_env("DATA_DIR", "data")).resolve())
    db_path: Path | None = None
    model_dir: Path | None = None
    host: str = field(default_factory=lambda: _env("HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: int(_env("PORT", "7860")))
    auth: str = field(default_factory=lambda: _env("AUTH", ""))
    read_only: bool = field(default_factory=lambda: _env("READ_ONLY", "0") in ("1", "true", "yes"))
    model_cache_bytes: int = field(
        default_factory=lambda: int(float(_env("MODEL_CACHE_GB", "8")) * 1024**3)
    )
    max_message_chars: int = field(default_factory=lambda: int(_env("MAX_MESSAGE_CHARS", "100000")))

    def __post_init__(self) -> None:
        data_dir = Path(self.data_dir).resolve()
        object.__setattr__(self, "data_dir", data_dir)
        if self.db_path is None:
            object.__setattr__(self, "db_path", Path(_env("DB", str(data_dir / "studio.duckdb"))).resolve())
        if self.model_dir is None:
            object.__setattr__(self, "model_dir", Path(_env("MODEL_DIR", str(data_dir / "models"))).resolve())

    @property
    def export_dir(self) -> Path:
        """Folder where exports are written."""
        return self.data_dir / "exports"

    @property
    def upload_dir(self) -> Path:
        """Folder where uploaded files are kept (their import is recorded by content hash)."""
        return self.data_dir / "uploads"

    def ensure_dirs(self) -> "Settings":
        """Create the data, model, export and upload folders; returns self."""
        for d in (self.data_dir, self.model_dir, self.export_dir, self.upload_dir):
            Path(d).mkdir(parents=True, exist_ok=True)
        return self

    def with_data_dir(self, data_dir: str | os.PathLike) -> "Settings":
        """A copy rooted at another data folder (db and model paths follow it)."""
        return replace(self, data_dir=Path(data_dir), db_path=None, model_dir=None)
