"""File formats: detection, parsing into records, and export.

Every file, folder or hub dataset enters the studio through :func:`read_file`, which returns a
:class:`ParsedFile` of :class:`SeedRecord` (instructions) and :class:`ConversationRecord` (multi-turn chats)
plus the :class:`BadRow` list of rows that were refused, each with its 1-based row number and a reason.
``store`` turns these records into database rows; nothing here touches the database.

Internally a message is ``{"role": "system" | "user" | "assistant" | "tool", "content": str}``; an assistant
message that calls tools also has ``"tool_calls": [{"type": "function", "function": {"name": str,
"arguments": str (JSON text)}}]`` (OpenAI Chat Completions shape; its ``content`` may be ``""``), and a
``tool`` message is the result of the call before it. A conversation may carry ``tools``: the JSON schemas of
the functions it may call (parsed JSON, usually a list of ``{name, description, parameters}``). ShareGPT's
``from``/``value`` (``human``/``gpt``/``function_call``/``observation``) is mapped to and from that shape
here, and only here.

Formats (JSON formats may be a JSON array or JSON lines, a Parquet file, or a Hugging Face ``datasets``
folder or hub dataset; the format is detected from the keys of the rows):

=====================  ==========================================================================
``evol_instruct``      ``{instruction, output}`` (no ``input`` key): WizardLM's
                       ``alpaca_evol_instruct_70k.json`` (nlpxucan/WizardLM).
``alpaca``             ``{instruction, input, output}``: Stanford Alpaca / LLaMA-Factory
                       ``data/alpaca_en_demo.json``.
``wizardlm_testset``   ``{idx, Skill, Difficulty, Instruction}``: WizardLM
                       ``WizardLM/data/WizardLM_testset.jsonl``.
``instructions``       ``{instruction | prompt | question, input?}`` with no ``output``: a list of seeds
                       (self-instruct ``seed_tasks.jsonl``, prompt lists).
``text``               a ``.txt`` file, one instruction per line (blank lines skipped).
``sharegpt``           ``{id?, conversations: [{from, value}], tools?}``: WizardVicunaLM's
                       ``wizard_vicuna_70k``, FastChat's training data format, and LLaMA-Factory's tool
                       format (``function_call``/``observation`` turns, ``data/glaive_toolcall_en_demo.json``).
``openai_messages``    ``{id?, messages: [{role, content}], tools?}``: OpenAI chat fine-tuning JSONL; content
                       may be a list of text parts (LLaMA-Factory ``data/v1_sft_demo.jsonl``).
=====================  ==========================================================================

JSON and text need only the standard library; Parquet is read with ``pyarrow`` and ``datasets`` folders and
hub ids with ``datasets``, imported only when such a source is read, in batches of :data:`BATCH_ROWS` rows.

Untrusted files (uploads to a hosted studio) are safe to read: JSON lines and text are read a line at a time
(a row over :data:`MAX_ROW_BYTES` is refused unread); data nested deeper than :data:`MAX_NESTING` levels is
refused (a bad row, or a FormatError for a JSON array too deep to parse) and never reaches code that
recurses; ``read_file(..., display_name=...)`` names the file in every message by the name its owner gave,
never by the server's path; ``max_bytes`` refuses an oversized file before reading it (a JSON array is parsed
whole, so that limit is its protection); :func:`require_records` refuses a file with nothing to import.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

__all__ = [
    "FORMATS",
    "ROLES",
    "DEFAULT_MAX_MESSAGE_CHARS",
    "BATCH_ROWS",
    "MAX_NESTING",
    "MAX_ROW_BYTES",
    "FormatError",
    "BadRow",
    "SeedRecord",
    "ConversationRecord",
    "ParsedFile",
    "detect_format",
    "read_file",
    "require_records",
    "validate_messages",
    "sharegpt_record",
    "write_sharegpt",
    "write_openai_jsonl",
]

FORMATS = ("evol_instruct", "alpaca", "wizardlm_testset", "instructions", "text", "sharegpt", "openai_messages")
"""The formats :func:`read_file` understands, in the order they are documented."""

ROLES = ("system", "user", "assistant", "tool")
"""Internal message roles."""

DEFAULT_MAX_MESSAGE_CHARS = 100_000
"""Longest message (characters) accepted by default, on import and in the editor."""

BATCH_ROWS = 1000
"""Rows converted to Python at a time when reading Parquet files and ``datasets`` folders."""

MAX_NESTING = 100
"""Deepest nesting of arrays and objects accepted in a row, a row object being level 1 (JSON held in a
field, like ShareGPT's ``tools`` string, counts on its own). Deeper data is refused: a JSON lines row or an
array item as a bad row, a JSON array file the parser cannot even read as a :class:`FormatError`, so nothing
deeper ever reaches code that recurses over values (hashing, ``json.dumps``, the database's JSON)."""

MAX_ROW_BYTES = 64 * 1024 ** 2
"""Longest JSON lines row :func:`read_file` reads by default, in bytes (64 MiB); a longer line is refused as a
bad row without being held in memory."""

# ShareGPT "from" values -> internal role (compared lower-cased). FastChat's data uses human/gpt; other
# ShareGPT dumps use chatgpt, bard, bing, model, user, assistant. LLaMA-Factory's tool data
# (data/README.md, "sharegpt" format) uses function_call for the assistant's call and observation for its result.
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
    "function_call": "function_call",
    "observation": "tool",
    "tool": "tool",
}
_ROLE_TO_SHAREGPT = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}

# Row keys that name the instruction in an instruction-only list, in order of preference.
_INSTRUCTION_KEYS = ("instruction", "prompt", "question")

# Content part types that carry text (Chat Completions "text"; the Responses API's input/output text).
_TEXT_PART_TYPES = ("text", "input_text", "output_text")

_DETECT_ROWS = 20  # detection looks at the first this many rows that are JSON objects

# File name endings that mean "a local file", so a missing path with them is never taken for a hub id.
_FILE_SUFFIXES = (".json", ".jsonl", ".txt", ".parquet", ".arrow", ".csv", ".gz", ".zip")


class FormatError(ValueError):
    """A problem with the whole file, so that no row can be read (or, from :func:`require_records`, no row
    can be imported).

    Raised for: a missing or unreadable file, a file over the size limit, bytes that are not UTF-8, text that
    is neither a JSON array nor JSON lines, a JSON array nested too deep to parse, a format that cannot be
    recognised from the keys of the rows, a file with no rows, an unreadable Parquet file or ``datasets``
    folder, a hub dataset that cannot be loaded, and a file whose every row is bad (:func:`require_records`).
    ``str(e)`` is ``"<path>: <reason>"``; the parts are ``e.path`` (the name the caller gave for the file:
    ``display_name`` of :func:`read_file`, else the path as given) and ``e.reason``. ``e.bad_rows`` is the
    list of :class:`BadRow` when every row was bad, else ``[]``.
    Problems with single rows are never raised by :func:`read_file`: they are reported as :class:`BadRow`.
    """

    def __init__(self, path, reason: str, bad_rows: list | None = None):
        super().__init__(str(path), reason)
        self.path = str(path)
        self.reason = reason
        self.bad_rows = list(bad_rows or [])

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"

    def __reduce__(self):
        return (type(self), (self.path, self.reason, self.bad_rows))


@dataclass
class BadRow:
    """A refused row.

    Attributes:
        row: 1-based row number: the index in a JSON array, the line number in a JSON lines or text file
            (blank lines are skipped but still count as lines, so it matches an editor's line number), or
            the row index in a Parquet file or ``datasets`` folder (the splits of a ``DatasetDict`` are
            numbered one after the other; the reason then starts with ``"split '<name>' row <k>: "``).
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
        messages: ``[{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]`` (assistant messages
            that call tools also have ``tool_calls``): an optional leading system message, then user and
            assistant alternating (an assistant tool call is followed by its ``tool`` results and then the
            assistant again), ending with an assistant answer.
        external_id: the row's ``id`` as a string when it has one (ShareGPT, OpenAI JSONL), else ``None``.
        meta: the row's other keys (for instance WizardLM V2's ``idx``), unchanged.
        tools: the functions the conversation may call, as parsed JSON (ShareGPT's ``tools`` string parsed;
            OpenAI's ``[{"type": "function", "function": schema}]`` unwrapped to ``[schema]``), else ``None``.
    """

    row: int
    messages: list[dict]
    external_id: str | None = None
    meta: dict = field(default_factory=dict)
    tools: Any = None


@dataclass
class ParsedFile:
    """What :func:`read_file` found in one file, folder or hub dataset.

    Attributes:
        path: the path (or hub id) as given, as a string.
        name: the file's or folder's base name; the hub id for a hub dataset.
        format: one of :data:`FORMATS`.
        sha256: hex digest identifying the content: of the file's bytes; for a ``datasets`` folder or hub
            dataset, of its Arrow data files (relative name and bytes, in name order), so the same data saved
            twice gives the same digest.
        n_rows: rows seen, good, bad and duplicate (blank JSONL and text lines are not rows).
        seeds: the instructions, in file order (evol_instruct, alpaca, wizardlm_testset, instructions, text).
        conversations: the conversations, in file order (evol_instruct and alpaca give one round per
            row, sharegpt and openai_messages give the row's conversation).
        bad_rows: the refused rows, in file order; a refused row gives neither a seed nor a conversation.
        n_duplicates: rows skipped because an earlier row of the same file gave the same record: the same
            messages (and tools) for a row that gives a conversation, the same instruction and input for a
            row that gives only a seed. They are neither records nor bad rows.
        kind: where the rows came from: ``"file"``, ``"folder"`` (a ``datasets`` folder) or ``"hub"``.
        display_name: what messages call the file: ``read_file``'s ``display_name`` (an upload's own name),
            else the path as given.
    """

    path: str
    name: str
    format: str
    sha256: str
    n_rows: int
    seeds: list[SeedRecord]
    conversations: list[ConversationRecord]
    bad_rows: list[BadRow]
    n_duplicates: int = 0
    kind: str = "file"
    display_name: str = ""


# ----------------------------------------------------------------------------------------------------
# Sources: a file, a folder or a hub id, read as (row number, value) pairs
# ----------------------------------------------------------------------------------------------------


# A row as read: (row number, parsed value) or (row number, _RowProblem) for a row that could not be read
# (a JSON lines row that is not valid JSON, nests too deep or is too long; a text line that is too long).
class _RowProblem:
    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


@dataclass
class _Source:
    """Rows of one input. ``rows`` yields ``(row number, value)``: parsed JSON values (or _RowProblem),
    text lines (``is_text``), or Parquet / datasets rows as dicts with their null columns dropped."""

    path: str
    name: str
    kind: str  # "file" | "folder" | "hub"
    rows: Iterator[tuple[int, Any]]
    sha256: Callable[[], str]
    is_text: bool = False  # rows are lines of plain text (format "text")
    depth_checked: bool = False  # rows nested past MAX_NESTING come as _RowProblem already
    where: Callable[[int], str] = lambda n: ""  # prefix naming the split of row n, for bad-row reasons


_BOM = b"\xef\xbb\xbf"


def _nesting_reason() -> str:
    return f"nested deeper than {MAX_NESTING} levels"


def _nesting_exceeds(value: Any, limit: int | None = None) -> bool:
    """Whether arrays and objects nest deeper than ``limit`` (default :data:`MAX_NESTING`) levels in ``value``
    (the value itself, when it is an array or object, is level 1). Walks with a stack of its own, so a value of
    any depth is checked without recursion."""
    limit = MAX_NESTING if limit is None else limit
    if not isinstance(value, (dict, list, tuple)):
        return False
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        for child in (v.values() if isinstance(v, dict) else v):
            if isinstance(child, (dict, list, tuple)):
                stack.append((child, depth + 1))
    return False


def _loads_nested(text: str) -> Any:
    """``json.loads`` for JSON held in a field (tools, a function call): raises :class:`_TooDeep` when the value
    nests deeper than :data:`MAX_NESTING` levels (also when the parser itself runs out of stack), and
    ``json.JSONDecodeError`` as ``json.loads`` does."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise _TooDeep() from None
    if _nesting_exceeds(value):
        raise _TooDeep()
    return value


class _TooDeep(Exception):
    pass


def _check_file(path) -> Path:
    p = Path(path)
    if not p.exists():
        raise FormatError(path, "file not found")
    if not p.is_file():
        raise FormatError(path, "not a regular file")
    return p


def _open_binary(path):
    try:
        return open(_check_file(path), "rb")
    except OSError as e:
        raise FormatError(path, f"cannot read the file: {e.strerror or type(e).__name__}") from e


def _read_bytes(path) -> bytes:
    with _open_binary(path) as fh:
        try:
            return fh.read()
        except OSError as e:
            raise FormatError(path, f"cannot read the file: {e.strerror or type(e).__name__}") from e


def _file_digest(path) -> str:
    """sha256 of the file's bytes, streamed in 1 MiB blocks."""
    h = hashlib.sha256()
    with _open_binary(path) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _decode(path, data: bytes, offset: int = 0) -> str:
    """UTF-8 text of ``data`` (a leading BOM dropped); ``offset`` is where ``data`` starts in the file, so the
    message names the offset of the bad byte in the file."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise FormatError(path, f"not UTF-8 text (invalid byte at offset {offset + e.start})") from None


def _json_error(e: json.JSONDecodeError, with_line: bool) -> str:
    where = f"line {e.lineno} column {e.colno}" if with_line else f"column {e.colno}"
    return f"{e.msg} at {where}"


def _lines(path, cap: int) -> Iterator[tuple[int, int, bytes | int]]:
    """The lines of a file, read one at a time: ``(line number, byte offset, bytes)`` without the line end,
    a BOM at the start of the file dropped. A line longer than ``cap`` bytes is not kept: it is read on in
    1 MiB blocks and given as ``(line number, byte offset, its length in bytes)`` instead."""
    with _open_binary(path) as fh:
        n = pos = 0
        while True:
            raw = fh.readline(cap + 1)
            if not raw:
                return
            n += 1
            start = pos
            pos += len(raw)
            if raw.endswith(b"\n") or len(raw) <= cap:
                body = raw[:-1] if raw.endswith(b"\n") else raw
                if n == 1 and body.startswith(_BOM):
                    body, start = body[len(_BOM):], start + len(_BOM)
                yield n, start, body
                continue
            size = len(raw)
            while not raw.endswith(b"\n"):
                raw = fh.readline(1 << 20)
                if not raw:
                    break
                size += len(raw)
                pos += len(raw)
            yield n, start, size - (1 if raw.endswith(b"\n") else 0)


def _first_char(path) -> str | None:
    """The first character of the file that is not whitespace (a BOM skipped), or None when there is none.
    Reads only as far as that character."""
    with _open_binary(path) as fh:
        first = True
        for block in iter(lambda: fh.read(1 << 16), b""):
            if first and block.startswith(_BOM):
                block = block[len(_BOM):]
            first = False
            block = block.lstrip()
            if block:
                return chr(block[0]) if block[0] < 0x80 else "?"
    return None


def _whole_json(path) -> Any:
    """The file parsed as one JSON value. Holds the file's bytes, its text and the parsed value at once (a
    JSON array has no row boundaries to stream by), so it is used only for files that start with ``[`` or
    hold a single pretty-printed object; the upload size limit (``max_bytes``) bounds it.

    Raises FormatError (unreadable, not UTF-8), json.JSONDecodeError, RecursionError (nested too deep for
    the parser)."""
    text = _decode(path, _read_bytes(path))
    return json.loads(text)


def _primed(rows: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    """``rows`` with its first row read now, so a file with no rows (or unreadable from the start) raises
    its FormatError when the source is opened, not when the rows are first read."""
    first = next(rows, None)
    return rows if first is None else itertools.chain([first], rows)


def _json_line_rows(path, cap: int, first_char: str | None) -> Iterator[tuple[int, Any]]:
    """JSON lines, one row per non-blank line, parsed as they are read.

    A line that is not valid JSON, nests deeper than the parser can go, or is longer than ``cap`` bytes gives
    a :class:`_RowProblem`. When the first non-blank line is not valid JSON on its own and the file starts
    with ``{``, the file is tried as one pretty-printed object (one row). A file whose only row is an array
    gives the array's items; one whose only row is another scalar is refused, as is a file where no line
    could be read.
    """

    whole_too_deep = []  # set when the file, tried as one object, nests deeper than the parser can go

    def parsed_lines() -> Iterator[tuple[int, Any]]:
        seen_first = False
        for n, start, body in _lines(path, cap):
            if isinstance(body, int):
                yield n, _RowProblem(f"row is {body} bytes, longer than the limit of {cap} bytes for one JSON "
                                     "lines row")
                seen_first = True
                continue
            line = _decode(path, body, start)
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                if not seen_first and first_char == "{":
                    whole = _maybe_one_object(path)
                    if whole is _TOO_DEEP:
                        whole_too_deep.append(True)
                    elif whole is not None:
                        yield n, _RowProblem(_nesting_reason()) if _nesting_exceeds(whole) else whole
                        return
                value = _RowProblem(f"invalid JSON: {_json_error(e, False)}")
            except RecursionError:
                value = _RowProblem(_nesting_reason())
            else:
                # Each level opens with "[" or "{": a line with few of them cannot nest too deep (no walk needed).
                if line.count("[") + line.count("{") > MAX_NESTING and _nesting_exceeds(value):
                    value = _RowProblem(_nesting_reason())
            seen_first = True
            yield n, value

    it = parsed_lines()
    first = next(it, None)
    if first is None:
        raise FormatError(path, "the file is empty (no rows)")
    head = [first]
    if not isinstance(first[1], (dict, _RowProblem)):  # only then does a file of one row read otherwise
        second = next(it, None)
        if second is None:
            value = first[1]
            if isinstance(value, list):
                if not value:
                    raise FormatError(path, "the JSON array is empty (no rows)")
                yield from ((i + 1, _RowProblem(_nesting_reason()) if _nesting_exceeds(v) else v)
                            for i, v in enumerate(value))
                return
            raise FormatError(path, f"the file holds a single JSON {type(value).__name__}, not a JSON array or "
                                    "JSON lines")
        head.append(second)
    n_good = 0
    first_bad: tuple[int, str] | None = None
    for n, value in itertools.chain(head, it):
        if isinstance(value, _RowProblem):
            if first_bad is None:
                first_bad = (n, value.reason)
        else:
            n_good += 1
        yield n, value
    if n_good == 0:
        n, reason = first_bad
        if whole_too_deep:
            raise FormatError(path, f"not readable: the JSON is {_nesting_reason()}")
        if reason.startswith("invalid JSON: "):
            raise FormatError(path, f"neither a JSON array nor JSON lines (line {n}: {reason[len('invalid JSON: '):]})")
        raise FormatError(path, f"no row could be read (line {n}: {reason})")


_TOO_DEEP = object()


def _maybe_one_object(path) -> Any:
    """The file as one JSON object (a pretty-printed single row), None when it is not one, or ``_TOO_DEEP``
    when it nests deeper than the parser can go."""
    try:
        whole = _whole_json(path)
    except json.JSONDecodeError:
        return None
    except RecursionError:
        return _TOO_DEEP
    return whole if isinstance(whole, dict) else None


def _json_rows(path, cap: int) -> Iterator[tuple[int, Any]]:
    """``(row number, value)`` of a JSON array file (parsed whole) or a JSON lines file (streamed by line).

    Raises FormatError when the file is neither, is a broken JSON array, nests deeper than the parser can go
    (an array file), or has no rows.
    """
    c = _first_char(path)
    if c is None:
        raise FormatError(path, "the file is empty (no rows)")
    if c != "[":
        return _json_line_rows(path, cap, c)
    try:
        whole = _whole_json(path)
    except RecursionError:
        raise FormatError(path, f"not readable: the JSON is {_nesting_reason()}") from None
    except json.JSONDecodeError as e:
        # A broken array, unless its first line is JSON on its own (JSON lines whose first row is a list).
        first = next(((n, s, b) for n, s, b in _lines(path, cap)
                      if isinstance(b, int) or _decode(path, b, s).strip()), None)
        try:
            if first is None or isinstance(first[2], int):
                raise ValueError
            json.loads(_decode(path, first[2], first[1]))
        except (ValueError, RecursionError):
            raise FormatError(path, f"not valid JSON (a JSON array was expected): {_json_error(e, True)}") from None
        return _json_line_rows(path, cap, c)
    if not isinstance(whole, list):  # pragma: no cover - a file starting with '[' that parses is an array
        raise FormatError(path, f"the file holds a single JSON {type(whole).__name__}, not a JSON array")
    if not whole:
        raise FormatError(path, "the JSON array is empty (no rows)")
    return ((i + 1, _RowProblem(_nesting_reason()) if _nesting_exceeds(v) else v) for i, v in enumerate(whole))


def _text_rows(path, limit: int) -> Iterator[tuple[int, Any]]:
    """``(line number, line)`` for each non-blank line of a plain text file (stripped), streamed. A line over
    ``4 * limit`` bytes (so surely over ``limit`` characters) is not held: it gives a :class:`_RowProblem`.
    Raises FormatError when there is no non-blank line."""
    cap = 4 * limit + 8  # UTF-8 takes at most 4 bytes a character; room for a BOM and "\r"
    count = 0
    for n, start, body in _lines(path, cap):
        if isinstance(body, int):
            count += 1
            yield n, _RowProblem(f"line: text is {body} bytes, longer than the limit of {limit} characters")
            continue
        line = _decode(path, body, start).strip()
        if line:
            count += 1
            yield n, line
    if count == 0:
        raise FormatError(path, "the file is empty (no rows)")


def _json_decides(path, cap: int) -> bool:
    """For a ``.txt`` file: whether it is JSON after all (every row valid JSON, one of them an object)."""
    any_object = False
    try:
        for _, value in _json_rows(path, cap):
            if isinstance(value, _RowProblem):
                return False
            any_object = any_object or isinstance(value, dict)
    except FormatError:
        return False
    return any_object


def _file_source(path, format: str | None, suffix: str, limit: int, max_row_bytes: int) -> _Source:
    """A JSON array, JSON lines or plain text file. A ``.txt`` file (``suffix``) is plain text unless its
    every row is valid JSON and one of them is an object (then it is JSON lines with a ``.txt`` name).

    JSON lines and text are read line by line, so only one line is held at a time (JSON lines rows over
    ``max_row_bytes`` and text lines surely over ``limit`` characters are refused unread); a JSON array file
    is parsed whole (see :func:`_whole_json`)."""
    _check_file(path)

    def source(rows, is_text=False) -> _Source:
        return _Source(str(path), Path(path).name, "file", _primed(rows), lambda: _file_digest(path),
                       is_text=is_text, depth_checked=True)

    if format == "text":
        return source(_text_rows(path, limit), True)
    if format is None and suffix == ".txt" and not _json_decides(path, max_row_bytes):
        return source(_text_rows(path, limit), True)
    return source(_json_rows(path, max_row_bytes))


def _hash_files(files: Iterable[tuple[str, Path]]) -> str:
    """sha256 over ``(relative name, bytes)`` of each file, in the order given, streamed in 1 MiB blocks."""
    h = hashlib.sha256()
    for rel, f in files:
        h.update(rel.encode("utf-8") + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def _drop_nulls(row: Any) -> Any:
    """A columnar row with its null columns removed: a column is null where the row did not have the key."""
    if isinstance(row, dict):
        return {k: v for k, v in row.items() if v is not None}
    return row


def _parquet_source(path) -> _Source:
    try:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a broken file
        raise FormatError(path, f"not a readable Parquet file ({_short_error(e)})") from None
    if pf.metadata.num_rows == 0:
        raise FormatError(path, "the Parquet file has no rows")

    def rows() -> Iterator[tuple[int, Any]]:
        n = 0
        batches = pf.iter_batches(batch_size=BATCH_ROWS)
        while True:
            try:
                batch = next(batches, None)
                if batch is None:
                    return
                pyrows = batch.to_pylist()
            except Exception as e:  # noqa: BLE001 - a broken row group, or nesting deeper than Arrow reads
                raise FormatError(path, f"not a readable Parquet file after row {n} ({_short_error(e)})") from None
            for row in pyrows:
                n += 1
                yield n, _drop_nulls(row)

    return _Source(str(path), Path(path).name, "file", rows(), lambda: _file_digest(path))


def _dataset_rows(splits: list[tuple[str, Any]]) -> tuple[Iterator[tuple[int, Any]], Callable[[int], str]]:
    """Rows of ``[(split name, datasets.Dataset)]``, numbered on across splits, read in Arrow batches."""
    starts: list[tuple[int, str]] = []  # (first row number, split name)
    total = 0
    for name, ds in splits:
        starts.append((total + 1, name))
        total += ds.num_rows

    def rows() -> Iterator[tuple[int, Any]]:
        n = 0
        for name, ds in splits:
            tables = iter(ds.with_format("arrow").iter(batch_size=BATCH_ROWS))
            while True:
                try:
                    table = next(tables, None)
                    if table is None:
                        break
                    pyrows = table.to_pylist()
                except Exception as e:  # noqa: BLE001 - broken Arrow data
                    where = f" split '{name}'" if len(splits) > 1 else ""
                    raise _SourceError(f"the dataset{where} cannot be read after row {n} ({_short_error(e)})") from None
                for row in pyrows:
                    n += 1
                    yield n, _drop_nulls(row)

    def where(n: int) -> str:
        if len(splits) < 2:
            return ""
        first, name = max((s for s in starts if s[0] <= n), key=lambda s: s[0])
        return f"split '{name}' row {n - first + 1}: "

    return rows(), where


def _splits_of(loaded) -> list[tuple[str, Any]]:
    """``[(split name, Dataset)]`` of a ``Dataset`` (one split, named ``""``) or a ``DatasetDict``."""
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        return [(str(k), loaded[k]) for k in loaded.keys()]
    return [("", loaded)]


def _folder_source(path) -> _Source:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    p = Path(path)
    if not ((p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()):
        raise FormatError(path, "not a regular file, and not a Hugging Face datasets folder (it has no "
                                "dataset_info.json or dataset_dict.json, which Dataset.save_to_disk writes)")
    try:
        import datasets

        loaded = datasets.load_from_disk(str(p))
    except Exception as e:  # noqa: BLE001 - datasets raises many types for a broken folder
        raise FormatError(path, f"not a readable Hugging Face datasets folder ({_short_error(e)})") from None
    splits = _splits_of(loaded)
    if sum(ds.num_rows for _, ds in splits) == 0:
        raise FormatError(path, "the dataset has no rows")
    rows, where = _dataset_rows(splits)
    data_files = sorted(f for f in p.rglob("*.arrow") if f.is_file())
    return _Source(str(path), p.name, "folder", rows,
                   lambda: _hash_files((f.relative_to(p).as_posix(), f) for f in data_files), where=where)


def _looks_like_hub_id(path) -> bool:
    """``owner/name`` by the Hub's repo id rules (``huggingface_hub.utils.validate_repo_id``), and not ending
    like a data file (a missing ``data/train.json`` is a missing file, not a dataset id)."""
    s = str(path)
    if s.count("/") != 1 or s.lower().endswith(_FILE_SUFFIXES):
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(s)
    except HFValidationError:
        return False
    return True


def _hub_source(repo_id: str) -> _Source:
    """A dataset on the Hugging Face Hub, loaded with ``datasets.load_dataset`` (all splits)."""
    try:
        import datasets

        loaded = datasets.load_dataset(repo_id)
    except Exception as e:  # noqa: BLE001 - network, auth, missing repo and script errors all end here
        raise FormatError(repo_id, f"no such file or folder, and the Hugging Face dataset '{repo_id}' could "
                                   f"not be loaded ({_short_error(e)})") from None
    splits = _splits_of(loaded)
    if sum(ds.num_rows for _, ds in splits) == 0:
        raise FormatError(repo_id, "the dataset has no rows")
    rows, where = _dataset_rows(splits)

    def digest() -> str:
        files = [(f"{name}/{Path(c['filename']).name}", Path(c["filename"]))
                 for name, ds in splits for c in ds.cache_files]
        if not files:  # held in memory only: its fingerprint is what datasets itself uses to tell data apart
            return hashlib.sha256(" ".join(f"{name}:{ds._fingerprint}" for name, ds in splits).encode()).hexdigest()
        return _hash_files(files)

    return _Source(repo_id, repo_id, "hub", rows, digest, where=where)


class _SourceError(Exception):
    """A columnar source failed part way; :func:`read_file` reports it as a FormatError naming the source."""


def _short_error(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _size_text(n: int) -> str:
    """``n`` bytes for people: ``"512 MB"``, ``"600.5 MB"``, ``"900 bytes"``."""
    if n < 1024 ** 2:
        return f"{n} bytes"
    return f"{n / 1024 ** 2:.1f}".rstrip("0").rstrip(".") + " MB"


def _open_source(path, format: str | None, *, suffix: str | None = None,
                 max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS, max_row_bytes: int = MAX_ROW_BYTES,
                 max_bytes: int | None = None) -> _Source:
    """The rows of ``path``: a file (JSON, JSON lines, text, Parquet), a ``datasets`` folder, or, when no such
    path exists and it looks like ``owner/name``, a Hugging Face hub dataset. ``suffix`` (lower case, with the
    dot) decides ``.txt`` and ``.parquet`` (default: the path's own); ``max_bytes`` refuses a larger file
    before anything is read."""
    p = Path(path)
    suffix = p.suffix.lower() if suffix is None else suffix
    exists = p.exists()
    if not exists and not _looks_like_hub_id(path):
        raise FormatError(path, "file not found")
    if format == "text" and (not exists or p.is_dir() or suffix == ".parquet"):
        raise FormatError(path, "format 'text' reads a plain text file (one instruction per line), not a "
                                "Parquet file, a datasets folder or a hub dataset")
    if not exists:
        return _hub_source(str(path))
    if p.is_dir():
        return _folder_source(path)
    if max_bytes is not None:
        size = _check_file(path).stat().st_size
        if size > max_bytes:
            raise FormatError(path, f"the file is {_size_text(size)}, larger than the upload limit of "
                                    f"{_size_text(max_bytes)}")
    if suffix == ".parquet":
        return _parquet_source(path)
    return _file_source(path, format, suffix, max_message_chars, max_row_bytes)


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
    if "instruction" in keys and "output" in keys:
        return "alpaca" if "input" in keys else "evol_instruct"
    if keys.intersection(_INSTRUCTION_KEYS):
        return "instructions"
    return None


def _detect(path, values: list[Any]) -> str:
    """The format voted by the first :data:`_DETECT_ROWS` objects among ``values``."""
    dict_rows = [v for v in values if isinstance(v, dict)][:_DETECT_ROWS]
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
            "instructions {instruction | prompt | question}, "
            "sharegpt {id, conversations: [{from, value}]} or openai_messages {messages: [{role, content}]}",
        )
    # Majority; a tie goes to the format seen first.
    best = max(votes.values())
    for r in dict_rows:
        f = _row_format(r)
        if f is not None and votes[f] == best:
            return f
    raise AssertionError("unreachable")  # pragma: no cover


def _peek(rows: Iterator[tuple[int, Any]]) -> tuple[list[tuple[int, Any]], Iterator[tuple[int, Any]]]:
    """The rows up to the :data:`_DETECT_ROWS`-th object (or all), and an iterator over all rows again."""
    head: list[tuple[int, Any]] = []
    n_objects = 0
    for item in rows:
        head.append(item)
        if isinstance(item[1], dict):
            n_objects += 1
            if n_objects >= _DETECT_ROWS:
                break
    return head, itertools.chain(head, rows)


def detect_format(path, display_name: str | None = None) -> str:
    """Detect the format of a file, ``datasets`` folder or hub dataset from the keys of its rows.

    The first 20 rows that are objects vote: a row with ``conversations`` is sharegpt, with ``messages``
    openai_messages, with ``Instruction`` (capital I) wizardlm_testset, with ``instruction`` and ``output``
    alpaca (with ``input``) or evol_instruct (without), with ``instruction``, ``prompt`` or ``question``
    (and no ``output``) instructions. The majority wins (a tie goes to the format seen first). A ``.txt``
    file whose lines are not all JSON is ``text``.

    Args:
        path: a file (JSON array, JSON lines, ``.txt``, ``.parquet``), a ``datasets`` folder, or a hub
            dataset id ``owner/name`` (only when no such path exists).
        display_name: the file's name for messages and for its ``.txt`` / ``.parquet`` ending, as in
            :func:`read_file`.

    Returns:
        One of :data:`FORMATS`.

    Raises:
        FormatError: as :func:`read_file`.
    """
    with _shown_as(path, display_name):
        src = _open_source(path, None, suffix=_suffix(path, display_name))
        if src.is_text:
            return "text"
        head, _ = _peek(src.rows)
        return _detect(path, [v for _, v in head])


def _suffix(path, display_name: str | None) -> str:
    return Path(display_name if display_name else str(path)).suffix.lower()


def _scrub(text: str, path, shown: str) -> str:
    """``text`` with the real path of ``path`` (as given and resolved) replaced by ``shown`` and its folder
    left out, so a message never shows where the server keeps the file."""
    p = Path(str(path))
    try:
        resolved = p.resolve()
    except (OSError, RuntimeError):
        resolved = p
    for full in sorted({str(p), str(resolved), p.as_posix()}, key=len, reverse=True):
        if full and full not in (".", shown):
            text = text.replace(full, shown)
    for folder in sorted({str(p.parent), str(resolved.parent)}, key=len, reverse=True):
        if folder not in ("", ".", "/"):
            text = text.replace(folder + os.sep, "").replace(folder, "")
    return text


class _shown_as:
    """Context manager: a FormatError (or a columnar source's failure) raised inside names the file as
    ``display_name`` (when given) and mentions no server path."""

    def __init__(self, path, display_name: str | None):
        self.path = path
        self.shown = str(path) if display_name is None else str(display_name)
        self.rename = display_name is not None

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if isinstance(e, FormatError):
            if not self.rename:
                return False
            bad = [BadRow(b.row, _scrub(b.reason, self.path, self.shown)) for b in e.bad_rows]
            raise FormatError(self.shown, _scrub(e.reason, self.path, self.shown), bad) from None
        if isinstance(e, _SourceError):
            reason = _scrub(str(e), self.path, self.shown) if self.rename else str(e)
            raise FormatError(self.shown, reason) from None
        return False


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------


def _too_long(n: int, limit: int) -> str:
    return f"text is {n} characters, longer than the limit of {limit}"


def _tool_calls_problem(calls: Any, limit: int) -> str | None:
    """What is wrong with an assistant message's ``tool_calls`` (a non-empty list), or None."""
    if not isinstance(calls, list):
        return f"field 'tool_calls' is not a list ({_type_name(calls)})"
    for j, call in enumerate(calls, 1):
        if not isinstance(call, dict):
            return f"tool call {j}: not an object ({_type_name(call)})"
        if call.get("type") != "function":
            return f"tool call {j}: field 'type' must be 'function', not {call.get('type')!r}"
        fn = call.get("function")
        if not isinstance(fn, dict):
            return f"tool call {j}: field 'function' is not an object ({_type_name(fn)})"
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            return f"tool call {j}: the function has no name"
        args = fn.get("arguments")
        if not isinstance(args, str):
            return f"tool call {j} ({name}): field 'arguments' is not a string ({_type_name(args)})"
        if len(args) > limit:
            return f"tool call {j} ({name}): arguments {_too_long(len(args), limit)}"
    return None


def validate_messages(messages: list[dict], max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS) -> str | None:
    """Check a conversation in the internal shape; the one place for the message rules.

    Rules, in the order they are checked (the first broken one is reported):

    * the conversation is a non-empty list;
    * each message is an object with string ``role`` and ``content``, whose values nest arrays and objects at
      most :data:`MAX_NESTING` levels (checked without recursion);
    * the role is ``system``, ``user``, ``assistant`` or ``tool``;
    * ``tool_calls``, when present and not empty, is on an assistant message and is a list of
      ``{"type": "function", "function": {"name": non-empty str, "arguments": str}}``;
    * the content is not empty or whitespace only (except for an assistant message with tool calls), and at
      most ``max_message_chars`` characters;
    * a system message may only be the first message;
    * after it: user first; user is followed by assistant; an assistant answer by user; an assistant tool
      call by ``tool`` (its results); a ``tool`` result by another result or the assistant;
    * the conversation ends with an assistant message that is not a tool call.

    Used by :func:`read_file` on every imported conversation, by the editor before saving, and by the API.

    Args:
        messages: ``[{"role": str, "content": str, "tool_calls"?: list}, ...]``; other keys are allowed.
        max_message_chars: the longest content (or tool call arguments) accepted, in characters.

    Returns:
        ``None`` when the conversation is valid, else the reason, naming the 1-based message number and
        its role, e.g. ``"message 2 (assistant): empty text"`` or
        ``"message 3: role 'user' follows 'user' (roles must alternate)"``.
    """
    return _validate(messages, max_message_chars, True)


def _validate(messages: Any, max_message_chars: int, check_depth: bool) -> str | None:
    """:func:`validate_messages`; ``check_depth=False`` for messages built from a row that was checked already."""
    if not isinstance(messages, list):
        return f"messages must be a list, not {_type_name(messages)}"
    if not messages:
        return "conversation has no messages"
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict):
            return f"message {i}: not an object ({_type_name(m)})"
        if check_depth and _nesting_exceeds(m):
            return f"message {i}: {_nesting_reason()}"
        for key in ("role", "content"):
            if key not in m:
                return f"message {i}: missing field '{key}'"
        role, content = m["role"], m["content"]
        if not isinstance(role, str):
            return f"message {i}: field 'role' is not a string ({_type_name(role)})"
        if role not in ROLES:
            return f"message {i}: unknown role '{role}' (expected system, user, assistant or tool)"
        calls = m.get("tool_calls")
        if calls:
            if role != "assistant":
                return f"message {i} ({role}): only an assistant message can have tool_calls"
            problem = _tool_calls_problem(calls, max_message_chars)
            if problem:
                return f"message {i} (assistant): {problem}"
        if not isinstance(content, str):
            return f"message {i} ({role}): field 'content' is not a string ({_type_name(content)})"
        if not content.strip() and not calls:
            return f"message {i} ({role}): empty text"
        if len(content) > max_message_chars:
            return f"message {i} ({role}): {_too_long(len(content), max_message_chars)}"

    start = 1 if messages[0]["role"] == "system" else 0
    if start == len(messages):
        return "conversation has only a system message"
    previous = None
    previous_calls = False
    for i in range(start, len(messages)):
        role = messages[i]["role"]
        n = i + 1
        if role == "system":
            return f"message {n}: a system message is only allowed as the first message"
        if previous is None:
            if role != "user":
                return f"message {n}: the first message must be from 'user', not '{role}'"
        elif previous == "user":
            if role != "assistant":
                return f"message {n}: role '{role}' follows 'user' (roles must alternate)"
        elif previous == "assistant" and previous_calls:
            if role != "tool":
                return f"message {n}: role '{role}' follows an assistant tool call (expected 'tool', its result)"
        elif previous == "assistant":
            if role == "tool":
                return f"message {n}: role 'tool' follows an assistant message without tool_calls"
            if role != "user":
                return f"message {n}: role '{role}' follows 'assistant' (roles must alternate)"
        elif previous == "tool" and role not in ("tool", "assistant"):
            return f"message {n}: role '{role}' follows 'tool' (a tool result is followed by the assistant)"
        previous, previous_calls = role, bool(messages[i].get("tool_calls"))
    last = messages[-1]["role"]
    if last != "assistant":
        return f"message {len(messages)} ({last}): the conversation must end with an assistant message"
    if previous_calls:
        return f"message {len(messages)} (assistant): the conversation ends with a tool call (no result, no answer)"
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
    reason = _validate(messages, limit, False)  # read_file checked the row's nesting
    if reason is not None:
        raise _RowError(reason)


def _external_id(row: dict) -> str | None:
    v = row.get("id")
    if v is None:
        return None
    if isinstance(v, (dict, list)):
        raise _RowError(f"field 'id' is not a string or number ({_type_name(v)})")
    return str(v)


def _seed_and_round(n: int, row: dict, key: str, limit: int):
    """``{<key>, input?, output}`` -> seed + one-round conversation (the user message is the instruction,
    plus ``"\\n\\n" + input`` when the input is not empty)."""
    instruction = _text_field(row, key, limit)
    inp = _text_field(row, "input", limit, required=False)
    output = _text_field(row, "output", limit)
    user = instruction if not inp.strip() else f"{instruction}\n\n{inp}"
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    _check(messages, limit)
    meta = {k: v for k, v in row.items() if k not in (key, "input", "output")}
    seed = SeedRecord(row=n, instruction=instruction, input=inp, output=output, meta=dict(meta))
    return seed, ConversationRecord(row=n, messages=messages, meta=dict(meta))


def _parse_instruction_row(n: int, row: dict, limit: int):
    """evol_instruct and alpaca: {instruction, input?, output} -> seed + one-round conversation."""
    return _seed_and_round(n, row, "instruction", limit)


def _parse_instructions_row(n: int, row: dict, limit: int):
    """instructions: {instruction | prompt | question, input?} -> seed only (a row that has an ``output``
    after all gives its one-round conversation too, as in alpaca)."""
    key = next((k for k in _INSTRUCTION_KEYS if k in row), None)
    if key is None:
        raise _RowError("missing field 'instruction' (or 'prompt', 'question')")
    if row.get("output") is not None:
        return _seed_and_round(n, row, key, limit)
    instruction = _text_field(row, key, limit)
    inp = _text_field(row, "input", limit, required=False)
    meta = {k: v for k, v in row.items() if k not in (key, "input", "output")}
    return SeedRecord(row=n, instruction=instruction, input=inp, meta=meta), None


def _parse_text_line(n: int, line: str, limit: int):
    """text: one instruction per line -> seed."""
    if len(line) > limit:
        raise _RowError(f"line: {_too_long(len(line), limit)}")
    return SeedRecord(row=n, instruction=line), None


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


def _tools_field(row: dict) -> Any:
    """The row's ``tools`` as parsed JSON (a JSON string is parsed), or None when absent or empty."""
    tools = row.get("tools")
    if tools is None:
        return None
    if isinstance(tools, str):
        if not tools.strip():
            return None
        try:
            tools = _loads_nested(tools)
        except json.JSONDecodeError as e:
            raise _RowError(f"field 'tools' is not valid JSON: {_json_error(e, False)}") from None
        except _TooDeep:
            raise _RowError(f"field 'tools' is {_nesting_reason()}") from None
    if not isinstance(tools, (list, dict)):
        raise _RowError(f"field 'tools' is not a list of function schemas ({_type_name(tools)})")
    return tools


def _arguments_text(args: Any) -> str:
    """Tool call arguments as JSON text (OpenAI's shape): a string is kept, anything else is dumped."""
    if isinstance(args, str):
        return args
    return json.dumps({} if args is None else args, ensure_ascii=False)


def _function_call(i: int, value: str) -> list[dict]:
    """A ShareGPT ``function_call`` value (``{"name", "arguments"}`` or a list of them, as JSON text) ->
    internal ``tool_calls``."""
    try:
        parsed = _loads_nested(value)
    except json.JSONDecodeError as e:
        raise _RowError(f"message {i} (function_call): value is not valid JSON: {_json_error(e, False)}") from None
    except _TooDeep:
        raise _RowError(f"message {i} (function_call): value is {_nesting_reason()}") from None
    calls = parsed if isinstance(parsed, list) else [parsed]
    if not calls:
        raise _RowError(f"message {i} (function_call): no function call in the value")
    out = []
    for c in calls:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"].strip():
            raise _RowError(f"message {i} (function_call): value must be {{\"name\", \"arguments\"}} "
                            "(or a list of them), with a function name")
        out.append({"type": "function", "function": {"name": c["name"], "arguments": _arguments_text(c.get("arguments"))}})
    return out


def _parse_sharegpt_row(n: int, row: dict, limit: int):
    """sharegpt: {id?, conversations: [{from, value}], tools?} -> conversation.

    ``function_call`` turns become assistant messages with ``tool_calls`` (merged into the assistant message
    right before, when that one has text and no calls yet); ``observation`` turns become ``tool`` messages.
    """
    if "conversations" not in row:
        raise _RowError("missing field 'conversations'")
    turns = row["conversations"]
    if not isinstance(turns, list):
        raise _RowError(f"field 'conversations' is not a list ({_type_name(turns)})")
    messages: list[dict] = []
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
            raise _RowError(f"message {i}: unknown role '{frm}' in 'from' "
                            "(expected human, gpt, system, function_call or observation)")
        if not isinstance(value, str):
            shown = "assistant" if role == "function_call" else role
            raise _RowError(f"message {i} ({shown}): field 'value' is not a string ({_type_name(value)})")
        if role == "function_call":
            calls = _function_call(i, value)
            prev = messages[-1] if messages else None
            if prev is not None and prev["role"] == "assistant" and "tool_calls" not in prev:
                prev["tool_calls"] = calls
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": calls})
            continue
        messages.append({"role": role, "content": value})
    _check(messages, limit)
    meta = {k: v for k, v in row.items() if k not in ("id", "conversations", "tools")}
    return None, ConversationRecord(row=n, messages=messages, external_id=_external_id(row), meta=meta,
                                    tools=_tools_field(row))


def _content_text(i: int, role: Any, content: list) -> str:
    """A list of content parts -> their text joined with newlines (as vLLM's chat_utils joins text parts).
    Text parts are ``{"type": "text", "text": str}`` (Chat Completions) or ``{"type": "text", "value": str}``
    (LLaMA-Factory ``data/v1_sft_demo.jsonl``); any other part (image_url, input_audio, ...) refuses the row."""
    texts = []
    for j, part in enumerate(content, 1):
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise _RowError(f"message {i} ({role}): content part {j} is not an object ({_type_name(part)})")
        kind = part.get("type")
        if kind not in _TEXT_PART_TYPES:
            raise _RowError(f"message {i} ({role}): content part {j} is of type '{kind}'; "
                            "only text parts can be imported")
        text = part.get("text", part.get("value"))
        if not isinstance(text, str):
            raise _RowError(f"message {i} ({role}): content part {j} ({kind}) has no 'text' string")
        texts.append(text)
    return "\n".join(texts)


def _openai_tool_calls(calls: Any) -> Any:
    """OpenAI ``tool_calls`` -> the internal shape (``id`` dropped, dict ``arguments`` dumped to JSON text);
    entries of the wrong shape are kept as they are for :func:`validate_messages` to report."""
    if not isinstance(calls, list):
        return calls
    out = []
    for c in calls:
        if isinstance(c, dict) and isinstance(c.get("function"), dict):
            fn = c["function"]
            out.append({"type": c.get("type", "function"),
                        "function": {"name": fn.get("name"), "arguments": _arguments_text(fn.get("arguments"))}})
        else:
            out.append(c)
    return out


def _unwrap_tools(tools: Any) -> Any:
    """OpenAI's ``[{"type": "function", "function": schema}]`` -> ``[schema]`` (other entries unchanged)."""
    if not isinstance(tools, list):
        return tools
    return [t["function"] if isinstance(t, dict) and t.get("type") == "function" and set(t) <= {"type", "function"}
            and isinstance(t.get("function"), dict) else t for t in tools]


def _wrap_tools(tools: Any) -> Any:
    """``[schema]`` -> OpenAI's ``[{"type": "function", "function": schema}]`` (the inverse of _unwrap_tools)."""
    if not isinstance(tools, list):
        return tools
    return [{"type": "function", "function": t} if isinstance(t, dict) and "name" in t and "type" not in t
            else t for t in tools]


def _parse_openai_row(n: int, row: dict, limit: int):
    """openai_messages: {id?, messages: [{role, content, tool_calls?}], tools?} -> conversation."""
    if "messages" not in row:
        raise _RowError("missing field 'messages'")
    raw = row["messages"]
    if not isinstance(raw, list):
        raise _RowError(f"field 'messages' is not a list ({_type_name(raw)})")
    messages = []
    for i, m in enumerate(raw, 1):
        if not (isinstance(m, dict) and "role" in m and ("content" in m or m.get("tool_calls"))):
            messages.append(m)  # validate_messages names what is missing
            continue
        content, calls = m.get("content"), m.get("tool_calls") or None
        if isinstance(content, list):
            content = _content_text(i, m["role"], content)
        elif content is None and calls:
            content = ""  # OpenAI writes content null (or none) on a pure tool call
        out = {"role": m["role"], "content": content}
        if calls:
            out["tool_calls"] = _openai_tool_calls(calls)
        messages.append(out)
    _check(messages, limit)
    meta = {k: v for k, v in row.items() if k not in ("id", "messages", "tools")}
    return None, ConversationRecord(row=n, messages=messages, external_id=_external_id(row), meta=meta,
                                    tools=_unwrap_tools(_tools_field(row)))


_PARSERS = {
    "evol_instruct": _parse_instruction_row,
    "alpaca": _parse_instruction_row,
    "wizardlm_testset": _parse_testset_row,
    "instructions": _parse_instructions_row,
    "text": _parse_text_line,
    "sharegpt": _parse_sharegpt_row,
    "openai_messages": _parse_openai_row,
}


def _record_key(seed: SeedRecord | None, conv: ConversationRecord | None) -> tuple:
    """What makes two rows of one file the same: the messages and tools of a conversation (with the seed's
    instruction and input when the row gives both), the instruction and input of a seed-only row. The tuple
    holds the record's own strings (no copy of the texts), compared exactly."""
    key: list = []
    if seed is not None:
        key += ("S", seed.instruction, seed.input)
    if conv is not None:
        key.append("C")
        for m in conv.messages:
            calls = m.get("tool_calls")
            key += (m["role"], m["content"], json.dumps(calls, sort_keys=True) if calls else None)
        key.append(None if conv.tools is None else json.dumps(conv.tools, sort_keys=True))
    return tuple(key)


def read_file(path, max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS, format: str | None = None, *,
              display_name: str | None = None, max_bytes: int | None = None,
              max_row_bytes: int = MAX_ROW_BYTES) -> ParsedFile:
    """Read a data file, ``datasets`` folder or hub dataset into seeds and conversations, listing the rows
    that were refused.

    Sources: a JSON array or JSON lines file (UTF-8, a BOM is allowed), a ``.txt`` file (one instruction per
    line), a ``.parquet`` file, a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``
    (all splits, numbered on one after the other), or, when no such path exists and it looks like
    ``owner/name``, a Hugging Face hub dataset (``datasets.load_dataset``, all splits). Parquet and datasets
    rows are read :data:`BATCH_ROWS` at a time; their null columns count as absent keys. Formats
    (:data:`FORMATS`):

    * ``evol_instruct`` ``{instruction, output}`` (WizardLM ``alpaca_evol_instruct_70k.json``) and
      ``alpaca`` ``{instruction, input, output}`` (Stanford Alpaca; LLaMA-Factory ``alpaca_en_demo.json``):
      each row gives a :class:`SeedRecord` and a one-round :class:`ConversationRecord` whose user message
      is ``instruction``, or ``instruction + "\\n\\n" + input`` when the input is not empty.
    * ``wizardlm_testset`` ``{idx, Skill, Difficulty, Instruction}`` (WizardLM ``WizardLM_testset.jsonl``):
      a seed with ``meta={"idx", "skill", "difficulty"}``, no conversation.
    * ``instructions`` ``{instruction | prompt | question, input?}`` without ``output``: a seed (the row's
      other keys in ``meta``), no conversation.
    * ``text``: each non-blank line (stripped) is a seed; the row number is the line number.
    * ``sharegpt`` ``{id?, conversations: [{from, value}], tools?}`` (WizardVicunaLM ``wizard_vicuna_70k``,
      FastChat's data format, LLaMA-Factory's tool data): ``from`` human/user -> user;
      gpt/chatgpt/assistant/bard/bing/model -> assistant; system -> system; function_call (JSON
      ``{"name", "arguments"}`` or a list of them) -> assistant with ``tool_calls``; observation/tool ->
      tool (case-insensitive). ``tools`` (a JSON string or JSON) -> :attr:`ConversationRecord.tools`.
    * ``openai_messages`` ``{id?, messages: [{role, content, tool_calls?}], tools?}`` (OpenAI chat
      fine-tuning JSONL): content may be a list of parts, whose text parts are joined with newlines; a part
      of another type refuses the row. ``tool_calls`` ids and ``tool_call_id`` are dropped (calls and
      results are matched by order).

    A row is refused (a :class:`BadRow` with its 1-based row number and the reason) when it is not an
    object, is not valid JSON (JSONL), nests arrays and objects deeper than :data:`MAX_NESTING` levels (also
    in JSON held in a field), is a JSON lines row over ``max_row_bytes``, lacks a required field or has one
    of the wrong type, has an empty instruction, output or message, has a text longer than
    ``max_message_chars``, has a non-text content part, or breaks the rules of :func:`validate_messages`.
    Refused rows do not stop the others. A row that repeats an earlier row's record is skipped and counted
    in :attr:`ParsedFile.n_duplicates`. A file whose every row is refused is returned as such (no records,
    all bad rows); :func:`require_records` turns that into a FormatError before an import.

    Memory: JSON lines and text files are read line by line (one line held at a time; the file's sha256 is
    taken in a second streamed pass); Parquet and ``datasets`` rows :data:`BATCH_ROWS` at a time. A JSON
    array file (or a single pretty-printed object) has to be parsed whole, holding its text and the parsed
    rows at once: for untrusted uploads ``max_bytes`` is the protection. The records returned hold every
    good row's texts in any case.

    Args:
        path: the file or folder (str or Path), or a hub dataset id.
        max_message_chars: the longest instruction, input, output or message accepted, in characters.
        format: one of :data:`FORMATS` to skip detection (rows are still validated), or ``None`` to detect.
        display_name: the file's name as its owner knows it (an upload's original name). Every FormatError
            names the file by it, and it gives :attr:`ParsedFile.name` and the ``.txt`` / ``.parquet``
            ending that picks the reader; messages never show the real path or its folder. Default: the
            path as given (the command line shows what was typed).
        max_bytes: refuse a file larger than this many bytes before reading any of it (None: no limit; folders
            and hub datasets are not measured).
        max_row_bytes: the longest JSON lines row read, in bytes (default :data:`MAX_ROW_BYTES`).

    Returns:
        A :class:`ParsedFile`.

    Raises:
        FormatError: the file is missing or unreadable, larger than ``max_bytes``, not UTF-8, neither a JSON
            array nor JSON lines, a JSON array nested too deep to parse, has no rows, is not a readable
            Parquet file or datasets folder, the hub dataset cannot be loaded (its id is named), or (when
            ``format`` is None) its format cannot be recognised.
        ValueError: ``format`` is not one of :data:`FORMATS` (a caller error, not a file problem).
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    with _shown_as(path, display_name) as shown:
        parsed = _read(path, max_message_chars, format, _suffix(path, display_name), max_bytes, max_row_bytes)
        parsed.display_name = shown.shown
        if display_name is not None:
            parsed.name = Path(display_name).name or str(display_name)
            for b in parsed.bad_rows:
                b.reason = _scrub(b.reason, path, shown.shown)
        return parsed


def _read(path, max_message_chars: int, format: str | None, suffix: str, max_bytes: int | None,
          max_row_bytes: int) -> ParsedFile:
    """:func:`read_file` with the file named by its real path (read_file renames it in messages)."""
    src = _open_source(path, format, suffix=suffix, max_message_chars=max_message_chars,
                       max_row_bytes=max_row_bytes, max_bytes=max_bytes)
    rows = src.rows
    if src.is_text:
        fmt = "text"
    elif format is not None and format != "text":
        fmt = format
    else:
        head, rows = _peek(rows)
        fmt = _detect(path, [v for _, v in head])
    parse = _PARSERS[fmt]

    seeds: list[SeedRecord] = []
    conversations: list[ConversationRecord] = []
    bad_rows: list[BadRow] = []
    seen: set[tuple] = set()
    n_rows = n_duplicates = 0
    for n, value in rows:
        n_rows += 1
        if isinstance(value, _RowProblem):
            bad_rows.append(BadRow(n, src.where(n) + value.reason))
            continue
        if not src.is_text and not isinstance(value, dict):
            bad_rows.append(BadRow(n, src.where(n) + f"row is not a JSON object ({_type_name(value)})"))
            continue
        if not src.is_text and not src.depth_checked and _nesting_exceeds(value):
            bad_rows.append(BadRow(n, src.where(n) + _nesting_reason()))
            continue
        try:
            seed, conv = parse(n, value, max_message_chars)
        except _RowError as e:
            bad_rows.append(BadRow(n, src.where(n) + str(e)))
            continue
        key = _record_key(seed, conv)
        if key in seen:
            n_duplicates += 1
            continue
        seen.add(key)
        if seed is not None:
            seeds.append(seed)
        if conv is not None:
            conversations.append(conv)

    return ParsedFile(
        path=src.path,
        name=src.name,
        format=fmt,
        sha256=src.sha256(),
        n_rows=n_rows,
        seeds=seeds,
        conversations=conversations,
        bad_rows=bad_rows,
        n_duplicates=n_duplicates,
        kind=src.kind,
        display_name=str(path),
    )


REQUIRE_RECORDS_SHOWN = 3
"""Bad rows quoted in the message of :func:`require_records` (all of them are in ``e.bad_rows``)."""


def require_records(parsed: ParsedFile) -> None:
    """Refuse a parsed file that gives nothing to import: no seed and no conversation (every row was bad).

    An import calls this before it writes anything (no ``sources`` row, no kept copy, no seeds), so a file
    whose rows are all bad changes nothing; callers report it like any other unreadable file.

    Args:
        parsed: a :class:`ParsedFile` (or an object with ``seeds``, ``conversations``, ``bad_rows``,
            ``n_rows``, ``name`` and optionally ``display_name``).

    Raises:
        FormatError: naming the file (``display_name``, else ``name``), e.g. ``"nothing to import: all 4 rows
            are bad (row 1: missing field 'conversations'; row 2: ...; row 3: ...; 1 more)"``, with every
            :class:`BadRow` in ``e.bad_rows``.
    """
    if parsed.seeds or parsed.conversations:
        return
    shown = getattr(parsed, "display_name", "") or parsed.name
    bad = list(parsed.bad_rows)
    if not bad:
        raise FormatError(shown, "nothing to import: the file has no rows")
    quoted = "; ".join(f"row {b.row}: {b.reason}" for b in bad[:REQUIRE_RECORDS_SHOWN])
    more = f"; {len(bad) - REQUIRE_RECORDS_SHOWN} more" if len(bad) > REQUIRE_RECORDS_SHOWN else ""
    rows = "the only row is bad" if len(bad) == 1 else f"all {len(bad)} rows are bad"
    raise FormatError(shown, f"nothing to import: {rows} ({quoted}{more})", bad)


# ----------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------


def _arguments_json(args: str) -> Any:
    """Tool call arguments for a ShareGPT ``function_call`` value: the parsed object when ``args`` is JSON in
    the form :func:`read_file` writes it (so it reads back to the same text), else the text itself."""
    try:
        parsed = _loads_nested(args)
    except (json.JSONDecodeError, TypeError, _TooDeep):
        return args
    return parsed if json.dumps(parsed, ensure_ascii=False) == args else args


def _function_call_value(calls: list[dict]) -> str:
    objs = [{"name": c["function"]["name"], "arguments": _arguments_json(c["function"]["arguments"])}
            for c in calls]
    return json.dumps(objs[0] if len(objs) == 1 else objs, ensure_ascii=False)


def sharegpt_record(conv_id: str, messages: list[dict], tools: Any = None) -> dict:
    """One conversation in ShareGPT layout (WizardVicunaLM ``wizard_vicuna_70k``, FastChat data format;
    tool turns as LLaMA-Factory's ``data/glaive_toolcall_en_demo.json``).

    An assistant message with ``tool_calls`` becomes a ``function_call`` turn whose value is the JSON of
    ``{"name", "arguments"}`` (a list of them for several calls), preceded by a ``gpt`` turn when the message
    also has text; a ``tool`` message becomes an ``observation`` turn. :func:`read_file` reads it back to the
    same messages.

    Args:
        conv_id: the conversation id, written as the string ``"id"``.
        messages: internal messages (see the module docstring).
        tools: the conversation's tools (parsed JSON) or None; written as a JSON string under ``"tools"``.

    Returns:
        ``{"id": conv_id, "conversations": [{"from": "human"|"gpt"|"system"|"function_call"|"observation",
        "value": str}, ...]}``, plus ``"tools": str`` when ``tools`` is not None.

    Raises:
        ValueError: a message has a role other than system, user, assistant or tool.
    """
    turns = []
    for i, m in enumerate(messages, 1):
        frm = _ROLE_TO_SHAREGPT.get(m.get("role"))
        if frm is None:
            raise ValueError(f"message {i}: unknown role {m.get('role')!r} (expected system, user, assistant or tool)")
        if m["role"] == "assistant" and m.get("tool_calls"):
            if m["content"]:
                turns.append({"from": "gpt", "value": m["content"]})
            turns.append({"from": "function_call", "value": _function_call_value(m["tool_calls"])})
            continue
        turns.append({"from": frm, "value": m["content"]})
    rec = {"id": str(conv_id), "conversations": turns}
    if tools is not None:
        rec["tools"] = json.dumps(tools, ensure_ascii=False)
    return rec


def _openai_messages(messages: list[dict]) -> list[dict]:
    """Internal messages -> OpenAI's, with ids ``call_<k>`` given to tool calls and, in order, to the
    ``tool_call_id`` of the results that follow them."""
    out = []
    pending: list[str] = []  # ids of calls not yet answered by a tool message
    k = 0
    for i, m in enumerate(messages, 1):
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i}: unknown role {role!r} (expected system, user, assistant or tool)")
        msg: dict = {"role": role, "content": m["content"]}
        if role == "assistant" and m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                k += 1
                calls.append({"id": f"call_{k}", "type": "function",
                              "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}})
            msg["tool_calls"] = calls
            pending = [c["id"] for c in calls]
        elif role == "tool" and pending:
            msg["tool_call_id"] = pending.pop(0)
        out.append(msg)
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


def _item(item) -> tuple[Any, list[dict], Any]:
    """``(id, messages)`` or ``(id, messages, tools)`` -> ``(id, messages, tools or None)``."""
    if len(item) == 2:
        return item[0], item[1], None
    conv_id, messages, tools = item
    return conv_id, messages, tools


def write_sharegpt(path, items: Iterable[tuple]) -> int:
    """Write conversations as a ShareGPT JSON array (the layout of WizardVicunaLM's ``wizard_vicuna_70k``).

    The output is exactly ``json.dumps([sharegpt_record(id, messages, tools), ...], ensure_ascii=False,
    indent=2)`` plus a final newline, in UTF-8, but written as the items arrive (``items`` may be a
    generator). It goes to a temp file in the same folder first and then replaces ``path`` with
    ``os.replace``, so a failure never leaves a half-written file.

    Args:
        path: the output file (str or Path); its folder must exist.
        items: ``(conversation id, internal messages)`` or ``(conversation id, internal messages, tools)``.

    Returns:
        The number of conversations written.

    Raises:
        ValueError: a message has an unknown role (nothing is written).
        OSError: the file cannot be written (nothing is written).
    """

    def write(f) -> int:
        count = 0
        f.write("[")
        for item in items:
            text = json.dumps(sharegpt_record(*_item(item)), ensure_ascii=False, indent=2)
            f.write(",\n  " if count else "\n  ")
            f.write(text.replace("\n", "\n  "))
            count += 1
        f.write("\n]\n" if count else "]\n")
        return count

    return _atomic_write(path, write)


def write_openai_jsonl(path, items: Iterable[tuple], include_id: bool = False) -> int:
    """Write conversations as OpenAI chat fine-tuning JSON lines.

    Each line is ``{"messages": [{"role", "content"}, ...]}`` (UTF-8, ``ensure_ascii=False``); an assistant
    tool call has ``tool_calls: [{"id": "call_<k>", "type": "function", "function": {"name", "arguments"}}]``
    and the ``tool`` results after it ``tool_call_id`` (in order); a conversation with tools ends with
    ``"tools": [{"type": "function", "function": schema}]``. With ``include_id=True`` the line starts with
    ``"id": conv_id`` as well (:func:`read_file` reads it back as the external id). Other keys of a message
    are dropped. Written to a temp file, then ``os.replace``.

    Args:
        path: the output file (str or Path); its folder must exist.
        items: ``(conversation id, internal messages)`` or ``(conversation id, internal messages, tools)``.
        include_id: also write the conversation id (OpenAI's format has no such key, so off by default).

    Returns:
        The number of conversations written.

    Raises:
        ValueError: a message has an unknown role (nothing is written).
        OSError: the file cannot be written (nothing is written).
    """

    def write(f) -> int:
        count = 0
        for item in items:
            conv_id, messages, tools = _item(item)
            rec: dict = {"id": str(conv_id)} if include_id else {}
            rec["messages"] = _openai_messages(messages)
            if tools is not None:
                rec["tools"] = _wrap_tools(tools)
            f.write(json.dumps(rec, ensure_ascii=False))
            f.write("\n")
            count += 1
        return count

    return _atomic_write(path, write)
