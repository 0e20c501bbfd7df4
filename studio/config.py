"""One Settings object for the whole studio.

Every value can be set from the environment with the ``STUDIO_`` prefix, e.g. ``STUDIO_DATA_DIR=/srv/wv``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path


ROLES = ("viewer", "editor", "admin")
"""The roles, weakest first: ``viewer`` (browse, chat, vote) < ``editor`` (edit data, run expansion,
evolution, judging) < ``admin`` (train, delete, export, push, manage models and endpoints). See
``studio.access``."""

_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")

SPACES_STORAGE = Path("/data")
"""Where Hugging Face Spaces mounts a Space's persistent storage, when the Space has some."""

SPACES_DATA_SUBDIR = "wvstudio"
"""The studio's folder inside the persistent storage: ``/data/wvstudio``."""


def on_space(env: dict | None = None) -> bool:
    """True when running on Hugging Face Spaces (the platform sets ``SPACE_ID``, e.g. ``"alice/wv-studio"``)."""
    return bool((os.environ if env is None else env).get("SPACE_ID"))


def writable_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is an existing folder this process may create files in."""
    return Path(path).is_dir() and os.access(path, os.W_OK | os.X_OK)


def default_data_dir(env: dict | None = None, storage: str | os.PathLike = SPACES_STORAGE) -> Path:
    """The data folder when none is given: ``STUDIO_DATA_DIR`` if set; on a Space whose persistent storage is
    mounted and writable, ``<storage>/wvstudio`` (``/data/wvstudio``); otherwise ``./data``. Not resolved.

    Args:
        env: the environment to read (default ``os.environ``).
        storage: where Spaces mounts persistent storage (``SPACES_STORAGE``; a parameter for tests).
    """
    env = os.environ if env is None else env
    if env.get("STUDIO_DATA_DIR"):
        return Path(env["STUDIO_DATA_DIR"])
    if on_space(env) and writable_dir(storage):
        return Path(storage) / SPACES_DATA_SUBDIR
    return Path("data")


def data_lost_on_restart(data_dir: str | os.PathLike, env: dict | None = None,
                         storage: str | os.PathLike = SPACES_STORAGE) -> bool:
    """True on a Space whose data folder is not inside writable persistent storage: a Space's own disk is
    emptied at every restart, so the page says so (``studio.ui.app.EPHEMERAL_BANNER``). False off Spaces.

    Args:
        data_dir: the studio's data folder.
        env: the environment to read (default ``os.environ``).
        storage: where Spaces mounts persistent storage (``SPACES_STORAGE``; a parameter for tests).
    """
    if not on_space(env):
        return False
    if not writable_dir(storage):
        return True
    root, d = Path(storage).resolve(), Path(data_dir).resolve()
    return not (d == root or root in d.parents)


def _env(name: str, default: str) -> str:
    return os.environ.get(f"STUDIO_{name}", default)


def _flag(name: str, default: str) -> bool:
    return _env(name, default).strip().lower() in ("1", "true", "yes", "on")


def _path_or_none(value: str | os.PathLike | None) -> Path | None:
    return Path(value).expanduser().resolve() if value not in (None, "") else None


def _name_list(value: str | tuple | list) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(dict.fromkeys(str(v).strip() for v in items if str(v).strip()))
    for i, n in enumerate(names, 1):
        if not _ENV_NAME.fullmatch(n):  # never echo the value: it may be a key pasted by mistake
            raise ValueError(f"STUDIO_ENDPOINT_KEY_ENVS: item {i} is not an environment variable name like "
                             "OPENAI_API_KEY (a comma-separated list of variable names, never keys)")
    return names


def _weights(value) -> tuple[tuple[str, float], ...]:
    """``STUDIO_ARENA_WEIGHTS`` (``"name=2,other=0.5"``), a dict or pairs, as ``((name, weight), ...)`` (a tuple:
    Settings is frozen and hashable).

    Raises:
        ValueError: an item that is not ``name=number`` or a negative weight (naming the item).
    """
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (tuple, list)):
        items = list(value)
    else:
        items = []
        for part in str(value or "").split(","):
            if not part.strip():
                continue
            name, sep, w = part.rpartition("=")
            if not sep or not name.strip():
                raise ValueError(f"STUDIO_ARENA_WEIGHTS item '{part.strip()}' is not name=weight")
            items.append((name.strip(), w.strip()))
    out = {}
    for name, w in items:
        try:
            weight = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"STUDIO_ARENA_WEIGHTS: the weight of '{name}' is not a number: '{w}'") from None
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"STUDIO_ARENA_WEIGHTS: the weight of '{name}' must be 0 or more, got {w}")
        out[str(name)] = weight
    return tuple(out.items())


@dataclass(frozen=True)
class Settings:
    """Where the studio keeps its files and how it serves.

    Attributes:
        data_dir: folder for the DuckDB file, exports and runs (``STUDIO_DATA_DIR``, default ``./data``, or
            ``/data/wvstudio`` on a Space with persistent storage: ``default_data_dir``).
        db_path: the DuckDB database file (``STUDIO_DB``, default ``<data_dir>/studio.duckdb``).
        model_dir: folder for converted and trained checkpoints (``STUDIO_MODEL_DIR``,
            default ``<data_dir>/models``).
        host, port: where the web app listens (``STUDIO_HOST``/``STUDIO_PORT``, default 127.0.0.1:7860).
        auth: ``"user:password"`` for the page's login, empty for none (``STUDIO_AUTH``); that user is an
            admin.
        read_only: demo mode: everyone is a viewer, whoever signs in (``STUDIO_READ_ONLY=1``).
        users_file: JSON file of users, password hashes and roles (``STUDIO_USERS_FILE``; format and helper
            in ``studio.access``), or None.
        oauth: Hugging Face sign-in is on (``STUDIO_OAUTH=1``, or ``OAUTH_CLIENT_ID`` set, as a Space with
            ``hf_oauth: true`` does).
        oauth_role: role of a Hugging Face (OAuth) user not listed in the users file (``STUDIO_OAUTH_ROLE``,
            default ``viewer``).
        api_keys_file: JSON file of hashed API keys for ``/v1`` (``STUDIO_API_KEYS_FILE``), or None.
        api_enabled: serve the ``/v1`` API (``STUDIO_API``, default on; ``STUDIO_API=0`` turns it off, e.g. on
            a public Space without keys).
        endpoint_key_envs: environment variables that endpoint entries may use as their API key, an admin's
            allow-list (``STUDIO_ENDPOINT_KEY_ENVS``, comma-separated, empty by default: no endpoint can use a
            key until the admin names its variable here).
        endpoint_concurrency: requests to all endpoint entries together in flight at once, at most
            (``STUDIO_ENDPOINT_CONCURRENCY``, default 64, 1-4096); each entry has its own cap too
            (``ModelSpec.concurrency``).
        model_cache_bytes: memory budget of the loaded-model cache, bytes (``STUDIO_MODEL_CACHE_GB``).
        max_message_chars: longest message accepted on import or edit, characters.
        max_upload_mb: largest file the page accepts for import, in MiB (``STUDIO_MAX_UPLOAD_MB``, default
            512); checked before the file is read (``Studio.import_upload``). Files imported from the command
            line are not limited.
        arena_weights: how often the Arena's anonymous battles draw each registry entry, ``{name: weight}``
            (``STUDIO_ARENA_WEIGHTS="name=2,other=0.5"``; an entry not named weighs 1, weight 0 leaves it out;
            FastChat ``gradio_block_arena_anony.py`` samples its battle pairs by such weights); kept as
            ``((name, weight), ...)``, read with ``arena_weight(name)``.
        ephemeral: the data folder is emptied when the host restarts: on Hugging Face Spaces without
            persistent storage (``data_lost_on_restart``); the page then shows a banner saying so. None (the
            default) works it out from the data folder and the environment.

    On a Space (``SPACE_ID`` set) with persistent storage mounted at ``/data``, the default data folder is
    ``/data/wvstudio`` (``default_data_dir``).
    """

    data_dir: Path = field(default_factory=lambda: default_data_dir().resolve())
    db_path: Path | None = None
    model_dir: Path | None = None
    host: str = field(default_factory=lambda: _env("HOST", "127.0.0.1"))
    port: int = field(default_factory=lambda: int(_env("PORT", "7860")))
    auth: str = field(default_factory=lambda: _env("AUTH", ""))
    read_only: bool = field(default_factory=lambda: _flag("READ_ONLY", "0"))
    users_file: Path | None = field(default_factory=lambda: _env("USERS_FILE", "") or None)
    oauth: bool = field(default_factory=lambda: _flag("OAUTH", "0") or bool(os.environ.get("OAUTH_CLIENT_ID")))
    oauth_role: str = field(default_factory=lambda: _env("OAUTH_ROLE", "viewer"))
    api_keys_file: Path | None = field(default_factory=lambda: _env("API_KEYS_FILE", "") or None)
    api_enabled: bool = field(default_factory=lambda: _flag("API", "1"))
    endpoint_key_envs: tuple[str, ...] = field(default_factory=lambda: _env("ENDPOINT_KEY_ENVS", ""))
    endpoint_concurrency: int = field(default_factory=lambda: _env("ENDPOINT_CONCURRENCY", "64"))
    model_cache_bytes: int = field(
        default_factory=lambda: int(float(_env("MODEL_CACHE_GB", "8")) * 1024**3)
    )
    max_message_chars: int = field(default_factory=lambda: int(_env("MAX_MESSAGE_CHARS", "100000")))
    max_upload_mb: float = field(default_factory=lambda: _env("MAX_UPLOAD_MB", "512"))
    arena_weights: tuple = field(default_factory=lambda: _env("ARENA_WEIGHTS", ""))
    ephemeral: bool | None = None

    def __post_init__(self) -> None:
        """Resolve the paths and check the access settings.

        Raises:
            ValueError: ``oauth_role`` is not a role, ``endpoint_key_envs`` holds something that is not an
                environment variable name, ``max_upload_mb`` is not a positive number, or
                ``endpoint_concurrency`` is not a whole number from 1 to 4096.
        """
        try:
            conc = int(str(self.endpoint_concurrency).strip())
        except (TypeError, ValueError):
            conc = 0
        if not 1 <= conc <= 4096:
            raise ValueError(f"STUDIO_ENDPOINT_CONCURRENCY '{self.endpoint_concurrency}' is not a whole number of "
                             "requests from 1 to 4096")
        object.__setattr__(self, "endpoint_concurrency", conc)
        try:
            upload_mb = float(self.max_upload_mb)
        except (TypeError, ValueError):
            upload_mb = float("nan")
        if not upload_mb > 0 or upload_mb == float("inf"):
            raise ValueError(f"STUDIO_MAX_UPLOAD_MB '{self.max_upload_mb}' is not a positive number of megabytes")
        object.__setattr__(self, "max_upload_mb", upload_mb)
        object.__setattr__(self, "users_file", _path_or_none(self.users_file))
        object.__setattr__(self, "api_keys_file", _path_or_none(self.api_keys_file))
        object.__setattr__(self, "endpoint_key_envs", _name_list(self.endpoint_key_envs))
        object.__setattr__(self, "arena_weights", _weights(self.arena_weights))
        if self.oauth_role not in ROLES:
            raise ValueError(f"STUDIO_OAUTH_ROLE '{self.oauth_role}' is not a role (one of {', '.join(ROLES)})")
        data_dir = Path(self.data_dir).resolve()
        object.__setattr__(self, "data_dir", data_dir)
        if self.db_path is None:
            object.__setattr__(self, "db_path", Path(_env("DB", str(data_dir / "studio.duckdb"))).resolve())
        if self.model_dir is None:
            object.__setattr__(self, "model_dir", Path(_env("MODEL_DIR", str(data_dir / "models"))).resolve())
        if self.ephemeral is None:
            object.__setattr__(self, "ephemeral", data_lost_on_restart(data_dir))

    def arena_weight(self, name: str) -> float:
        """The anonymous-battle sampling weight of registry entry ``name`` (1 when not set)."""
        return dict(self.arena_weights).get(name, 1.0)

    @property
    def export_dir(self) -> Path:
        """Folder where exports are written."""
        return self.data_dir / "exports"

    @property
    def max_upload_bytes(self) -> int:
        """``max_upload_mb`` in bytes (MiB: 1 MB here is 1024 * 1024 bytes)."""
        return int(self.max_upload_mb * 1024 * 1024)

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
        return replace(self, data_dir=Path(data_dir), db_path=None, model_dir=None, ephemeral=None)
