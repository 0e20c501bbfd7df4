"""Small pieces shared by the tabs: turning the studio's errors into page messages, choice lists, and showing
untrusted text (conversation files, teachers' and models' replies, names and messages echoing what a visitor typed)
on the page as text.

Untrusted text never reaches the page as HTML or as Markdown the browser renders: Gradio's Markdown, Chatbot and
toasts turn text into HTML in the browser, and their sanitiser keeps ``<img>``, ``<form>``, ``<input>`` and
Markdown images, so an imported file could make every viewer's browser fetch a tracking pixel or show a password
form. The helpers here are the one way text gets onto the page:

* ``message_html``: a message's Markdown rendered here (markdown-it-py, CommonMark + tables + strikethrough) with
  raw HTML shown as text, images shown as their Markdown text (an image is a remote fetch) and links only to
  http(s)/mailto; for ``chatbot()`` (``render_markdown=False``) and ``gr.HTML``. ``chat_messages`` maps a
  message list through it.
* ``md_text``: a value shown literally inside Markdown we write (``gr.Markdown``, Markdown table cells): every
  punctuation character backslash-escaped, so nothing in it is a tag, entity, link, image or formatting.
* ``toast_text``: a message for ``gr.Error``/``gr.Warning``/``gr.Info`` (Gradio shows toasts as HTML): escaped.
"""

from __future__ import annotations

import contextvars
import functools
import html
import inspect
import re
import typing

import gradio as gr
import pandas as pd
from markdown_it import MarkdownIt

from .. import access
from ..access import AccessDenied, Caller, ConfigError
from ..formats import FormatError
from ..registry import RegistryError
from ..store import StoreError
from .filters import ANY_SOURCE

USER_ERRORS = (StoreError, RegistryError, FormatError, ValueError, KeyError, FileNotFoundError, AccessDenied)
"""Errors that are the user's to fix: shown as a message on the page, never as a stack trace."""

TOAST_SECONDS = 8
"""How long an error toast stays (seconds): it fades on its own (and can be closed before), so it never follows
the user to another tab or covers fields for good."""


def error_toast(e: BaseException) -> gr.Error:
    """A ``gr.Error`` toast for user error ``e``: its message escaped (``toast_text``, it may echo what the visitor
    typed or what a file held), fading after ``TOAST_SECONDS``."""
    return gr.Error(toast_text(str(e).strip("'\"")), duration=TOAST_SECONDS)


def failed_md(what: str, e: BaseException) -> str:
    """A status line (Markdown) saying what failed and why, for a handler whose failure is expected (a check of an
    endpoint) to return beside its action instead of raising: Gradio marks every output of a failed event with
    an error badge, wiping panels that were fine. ``what`` is our words (Markdown); ``e``'s message is escaped."""
    reason = str(e).strip("'\"")
    return f"❌ {what}: {md_text(reason)}"


def friendly(fn):
    """Decorate a handler so that a user error becomes a ``gr.Error`` toast with its message (escaped: the
    message may echo what the visitor typed or what a file held), fading after ``TOAST_SECONDS``.

    Works for plain functions and generators (streaming handlers).
    """
    import inspect

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except USER_ERRORS as e:
                raise error_toast(e) from e
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            raise error_toast(e) from e
    return wrapper


def source_choices(studio, with_all: bool = True) -> list[tuple[str, int]]:
    """``[(label, id)]`` of imported sources for a drop-down; ``("All sources", 0)`` first if asked (the filter
    controls' "no condition" entry, ``filters.ANY_SOURCE``)."""
    return ([ANY_SOURCE] if with_all else []) + studio.store.source_choices()


def model_choices(studio) -> list[str]:
    """Registry entry names, the embedded default first."""
    return studio.registry.names()


def scroll_js(selector: str, block: str = "start", only_if: str = "") -> str:
    """A client-side function (a Gradio event's ``js``, e.g. in ``.then(None, js=...)``) that scrolls the element
    ``selector`` into view (``block``: ``start``, ``center``, ``nearest``), so what an action opened or started
    is seen, not left below the fold. ``only_if``: a JavaScript condition that must hold first."""
    cond = f"if (!({only_if})) return; " if only_if else ""
    return (f"() => {{ {cond}const e = document.querySelector({selector!r}); "
            f"if (e && e.offsetParent !== null) e.scrollIntoView({{block: {block!r}}}); }}")


_OUTCOME_STYLE = {"error": "color:#b91c1c;background:#fee2e2;border:1px solid #fca5a5;",
                  "warn": "color:#92400e;background:#fef3c7;border:1px solid #fcd34d;",
                  "ok": "", "running": ""}


def progress_html(fraction: float, line: str, outcome: str = "running") -> str:
    """An HTML progress bar with a status line under it (``fraction`` in 0..1). ``outcome`` (``Progress.outcome``:
    ``error``, ``warn``, ``ok``, ``running``) colours the line: red with a ❌ for a failed or paused job, or one
    whose every item failed, amber for some failures, plain otherwise; the container gets class
    ``wv-<outcome>``."""
    pct = max(0.0, min(1.0, fraction)) * 100
    style = _OUTCOME_STYLE.get(outcome, "")
    mark = {"error": "❌ ", "warn": "⚠️ "}.get(outcome, "")
    line_style = f' style="{style}padding:4px 8px;border-radius:6px;margin-top:4px;"' if style else ""
    return (f'<div class="wv-progress wv-{html.escape(outcome)}"><progress max="100" value="{pct:.1f}"></progress>'
            f'<span class="wv-pct">{pct:.0f}%</span><div class="wv-line"{line_style}>{mark}{html.escape(line)}'
            '</div></div>')


REQUEST_PARAM = "wv_request"
"""Name of the ``gr.Request`` parameter ``guarded`` puts first in a handler's signature (Gradio fills it)."""

_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("wv_caller", default=None)


def _check(studio, request, role: str, action: str) -> Caller:
    """``access.require(access.caller(request, studio.settings), role, action)``; broken access settings (a users
    file that no longer parses) refuse the action rather than let it through."""
    try:
        user = access.caller(request, studio.settings)
    except ConfigError as e:
        raise AccessDenied(f"{action[:1].upper()}{action[1:]} is refused: the studio's access settings are "
                           f"broken ({e})") from None
    return access.require(user, role, action)


def guarded(studio, role: str, action: str):
    """Decorate a page handler so that the SERVER checks the caller's role before it runs, and user errors
    (``USER_ERRORS``, ``AccessDenied`` among them) become a ``gr.Error`` toast (as ``friendly``).

    The one access check of the page: every event handler of every tab is wrapped by it (``tests/test_roles.py``
    enumerates the page's handlers and fails on one without a declared role). The wrapper's signature is the
    handler's with a first parameter ``wv_request: gr.Request``, which Gradio fills with the event's request
    (``gradio.helpers.special_args`` inserts a ``gr.Request``-annotated positional parameter at its index, also
    for handlers whose inputs are a set, called with one ``{component: value}`` dict); the caller is
    ``access.caller(request, studio.settings)``. Generator handlers (streamed) are checked before their first
    yield.

    Args:
        studio: the ``Studio`` (its ``settings`` are read at each call).
        role: the least role the handler needs: ``viewer`` (browse, chat, vote), ``editor`` (edit data, run
            expansion, evolution and judging) or ``admin`` (train, delete, export, push, models and endpoints,
            token counts, bulk delete).
        action: the action in words for the refusal, e.g. ``"Saving a conversation"`` ->
            "Saving a conversation needs the editor role; you are signed in as viewer (carol)".

    Returns:
        A decorator. The wrapper records ``__wv_role__``, ``__wv_action__`` and the handler as ``__wv_fn__`` (called
        through that attribute). Inside a non-generator handler ``require_role`` raises the bar for one case (a
        bulk *delete* is admin, a bulk tag editor).

    Raises:
        ValueError: ``role`` is not a role (when decorating). At call time the handler raises ``gr.Error`` whose
        ``__cause__`` is the ``AccessDenied`` (or other user error).
    """
    access.rank(role)

    def deco(fn):
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(f"guarded: {fn.__qualname__} is async; page handlers here are plain functions")
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)  # resolved now: Gradio reads them from the wrapper
        if REQUEST_PARAM in sig.parameters:
            raise TypeError(f"guarded: {fn.__qualname__} already has a parameter '{REQUEST_PARAM}'")

        toast = error_toast

        if inspect.isgeneratorfunction(fn):
            def wrapper(wv_request, *args, **kwargs):
                try:
                    _check(studio, wv_request, role, action)
                    yield from wrapper.__wv_fn__(*args, **kwargs)
                except USER_ERRORS as e:
                    raise toast(e) from e
        else:
            def wrapper(wv_request, *args, **kwargs):
                try:
                    token = _CALLER.set(_check(studio, wv_request, role, action))
                    try:
                        return wrapper.__wv_fn__(*args, **kwargs)
                    finally:
                        _CALLER.reset(token)
                except USER_ERRORS as e:
                    raise toast(e) from e

        functools.update_wrapper(wrapper, fn)
        first = inspect.Parameter(REQUEST_PARAM, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)
        wrapper.__signature__ = sig.replace(parameters=[first] + [
            p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()])
        wrapper.__annotations__ = {REQUEST_PARAM: gr.Request, **hints}  # a new dict, not the handler's
        wrapper.__wv_role__, wrapper.__wv_action__, wrapper.__wv_fn__ = role, action, fn
        return wrapper

    return deco


def require_role(role: str, action: str) -> Caller:
    """Inside a (non-generator) ``guarded`` handler: require more than the handler's declared role for this case
    (``access.require`` on the caller the guard found). Returns the caller.

    Raises:
        AccessDenied: the caller's role is below ``role``. RuntimeError: called outside a guarded handler.
    """
    user = _CALLER.get()
    if user is None:
        raise RuntimeError("require_role is only for use inside a guarded (non-generator) handler")
    return access.require(user, role, action)


def downloadable(path) -> str:
    """A file the page may hand to the browser for download (a ``gr.File`` value): ``path`` itself when it lies
    in the working folder or the system's temp folder (Gradio copies such returned files into its cache under an
    unguessable name), else a copy in a new temp folder.

    The exports folder is never served directly (no ``allowed_paths``): a file URL there would be open to anyone
    who guesses its name, whatever their role; only the caller of an export gets its (cached) copy.
    """
    import os
    import shutil
    import tempfile
    from pathlib import Path

    p = Path(path).resolve()
    for root in (Path(os.getcwd()).resolve(), Path(tempfile.gettempdir()).resolve()):
        if p.is_relative_to(root):
            return str(p)
    copy = Path(tempfile.mkdtemp(prefix="wvstudio-download-")) / p.name
    shutil.copy2(p, copy)
    return str(copy)


def current_caller() -> Caller:
    """Inside a (non-generator) ``guarded`` handler: who is calling (e.g. the voter of an Arena vote).

    Raises:
        RuntimeError: called outside a guarded handler.
    """
    user = _CALLER.get()
    if user is None:
        raise RuntimeError("current_caller is only for use inside a guarded (non-generator) handler")
    return user


# --------------------------------------------------------------------------------------------- untrusted text
LINK_SCHEMES = ("http:", "https:", "mailto:")
"""Link targets a message may carry (Markdown links and ``<http://...>`` autolinks); any other target (``javascript:``,
``data:``, relative paths into this studio) leaves the link as text."""

_MD_PUNCT = re.compile(r"([!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])")


def toast_text(message: object) -> str:
    """``message`` made safe for a Gradio toast (``gr.Error``/``gr.Warning``/``gr.Info``, which the page shows as
    HTML, as text content): ``&``, ``<`` and ``>`` escaped, so it reads exactly as given."""
    return html.escape(str(message), quote=False)


def md_text(value: object, inline: bool = True) -> str:
    """``value`` (``str()`` of it; None -> "") shown literally inside Markdown: every ASCII punctuation character
    backslash-escaped (CommonMark: any such character may be escaped), so no tag, entity, link, image, code span
    or emphasis can start in it. With ``inline`` (default) line breaks become spaces, so it stays on its line (a
    heading, a table cell); without, they are kept as Markdown hard breaks."""
    text = "" if value is None else str(value)
    text = _MD_PUNCT.sub(r"\\\1", text)
    if inline:
        return re.sub(r"\s*\n\s*", " ", text)
    return re.sub(r"\r?\n", "  \n", text)


def md_table(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with every cell as ``md_text`` (missing values as ""), for a ``gr.Dataframe`` whose
    datatype is ``"markdown"``. Such a table must never show a raw cell: the page renders a column with the
    datatype it has at that moment, old values included, so a table's datatype never changes either."""
    return df.astype(object).map(lambda v: "" if v is None or (pd.api.types.is_scalar(v) and pd.isna(v))
                                 else md_text(v))


def md_code(value: object) -> str:
    """``value`` as a Markdown code span (a path, a URL, a name shown verbatim): a backtick fence longer than any
    run of backticks in it, line breaks as spaces. Code spans show their text literally (no tags, no entities)."""
    text = re.sub(r"\s*\n\s*", " ", "" if value is None else str(value))
    longest = max((len(r) for r in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_block(value: object, lang: str = "") -> str:
    """``value`` as a fenced Markdown code block (a command, a log: shown as text, line breaks kept), with a
    fence longer than any run of backticks in it, so it cannot end the block early."""
    text = "" if value is None else str(value)
    longest = max((len(r) for r in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def _link_ok(url: str) -> bool:
    return url.strip().lower().startswith(LINK_SCHEMES)


def _image_as_text(renderer, tokens, idx, options, env) -> str:
    tok = tokens[idx]
    title = tok.attrGet("title")
    src = f'{tok.attrGet("src")} "{title}"' if title else tok.attrGet("src")
    return html.escape(f"![{tok.content}]({src})", quote=False)


def _link_open(renderer, tokens, idx, options, env) -> str:
    tok = tokens[idx]
    tok.attrSet("target", "_blank")
    tok.attrSet("rel", "noopener noreferrer nofollow")
    return renderer.renderToken(tokens, idx, options, env)


_MD = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False, "breaks": True})
_MD.enable(["table", "strikethrough"])
_MD.validateLink = _link_ok
_MD.add_render_rule("image", _image_as_text)
_MD.add_render_rule("link_open", _link_open)


def message_html(text: object) -> str:
    """A message's text (Markdown, untrusted) as HTML safe to put on the page.

    Markdown formats (paragraphs, lists, emphasis, code blocks, tables: CommonMark via markdown-it-py); raw HTML
    in it is shown as text; an image (``![alt](url)``, which a browser would fetch) is shown as its Markdown text;
    a link is kept only to ``LINK_SCHEMES`` targets and opens in a new tab without a referrer. Single line breaks
    are kept (as the chat view shows them). None -> "".

    Returns:
        An HTML fragment for ``chatbot()`` messages or a ``gr.HTML``.
    """
    return _MD.render("" if text is None else str(text))


def chat_messages(messages: list[dict]) -> list[dict]:
    """Messages ``[{"role", "content": str}]`` as a ``chatbot()`` shows them: the content through
    ``message_html``, other keys dropped."""
    return [{"role": m["role"], "content": message_html(m.get("content"))} for m in messages]


def chatbot(**kwargs) -> gr.Chatbot:
    """A ``gr.Chatbot`` for untrusted conversations: it shows ``chat_messages`` output as given (our HTML, not
    Markdown rendered again in the browser, so no browser-side Markdown image, raw HTML or diagram), still
    through Gradio's sanitiser. The per-message copy buttons are off (they would copy the HTML); keyword
    arguments go to ``gr.Chatbot``."""
    kwargs.setdefault("render_markdown", False)
    kwargs.setdefault("sanitize_html", True)
    kwargs.setdefault("buttons", [])
    kwargs.setdefault("feedback_options", None)
    return gr.Chatbot(**kwargs)
