"""Imported files (``sources``) and instructions (``seeds``): the import of a parsed file in one transaction,
source lists for drop-downs, seed pages, and the seeds Evol-Instruct adds."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

import pandas as pd

from .base import StoreError, _id_list, _now


@dataclass
class ImportResult:
    """What one file import did.

    Attributes:
        source_id: the ``sources`` row (the existing one when ``duplicate``).
        name, format: file name and detected format.
        n_seeds, n_conversations: rows added (0 and 0 when ``duplicate``).
        bad_rows: ``[(row, reason)]`` rows skipped, 1-based.
        duplicate: the same bytes were imported before; nothing was added.
        n_duplicates: rows of the file skipped by the parser as repeats of earlier rows (``ParsedFile``'s
            ``n_duplicates`` where the parser counts them, else 0).
    """

    source_id: int
    name: str
    format: str
    n_seeds: int = 0
    n_conversations: int = 0
    bad_rows: list[tuple[int, str]] = field(default_factory=list)
    duplicate: bool = False
    n_duplicates: int = 0

    def summary(self) -> str:
        """One line for people: what was added, how many rows were bad and how many were repeats."""
        if self.duplicate:
            return f"{self.name}: already imported (same content); nothing added."
        s = f"{self.name} ({self.format}): {self.n_seeds} seeds, {self.n_conversations} conversations imported"
        if self.bad_rows:
            s += f"; {len(self.bad_rows)} bad rows skipped"
        if self.n_duplicates > 0:
            s += f"; {self.n_duplicates} duplicate rows skipped"
        return s + "."


class SourcesMixin:
    """Imports, sources and seeds of the ``Store``."""

    def import_parsed(self, parsed) -> ImportResult:
        """Add a parsed file (``studio.formats.ParsedFile``) in one transaction.

        Seeds and conversations get ``source_id`` of a new ``sources`` row. A file whose sha256 was
        imported before adds nothing and returns ``duplicate=True``. Conversations from instruction
        formats with outputs (Alpaca, Evol-Instruct) are linked to their seed. A conversation record's
        ``tools`` (when it has that attribute) and its messages' ``tool_calls`` are kept.

        A file with neither seeds nor conversations (every row bad) is refused before anything is written:
        no ``sources`` row, so importing the fixed file later is not taken for a duplicate.

        Returns:
            ImportResult with the counts, the bad rows reported by the parser and its ``n_duplicates``.

        Raises:
            formats.FormatError: nothing to import (``formats.require_records``); ``e.bad_rows`` lists the
                bad rows.
        """
        from ..formats import require_records

        require_records(parsed)
        bad = [(b.row, b.reason) for b in parsed.bad_rows]
        n_dup = int(getattr(parsed, "n_duplicates", 0) or 0)
        with self._tx() as con:
            row = con.execute("SELECT id FROM sources WHERE sha256 = ?", [parsed.sha256]).fetchone()
            if row is not None:
                return ImportResult(row[0], parsed.name, parsed.format, bad_rows=bad, duplicate=True)
            now = _now()
            source_id = self._new_id(con, "sources")
            con.execute(
                "INSERT INTO sources VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [source_id, parsed.name, parsed.path, parsed.format, parsed.sha256, now, parsed.n_rows,
                 len(parsed.seeds), len(parsed.conversations), len(bad)],
            )
            seed_by_row: dict[int, int] = {}
            if parsed.seeds:
                seeds_df = pd.DataFrame({
                    "id": self._new_ids(con, "seeds", len(parsed.seeds)),
                    "source_id": source_id,
                    "row_no": [s.row for s in parsed.seeds],
                    "instruction": [s.instruction for s in parsed.seeds],
                    "input": [s.input or "" for s in parsed.seeds],
                    "output": [s.output for s in parsed.seeds],
                    "meta": [json.dumps(s.meta, ensure_ascii=False) for s in parsed.seeds],
                })
                seed_by_row = dict(zip(seeds_df["row_no"], seeds_df["id"]))
                with self._registered(con, "_seeds_df", seeds_df):
                    con.execute("INSERT INTO seeds SELECT id, source_id, row_no, instruction, input, output, "
                                "meta::JSON FROM _seeds_df")
            items = [
                dict(messages=c.messages, external_id=c.external_id, seed_id=seed_by_row.get(c.row),
                     tools=getattr(c, "tools", None))
                for c in parsed.conversations
            ]
            self._insert_conversations(con, items, source_id=source_id, origin="imported", now=now)
        self._start_indexer()
        return ImportResult(source_id, parsed.name, parsed.format, len(parsed.seeds),
                            len(parsed.conversations), bad, n_duplicates=n_dup)

    def list_sources(self) -> pd.DataFrame:
        """All sources, newest first, with live counts: columns ``id, name, format, imported_at, n_rows,
        n_seeds, n_conversations, n_bad``."""
        return self._df(
            "SELECT s.id, s.name, s.format, s.imported_at, s.n_rows, s.n_seeds, "
            "(SELECT count(*) FROM conversations c WHERE c.source_id = s.id AND c.deleted_at IS NULL) "
            "AS n_conversations, s.n_bad FROM sources s ORDER BY s.id DESC"
        )

    def source_choices(self) -> list[tuple[str, int]]:
        """``[(label, source_id)]`` for drop-downs, newest first."""
        return [(f"{name} (#{sid}, {fmt})", sid) for sid, name, fmt in
                self._q("SELECT id, name, format FROM sources ORDER BY id DESC")]

    def list_seeds(self, source_id: int | None = None, *, unexpanded_only: bool = False,
                   limit: int = 50, offset: int = 0) -> tuple[pd.DataFrame, int]:
        """A page of seeds and the total count.

        Returns:
            (DataFrame with ``id, source, row_no, instruction, skill, difficulty, n_expanded``, total).
        """
        where, params = ["1=1"], []
        if source_id is not None:
            where.append("s.source_id = ?")
            params.append(source_id)
        if unexpanded_only:
            where.append("NOT EXISTS (SELECT 1 FROM conversations c WHERE c.seed_id = s.id AND "
                         "c.origin = 'expanded' AND c.deleted_at IS NULL)")
        w = " AND ".join(where)
        total = self._q(f"SELECT count(*) FROM seeds s WHERE {w}", params)[0][0]
        df = self._df(
            f"SELECT s.id, src.name AS source, s.row_no, s.instruction, "
            f"json_extract_string(s.meta, '$.skill') AS skill, "
            f"TRY_CAST(json_extract_string(s.meta, '$.difficulty') AS INTEGER) AS difficulty, "
            f"(SELECT count(*) FROM conversations c WHERE c.seed_id = s.id AND c.origin = 'expanded' "
            f" AND c.deleted_at IS NULL) AS n_expanded "
            f"FROM seeds s LEFT JOIN sources src ON src.id = s.source_id WHERE {w} "
            f"ORDER BY s.id LIMIT ? OFFSET ?", params + [int(limit), int(offset)])
        return df, total

    def pick_seeds(self, source_id: int | None, n: int, *, unexpanded_only: bool = True) -> list[int]:
        """The first ``n`` seed ids of a source (in file order), skipping already-expanded ones."""
        df, _ = self.list_seeds(source_id, unexpanded_only=unexpanded_only, limit=n, offset=0)
        return [int(x) for x in df["id"]]

    def get_seeds(self, ids: Iterable[int]) -> dict[int, dict]:
        """``{seed_id: {"id", "source_id", "instruction", "input", "output", "meta"}}`` for the given ids."""
        ids = _id_list(ids)
        if not ids:
            return {}
        rows = self._q("SELECT id, source_id, instruction, input, meta, output FROM seeds WHERE "
                       "id = ANY(?::BIGINT[])", [ids])
        return {r[0]: {"id": r[0], "source_id": r[1], "instruction": r[2], "input": r[3] or "", "output": r[5],
                       "meta": json.loads(r[4]) if r[4] else {}} for r in rows}

    def add_seeds(self, source_id: int, seeds: list, *, job_id: int | None = None, seed_id: int | None = None,
                  queue_in_job: bool = False) -> list[int] | None:
        """Add seeds (``formats.SeedRecord``) to a source; with ``job_id``/``seed_id`` atomically with marking
        that job item done (like ``complete_item``); with ``queue_in_job`` the new seeds also become pending
        items of the same job (next Evol-Instruct generation). Returns the new ids, or None when the item is
        missing or already done (nothing written)."""
        with self._tx() as con:
            if job_id is not None:
                row = con.execute("SELECT status FROM job_items WHERE job_id = ? AND seed_id = ?",
                                  [int(job_id), int(seed_id)]).fetchone()
                if row is None or row[0] == "done":
                    return None
            ids = self._new_ids(con, "seeds", len(seeds))
            if seeds:
                con.executemany("INSERT INTO seeds VALUES (?, ?, ?, ?, ?, ?, ?::JSON)", [
                    (sid, int(source_id), s.row or None, s.instruction, s.input or "", s.output,
                     json.dumps(s.meta, ensure_ascii=False)) for sid, s in zip(ids, seeds)])
                con.execute("UPDATE sources SET n_seeds = coalesce(n_seeds, 0) + ? WHERE id = ?",
                            [len(seeds), int(source_id)])
            if job_id is not None:
                con.execute("UPDATE job_items SET status = 'done', error = NULL, detail = NULL WHERE job_id = ? AND seed_id = ?",
                            [int(job_id), int(seed_id)])
                self._drop_item_progress(con, job_id, seed_id)
                if queue_in_job and ids:
                    con.executemany("INSERT INTO job_items (job_id, seed_id) VALUES (?, ?)",
                                    [(int(job_id), i) for i in ids])
                    con.execute("UPDATE jobs SET total = total + ? WHERE id = ?", [len(ids), int(job_id)])
                self._refresh_job_counts(con, job_id)
        return ids

    def evolved_source(self, parent_source_id: int) -> int:
        """Id of the source 'evolved from <name>' (format 'evolved') for seeds evolved from a source, created on
        first use; a source that is itself 'evolved' maps to itself. Raises StoreError if unknown."""
        with self._tx() as con:
            row = con.execute("SELECT name, format FROM sources WHERE id = ?", [int(parent_source_id)]).fetchone()
            if row is None:
                raise StoreError(f"source {parent_source_id} does not exist")
            if row[1] == "evolved":
                return int(parent_source_id)
            key = f"evolved-from:{int(parent_source_id)}"
            found = con.execute("SELECT id FROM sources WHERE sha256 = ?", [key]).fetchone()
            if found is not None:
                return int(found[0])
            sid = self._new_id(con, "sources")
            con.execute("INSERT INTO sources VALUES (?, ?, NULL, 'evolved', ?, ?, 0, 0, 0, 0)",
                        [sid, f"evolved from {row[0]}", key, _now()])
            return sid

    def evolved_seeds(self, job_id: int, limit: int = 20) -> pd.DataFrame:
        """Seeds an Evol-Instruct job created, newest first: ``id, operation, parent, instruction``."""
        return self._df("SELECT id, json_extract_string(meta, '$.operation') AS operation, "
                        "TRY_CAST(json_extract_string(meta, '$.parent_seed_id') AS INTEGER) AS parent, instruction "
                        "FROM seeds WHERE TRY_CAST(json_extract_string(meta, '$.job_id') AS INTEGER) = ? "
                        "ORDER BY id DESC LIMIT ?", [int(job_id), int(limit)])
