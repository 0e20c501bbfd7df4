"""Preference sets and their pairs (``preference_sets``, ``preference_pairs``; schema migration 7).

A preference set is an ordered list of pairs ``{prompt, chosen, rejected}`` built by ``studio.preferences`` from
Arena votes, Chat thumbs, judge results or an imported file. Its ``sha256`` is the hash of its kept pairs'
snapshot bytes (``studio.preferences.snapshot_bytes``), recomputed in the same transaction as every edit (swap,
drop, restore), so a DPO run that freezes the set into its folder records the same hash.
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd

from .base import StoreError, _now

PAIR_COLUMNS = ("set_id", "idx", "source", "ref", "prompt", "chosen", "rejected", "model_chosen", "model_rejected",
                "dropped")
"""The keys of a pair as ``preference_pairs()`` returns it (``prompt`` parsed to a message list)."""

SET_COLUMNS = ("id", "name", "sources", "skipped", "sha256", "created_at", "updated_at")

PAIR_EDITS = ("swap", "drop", "restore")
"""What ``edit_preference_pair`` does: swap chosen and rejected (and their models), drop the pair (left out of
the set's snapshot), restore a dropped pair."""


def _snapshot_sha(pairs: list[dict]) -> str:
    from ..preferences import snapshot_bytes

    return hashlib.sha256(snapshot_bytes([p for p in pairs if not p.get("dropped")])).hexdigest()


class PreferencesMixin:
    """Preference sets and pairs of the ``Store``."""

    def add_preference_set(self, name: str, pairs: list[dict], *, sources: dict | None = None,
                           skipped: dict | None = None) -> int:
        """Store a new preference set with its pairs, in order.

        Args:
            name: the set's name (not empty).
            pairs: ``{prompt (messages ending with a user message), chosen (str), rejected (str), source (str),
                ref, model_chosen, model_rejected}`` (``ref``/models may be None).
            sources: what it was built from (e.g. ``{"votes": true, "judge_runs": [3]}``).
            skipped: counts left out while building (reason -> count).

        Returns:
            The new set's id.

        Raises:
            StoreError: an empty name, no pairs, or a pair without a prompt, chosen or rejected answer (named by
                its 1-based position).
        """
        if not isinstance(name, str) or not name.strip():
            raise StoreError("preference set refused: the name is empty")
        if not pairs:
            raise StoreError("preference set refused: it has no pairs")
        rows = []
        for i, p in enumerate(pairs, 1):
            if not isinstance(p.get("prompt"), list) or not p["prompt"]:
                raise StoreError(f"preference set refused: pair {i} has no prompt messages")
            for k in ("chosen", "rejected"):
                if not isinstance(p.get(k), str) or not p[k].strip():
                    raise StoreError(f"preference set refused: pair {i} has no {k} answer")
            rows.append(p)
        sha = _snapshot_sha(rows)
        with self._tx() as con:
            set_id = self._new_id(con, "preference_sets")
            now = _now()
            con.execute("INSERT INTO preference_sets VALUES (?, ?, ?::JSON, ?::JSON, ?, ?, ?)",
                        [set_id, name.strip(), json.dumps(sources or {}), json.dumps(skipped or {}), sha, now, now])
            df = pd.DataFrame({
                "idx": list(range(len(rows))), "source": [str(p.get("source") or "unknown") for p in rows],
                "ref": [None if p.get("ref") is None else str(p["ref"]) for p in rows],
                "prompt": [json.dumps(p["prompt"], ensure_ascii=False) for p in rows],
                "chosen": [p["chosen"] for p in rows], "rejected": [p["rejected"] for p in rows],
                "model_chosen": [p.get("model_chosen") for p in rows],
                "model_rejected": [p.get("model_rejected") for p in rows]}, dtype=object)
            with self._registered(con, "_new_pairs", df):
                con.execute("INSERT INTO preference_pairs SELECT ?, idx::INTEGER, source, ref, prompt::JSON, chosen, "
                            "rejected, model_chosen, model_rejected, false FROM _new_pairs ORDER BY idx", [set_id])
        return set_id

    def preference_set(self, set_id: int) -> dict:
        """One set: ``id, name, sources, skipped, sha256, created_at, updated_at, n_pairs, n_kept``.

        Raises:
            StoreError: no such set.
        """
        rows = self._q(f"SELECT {', '.join(SET_COLUMNS)} FROM preference_sets WHERE id = ?", [int(set_id)])
        if not rows:
            raise StoreError(f"preference set {set_id} does not exist")
        d = dict(zip(SET_COLUMNS, rows[0]))
        d["sources"], d["skipped"] = json.loads(d["sources"]), json.loads(d["skipped"])
        n, kept = self._q("SELECT count(*), count(*) FILTER (WHERE NOT dropped) FROM preference_pairs "
                          "WHERE set_id = ?", [int(set_id)])[0]
        d["n_pairs"], d["n_kept"] = int(n), int(kept)
        return d

    def preference_sets(self) -> list[dict]:
        """Every set, newest first, as ``preference_set`` dicts."""
        return [self.preference_set(r[0]) for r in self._q("SELECT id FROM preference_sets ORDER BY id DESC")]

    def preference_pairs(self, set_id: int, *, include_dropped: bool = True) -> list[dict]:
        """The set's pairs in order: ``PAIR_COLUMNS`` dicts (``prompt`` as messages).

        Raises:
            StoreError: no such set.
        """
        self.preference_set(set_id)
        where = "" if include_dropped else " AND NOT dropped"
        rows = self._q(f"SELECT {', '.join(PAIR_COLUMNS)} FROM preference_pairs WHERE set_id = ?{where} "
                       "ORDER BY idx", [int(set_id)])
        out = []
        for r in rows:
            d = dict(zip(PAIR_COLUMNS, r))
            d["prompt"] = json.loads(d["prompt"])
            out.append(d)
        return out

    def edit_preference_pair(self, set_id: int, idx: int, action: str) -> dict:
        """Swap, drop or restore one pair (``PAIR_EDITS``) and recompute the set's ``sha256``, in one transaction.

        Returns:
            The set after the edit (``preference_set``).

        Raises:
            StoreError: an unknown action, set or pair (nothing changed).
        """
        if action not in PAIR_EDITS:
            raise StoreError(f"pair edit refused: unknown action {action!r} ({', '.join(PAIR_EDITS)})")
        with self._tx() as con:
            row = con.execute("SELECT 1 FROM preference_pairs WHERE set_id = ? AND idx = ?",
                              [int(set_id), int(idx)]).fetchone()
            if row is None:
                raise StoreError(f"preference set {set_id} has no pair {idx}")
            if action == "swap":
                con.execute("UPDATE preference_pairs SET chosen = rejected, rejected = chosen, "
                            "model_chosen = model_rejected, model_rejected = model_chosen "
                            "WHERE set_id = ? AND idx = ?", [int(set_id), int(idx)])
            else:
                con.execute("UPDATE preference_pairs SET dropped = ? WHERE set_id = ? AND idx = ?",
                            [action == "drop", int(set_id), int(idx)])
            cols = ", ".join(PAIR_COLUMNS)
            pairs = []
            for r in con.execute(f"SELECT {cols} FROM preference_pairs WHERE set_id = ? ORDER BY idx",
                                 [int(set_id)]).fetchall():
                d = dict(zip(PAIR_COLUMNS, r))
                d["prompt"] = json.loads(d["prompt"])
                pairs.append(d)
            con.execute("UPDATE preference_sets SET sha256 = ?, updated_at = ? WHERE id = ?",
                        [_snapshot_sha(pairs), _now(), int(set_id)])
        return self.preference_set(set_id)

    def delete_preference_set(self, set_id: int) -> None:
        """Delete a set and its pairs (runs made from it keep their frozen snapshot). Raises StoreError when
        there is no such set."""
        self.preference_set(set_id)
        with self._tx() as con:
            con.execute("DELETE FROM preference_pairs WHERE set_id = ?", [int(set_id)])
            con.execute("DELETE FROM preference_sets WHERE id = ?", [int(set_id)])
