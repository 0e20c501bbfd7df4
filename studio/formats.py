"""File formats: detection, parsing into records, and export.

Every file enters the studio through :func:`read_file`, which returns a :class:`ParsedFile` of
:class:`SeedRecord` (instructions) and :class:`ConversationRecord` (multi-turn chats) plus the
:class:`BadRow` list of rows that were refused, each with its 1-based row number and a reason.
``store.py`` turns these records into database rows; nothing here touches the database.

Internally a message is ``{"role": "system" | "user" | "assistant", "content": str}``. ShareGPT's
``from``/``value`` (``human``/``gpt``) is mapped to and from that shape here, and only here.

Formats (each may be a JSON array or JSON lines; the format is detected from the keys of the rows):

=====================  ==========================================================================
``evol_instruct``      ``{instruction, output}`` (no ``input`` key): WizardLM's
                       ``alpaca_evol_instruct_70k.json`` (nlpxucan/WizardLM).
``alpaca``             ``{instruction, input, output}``: Stanford Alpaca / LLaMA-Factory
                       ``data/alpaca_en_demo.json``.
``wizardlm_testset``   ``{idx, Skill, Difficulty, Instruction}``: WizardLM
                       ``WizardLM/data/WizardLM_testset.jsonl``.
``sharegpt``           ``{id?, conversations: [{from, value}]}``: WizardVicunaLM's
                       ``wizard_vicuna_70k`` and FastChat's training data format.
``openai_messages``    ``{id?, messages: [{role, content}]}``: OpenAI chat fine-tuning JSONL.
=====================  ==========================================================================

Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

__all__ = [
    "FORMATS",
    "ROLES",
    "DEFAULT_MAX_MESSAGE_CHARS",
    "FormatError",
    "BadRow",
    "SeedRecord",
    "ConversationRecord",
    "ParsedFile",
    "detect_format",
    "read_file",
    "validate_messages",
    "sharegpt_record",
    "write_sharegpt",
    "write_openai_jsonl",
]

FORMATS = ("evol_instruct", "alpaca", "wizardlm_testset", "sharegpt", "openai_messages")
"""The formats :func:`read_file` understands, in the order they are documented."""

ROLES = ("system", "user", "assistant")
"""Internal message roles."""

DEFAULT_MAX_MESSAGE_CHARS = 100_000
"""Longest message (characters) accepted by default, on import and in the editor."""

# ShareGPT "from" values -> internal role (compared lower-cased). FastChat's data uses human/gpt; other
# ShareGPT dumps use chatgpt, bard, bing, model, user, assistant.
_SHAREGPT_FROM = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "assistant": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}
_ROLE_TO_SHAREGPT = {"user": "human", "assistant": "gpt", "system": "system"}

_DETECT_ROWS = 20  # detection looks at the first this many rows that are JSON objects


class FormatError(ValueError):
    """A problem with the whole file, so that no row can be read.

    Raised for: a missing or unreadable file, bytes that are not UTF-8, text that is neither a JSON
    array nor JSON lines, a format that cannot be recognised from the keys of the rows, and a file
    with no rows. ``str(e)`` is ``"<path>: <reason>"``; the parts are ``e.path`` and ``e.reason``.
    Problems with single rows are never raised: they are reported as :class:`BadRow`.
    """

    def __init__(self, path, reason: str):
        super().__init__(str(path), reason)
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class BadRow:
    """A refused row.

    Attributes:
        row: 1-based row number: the index in a JSON array, or the line number in a JSON lines file
            (blank lines are skipped but still count as lines, so it matches an editor's line number).
        reason: human readable, e.g. ``"message 3: role 'user' follows 'user' (roles must alternate)"``.
    """

    row: int
    reason: str


@dataclass
class SeedRecord:
    """An instruction to expand or evolve (a seed).

    Attributes:
        row: 1-based row number in the file (see :class:`BadRow`).
        instruction: the instruction text, never empty.
        input: Alpaca's optional input (context) for the instruction, ``""`` when none.
        output: the reference answer when the file has one (Evol-Instruct, Alpaca), else ``None``.
        meta: extra fields. For the WizardLM test set ``{"idx": int, "skill": str, "difficulty": int}``
            (keys present only when the row has them); for other formats the row's unknown keys.
    """

    row: int
    instruction: str
    input: str = ""
    output: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class ConversationRecord:
    """A conversation that passed :func:`validate_messages`.

    Attributes:
        row: 1-based row number in the file (see :class:`BadRow`).
        messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``: an optional leading
            system message, then user/assistant strictly alternating, ending with assistant.
        external_id: the row's ``id`` as a string when it has one (ShareGPT, OpenAI JSONL), else ``None``.
        meta: the row's other keys (for instance WizardLM V2's ``idx``), unchanged.
    """

    row: int
    messages: list[dict]
    external_id: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class ParsedFile:
    """What :func:`read_file` found in one file.

    Attributes:
        path: the path as given, as a string.
        name: the file's base name.
        format: one of :data:`FORMATS`.
        sha256: hex digest of the file's bytes.
        n_rows: rows seen, good and bad (blank JSONL lines are not rows).
        seeds: the instructions, in file order (evol_instruct, alpaca, wizardlm_testset).
        conversations: the conversations, in file order (evol_instruct and alpaca give one round per
            row, sharegpt and openai_messages give the row's conversation).
        bad_rows: the refused rows, in file order; a refused row gives neither a seed nor a conversation.
    """

    path: str
    name: str
    format: str
    sha256: str
    n_rows: int
    seeds: list[SeedRecord]
    conversations: list[ConversationRecord]
    bad_rows: list[BadRow]


# ----------------------------------------------------------------------------------------------------
# Reading the file into rows
# ----------------------------------------------------------------------------------------------------

# A row as read: (row number, parsed value) or (row number, _JsonLineError) for an unparsable JSONL line.
class _JsonLineError:
    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


def _read_bytes(path) -> bytes:
    p = Path(path)
    if not p.exists():
        raise FormatError(path, "file not found")
    if not p.is_file():
        raise FormatError(path, "not a regular file")
    try:
        return p.read_bytes()
    except OSError as e:
        raise FormatError(path, f"cannot read the file: {e.strerror or e}") from e


def _decode(path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FormatError(path, f"not UTF-8 text (invalid byte at offset {e.start})") from e


def _json_error(e: json.JSONDecodeError, with_line: bool) -> str:
    where = f"line {e.lineno} column {e.colno}" if with_line else f"column {e.colno}"
    return f"{e.msg} at {where}"


def _split_rows(path, text: str) -> list[tuple[int, Any]]:
    """Split the text into ``(row number, value)`` pairs, as a JSON array or as JSON lines.

    Raises FormatError when the text is neither, or has no rows.
    """
    stripped = text.strip()
    if not stripped:
        raise FormatError(path, "the file is empty (no rows)")

    whole_error: json.JSONDecodeError | None = None
    try:
        whole = json.loads(stripped)
    except json.JSONDecodeError as e:
        whole_error = e
    else:
        if isinstance(whole, list):
            if not whole:
                raise FormatError(path, "the JSON array is empty (no rows)")
            return [(i + 1, v) for i, v in enumerate(whole)]
        if isinstance(whole, dict):
            # A single object: a one-line JSONL file (or one pretty-printed row).
            first_line = next(n for n, line in enumerate(text.split("\n"), 1) if line.strip())
            return [(first_line, whole)]
        raise FormatError(
            path, f"the file holds a single JSON {type(whole).__name__}, not a JSON array or JSON lines"
        )

    lines = text.split("\n")
    first = next(line for line in lines if line.strip())
    if stripped.startswith("["):
        # Looks like a JSON array. If its first line is not JSON on its own, it is a broken array,
        # not JSON lines whose first row happens to be a list.
        try:
            json.loads(first)
        except json.JSONDecodeError:
            raise FormatError(
                path, f"not valid JSON (a JSON array was expected): {_json_error(whole_error, True)}"
            ) from None

    rows: list[tuple[int, Any]] = []
    n_good = 0
    first_bad: str | None = None
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
            n_good += 1
        except json.JSONDecodeError as e:
            reason = f"invalid JSON: {_json_error(e, False)}"
            rows.append((n, _JsonLineError(reason)))
            if first_bad is None:
                first_bad = f"line {n}: {_json_error(e, False)}"
    if n_good == 0:
        raise FormatError(path, f"neither a JSON array nor JSON lines ({first_bad})")
    return rows


# ----------------------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------------------


def _row_format(row: dict) -> str | None:
    keys = set(row)
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "openai_messages"
    if "Instruction" in keys:
        return "wizardlm_testset"
    if "instruction" in keys:
        return "alpaca" if "input" in keys else "evol_instruct"
    return None


def _detect(path, rows: list[tuple[int, Any]]) -> str:
    dict_rows = [v for _, v in rows if isinstance(v, dict)][:_DETECT_ROWS]
    if not dict_rows:
        raise FormatError(path, "format not recognised: no row is a JSON object")
    votes = Counter(f for f in (_row_format(r) for r in dict_rows) if f is not None)
    if not votes:
        seen = sorted({k for r in dict_rows for k in r})
        raise FormatError(
            path,
            f"format not recognised from the keys of the first rows {seen}; expected rows like "
            "evol_instruct {instruction, output}, alpaca {instruction, input, output}, "
            "wizardlm_testset {idx, Skill, Difficulty, Instruction}, "
            "sharegpt {id, conversations: [{from, value}]} or openai_messages {messages: [{role, content}]}",
        )
    # Majority; a tie goes to the format seen first.
    best = max(votes.values())
    for r in dict_rows:
        f = _row_format(r)
        if f is not None and votes[f] == best:
            return f
    raise AssertionError("unreachable")  # pragma: no cover


def detect_format(path) -> str:
    """Detect the format of a file from the keys of its rows.

    The file may be a JSON array or JSON lines. The first 20 rows that are JSON objects vote: a row with
    ``conversations`` is sharegpt, with ``messages`` openai_messages, with ``Instruction`` (capital I)
    wizardlm_testset, with ``instruction`` and ``input`` alpaca, with ``instruction`` only
    evol_instruct. The majority wins (a tie goes to the format seen first).

    Args:
        path: a file path (str or Path).

    Returns:
        One of :data:`FORMATS`.

    Raises:
        FormatError: file missing or unreadable, not UTF-8, neither a JSON array nor JSON lines, no rows,
            or no row with recognisable keys.
    """
    data = _read_bytes(path)
    return _detect(path, _split_rows(path, _decode(path, data)))


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------


def _too_long(n: int, limit: int) -> str:
    return f"text is {n} characters, longer than the limit of {limit}"


def validate_messages(messages: list[dict], max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS) -> str | None:
    """Check a conversation in the internal shape; the one place for the message rules.

    Rules, in the order they are checked (the first broken one is reported):

    * the conversation is a non-empty list;
    * each message is an object with string ``role`` and ``content``;
    * the role is ``system``, ``user`` or ``assistant``;
    * the content is not empty or whitespace only, and at most ``max_message_chars`` characters;
    * a system message may only be the first message;
    * after it, roles strictly alternate user, assistant, user, ... starting with user;
    * the conversation ends with an assistant message.

    Used by :func:`read_file` on every imported conversation and by the editor before saving.

    Args:
        messages: ``[{"role": str, "content": str}, ...]``; extra keys in a message are allowed.
        max_message_chars: the longest content accepted, in characters.

    Returns:
        ``None`` when the conversation is valid, else the reason, naming the 1-based message number and
        its role, e.g. ``"message 2 (assistant): empty text"`` or
        ``"message 3: role 'user' follows 'user' (roles must alternate)"``.
    """
    if not isinstance(messages, list):
        return f"messages must be a list, not {_type_name(messages)}"
    if not messages:
        return "conversation has no messages"
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict):
            return f"message {i}: not an object ({_type_name(m)})"
        for key in ("role", "content"):
            if key not in m:
                return f"message {i}: missing field '{key}'"
        role, content = m["role"], m["content"]
        if not isinstance(role, str):
            return f"message {i}: field 'role' is not a string ({_type_name(role)})"
        if role not in ROLES:
            return f"message {i}: unknown role '{role}' (expected system, user or assistant)"
        if not isinstance(content, str):
            return f"message {i} ({role}): field 'content' is not a string ({_type_name(content)})"
        if not content.strip():
            return f"message {i} ({role}): empty text"
        if len(content) > max_message_chars:
            return f"message {i} ({role}): {_too_long(len(content), max_message_chars)}"

    start = 1 if messages[0]["role"] == "system" else 0
    if start == len(messages):
        return "conversation has only a system message"
    expected = "user"
    previous = None
    for i in range(start, len(messages)):
        role = messages[i]["role"]
        n = i + 1
        if role == "system":
            return f"message {n}: a system message is only allowed as the first message"
        if role != expected:
            if previous is None:
                return f"message {n}: the first message must be from 'user', not '{role}'"
            return f"message {n}: role '{role}' follows '{previous}' (roles must alternate)"
        previous = role
        expected = "assistant" if role == "user" else "user"
    last = messages[-1]["role"]
    if last != "assistant":
        return f"message {len(messages)} ({last}): the conversation must end with an assistant message"
    return None


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


# ----------------------------------------------------------------------------------------------------
# Row parsers: each returns (seed or None, conversation or None) or raises _RowError(reason)
# ----------------------------------------------------------------------------------------------------


class _RowError(Exception):
    pass


def _text_field(row: dict, key: str, limit: int, required: bool = True, default: str = "") -> str:
    if key not in row or (not required and row[key] is None):
        if required:
            raise _RowError(f"missing field '{key}'")
        return default
    v = row[key]
    if not isinstance(v, str):
        raise _RowError(f"field '{key}' is not a string ({_type_name(v)})")
    if required and not v.strip():
        raise _RowError(f"field '{key}': empty text")
    if len(v) > limit:
        raise _RowError(f"field '{key}': {_too_long(len(v), limit)}")
    return v


def _int_field(row: dict, key: str) -> int | None:
    if key not in row or row[key] is None:
        return None
    v = row[key]
    if isinstance(v, bool):
        raise _RowError(f"field '{key}' is not an integer (boolean)")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v.strip())
    raise _RowError(f"field '{key}' is not an integer ({v!r})")


def _check(messages: list[dict], limit: int) -> None:
    reason = validate_messages(messages, limit)
    if reason is not None:
        raise _RowError(reason)


def _external_id(row: dict) -> str | None:
    v = row.get("id")
    if v is None:
        return None
    if isinstance(v, (dict, list)):
        raise _RowError(f"field 'id' is not a string or number ({_type_name(v)})")
    return str(v)


def _parse_instruction_row(n: int, row: dict, limit: int):
    """evol_instruct and alpaca: {instruction, input?, output} -> seed + one-round conversation."""
    instruction = _text_field(row, "instruction", limit)
    inp = _text_field(row, "input", limit, required=False)
    output = _text_field(row, "output", limit)
    user = instruction if not inp.strip() else f"{instruction}\n\n{inp}"
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    _check(messages, limit)
    meta = {k: v for k, v in row.items() if k not in ("instruction", "input", "output")}
    seed = SeedRecord(row=n, instruction=instruction, input=inp, output=output, meta=dict(meta))
    return seed, ConversationRecord(row=n, messages=messages, meta=dict(meta))


def _parse_testset_row(n: int, row: dict, limit: int):
    """wizardlm_testset: {idx, Skill, Difficulty, Instruction} -> seed only."""
    instruction = _text_field(row, "Instruction", limit)
    meta: dict = {}
    idx = _int_field(row, "idx")
    if idx is not None:
        meta["idx"] = idx
    if row.get("Skill") is not None:
        skill = row["Skill"]
        if not isinstance(skill, str):
            raise _RowError(f"field 'Skill' is not a string ({_type_name(skill)})")
        meta["skill"] = skill
    difficulty = _int_field(row, "Difficulty")
    if difficulty is not None:
        meta["difficulty"] = difficulty
    return SeedRecord(row=n, instruction=instruction, meta=meta), None


def _parse_sharegpt_row(n: int, row: dict, limit: int):
    """sharegpt: {id?, conversations: [{from, value}]} -> conversation."""
    if "conversations" not in row:
        raise _RowError("missing field 'conversations'")
    turns = row["conversations"]
    if not isinstance(turns, list):
        raise _RowError(f"field 'conversations' is not a list ({_type_name(turns)})")
    messages = []
    for i, t in enumerate(turns, 1):
        if not isinstance(t, dict):
            raise _RowError(f"message {i}: not an object ({_type_name(t)})")
        for key in ("from", "value"):
            if key not in t:
                raise _RowError(f"message {i}: missing field '{key}'")
        frm, value = t["from"], t["value"]
        if not isinstance(frm, str):
            raise _RowError(f"message {i}: field 'from' is not a string ({_type_name(frm)})")
        role = _SHAREGPT_FROM.get(frm.strip().lower())
        if role is None:
            raise _RowError(
                f"message {i}: unknown role '{frm}' in 'from' (expected human, gpt or system)"
            )
        if not isinstance(value, str):
            raise _RowError(f"message {i} ({role}): field 'value' is not a string ({_type_name(value)})")
        messages.append({"role": role, "content": value})
    _check(messages, limit)
    meta = {k: v for k, v in row.items() if k not in ("id", "conversations")}
    return None, ConversationRecord(row=n, messages=messages, external_id=_external_id(row), meta=meta)


def _parse_openai_row(n: int, row: dict, limit: int):
    """openai_messages: {id?, messages: [{role, content}]} -> conversation."""
    if "messages" not in row:
        raise _RowError("missing field 'messages'")
    raw = row["messages"]
    if not isinstance(raw, list):
        raise _RowError(f"field 'messages' is not a list ({_type_name(raw)})")
    _check(raw, limit)
    messages = [{"role": m["role"], "content": m["content"]} for m in raw]
    meta = {k: v for k, v in row.items() if k not in ("id", "messages")}
    return None, ConversationRecord(row=n, messages=messages, external_id=_external_id(row), meta=meta)


_PARSERS = {
    "evol_instruct": _parse_instruction_row,
    "alpaca": _parse_instruction_row,
    "wizardlm_testset": _parse_testset_row,
    "sharegpt": _parse_sharegpt_row,
    "openai_messages": _parse_openai_row,
}


def read_file(path, max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS, format: str | None = None) -> ParsedFile:
    """Read a data file into seeds and conversations, listing the rows that were refused.

    The file is a JSON array or JSON lines (UTF-8, a BOM is allowed) in one of :data:`FORMATS`:

    * ``evol_instruct`` ``{instruction, output}`` (WizardLM ``alpaca_evol_instruct_70k.json``) and
      ``alpaca`` ``{instruction, input, output}`` (Stanford Alpaca; LLaMA-Factory ``alpaca_en_demo.json``):
      each row gives a :class:`SeedRecord` and a one-round :class:`ConversationRecord` whose user message
      is ``instruction``, or ``instruction + "\\n\\n" + input`` when the input is not empty.
    * ``wizardlm_testset`` ``{idx, Skill, Difficulty, Instruction}`` (WizardLM ``WizardLM_testset.jsonl``):
      a seed with ``meta={"idx", "skill", "difficulty"}``, no conversation.
    * ``sharegpt`` ``{id?, conversations: [{from, value}]}`` (WizardVicunaLM ``wizard_vicuna_70k``,
      FastChat's data format): ``from`` human/user -> user; gpt/chatgpt/assistant/bard/bing/model ->
      assistant; system -> system (case-insensitive).
    * ``openai_messages`` ``{id?, messages: [{role, content}]}`` (OpenAI chat fine-tuning JSONL).

    A row is refused (a :class:`BadRow` with its 1-based row number and the reason) when it is not an
    object, is not valid JSON (JSONL), lacks a required field or has one of the wrong type, has an empty
    instruction, output or message, has a text longer than ``max_message_chars``, or breaks the role
    rules of :func:`validate_messages`. Refused rows do not stop the others. Blank JSONL lines are
    skipped and not counted.

    Args:
        path: the file (str or Path).
        max_message_chars: the longest instruction, input, output or message accepted, in characters.
        format: one of :data:`FORMATS` to skip detection (rows are still validated), or ``None`` to detect.

    Returns:
        A :class:`ParsedFile`.

    Raises:
        FormatError: the file is missing or unreadable, not UTF-8, neither a JSON array nor JSON lines,
            has no rows, or (when ``format`` is None) its format cannot be recognised.
        ValueError: ``format`` is not one of :data:`FORMATS` (a caller error, not a file problem).
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    data = _read_bytes(path)
    rows = _split_rows(path, _decode(path, data))
    fmt = format if format is not None else _detect(path, rows)
    parse = _PARSERS[fmt]

    seeds: list[SeedRecord] = []
    conversations: list[ConversationRecord] = []
    bad_rows: list[BadRow] = []
    for n, value in rows:
        if isinstance(value, _JsonLineError):
            bad_rows.append(BadRow(n, value.reason))
            continue
        if not isinstance(value, dict):
            bad_rows.append(BadRow(n, f"row is not a JSON object ({_type_name(value)})"))
            continue
        try:
            seed, conv = parse(n, value, max_message_chars)
        except _RowError as e:
            bad_rows.append(BadRow(n, str(e)))
            continue
        if seed is not None:
            seeds.append(seed)
        if conv is not None:
            conversations.append(conv)

    return ParsedFile(
        path=str(path),
        name=Path(path).name,
        format=fmt,
        sha256=hashlib.sha256(data).hexdigest(),
        n_rows=len(rows),
        seeds=seeds,
        conversations=conversations,
        bad_rows=bad_rows,
    )


# ----------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------


def sharegpt_record(conv_id: str, messages: list[dict]) -> dict:
    """One conversation in ShareGPT layout (WizardVicunaLM ``wizard_vicuna_70k``, FastChat data format).

    Args:
        conv_id: the conversation id, written as the string ``"id"``.
        messages: internal messages ``[{"role": "system"|"user"|"assistant", "content": str}]``.

    Returns:
        ``{"id": conv_id, "conversations": [{"from": "human"|"gpt"|"system", "value": str}, ...]}``.

    Raises:
        ValueError: a message has a role other than system, user or assistant.
    """
    turns = []
    for i, m in enumerate(messages, 1):
        frm = _ROLE_TO_SHAREGPT.get(m.get("role"))
        if frm is None:
            raise ValueError(f"message {i}: unknown role {m.get('role')!r} (expected system, user or assistant)")
        turns.append({"from": frm, "value": m["content"]})
    return {"id": str(conv_id), "conversations": turns}


def _openai_messages(messages: list[dict]) -> list[dict]:
    out = []
    for i, m in enumerate(messages, 1):
        if m.get("role") not in ROLES:
            raise ValueError(f"message {i}: unknown role {m.get('role')!r} (expected system, user or assistant)")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _atomic_write(path, write) -> int:
    """Call ``write(file)`` on a temp file next to ``path``, then move it over ``path``.

    The temp file is removed if anything fails, so ``path`` is either the old file or the complete new one.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            count = write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return count


def write_sharegpt(path, items: Iterable[tuple[str, list[dict]]]) -> int:
    """Write conversations as a ShareGPT JSON array (the layout of WizardVicunaLM's ``wizard_vicuna_70k``).

    The output is exactly ``json.dumps([sharegpt_record(id, messages), ...], ensure_ascii=False,
    indent=2)`` plus a final newline, in UTF-8, but written as the items arrive (``items`` may be a
    generator). It goes to a temp file in the same folder first and then replaces ``path`` with
    ``os.replace``, so a failure never leaves a half-written file.

    Args:
        path: the output file (str or Path); its folder must exist.
        items: ``(conversation id, internal messages)`` pairs.

    Returns:
        The number of conversations written.

    Raises:
        ValueError: a message has an unknown role (nothing is written).
        OSError: the file cannot be written (nothing is written).
    """

    def write(f) -> int:
        count = 0
        f.write("[")
        for conv_id, messages in items:
            text = json.dumps(sharegpt_record(conv_id, messages), ensure_ascii=False, indent=2)
            f.write(",\n  " if count else "\n  ")
            f.write(text.replace("\n", "\n  "))
            count += 1
        f.write("\n]\n" if count else "]\n")
        return count

    return _atomic_write(path, write)


def write_openai_jsonl(path, items: Iterable[tuple[str, list[dict]]], include_id: bool = False) -> int:
    """Write conversations as OpenAI chat fine-tuning JSON lines.

    Each line is ``{"messages": [{"role", "content"}, ...]}`` (UTF-8, ``ensure_ascii=False``); with
    ``include_id=True`` the line starts with ``"id": conv_id`` as well (:func:`read_file` reads it back as
    the external id). Other keys of a message are dropped. Written to a temp file, then ``os.replace``.

    Args:
        path: the output file (str or Path); its folder must exist.
        items: ``(conversation id, internal messages)`` pairs.
        include_id: also write the conversation id (OpenAI's format has no such key, so off by default).

    Returns:
        The number of conversations written.

    Raises:
        ValueError: a message has an unknown role (nothing is written).
        OSError: the file cannot be written (nothing is written).
    """

    def write(f) -> int:
        count = 0
        for conv_id, messages in items:
            rec: dict = {"id": str(conv_id)} if include_id else {}
            rec["messages"] = _openai_messages(messages)
            f.write(json.dumps(rec, ensure_ascii=False))
            f.write("\n")
            count += 1
        return count

    return _atomic_write(path, write)
