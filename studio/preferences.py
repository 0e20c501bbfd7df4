"""Preference pairs for DPO: built from Arena votes, Chat thumbs, judge results, or an imported file.

A pair is ``{"prompt": messages up to and including the last user message, "chosen": str, "rejected": str,
"source": "votes" | "thumbs" | "judge" | "import:<file>", "ref": where it came from (e.g. ``battle 12``),
"model_chosen", "model_rejected"}``. Builders return ``(pairs, skipped)``: ``skipped`` counts what was left out
and why, so nothing is dropped silently.

- **Votes** (``pairs_from_votes``): a battle won by one side gives (winner's answer, loser's answer) on the
  winner's history (``studio.battles.preference_pairs``); ``tie`` and ``tie (bothbad)`` are left out and counted,
  as are battles whose two sides asked different things.
- **Thumbs** (``pairs_from_thumbs``): Chat ratings grouped by prompt (the rated conversation without its last
  answer); a prompt with both an up and a down answer gives one pair per (up, down) answer. Prompts with only ups
  or only downs, and the same answer rated both ways, are left out and counted.
- **Judge** (``pairs_from_judge``): a pairwise judge run's outcomes under FastChat's swap rule
  (``studio.judge.combine_swapped``): only a win agreed in both orders makes a pair; ties (disagreeing orders
  included), unparsable games and missing answers are counted.
- **Import** (``read_preference_file``): TRL's preference format (``prompt``/``chosen``/``rejected``, each as a
  string or as messages; or the implicit-prompt form where ``chosen`` and ``rejected`` are whole conversations
  sharing their history) and UltraFeedback-style binarized rows (``prompt`` string, ``chosen``/``rejected`` full
  conversations, scores ignored), as JSON lines, a JSON array or Parquet. A bad row is named by file and line.

A set's snapshot (``snapshot_bytes``) is one JSON line per kept pair, in order; its sha256 is the set's hash and
the hash a DPO run records in its lineage (``training.dpo``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable

from .battles import preference_pairs as _battle_pairs
from .formats import FormatError, _open_source, _RowProblem, validate_messages

__all__ = ["PreferenceError", "SOURCES", "pairs_from_votes", "pairs_from_thumbs", "pairs_from_judge",
           "read_preference_file", "snapshot_bytes", "build_set", "import_set", "counts", "SNAPSHOT_KEYS"]

SOURCES = ("votes", "thumbs", "judge")
"""What ``build_set`` can build from (an imported file is ``import_set``)."""

SNAPSHOT_KEYS = ("id", "prompt", "chosen", "rejected", "source", "model_chosen", "model_rejected")
"""The keys of one snapshot line (``snapshot_bytes``)."""


class PreferenceError(ValueError):
    """Preference data that cannot be used (a bad file or row, nothing to build from); the message names what
    and where, and nothing was stored."""


def _msgs(conv: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in conv]


# ---------------------------------------------------------------------------------------------- builders


def pairs_from_votes(battles: Iterable[dict]) -> tuple[list[dict], dict[str, int]]:
    """Arena battles (``Store.battles()``) -> pairs (winner's answer chosen, loser's rejected).

    Returns:
        ``(pairs, skipped)`` with ``skipped`` keys ``tie``, ``tie (bothbad)``, ``user turns differ``, ``bad
        battle`` (a battle whose sides don't end with an answer).
    """
    pairs, skipped = [], Counter({"tie": 0, "tie (bothbad)": 0, "user turns differ": 0, "bad battle": 0})
    for b in battles:
        try:
            got, skip = _battle_pairs([b])
        except ValueError:
            skipped["bad battle"] += 1
            continue
        for k, v in skip.items():
            skipped[k] += v
        for p in got:
            win, lose = (b["model_a"], b["model_b"]) if b["winner"] == "model_a" else (b["model_b"], b["model_a"])
            pairs.append({"prompt": p["prompt"], "chosen": p["chosen"][0]["content"],
                          "rejected": p["rejected"][0]["content"], "source": "votes",
                          "ref": f"battle {b.get('id')}", "model_chosen": win, "model_rejected": lose})
    return pairs, dict(skipped)


def pairs_from_thumbs(ratings: Iterable[dict]) -> tuple[list[dict], dict[str, int]]:
    """Chat ratings (``Store.ratings()``) -> pairs: for each prompt, every answer rated up against every answer
    rated down (answers compared by text; the latest rating of the same answer counts).

    Returns:
        ``(pairs, skipped)``: ``skipped`` counts prompts with ``only up`` or ``only down`` ratings and answers
        rated ``both ways`` (left out), and ``bad rating`` (a rated conversation not ending with an answer).
    """
    groups: dict[str, dict] = {}
    skipped = Counter({"only up": 0, "only down": 0, "both ways": 0, "bad rating": 0})
    for r in ratings:
        conv = r.get("conversation") or []
        if len(conv) < 2 or conv[-1].get("role") != "assistant" or conv[-2].get("role") != "user":
            skipped["bad rating"] += 1
            continue
        prompt = _msgs(conv[:-1])
        key = json.dumps(prompt, ensure_ascii=False, sort_keys=True)
        g = groups.setdefault(key, {"prompt": prompt, "answers": {}})
        g["answers"][conv[-1]["content"]] = (int(r["rating"]), r.get("model"), r.get("id"))
    pairs = []
    for g in groups.values():
        ups = [(a, m, i) for a, (v, m, i) in g["answers"].items() if v > 0]
        downs = [(a, m, i) for a, (v, m, i) in g["answers"].items() if v < 0]
        if not downs:
            skipped["only up"] += 1
            continue
        if not ups:
            skipped["only down"] += 1
            continue
        for a_up, m_up, i_up in ups:
            for a_down, m_down, i_down in downs:
                pairs.append({"prompt": g["prompt"], "chosen": a_up, "rejected": a_down, "source": "thumbs",
                              "ref": f"ratings {i_up}/{i_down}", "model_chosen": m_up, "model_rejected": m_down})
    return pairs, dict(skipped)


def pairs_from_judge(store, run_id: int) -> tuple[list[dict], dict[str, int]]:
    """A pairwise judge run -> pairs: each (question, turn) won by one model in both orders (FastChat's swap
    rule) gives (winner's answer, loser's answer) on the question's turns with the winner's earlier answers.

    Returns:
        ``(pairs, skipped)`` with ``tie`` (a tie, or orders that disagree), ``unparsable`` (a game the judge's
        text could not be read for), ``missing answer``.

    Raises:
        PreferenceError: the run is not a pairwise run. StoreError: no such run.
    """
    from .judge import JudgeConfig, answer_params, combine_swapped, question_from_dict

    run = store.judge_run(run_id)
    if run["mode"] != "pairwise":
        raise PreferenceError(f"judge run {run_id} is {run['mode']}: only a pairwise run has wins to learn from")
    cfg = JudgeConfig.from_params(run["params"])
    questions = {q["question_id"]: question_from_dict(q) for q in run["questions"]}
    games: dict[tuple, dict] = {}
    for j in store.judgments(run_id):
        games.setdefault((j["question_id"], int(j["turn"]), j["model_a"], j["model_b"]), {})[j["order"]] = \
            None if j["error"] else j["winner"]
    pairs, skipped = [], Counter({"tie": 0, "unparsable": 0, "missing answer": 0})
    for (qid, turn, a, b), g in games.items():
        if "AB" not in g or "BA" not in g:
            continue
        w = combine_swapped(g["AB"], g["BA"])
        if w is None:
            skipped["unparsable"] += 1
            continue
        if w == "tie":
            skipped["tie"] += 1
            continue
        q = questions.get(qid)
        win, lose = (a, b) if w == "model_a" else (b, a)
        params = answer_params(q, cfg.max_new_tokens, cfg.seed).as_dict() if q else None
        ans_w = store.get_answer(win, run["question_set"], qid, params) if q else None
        ans_l = store.get_answer(lose, run["question_set"], qid, params) if q else None
        if not ans_w or not ans_l or len(ans_w) < turn or len(ans_l) < turn:
            skipped["missing answer"] += 1
            continue
        prompt = []
        for t in range(turn):
            prompt.append({"role": "user", "content": q.turns[t]})
            if t < turn - 1:
                prompt.append({"role": "assistant", "content": ans_w[t] or "(no answer)"})
        if not ans_w[turn - 1].strip() or not ans_l[turn - 1].strip():
            skipped["missing answer"] += 1
            continue
        pairs.append({"prompt": prompt, "chosen": ans_w[turn - 1], "rejected": ans_l[turn - 1], "source": "judge",
                      "ref": f"judge run {run_id} question {qid} turn {turn}", "model_chosen": win,
                      "model_rejected": lose})
    return pairs, dict(skipped)


# ---------------------------------------------------------------------------------------------- import


def _as_messages(v, what: str) -> list[dict]:
    if isinstance(v, str):
        if not v.strip():
            raise ValueError(f"{what} is empty")
        return [{"role": "user" if what == "prompt" else "assistant", "content": v}]
    if isinstance(v, dict) and "role" in v:
        v = [v]
    if not isinstance(v, list) or not v:
        raise ValueError(f"{what} must be a string or a list of messages")
    out = []
    for i, m in enumerate(v, 1):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            raise ValueError(f"{what} message {i} must be an object with string 'role' and 'content'")
        role = {"human": "user", "gpt": "assistant"}.get(m["role"], m["role"])
        out.append({"role": role, "content": m["content"]})
    return out


def _pair_from_row(row) -> dict:
    """One file row -> ``{prompt, chosen, rejected}`` (strings for the answers). Raises ValueError (why)."""
    if not isinstance(row, dict):
        raise ValueError("a row must be an object with 'chosen' and 'rejected'")
    missing = [k for k in ("chosen", "rejected") if k not in row]
    if missing:
        raise ValueError(f"missing {' and '.join(repr(k) for k in missing)} (TRL preference rows have 'prompt', "
                         "'chosen' and 'rejected')")
    chosen, rejected = _as_messages(row["chosen"], "chosen"), _as_messages(row["rejected"], "rejected")
    prompt = _as_messages(row["prompt"], "prompt") if row.get("prompt") not in (None, "", []) else []
    # Implicit prompt (TRL) or UltraFeedback binarized: the completions carry the history; strip the prompt, then
    # the history both sides share.
    if prompt and chosen[:len(prompt)] == prompt and rejected[:len(prompt)] == prompt and len(chosen) > len(prompt):
        chosen, rejected = chosen[len(prompt):], rejected[len(prompt):]
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    prompt, chosen, rejected = prompt + chosen[:n], chosen[n:], rejected[n:]
    if len(chosen) != 1 or len(rejected) != 1 or chosen[0]["role"] != "assistant" \
            or rejected[0]["role"] != "assistant":
        raise ValueError("'chosen' and 'rejected' must each end in one assistant answer after the shared prompt")
    if not prompt:
        raise ValueError("no prompt: give 'prompt', or conversations in 'chosen'/'rejected' that start with it")
    if prompt[-1]["role"] != "user":
        raise ValueError(f"the prompt must end with a user message, not {prompt[-1]['role']!r}")
    problem = validate_messages(prompt + chosen) or validate_messages(prompt + rejected)
    if problem:
        raise ValueError(problem)
    return {"prompt": prompt, "chosen": chosen[0]["content"], "rejected": rejected[0]["content"]}


def read_preference_file(path, *, display_name: str | None = None, max_bad: int = 0,
                         max_bytes: int | None = None) -> list[dict]:
    """Read a preference file (TRL ``prompt``/``chosen``/``rejected`` rows, or UltraFeedback binarized rows) as
    JSON lines, a JSON array or Parquet (a ``datasets`` folder works too).

    Args:
        path: the file.
        display_name: how errors name the file (an upload's original name); default its file name.
        max_bad: how many bad rows may be skipped (0: the first bad row refuses the file).
        max_bytes: refuse a larger file before reading it (a page upload's limit).

    Returns:
        Pairs (``source`` ``import:<name>``, ``ref`` ``line N``), in file order.

    Raises:
        PreferenceError: an unreadable file, no rows, or a bad row: ``"<name> line N: <why>"``.
    """
    name = display_name or Path(str(path)).name
    try:
        src = _open_source(path, None, max_bytes=max_bytes)
    except FormatError as e:
        raise PreferenceError(f"{name}: {e.reason}") from None
    pairs, bad = [], []
    try:
        for n, row in src.rows:
            where = src.where(n)
            try:
                if isinstance(row, _RowProblem):
                    raise ValueError(row.reason)
                p = _pair_from_row(row)
            except ValueError as e:
                bad.append(f"{name} line {n}: {where}{e}")
                if len(bad) > max_bad:
                    raise PreferenceError(bad[-1]) from None
                continue
            p.update(source=f"import:{name}", ref=f"line {n}", model_chosen=None, model_rejected=None)
            pairs.append(p)
    except FormatError as e:
        raise PreferenceError(f"{name}: {e.reason}") from None
    if not pairs:
        raise PreferenceError(f"{name}: no preference pairs" + (f" ({bad[0]})" if bad else ""))
    return pairs


# ---------------------------------------------------------------------------------------------- sets


def snapshot_bytes(pairs: Iterable[dict]) -> bytes:
    """The frozen form of pairs: one JSON object per line with ``SNAPSHOT_KEYS`` (``id``: the pair's ``idx``
    or position), UTF-8. The same pairs give the same bytes; its sha256 is a set's hash."""
    out = []
    for i, p in enumerate(pairs):
        d = {"id": str(p.get("idx", i)), "prompt": _msgs(p["prompt"]), "chosen": p["chosen"],
             "rejected": p["rejected"], "source": p.get("source"), "model_chosen": p.get("model_chosen"),
             "model_rejected": p.get("model_rejected")}
        out.append(json.dumps(d, ensure_ascii=False) + "\n")
    return "".join(out).encode("utf-8")


def build_set(store, name: str, *, votes: bool = True, thumbs: bool = True,
              judge_runs: Iterable[int] = ()) -> tuple[int, dict]:
    """Build and store a preference set from the chosen sources.

    Args:
        name: the set's name.
        votes: include Arena votes. thumbs: include Chat thumbs. judge_runs: pairwise judge run ids to include.

    Returns:
        ``(set id, skipped)``: ``skipped`` maps ``"<source>: <reason>"`` to counts.

    Raises:
        PreferenceError: no source chosen, or no pair found (the message gives the counts left out).
    """
    judge_runs = [int(r) for r in judge_runs or ()]
    if not (votes or thumbs or judge_runs):
        raise PreferenceError("choose at least one source: votes, thumbs or a pairwise judge run")
    pairs, skipped = [], {}

    def take(src: str, got: tuple[list[dict], dict]) -> None:
        pairs.extend(got[0])
        skipped.update({f"{src}: {k}": v for k, v in got[1].items()})

    if votes:
        take("votes", pairs_from_votes(store.battles()))
    if thumbs:
        take("thumbs", pairs_from_thumbs(store.ratings()))
    for r in judge_runs:
        take(f"judge run {r}", pairs_from_judge(store, r))
    if not pairs:
        left = ", ".join(f"{k} {v}" for k, v in skipped.items() if v) or "nothing to pair"
        raise PreferenceError(f"no preference pairs from the chosen sources (left out: {left})")
    sources = {"votes": bool(votes), "thumbs": bool(thumbs), "judge_runs": judge_runs}
    return store.add_preference_set(name, pairs, sources=sources, skipped=skipped), skipped


def import_set(store, path, name: str | None = None, *, display_name: str | None = None,
               max_bytes: int | None = None) -> int:
    """Read a preference file (``read_preference_file``) and store it as a new set named ``name`` (default: the
    file's name). Returns the set id. Raises PreferenceError for a bad file (nothing stored)."""
    shown = display_name or Path(str(path)).name
    pairs = read_preference_file(path, display_name=shown, max_bytes=max_bytes)
    return store.add_preference_set(name or shown, pairs, sources={"file": shown}, skipped={})


def counts(pairs: Iterable[dict]) -> dict:
    """Counts of kept pairs (dropped ones left out): ``{"total", "by_source": {source: n}, "by_model": {model:
    {"chosen": n, "rejected": n}}}``."""
    by_source: Counter = Counter()
    by_model: dict[str, Counter] = {}
    total = 0
    for p in pairs:
        if p.get("dropped"):
            continue
        total += 1
        by_source[p.get("source") or "unknown"] += 1
        for side in ("chosen", "rejected"):
            m = p.get(f"model_{side}")
            if m:
                by_model.setdefault(m, Counter())[side] += 1
    return {"total": total, "by_source": dict(by_source),
            "by_model": {m: {"chosen": c["chosen"], "rejected": c["rejected"]} for m, c in sorted(by_model.items())}}
