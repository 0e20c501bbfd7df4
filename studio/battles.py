"""Arena battle files and TRL preference pairs: the file formats of the Arena.

**Battle rows** are the layout of Chatbot Arena's published battles (``lmsys/chatbot_arena_conversations``,
FastChat ``fastchat/serve/monitor/clean_chat_data.py`` output; MT-bench human judgments share it), one JSON
object per line (a JSON array, a Parquet file or a ``datasets`` folder of such rows is read too)::

    {"question_id": "58210e39b3fd4441a2bd4a518bb44c2d", "model_a": "chatglm-6b", "model_b": "koala-13b",
     "winner": "model_b", "judge": "arena_user_973",
     "conversation_a": [{"content": "What is ...?", "role": "user"}, {"content": "...", "role": "assistant"}],
     "conversation_b": [{"content": "What is ...?", "role": "user"}, {"content": "...", "role": "assistant"}],
     "turn": 1, "anony": true, "language": "English", "tstamp": 1682351591.1322,
     "openai_moderation": {...}, "toxic_chat_tag": {...}}

Required: ``model_a`` and ``model_b`` (two different names), ``winner`` (one of :data:`WINNERS`) and the two
conversations (OpenAI-style messages that pass :func:`studio.formats.validate_messages`: user first, roles
alternating, ending with the assistant's answer). The other :data:`ARENA_FIELDS` may be missing or null;
``judge`` and ``language`` are text, ``turn`` a whole number, ``anony`` true/false, ``tstamp`` a number (epoch
seconds), ``question_id`` text or a number. Any other field (``openai_moderation``, ``toxic_chat_tag``, ...) is
kept as is.

**A battle** (what :func:`read_battles` gives, ``Store.import_battles`` takes and ``Store.battles`` returns) is
a dict with every key of :data:`ARENA_FIELDS` (None when the row lacks it; ``tstamp`` as a float), plus
``extra`` (the row's other fields, in file order) and ``fields`` (the row's keys in file order, None for a battle
voted in the studio). :func:`arena_row` turns it back into the row: the same keys in the same order with the
same values, so a file imported and exported again is equal to the original row for row.

**Preference pairs** are TRL's conversational preference format (TRL docs, "Dataset formats and types":
``{"prompt": [messages], "chosen": [{"role": "assistant", ...}], "rejected": [...]}``; the prompt holds the
whole history up to the last user turn, the completions only the answer), what ``DPOTrainer`` reads.

Errors follow ``studio.formats``: a row that cannot be used is a :class:`~studio.formats.BadRow` (its line or
row number and the reason) and the others are still read; a file that cannot be read at all, or whose every row
is bad, raises :class:`~studio.formats.FormatError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .formats import (DEFAULT_MAX_MESSAGE_CHARS, BadRow, FormatError, _atomic_write, _first_char, _nesting_exceeds,
                      _nesting_reason, _open_source, _RowProblem, _scrub, _shown_as, _suffix, _type_name,
                      validate_messages)

__all__ = [
    "ARENA_FIELDS", "WINNERS", "PAIR_SKIPS", "BattleFile", "battle_problem", "read_battles", "read_arena_jsonl",
    "arena_row", "row_sha256", "write_arena_jsonl", "preference_pairs", "write_pairs_jsonl", "save_pairs_dataset",
]

ARENA_FIELDS = ("question_id", "model_a", "model_b", "winner", "judge", "conversation_a", "conversation_b",
                "turn", "anony", "language", "tstamp")
"""The fields of a Chatbot Arena battle row, in the order the published files have them."""

WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")
"""Chatbot Arena's winner values (the same as ``studio.arena.WINNERS``)."""

REQUIRED_FIELDS = ("model_a", "model_b", "winner", "conversation_a", "conversation_b")
"""The fields a battle row must have (not null)."""

MAX_TURN = 2**31 - 1
"""The largest ``turn`` a battle may have (the store keeps it as a 32-bit INTEGER)."""

PAIR_SKIPS = ("tie", "tie (bothbad)", "user turns differ")
"""Why :func:`preference_pairs` leaves a battle out: a tie, a tie where both answers were bad (neither is
preferred), or conversations whose user messages differ (the loser answered another question)."""

BAD_ROWS_QUOTED = 3
"""Bad rows quoted in a FormatError's message (all of them are in ``e.bad_rows``)."""

_TEXT_FIELDS = ("judge", "language")


@dataclass
class BattleFile:
    """What :func:`read_battles` found in one file.

    Attributes:
        path: the path as given. name: the file's base name (``display_name``'s when given).
        display_name: what messages call the file (``display_name``, else the path as given).
        rows: the good rows as battles (see the module docstring), in file order; each also has ``row``, its
            line or row number.
        bad_rows: the refused rows, in file order.
        n_rows: rows seen, good and bad.
        unit: ``"line"`` when row numbers are line numbers (a JSON lines file), else ``"row"``.
    """

    path: str
    name: str
    display_name: str
    rows: list[dict] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    n_rows: int = 0
    unit: str = "line"

    def where(self, row: int) -> str:
        """``"line 3"`` or ``"row 3"``."""
        return f"{self.unit} {row}"


# ---------------------------------------------------------------------------------------------- checks


def battle_problem(b: dict, max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS) -> str | None:
    """Check one battle (a dict with the :data:`ARENA_FIELDS` keys; missing keys count as null).

    Returns:
        None when it is a usable battle, else the reason, naming the field, e.g. ``"field 'winner' is 'a',
        expected one of model_a, model_b, tie, tie (bothbad)"`` or ``"conversation_b: message 2 (assistant):
        empty text"``.
    """
    for key in REQUIRED_FIELDS:
        if b.get(key) is None:
            return f"field '{key}' is null" if key in b else f"missing field '{key}'"
    for key in ("model_a", "model_b"):
        if not isinstance(b[key], str) or not b[key].strip():
            return f"field '{key}' must be a non-empty string, not {_shown(b[key])}"
    if b["model_a"] == b["model_b"]:
        return f"model_a and model_b are the same model '{b['model_a']}'"
    if b["winner"] not in WINNERS:
        return f"field 'winner' is {_shown(b['winner'])}, expected one of {', '.join(WINNERS)}"
    for key in ("conversation_a", "conversation_b"):
        problem = validate_messages(b[key], max_message_chars)
        if problem:
            return f"{key}: {problem}"
    for key in _TEXT_FIELDS:
        if b.get(key) is not None and not isinstance(b[key], str):
            return f"field '{key}' must be a string, not {_type_name(b[key])}"
    turn = b.get("turn")
    if turn is not None and (isinstance(turn, bool) or not isinstance(turn, int) or not 0 <= turn <= MAX_TURN):
        return f"field 'turn' must be a whole number from 0 to {MAX_TURN}, not {_shown(turn)}"
    anony = b.get("anony")
    if anony is not None and not isinstance(anony, bool):
        return f"field 'anony' must be true or false, not {_shown(anony)}"
    tstamp = b.get("tstamp")
    if tstamp is not None and (isinstance(tstamp, bool) or not isinstance(tstamp, (int, float))
                               or not math.isfinite(tstamp)):
        return f"field 'tstamp' must be a number (epoch seconds), not {_shown(tstamp)}"
    qid = b.get("question_id")
    if qid is not None and (isinstance(qid, bool) or not isinstance(qid, (str, int))):
        return f"field 'question_id' must be a string or a whole number, not {_shown(qid)}"
    return None


def _shown(v: Any) -> str:
    """A value for a message: short JSON for scalars, the type for containers."""
    if isinstance(v, (dict, list)):
        return _type_name(v)
    text = json.dumps(v, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _battle_from_row(row: dict, limit: int) -> dict:
    """A battle from one file row (a JSON object); raises ValueError with the reason."""
    b: dict = {k: row.get(k) for k in ARENA_FIELDS}
    for key in REQUIRED_FIELDS:
        if key not in row:
            raise ValueError(f"missing field '{key}'")
    problem = battle_problem(b, limit)
    if problem:
        raise ValueError(problem)
    if b["tstamp"] is not None:
        b["tstamp"] = float(b["tstamp"])
    b["extra"] = {k: v for k, v in row.items() if k not in ARENA_FIELDS}
    b["fields"] = list(row)
    return b


# ---------------------------------------------------------------------------------------------- reading


def read_battles(path, *, display_name: str | None = None, max_bytes: int | None = None,
                 max_message_chars: int = DEFAULT_MAX_MESSAGE_CHARS) -> BattleFile:
    """Read an Arena battle file, keeping the good rows and listing the bad ones.

    Sources as ``studio.formats.read_file`` reads them: JSON lines (the published Arena files), a JSON array
    (FastChat's ``clean_battle_*.json``), a Parquet file or a ``datasets`` folder.

    Args:
        path: the file (str or Path).
        display_name: the name the file's owner gave it (an upload's name): messages use it and never show the
            server's path. Default: the path as given.
        max_bytes: refuse a larger file before reading it (None: no limit).
        max_message_chars: the longest message accepted, in characters.

    Returns:
        A :class:`BattleFile` with at least one good row.

    Raises:
        FormatError: the file is missing, unreadable, not JSON, has no rows, or every row is bad (``"nothing to
            import: all 3 rows are bad (line 1: missing field 'winner'; ...)"``, every :class:`BadRow` in
            ``e.bad_rows``).
    """
    with _shown_as(path, display_name) as shown:
        suffix = _suffix(path, display_name)
        src = _open_source(path, None, suffix=suffix, max_message_chars=max_message_chars, max_bytes=max_bytes)
        json_lines = src.kind == "file" and suffix != ".parquet" and _first_char(path) != "["
        out = BattleFile(path=str(path), name=Path(display_name or str(path)).name, display_name=shown.shown,
                         unit="line" if json_lines else "row")
        for n, value in src.rows:
            out.n_rows += 1
            reason = None
            if isinstance(value, _RowProblem):
                reason = value.reason
            elif not isinstance(value, dict):
                reason = f"row is not a JSON object ({_type_name(value)})"
            elif not src.depth_checked and _nesting_exceeds(value):
                reason = _nesting_reason()
            else:
                try:
                    battle = _battle_from_row(value, max_message_chars)
                except ValueError as e:
                    reason = str(e)
                else:
                    battle["row"] = n
                    out.rows.append(battle)
            if reason is not None:
                reason = src.where(n) + reason
                if display_name is not None:
                    reason = _scrub(reason, path, shown.shown)
                out.bad_rows.append(BadRow(n, reason))
        if not out.rows:
            k = len(out.bad_rows)
            rows = "the only row is bad" if k == 1 else f"all {k} rows are bad"
            raise FormatError(shown.shown, f"nothing to import: {rows} ({_quote_bad(out)})", out.bad_rows)
        return out


def _quote_bad(f: BattleFile) -> str:
    bad = f.bad_rows
    quoted = "; ".join(f"{f.where(b.row)}: {b.reason}" for b in bad[:BAD_ROWS_QUOTED])
    return quoted + (f"; {len(bad) - BAD_ROWS_QUOTED} more" if len(bad) > BAD_ROWS_QUOTED else "")


def read_arena_jsonl(path, *, display_name: str | None = None) -> list[dict]:
    """Read an Arena battle file whose every row must be good (see :func:`read_battles` for a file whose bad
    rows are to be skipped and listed).

    Returns:
        The battles (see the module docstring), in file order.

    Raises:
        FormatError: as :func:`read_battles`, and when any row is bad, naming the file and each bad row's line,
            e.g. ``"battles.jsonl: 1 bad row (line 3: field 'winner' is 'a', expected one of ...)"``.
    """
    f = read_battles(path, display_name=display_name)
    if f.bad_rows:
        k = len(f.bad_rows)
        raise FormatError(f.display_name, f"{k} bad row{'s' if k > 1 else ''} ({_quote_bad(f)})", f.bad_rows)
    return f.rows


# ---------------------------------------------------------------------------------------------- writing


def arena_row(battle: dict) -> dict:
    """The file row of a battle: an imported battle gives back the row it came from (its ``fields`` in their
    order, the Arena fields from the battle and the others from ``extra``); a battle voted in the studio gives
    the :data:`ARENA_FIELDS` in order, then its ``extra`` fields. Other keys of ``battle`` (``id``,
    ``round_id``, ``params``, ``origin``) are not written."""
    extra = battle.get("extra") or {}
    fields = battle.get("fields")
    if fields is None:
        row = {k: battle.get(k) for k in ARENA_FIELDS}
        row.update((k, v) for k, v in extra.items() if k not in row)
        return row
    return {k: (battle.get(k) if k in ARENA_FIELDS else extra.get(k)) for k in fields}


def row_sha256(battle: dict) -> str:
    """Hex sha256 of a battle's file row (:func:`arena_row`) as canonical JSON (sorted keys): the same row
    gives the same digest whatever its key order or spacing in the file."""
    text = json.dumps(arena_row(battle), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_arena_jsonl(rows: Iterable[dict], path) -> int:
    """Write battles as Arena JSON lines (one :func:`arena_row` per line, UTF-8), through a temp file that
    replaces ``path`` only when complete.

    Args:
        rows: battles (``Store.battles``, :func:`read_battles` rows) or plain Arena rows.
        path: the output file; its folder must exist.

    Returns:
        The number of battles written.

    Raises:
        OSError: the file cannot be written (nothing is written).
    """

    def write(f) -> int:
        count = 0
        for b in rows:
            f.write(json.dumps(arena_row(b), ensure_ascii=False))
            f.write("\n")
            count += 1
        return count

    return _atomic_write(path, write)


# ---------------------------------------------------------------------------------------------- preference pairs


def _answer(conv: list[dict], side: str, i: int) -> str:
    last = conv[-1] if conv else {}
    if not isinstance(last, dict) or last.get("role") != "assistant":
        raise ValueError(f"battle {i}: {side} does not end with an assistant answer")
    return last["content"]


def preference_pairs(rows: Iterable[dict]) -> tuple[list[dict], dict[str, int]]:
    """Battles -> preference pairs in TRL's conversational preference format (for ``DPOTrainer``).

    For a battle won by model A (B alike)::

        {"prompt": conversation_a up to and including its last user message (system and earlier turns
                   included),
         "chosen": [{"role": "assistant", "content": conversation_a's last answer}],
         "rejected": [{"role": "assistant", "content": conversation_b's last answer}]}

    For a multi-turn battle the prompt is the winner's side of the history: both models saw the same user
    messages, but each its own earlier answers, and the chosen answer followed the winner's (TRL docs: the
    prompt of a conversational preference row is the history, the completions only the final answer). Messages
    keep only ``role`` and ``content``.

    Left out and counted (:data:`PAIR_SKIPS`): ``tie`` and ``tie (bothbad)`` (no preferred answer), and
    ``user turns differ``: the two conversations' user messages are not the same (a different question or a
    different number of turns), so the losing answer does not answer the prompt.

    Args:
        rows: battles (``Store.battles``, :func:`read_battles`) or plain Arena rows: dicts with ``winner``,
            ``conversation_a`` and ``conversation_b``.

    Returns:
        ``(pairs, skipped)``, pairs in the order of ``rows``; ``skipped`` has every key of :data:`PAIR_SKIPS`.

    Raises:
        ValueError: a winner that is not one of :data:`WINNERS`, or a conversation that does not end with an
            assistant answer, naming the battle's 1-based position (rows read or stored here never do).
    """
    pairs: list[dict] = []
    skipped = {k: 0 for k in PAIR_SKIPS}
    for i, b in enumerate(rows, 1):
        winner = b.get("winner")
        if winner not in WINNERS:
            raise ValueError(f"battle {i}: winner {_shown(winner)} is not one of {', '.join(WINNERS)}")
        if winner in ("tie", "tie (bothbad)"):
            skipped[winner] += 1
            continue
        won, lost = ("conversation_a", "conversation_b") if winner == "model_a" else ("conversation_b",
                                                                                        "conversation_a")
        chosen, rejected = _answer(b[won], won, i), _answer(b[lost], lost, i)
        users = [[m["content"] for m in b[k] if m.get("role") == "user"] for k in (won, lost)]
        if users[0] != users[1]:
            skipped["user turns differ"] += 1
            continue
        conv = b[won]
        last_user = max(j for j, m in enumerate(conv) if m.get("role") == "user")
        pairs.append({"prompt": [{"role": m["role"], "content": m["content"]} for m in conv[:last_user + 1]],
                      "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}]})
    return pairs, skipped


def write_pairs_jsonl(pairs: Iterable[dict], path) -> int:
    """Write preference pairs as JSON lines (``{"prompt", "chosen", "rejected"}`` per line, UTF-8), through a
    temp file that replaces ``path`` only when complete. Returns the number written; OSError when the file
    cannot be written (nothing is written)."""

    def write(f) -> int:
        count = 0
        for p in pairs:
            f.write(json.dumps({"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]},
                               ensure_ascii=False))
            f.write("\n")
            count += 1
        return count

    return _atomic_write(path, write)


def _pair_features():
    import datasets

    messages = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    return datasets.Features({"prompt": messages, "chosen": messages, "rejected": messages})


def _is_dataset_folder(p: Path) -> bool:
    return (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file()


def save_pairs_dataset(pairs: Iterable[dict], folder) -> int:
    """Write preference pairs as a Hugging Face ``datasets`` folder (``Dataset.save_to_disk``; columns
    ``prompt``, ``chosen``, ``rejected``, each a list of ``{role, content}``), loadable with
    ``datasets.load_from_disk`` and usable as a ``DPOTrainer`` train set.

    The dataset is saved beside ``folder`` first and then takes its place, so a failure leaves the old folder.

    Returns:
        The number of pairs written.

    Raises:
        ValueError: ``folder`` exists and is a file, or a folder that is neither empty nor a datasets folder
            (it is never replaced).
        OSError: the folder cannot be written.
    """
    import datasets

    target = Path(folder)
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not _is_dataset_folder(target))):
        raise ValueError(f"{target}: exists and is not a datasets folder; give a new folder")
    rows = [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    ds = datasets.Dataset.from_list(rows, features=_pair_features())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        ds.save_to_disk(str(tmp))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return len(rows)
