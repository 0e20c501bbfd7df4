"""What every ``wvstudio`` command module shares: the one error scheme (``CliError``, ``DatabaseHeld``), opening
the studio of a command's data folder (or the running studio a command was sent to), the one table printer and
the file-argument types.

``studio.cli`` (the parser, ``main``, most commands) and the command modules it registers (``studio.cli_arena``)
import these from here, so that no command module imports ``studio.cli`` (which may be running as ``__main__``:
a second copy of its classes would not be caught by its own error scheme).
"""

from __future__ import annotations

import contextvars
import os
import re
from pathlib import Path

from .config import Settings
from .store import StoreError

MAX_BAD_ROWS_SHOWN = 20
"""Bad rows listed per imported file; the rest are counted."""


class CliError(Exception):
    """A user-facing failure of a command; printed as ``error: <message>``, exit code 2."""


# ---------------------------------------------------------------------------------------------- opening


def _settings(args) -> Settings:
    data_dir = getattr(args, "data_dir", None)
    return Settings(data_dir=Path(data_dir)) if data_dir else Settings()


class DatabaseHeld(CliError):
    """The data folder's database is held by another process (a running studio, or another command)."""


_ATTACHED: "contextvars.ContextVar" = contextvars.ContextVar("wvstudio_attached_studio", default=None)
"""The running studio a command was sent to (``run_payload``); ``_open`` hands it out instead of opening."""


class _Borrowed:
    """A running studio lent to one command: everything passes through, except that ``close`` does nothing
    (the studio belongs to the server)."""

    def __init__(self, studio):
        self._studio = studio

    def __getattr__(self, name):
        return getattr(self._studio, name)

    def close(self) -> None:
        pass


def _open(args, *, start_jobs: bool = False):
    """A Studio on the command's data folder (inside a running studio: that studio).

    Raises:
        DatabaseHeld: another process holds the database; ``main`` then sends the command to the running
            studio when one answers (``studio.remote``), else prints this error.
    """
    attached = _ATTACHED.get()
    if attached is not None:
        return _Borrowed(attached)
    from .core import Studio

    settings = _settings(args)
    try:
        return Studio(settings, start_jobs=start_jobs)
    except StoreError as e:
        raise DatabaseHeld(f"{e}\n(is the web app or another wvstudio command using {settings.data_dir}? stop "
                           "it, or give another --data-dir)") from e


# ---------------------------------------------------------------------------------------------- tables


def _cell(v, width: int | None = None) -> str:
    import pandas as pd

    if v is None or (not isinstance(v, (list, dict, tuple)) and pd.isna(v)):  # None / NaN / NA
        s = ""
    elif hasattr(v, "strftime"):
        s = v.strftime("%Y-%m-%d %H:%M:%S")
    else:
        s = " ".join(str(v).split())
    if width and len(s) > width:
        s = s[: width - 1] + "…"
    return s


def table(rows: list[list], headers: list[str], widths: dict[str, int] | None = None) -> str:
    """Plain-text table with a header line; ``widths`` caps some columns (characters)."""
    widths = widths or {}
    cells = [[_cell(v, widths.get(h)) for h, v in zip(headers, r)] for r in rows]
    size = [max([len(h)] + [_visible_len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    pad = lambda s, n: s + " " * (n - _visible_len(s))  # noqa: E731
    lines = ["  ".join(pad(h, size[i]) for i, h in enumerate(headers)).rstrip(),
             "  ".join("-" * size[i] for i in range(len(headers)))]
    lines += ["  ".join(pad(c, size[i]) for i, c in enumerate(r)).rstrip() for r in cells]
    return "\n".join(lines)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _visible_len(s: str) -> int:
    """Length of a cell as shown (ANSI colour codes take no room)."""
    return len(_ANSI.sub("", s)) if "\x1b" in s else len(s)


def _df_table(df, columns: list[str], widths: dict[str, int] | None = None) -> str:
    return table(df[columns].astype(object).values.tolist(), columns, widths)


# ---------------------------------------------------------------------------------------------- argument types


def _path(text: str) -> str:
    """A file argument made absolute when parsed, so a command sent to a running studio (whose working folder
    may differ) names the same file."""
    return os.path.abspath(os.path.expanduser(text))


def _path_or_id(text: str) -> str:
    """A file argument that may also be a hub id (``owner/name``): absolute when such a file exists here."""
    expanded = os.path.expanduser(text)
    return os.path.abspath(expanded) if os.path.exists(expanded) else text
