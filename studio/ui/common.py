"""Small pieces shared by the tabs: turning the studio's errors into page messages, and choice lists."""

from __future__ import annotations

import functools
import html

import gradio as gr

from ..access import AccessDenied
from ..formats import FormatError
from ..registry import RegistryError
from ..store import StoreError
from .filters import ANY_SOURCE

USER_ERRORS = (StoreError, RegistryError, FormatError, ValueError, KeyError, FileNotFoundError, AccessDenied)
"""Errors that are the user's to fix: shown as a message on the page, never as a stack trace."""


def friendly(fn):
    """Decorate a handler so that a user error becomes a ``gr.Error`` toast with its message.

    Works for plain functions and generators (streaming handlers).
    """
    import inspect

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except USER_ERRORS as e:
                raise gr.Error(str(e).strip("'\""), duration=None) from e
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            raise gr.Error(str(e).strip("'\""), duration=None) from e
    return wrapper


def source_choices(studio, with_all: bool = True) -> list[tuple[str, int]]:
    """``[(label, id)]`` of imported sources for a drop-down; ``("All sources", 0)`` first if asked (the filter
    controls' "no condition" entry, ``filters.ANY_SOURCE``)."""
    return ([ANY_SOURCE] if with_all else []) + studio.store.source_choices()


def model_choices(studio) -> list[str]:
    """Registry entry names, the embedded default first."""
    return studio.registry.names()


def progress_html(fraction: float, line: str) -> str:
    """An HTML progress bar with a status line under it (``fraction`` in 0..1)."""
    pct = max(0.0, min(1.0, fraction)) * 100
    return (f'<div class="wv-progress"><progress max="100" value="{pct:.1f}"></progress>'
            f'<span class="wv-pct">{pct:.0f}%</span><div class="wv-line">{html.escape(line)}</div></div>')


def guard_writes(studio) -> None:
    """Raise a user error when the studio runs read-only (``STUDIO_READ_ONLY=1``, e.g. a public Space)."""
    if studio.settings.read_only:
        raise ValueError("this studio is read-only; changes are disabled")
