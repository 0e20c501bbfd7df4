"""Names that become paths: one check for every name a visitor or a file gives that the studio turns into a
file or folder name (registry entries, runs, exports, tags).

A safe name is 1-64 characters of letters, digits, ``.``, ``_`` and ``-``, and does not start with ``.``
(so ``.``, ``..`` and hidden files are refused). ``safe_child`` also resolves the joined path (symbolic links
included) and checks that it lies strictly inside its folder, so a link planted in the folder cannot lead
outside it either.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
"""A safe name: letters, digits, ``._-``, 1-64 characters, not starting with ``.``."""

NAME_RULE = "1-64 letters, digits, '.', '_' or '-', not starting with '.'"
"""The rule in words, for messages."""


def check_name(name: object, field: str = "name") -> str:
    """Return ``name`` if it is a safe name (see ``NAME_RE``), else raise.

    Args:
        name: the candidate (anything; only a ``str`` can pass).
        field: what the name is, for the message (e.g. ``"model name"``, ``"run name"``).

    Raises:
        ValueError: ``"<field> '<name>' is not allowed: use 1-64 letters, ..."`` (the name is cut to 80
            characters in the message).
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        shown = repr(name)[1:-1][:80] if isinstance(name, str) else type(name).__name__
        raise ValueError(f"{field} '{shown}' is not allowed: use {NAME_RULE}")
    return name


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` resolves (links followed) to a location strictly inside ``folder`` (also resolved)."""
    p = Path(path).resolve()
    root = Path(folder).resolve()
    return p != root and p.is_relative_to(root)


def safe_child(folder: str | os.PathLike, name: str, field: str = "name") -> Path:
    """The resolved path of ``name`` inside ``folder``, after checking both the name and the result.

    Use it for every path built from a name before writing, replacing or deleting there.

    Args:
        folder: the folder the name must stay in (need not exist yet).
        name: a single path component (``check_name`` rules).
        field: what the name is, for the message.

    Returns:
        ``(folder / name).resolve()``, strictly inside ``folder.resolve()``.

    Raises:
        ValueError: the name breaks the rules, or the path leaves the folder (e.g. through a symbolic link),
            naming the field, the name and the folder.
    """
    check_name(name, field)
    root = Path(folder).resolve()
    child = (root / name).resolve()
    if child == root or not child.is_relative_to(root):
        raise ValueError(f"{field} '{name}' leads outside {root}; refused")
    return child
