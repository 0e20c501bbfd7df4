"""Question sets: the prompts the Arena draws from and the Judge asks every model.

A question is one or more user turns (MT-bench questions have two), with a category and optional reference
answers. Three kinds of set:

* ``mt_bench``: MT-bench's 80 two-turn questions (FastChat ``fastchat/llm_judge/data/mt_bench/question.jsonl``),
  shipped in ``studio/resources/questions``;
* ``wizardlm``: WizardLM's 218 human-evaluation instructions with skill and difficulty
  (``WizardLM/data/WizardLM_testset.jsonl``), shipped likewise;
* ``source:<id>``: the seed instructions of a source imported into the store (one turn each).

A question file in MT-bench / Vicuna-bench shape (``question_id``, ``category``, ``turns``, optional ``reference``)
or the WizardLM test-set shape reads with ``read_question_file``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

RESOURCES = Path(__file__).resolve().parent / "resources" / "questions"

BUILTIN_SETS = {"mt_bench": ("MT-bench (80 two-turn questions)", "mt_bench_questions.jsonl"),
                "wizardlm": ("WizardLM test set (218 instructions)", "wizardlm_testset.jsonl")}
"""Shipped question sets: ``{key: (label, file name in RESOURCES)}``."""


class QuestionError(ValueError):
    """A question file or set that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Question:
    """One question.

    Attributes:
        question_id: the set's own id (MT-bench ``question_id``, WizardLM ``idx``, a seed's id).
        turns: the user turns, in order (at least one, none empty).
        category: MT-bench category or WizardLM skill ("" when the set has none).
        difficulty: WizardLM difficulty 1-10, else None.
        reference: reference answers per turn (MT-bench math, reasoning and coding), possibly empty.
    """

    question_id: str
    turns: tuple[str, ...]
    category: str = ""
    difficulty: int | None = None
    reference: tuple[str, ...] = field(default=())


def _parse_row(row: object, where: str) -> Question:
    if not isinstance(row, dict):
        raise QuestionError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "turns" in row:  # MT-bench / Vicuna-bench
        turns = row["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise QuestionError(f"{where}: 'turns' must be a non-empty list of non-empty strings")
        qid = row.get("question_id", row.get("id"))
        ref = row.get("reference") or []
        if not isinstance(ref, list) or not all(isinstance(r, str) for r in ref):
            raise QuestionError(f"{where}: 'reference' must be a list of strings")
        return Question(str(qid) if qid is not None else "", tuple(t.strip() for t in turns),
                        str(row.get("category") or ""), None, tuple(ref))
    text = row.get("Instruction", row.get("instruction"))
    if isinstance(text, str) and text.strip():  # WizardLM test set (or a plain instruction row)
        qid = row.get("idx", row.get("id"))
        diff = row.get("Difficulty", row.get("difficulty"))
        try:
            diff = int(diff) if diff is not None else None
        except (TypeError, ValueError):
            raise QuestionError(f"{where}: 'Difficulty' must be a whole number, got {diff!r}") from None
        return Question(str(qid) if qid is not None else "", (text.strip(),),
                        str(row.get("Skill", row.get("skill")) or ""), diff)
    raise QuestionError(f"{where}: no question: expected 'turns' (MT-bench) or 'Instruction' (WizardLM test set)")


def iter_json_lines(path: str | Path, label: str):
    """``(line number, parsed object)`` for each non-blank line of a JSON-lines file, in order (1-based line
    numbers, blank lines counted, as an editor numbers them).

    Raises:
        QuestionError: a line that is not JSON (names ``label`` and the line).
    """
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise QuestionError(f"{label} line {n}: not JSON ({e.msg})") from None


def read_question_file(path: str | Path, *, name: str | None = None) -> list[Question]:
    """Read a JSON-lines question file (MT-bench/Vicuna-bench or WizardLM test-set rows), in file order.

    Args:
        path: the file.
        name: how to name the file in errors (e.g. an upload's original name); default its file name.

    Raises:
        QuestionError: an unreadable line or row (names the file and line number), or a file with no question.
    """
    path = Path(path)
    label = name or path.name
    out: list[Question] = []
    for n, row in iter_json_lines(path, label):
        q = _parse_row(row, f"{label} line {n}")
        out.append(q if q.question_id else Question(str(n), q.turns, q.category, q.difficulty, q.reference))
    if not out:
        raise QuestionError(f"{label}: no questions in the file")
    return out


def builtin_set(key: str) -> list[Question]:
    """One of ``BUILTIN_SETS`` (``mt_bench`` or ``wizardlm``).

    Raises:
        QuestionError: an unknown key.
    """
    if key not in BUILTIN_SETS:
        raise QuestionError(f"unknown question set {key!r}; known: {', '.join(BUILTIN_SETS)}")
    return read_question_file(RESOURCES / BUILTIN_SETS[key][1])


def set_choices(store) -> list[tuple[str, str]]:
    """``[(label, key)]`` of every question set for a drop-down: the shipped sets, then each imported source
    (``source:<id>``), newest first."""
    return ([(label, key) for key, (label, _) in BUILTIN_SETS.items()]
            + [(f"Source: {label}", f"source:{sid}") for label, sid in store.source_choices()])


def load_set(key: str, store=None, *, limit: int = 5000) -> list[Question]:
    """The questions of a set key from ``set_choices``: a shipped set, or ``source:<id>`` (its seeds' instructions,
    at most ``limit``, in file order; needs ``store``).

    Raises:
        QuestionError: an unknown key, a source that does not exist or has no seeds.
    """
    if key.startswith("source:"):
        if store is None:
            raise QuestionError("a source's questions need the store")
        try:
            sid = int(key.split(":", 1)[1])
        except ValueError:
            raise QuestionError(f"not a source: {key!r}") from None
        import pandas as pd

        df, _ = store.list_seeds(sid, limit=limit)
        qs = [Question(str(r.id), (str(r.instruction).strip(),), "" if pd.isna(r.skill) else str(r.skill),
                       None if pd.isna(r.difficulty) else int(r.difficulty))
              for r in df.itertuples() if str(r.instruction or "").strip()]
        if not qs:
            raise QuestionError(f"source #{sid} has no seed instructions to ask")
        return qs
    return builtin_set(key)
