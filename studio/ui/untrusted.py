"""Untrusted text (conversation text, model output, run names, job messages, error text) made safe for the
page's Markdown (``gr.Markdown``, ``gr.Chatbot`` messages): shown as text, its raw HTML escaped, never live.

Gradio renders Markdown with raw HTML allowed (then sanitised); so a model's ``<img src=... onerror=...>`` or
``<a href=...>`` would become page elements. ``md_text`` escapes ``&`` and ``<`` everywhere except inside fenced
code blocks (which Markdown shows as text already), so the text reads the same and no tag survives.
"""

from __future__ import annotations

import re

_FENCE_OPEN = re.compile(r"(`{3,}|~{3,})[^`]*")
"""A fence that certainly opens a fenced code block: at the start of a line, an info string without backticks
(a looser match could keep text unescaped that Markdown reads as HTML)."""

_FENCE_CLOSE = re.compile(r"\s*(`{3,}|~{3,})")
"""A line that may close one (looser than Markdown: text after a doubtful close is escaped, which is safe)."""

_INLINE_CODE = re.compile(r"(?<![`\\])(`+)(?!`)(.+?)(?<!`)\1(?!`)")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;")


def _code_span(m: re.Match) -> str:
    body = m.group(2)
    if len(body) > 2 and body[0] == " " and body[-1] == " " and body.strip():
        body = body[1:-1]
    # our own <code> element with every punctuation mark as a character reference: nothing inside is read as
    # Markdown or HTML, wherever Markdown would have put the span's edges
    return "<code>" + "".join(c if c.isalnum() or c == " " else f"&#{ord(c)};" for c in body) + "</code>"


def _escape_inline(line: str) -> str:
    out, pos = [], 0
    for m in _INLINE_CODE.finditer(line):
        out.append(_escape(line[pos:m.start()]))
        out.append(_code_span(m))
        pos = m.end()
    out.append(_escape(line[pos:]))
    return "".join(out)


def md_text(text: str | None) -> str:
    """``text`` as Markdown with its raw HTML escaped: ``&`` and ``<`` become character references outside
    fenced code blocks, inline code spans become ``<code>`` elements with escaped contents; the text shows as
    written (code included) and no HTML tag or entity in it is live. None gives ``""``."""
    if not text:
        return ""
    out, fence = [], None
    for line in str(text).split("\n"):
        if fence is None:
            m = _FENCE_OPEN.fullmatch(line)
            if m:
                fence = m.group(1)
                out.append(line)
            else:
                out.append(_escape_inline(line))
        else:
            m = _FENCE_CLOSE.match(line)
            if m:  # whatever closes a code block (or might): back to escaping
                fence = None
            out.append(line)
    return "\n".join(out)


def md_code(text: str, lang: str = "") -> str:
    """``text`` as a fenced Markdown code block (shown as text), with a fence longer than any run of backticks
    in it so it cannot end the block early."""
    longest = max((len(r) for r in re.findall(r"`+", text or "")), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def chat_messages(messages: list[dict]) -> list[dict]:
    """Messages (``{"role", "content"}``) for a ``gr.Chatbot``, their text through ``md_text`` (system
    messages left out)."""
    return [{"role": m["role"], "content": md_text(m.get("content") or "")} for m in messages
            if m["role"] != "system"]


__all__ = ["md_text", "md_code", "chat_messages"]
