"""Arena battles and Chat ratings (``battles``, ``ratings``; schema migration 5).

A battle is two models' answers to the same prompt and one vote between them (Chatbot Arena's row: see
``studio.battles``). Battles voted in the studio carry the ``round_id`` of the round they judge: one vote per
round, enforced twice, here (``VoteError``, the first vote kept) and by the table's UNIQUE constraint. Imported
battles carry ``origin = 'import:<file name>'`` and whatever their row had beyond the Arena fields (``extra``,
``fields``), so they export back to the same rows; a row already imported (same content) is not added again.

A rating is one thumbs up (+1) or down (-1) on a model's answer in Chat.

Times (``tstamp``) are epoch seconds (float), as in Arena files.
"""

from __future__ import annotations

import json
import time

import duckdb

from ..battles import ARENA_FIELDS, battle_problem, row_sha256
from ..formats import validate_messages
from .base import StoreError

BATTLE_COLUMNS = ("id", "round_id", "model_a", "model_b", "winner", "judge", "conversation_a", "conversation_b",
                  "turn", "anony", "language", "tstamp", "params", "question_id", "origin", "extra", "fields")
"""The keys of a battle as ``battles()`` returns it (the table's columns but its ``row_sha256``)."""

_JSON_COLUMNS = ("conversation_a", "conversation_b", "params", "question_id", "extra", "fields")

ADD_BATTLE_KEYS = ("round_id", *ARENA_FIELDS, "params", "origin", "extra")
"""The keys ``add_battle`` accepts."""

RATING_COLUMNS = ("id", "model", "conversation", "rating", "note", "voter", "tstamp")


class VoteError(StoreError, ValueError):
    """A vote for a round that was already voted on. The first vote is kept unchanged; nothing was written."""


def _vote_error(round_id: str) -> VoteError:
    return VoteError(f"round '{round_id}' was already voted on; only the first vote counts and it is kept")


def _json(v) -> str | None:
    return None if v is None else json.dumps(v, ensure_ascii=False)


def _loads(v):
    return None if v is None else json.loads(v)


class ArenaMixin:
    """Battles and ratings of the ``Store``."""

    # ------------------------------------------------------------------------------------------ battles

    def add_battle(self, b: dict) -> int:
        """Store one vote cast in the studio.

        Args:
            b: ``model_a``, ``model_b`` (names as the voter saw them revealed), ``winner`` (``model_a`` |
                ``model_b`` | ``tie`` | ``tie (bothbad)``), ``conversation_a``, ``conversation_b`` (OpenAI-style
                messages ending with each model's answer); optional ``round_id`` (str: the round voted on),
                ``judge`` (the voter: user name or per-browser id), ``turn`` (default: the number of user
                messages of ``conversation_a``), ``anony`` (default True: names hidden while voting),
                ``language``, ``tstamp`` (epoch seconds, default now), ``params`` (generation parameters, JSON),
                ``question_id``, ``origin`` (default ``"studio"``), ``extra`` (a dict of other fields, written
                with the battle when exported).

        Returns:
            The new battle's id.

        Raises:
            VoteError: ``round_id`` was already voted on (the first vote is kept unchanged).
            StoreError: an unknown key, or a battle ``studio.battles.battle_problem`` refuses (named).
        """
        unknown = sorted(set(b) - set(ADD_BATTLE_KEYS))
        if unknown:
            raise StoreError(f"battle refused: unknown field{'s' if len(unknown) > 1 else ''} "
                             f"{', '.join(repr(k) for k in unknown)} (known: {', '.join(ADD_BATTLE_KEYS)})")
        battle = {k: b.get(k) for k in ARENA_FIELDS}
        if battle["anony"] is None:
            battle["anony"] = True
        if battle["tstamp"] is None:
            battle["tstamp"] = time.time()
        problem = battle_problem(battle)
        if problem:
            raise StoreError(f"battle refused: {problem}")
        if battle["turn"] is None:
            battle["turn"] = sum(1 for m in battle["conversation_a"] if m["role"] == "user")
        round_id, origin, extra = b.get("round_id"), b.get("origin") or "studio", b.get("extra")
        if round_id is not None and (not isinstance(round_id, str) or not round_id):
            raise StoreError(f"battle refused: round_id must be a non-empty string, not {round_id!r}")
        if extra is not None and not isinstance(extra, dict):
            raise StoreError("battle refused: extra must be an object (a dict) of other fields")
        values = [round_id, battle["model_a"], battle["model_b"], battle["winner"], battle["judge"],
                  _json(battle["conversation_a"]), _json(battle["conversation_b"]), battle["turn"], battle["anony"],
                  battle["language"], float(battle["tstamp"]), _json(b.get("params")),
                  _json(battle["question_id"]), origin, _json(extra)]
        with self._tx() as con:
            if round_id is not None and con.execute("SELECT 1 FROM battles WHERE round_id = ?", [round_id]).fetchone():
                raise _vote_error(round_id)
            battle_id = self._new_id(con, "battles")
            try:
                con.execute("INSERT INTO battles (id, round_id, model_a, model_b, winner, judge, conversation_a, "
                            "conversation_b, turn, anony, language, tstamp, params, question_id, origin, extra) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?::JSON, ?::JSON, ?, ?, ?, ?, ?::JSON, ?::JSON, ?, ?::JSON)",
                            [battle_id, *values])
            except duckdb.ConstraintException as e:  # the UNIQUE constraint: a vote that got past the check
                if round_id is not None and "round_id" in str(e):
                    raise _vote_error(round_id) from e
                raise StoreError(f"battle refused: {e}") from e
        return battle_id

    def has_vote(self, round_id: str) -> bool:
        """Whether the round ``round_id`` was voted on."""
        return bool(self._q("SELECT count(*) FROM battles WHERE round_id = ?", [round_id])[0][0])

    def import_battles(self, rows: list[dict], origin: str) -> int:
        """Store battles read from a file (``studio.battles.read_battles``), all in one transaction.

        A row whose content (``studio.battles.row_sha256``) is already stored from an earlier import is not
        added again, so importing a file twice adds its battles once; repeated rows within ``rows`` are kept
        (the file had them). Imported battles have no ``round_id``.

        Args:
            rows: battles: dicts with the ``studio.battles.ARENA_FIELDS`` keys, ``extra`` and ``fields``
                (``row``, the line number, names a bad row).
            origin: ``"import:<file name>"``.

        Returns:
            The number of battles added.

        Raises:
            ValueError: ``origin`` is not ``import:<file name>``.
            StoreError: a row ``battle_problem`` refuses (its line named); nothing is written.
        """
        if not isinstance(origin, str) or not origin.startswith("import:") or len(origin) == len("import:"):
            raise ValueError(f"origin must be 'import:<file name>', not {origin!r}")
        for i, b in enumerate(rows, 1):
            problem = battle_problem(b)
            if problem:
                raise StoreError(f"battle at line {b.get('row', i)} refused: {problem}; nothing was imported")
        if not rows:
            return 0
        import pyarrow as pa

        hashes = [row_sha256(b) for b in rows]
        with self._tx() as con:
            known_tbl = pa.table({"h": pa.array(sorted(set(hashes)), pa.string())})
            with self._registered(con, "_import_hashes", known_tbl):
                known = {r[0] for r in con.execute("SELECT row_sha256 FROM battles WHERE row_sha256 IN "
                                                   "(SELECT h FROM _import_hashes)").fetchall()}
            new = [(b, h) for b, h in zip(rows, hashes) if h not in known]
            if not new:
                return 0
            ids = self._new_ids(con, "battles", len(new))
            col = lambda f: [f(b) for b, _ in new]  # noqa: E731
            tbl = pa.table({
                "id": pa.array(ids, pa.int64()),
                "model_a": pa.array(col(lambda b: b["model_a"]), pa.string()),
                "model_b": pa.array(col(lambda b: b["model_b"]), pa.string()),
                "winner": pa.array(col(lambda b: b["winner"]), pa.string()),
                "judge": pa.array(col(lambda b: b.get("judge")), pa.string()),
                "conversation_a": pa.array(col(lambda b: _json(b["conversation_a"])), pa.string()),
                "conversation_b": pa.array(col(lambda b: _json(b["conversation_b"])), pa.string()),
                "turn": pa.array(col(lambda b: b.get("turn")), pa.int64()),
                "anony": pa.array(col(lambda b: b.get("anony")), pa.bool_()),
                "language": pa.array(col(lambda b: b.get("language")), pa.string()),
                "tstamp": pa.array(col(lambda b: None if b.get("tstamp") is None else float(b["tstamp"])),
                                   pa.float64()),
                "question_id": pa.array(col(lambda b: _json(b.get("question_id"))), pa.string()),
                "extra": pa.array(col(lambda b: _json(b.get("extra") or {})), pa.string()),
                "fields": pa.array(col(lambda b: _json(b.get("fields"))), pa.string()),
                "row_sha256": pa.array([h for _, h in new], pa.string()),
            })
            with self._registered(con, "_import_battles", tbl):
                con.execute("INSERT INTO battles (id, round_id, model_a, model_b, winner, judge, conversation_a, "
                            "conversation_b, turn, anony, language, tstamp, params, question_id, origin, extra, "
                            "fields, row_sha256) SELECT id, NULL, model_a, model_b, winner, judge, "
                            "conversation_a::JSON, conversation_b::JSON, turn, anony, language, tstamp, NULL, "
                            "question_id::JSON, ?, extra::JSON, fields::JSON, row_sha256 FROM _import_battles "
                            "ORDER BY id", [origin])
        return len(new)

    def battles(self, *, anony_only: bool = False, conversations: bool = True) -> list[dict]:
        """Every battle, oldest first (by ``tstamp``; battles without one first; then by id).

        Args:
            anony_only: only battles voted with the names hidden (``anony`` true), as Chatbot Arena's
                leaderboard counts them.
            conversations: False leaves out ``conversation_a`` and ``conversation_b`` (for ratings, which need
                only models and winners).

        Returns:
            ``[{id, round_id, model_a, model_b, winner, judge, conversation_a, conversation_b, turn, anony,
            language, tstamp, params, question_id, origin, extra, fields}]`` with the JSON fields parsed
            (conversations as message lists; ``extra`` a dict, ``{}`` when none; ``fields`` the imported row's
            keys, None for a studio vote).
        """
        cols = [c for c in BATTLE_COLUMNS if conversations or c not in ("conversation_a", "conversation_b")]
        where = "WHERE anony" if anony_only else ""
        rows = self._q(f"SELECT {', '.join(cols)} FROM battles {where} ORDER BY tstamp NULLS FIRST, id")
        out = []
        for r in rows:
            d = dict(zip(cols, r))
            for c in _JSON_COLUMNS:
                if c in d:
                    d[c] = _loads(d[c])
            d["extra"] = d["extra"] or {}
            out.append(d)
        return out

    def battle_count(self, *, anony_only: bool = False) -> int:
        """The number of battles (``anony_only``: voted with the names hidden)."""
        return int(self._q(f"SELECT count(*) FROM battles {'WHERE anony' if anony_only else ''}")[0][0])

    # ------------------------------------------------------------------------------------------ ratings

    def add_rating(self, model: str, conversation: list[dict], rating: int, note: str | None = None,
                   voter: str | None = None) -> int:
        """Store a thumbs up (``rating=1``) or down (``-1``) on ``model``'s answer, the last message of
        ``conversation`` (OpenAI-style messages). ``note``: the voter's words; ``voter``: user name or
        per-browser id. Returns the new rating's id.

        Raises:
            StoreError: an empty model name, a rating other than 1 or -1, or messages
                ``studio.formats.validate_messages`` refuses (named).
        """
        if not isinstance(model, str) or not model.strip():
            raise StoreError("rating refused: the model name is empty")
        if isinstance(rating, bool) or rating not in (1, -1):
            raise StoreError(f"rating refused: rating must be 1 (thumbs up) or -1 (thumbs down), not {rating!r}")
        problem = validate_messages(conversation)
        if problem:
            raise StoreError(f"rating refused: conversation: {problem}")
        for name, v in (("note", note), ("voter", voter)):
            if v is not None and not isinstance(v, str):
                raise StoreError(f"rating refused: {name} must be a string")
        with self._tx() as con:
            rating_id = self._new_id(con, "ratings")
            con.execute("INSERT INTO ratings VALUES (?, ?, ?::JSON, ?, ?, ?, ?)",
                        [rating_id, model, _json(conversation), int(rating), note, voter, time.time()])
        return rating_id

    def ratings(self, model: str | None = None) -> list[dict]:
        """Ratings, oldest first: ``[{id, model, conversation (messages), rating (1 | -1), note, voter,
        tstamp}]``; only ``model``'s when given."""
        where, params = ("WHERE model = ?", [model]) if model is not None else ("", [])
        rows = self._q(f"SELECT {', '.join(RATING_COLUMNS)} FROM ratings {where} ORDER BY id", params)
        out = []
        for r in rows:
            d = dict(zip(RATING_COLUMNS, r))
            d["conversation"] = _loads(d["conversation"])
            out.append(d)
        return out
