"""DuckDB store: schema, migrations, and the only code in the studio that writes SQL.

Tables (see ``SCHEMA``):

- ``sources``: one row per imported file (name, format, sha256 of the bytes, time, counts).
- ``seeds``: instructions (from an instruction file: Evol-Instruct, Alpaca, the WizardLM test set; or made by
  Evol-Instruct from a parent seed).
- ``conversations``: one row per conversation: origin (``imported``/``expanded``), status
  (``new``/``edited``), ``deleted_at`` (soft delete, restorable), teacher, prompt version, generation
  parameters, token counts, and an optimistic-concurrency ``version``.
- ``messages``: the turns of each conversation, ``(conversation_id, idx)`` ordered.
- ``revisions``: every version of every conversation's messages, so any edit can be inspected and undone.
  The original (version 1) is copied here at the first edit, not at import: a 70k import does not write
  its text twice; until then the live messages are version 1.
- ``models``: the model registry's persisted entries.
- ``jobs`` / ``job_items``: background jobs and their per-seed items, so a stopped or killed job resumes
  without duplicating or losing work.

Every write runs in one transaction under one lock; a failure rolls everything back.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

import duckdb
import pandas as pd

from .search import MAX_INDEXED_MESSAGES, SearchIndex

SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS sources (
    id INTEGER PRIMARY KEY,
    name VARCHAR NOT NULL,
    path VARCHAR,
    format VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL UNIQUE,
    imported_at TIMESTAMP NOT NULL,
    n_rows INTEGER,
    n_seeds INTEGER,
    n_conversations INTEGER,
    n_bad INTEGER
);
CREATE TABLE IF NOT EXISTS seeds (
    id INTEGER PRIMARY KEY,
    source_id INTEGER NOT NULL,
    row_no INTEGER,
    instruction VARCHAR NOT NULL,
    input VARCHAR DEFAULT '',
    output VARCHAR,
    meta JSON
);
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    source_id INTEGER,
    seed_id INTEGER,
    job_id INTEGER,
    external_id VARCHAR,
    origin VARCHAR NOT NULL,
    status VARCHAR NOT NULL DEFAULT 'new',
    title VARCHAR,
    n_turns INTEGER,
    n_rounds INTEGER,
    n_chars INTEGER,
    n_prompt_tokens INTEGER,
    n_completion_tokens INTEGER,
    teacher VARCHAR,
    prompt_version VARCHAR,
    gen_params JSON,
    version INTEGER NOT NULL DEFAULT 1,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    deleted_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS messages (
    conversation_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    role VARCHAR NOT NULL,
    content VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS revisions (
    conversation_id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    messages JSON NOT NULL,
    note VARCHAR,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    name VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,
    spec JSON NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    kind VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    params JSON,
    total INTEGER DEFAULT 0,
    n_done INTEGER DEFAULT 0,
    n_failed INTEGER DEFAULT 0,
    error VARCHAR,
    created_at TIMESTAMP NOT NULL,
    started_at TIMESTAMP,
    finished_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS job_items (
    job_id INTEGER NOT NULL,
    seed_id INTEGER NOT NULL,
    status VARCHAR NOT NULL DEFAULT 'pending',
    conversation_id INTEGER,
    error VARCHAR
);
CREATE TABLE IF NOT EXISTS tags (
    conversation_id INTEGER NOT NULL,
    tag VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS bulk_ops (
    id INTEGER PRIMARY KEY,
    action VARCHAR NOT NULL,
    arg VARCHAR,
    n INTEGER NOT NULL,
    payload JSON NOT NULL,
    created_at TIMESTAMP NOT NULL,
    undone_at TIMESTAMP
);
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS flag VARCHAR;
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS n_tokens INTEGER;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS log VARCHAR;
CREATE INDEX IF NOT EXISTS messages_conv ON messages(conversation_id);
CREATE INDEX IF NOT EXISTS tags_conv ON tags(conversation_id);
CREATE INDEX IF NOT EXISTS revisions_conv ON revisions(conversation_id);
CREATE INDEX IF NOT EXISTS job_items_job ON job_items(job_id);
"""

STATUSES = ("new", "edited")
"""Conversation review statuses; a deleted conversation keeps its status and gets ``deleted_at``."""


class StoreError(Exception):
    """A store operation was refused (unknown id, invalid messages); nothing was written."""


class StaleVersionError(StoreError):
    """A save was based on an older version than the one stored (someone else saved first)."""


@dataclass
class ImportResult:
    """What one file import did.

    Attributes:
        source_id: the ``sources`` row (the existing one when ``duplicate``).
        name, format: file name and detected format.
        n_seeds, n_conversations: rows added (0 and 0 when ``duplicate``).
        bad_rows: ``[(row, reason)]`` rows skipped, 1-based.
        duplicate: the same bytes were imported before; nothing was added.
    """

    source_id: int
    name: str
    format: str
    n_seeds: int = 0
    n_conversations: int = 0
    bad_rows: list[tuple[int, str]] = field(default_factory=list)
    duplicate: bool = False

    def summary(self) -> str:
        """One line for people: what was added and how many rows were bad."""
        if self.duplicate:
            return f"{self.name}: already imported (same content); nothing added."
        s = f"{self.name} ({self.format}): {self.n_seeds} seeds, {self.n_conversations} conversations imported"
        if self.bad_rows:
            s += f"; {len(self.bad_rows)} bad rows skipped"
        return s + "."


@dataclass
class ConvFilter:
    """Which conversations a list, count, export, bulk action or training snapshot covers.

    Attributes:
        source_id, job_id: exact matches (None = any).
        status: ``all``/None (not deleted), ``new``, ``edited``, ``flagged``, or ``deleted``.
        origin: ``imported``/``expanded`` (None/``all`` = any); teacher: exact teacher name.
        tags: any of these tags.
        min_rounds..max_rounds, min_tokens..max_tokens, min_chars..max_chars: inclusive ranges (None = open).
            Token counts exist after ``Store.set_token_counts`` (the studio counts them after an import).
        edited: True = edited at least once, False = never edited.
        flagged: True = has a flag, False = has none.
        query: full-text search over message text (every word must match; "quoted phrases").
        ids: restrict to these ids.
    """

    source_id: int | None = None
    status: str | None = None
    origin: str | None = None
    job_id: int | None = None
    teacher: str | None = None
    tags: list[str] | None = None
    min_rounds: int | None = None
    max_rounds: int | None = None
    min_tokens: int | None = None
    max_tokens: int | None = None
    min_chars: int | None = None
    max_chars: int | None = None
    edited: bool | None = None
    flagged: bool | None = None
    query: str | None = None
    ids: list[int] | None = None

    def describe(self) -> str:
        """Short human description of the filter, e.g. for a dataset card (``all conversations`` if empty)."""
        parts = [f"{k}={v}" for k, v in self.__dict__.items() if v not in (None, "", "all", []) and k != "ids"]
        if self.ids is not None:
            parts.append(f"{len(self.ids)} chosen ids")
        return ", ".join(parts) or "all conversations"


SORT_COLUMNS = {
    "id": "c.id", "source": "src.name", "origin": "c.origin", "turns": "c.n_turns", "rounds": "c.n_rounds",
    "chars": "c.n_chars", "tokens": "c.n_tokens", "status": "c.status", "teacher": "c.teacher",
    "updated_at": "c.updated_at", "relevance": "_match.rank",
}
"""Columns ``list_conversations`` can sort by, and their SQL."""

BULK_ACTIONS = ("tag", "untag", "flag", "unflag", "delete", "restore")


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def conversation_stats(messages: list[dict]) -> dict:
    """Denormalised list-view columns of a conversation.

    Returns ``{"title", "n_turns", "n_rounds", "n_chars"}``: the first user message cut to 200 characters,
    the number of non-system messages, the number of assistant messages, and total characters.
    """
    title = next((m["content"] for m in messages if m["role"] == "user"), "")
    title = " ".join(title.split())[:200]
    turns = [m for m in messages if m["role"] != "system"]
    return {
        "title": title,
        "n_turns": len(turns),
        "n_rounds": sum(1 for m in messages if m["role"] == "assistant"),
        "n_chars": sum(len(m["content"]) for m in messages),
    }


class _Result:
    """A fully fetched result (DuckDB 2 refuses new work on a connection while a result is unfinished)."""

    def __init__(self, cur):
        self.description = cur.description
        self._rows = cur.fetchall() if cur.description else []

    def fetchall(self) -> list[tuple]:
        return self._rows

    def fetchone(self):
        return self._rows[0] if self._rows else None


class _Con:
    """The connection as the store's methods use it: every statement is run to completion."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.raw = con

    def execute(self, sql: str, params: list | None = None) -> _Result:
        return _Result(self.raw.execute(sql, params or []))

    def executemany(self, sql: str, rows: list) -> None:
        self.raw.executemany(sql, rows)
        self.raw.fetchall() if self.raw.description else None

    def df(self, sql: str, params: list | None = None) -> pd.DataFrame:
        return self.raw.execute(sql, params or []).df()

    def register(self, name: str, df: pd.DataFrame) -> None:
        self.raw.register(name, df)

    def unregister(self, name: str) -> None:
        self.raw.unregister(name)

    def close(self) -> None:
        self.raw.close()


class Store:
    """The studio's DuckDB database.

    One instance per process; safe to share between threads (every call holds one lock). DuckDB lets one
    process at a time open a file for writing, so the command line and a running web app should not write
    the same file at once (the CLI's error says so).

    Args:
        path: the ``.duckdb`` file (created with its folder if missing), or ``":memory:"``.
        read_only: open without write access.

    Raises:
        StoreError: the file can't be opened (e.g. locked by another process).
    """

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = _Con(duckdb.connect(self.path, read_only=read_only))
        except duckdb.IOException as e:  # lock held by another process, unreadable file
            raise StoreError(f"cannot open database {self.path}: {e}") from e
        self._lock = threading.RLock()
        self._index_lock = threading.Lock()
        self._indexer_guard = threading.Lock()
        self._indexer: threading.Thread | None = None
        self._index_more = False
        self._closing = False
        if not read_only:
            self._migrate()
        self.search = SearchIndex(":memory:" if self.path == ":memory:" else self.path + ".search.sqlite")
        self.ensure_search_index()

    # ------------------------------------------------------------------ basics
    def close(self) -> None:
        """Stop the background indexer and close the connections (DuckDB and the search index)."""
        self._closing = True
        if self._indexer is not None:
            self._indexer.join(timeout=30)
        with self._lock:
            self._con.close()
            self.search.close()

    def ensure_search_index(self, force: bool = False) -> bool:
        """Check the full-text index against the messages; if it is out of step (or ``force``), empty it.
        Then index whatever is not indexed yet on a background thread. Returns True if it was emptied."""
        wm = self.search.watermark()
        n_msgs = self._q(f"SELECT count(*) FROM messages WHERE conversation_id <= ? AND idx < {MAX_INDEXED_MESSAGES}",
                         [wm])[0][0]
        vsum = self._q("SELECT coalesce(sum(version), 0) FROM conversations WHERE id <= ?", [wm])[0][0]
        reset = force or self.search.count_upto(wm) != n_msgs or self.search.versions() != vsum
        if reset:
            with self._index_lock:
                self.search.clear()
        self._start_indexer()
        return reset

    def index_pending(self) -> int:
        """Conversations not yet in the full-text index (searches still find them, more slowly)."""
        return self._q("SELECT count(*) FROM conversations WHERE id > ?", [self.search.watermark()])[0][0]

    def wait_for_index(self, timeout: float = 120.0) -> bool:
        """Block until the full-text index has caught up (True) or ``timeout`` seconds pass (False)."""
        import time as _time

        deadline = _time.monotonic() + timeout
        while self.index_pending():
            if _time.monotonic() > deadline:
                return False
            self._start_indexer()
            _time.sleep(0.05)
        return True

    def _start_indexer(self) -> None:
        with self._indexer_guard:
            if self._closing or (self._indexer and self._indexer.is_alive()):
                self._index_more = True
                return
            self._index_more = False
            self._indexer = threading.Thread(target=self._index_loop, daemon=True, name="search-indexer")
            self._indexer.start()

    def _index_loop(self, chunk: int = 2000) -> None:
        """Index conversations above the watermark, ``chunk`` at a time, until none is left. An edit waits
        for the chunk in progress (``_index_lock``), so the index never keeps stale text."""
        while not self._closing:
            with self._index_lock:
                wm = self.search.watermark()
                with self._lock:
                    if self._closing:
                        return
                    ids = [r[0] for r in self._con.execute(
                        "SELECT id FROM conversations WHERE id > ? ORDER BY id LIMIT ?", [wm, chunk]).fetchall()]
                    if ids:
                        rows = self._con.execute(
                            "SELECT conversation_id, idx, content FROM messages WHERE conversation_id BETWEEN ? AND ? "
                            "ORDER BY conversation_id, idx", [ids[0], ids[-1]]).fetchall()
                        vsum = self._con.execute("SELECT sum(version) FROM conversations WHERE id BETWEEN ? AND ?",
                                                 [ids[0], ids[-1]]).fetchone()[0]
                if not ids:
                    with self._indexer_guard:
                        if not self._index_more:
                            return
                        self._index_more = False
                    continue
                self.search.add(rows, watermark=ids[-1], versions=int(vsum or 0))

    def _reindex(self, conv_id: int, contents: list[str]) -> None:
        """After an edit: replace the conversation's text in the index if it is there already (otherwise the
        background indexer will read the new text)."""
        with self._index_lock:
            if conv_id <= self.search.watermark():
                self.search.replace_conversation(conv_id, contents)

    def _migrate(self) -> None:
        with self._lock:
            self._con.execute(SCHEMA)
            row = self._con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])

    @contextmanager
    def _tx(self) -> Iterator[_Con]:
        with self._lock:
            self._con.execute("BEGIN TRANSACTION")
            try:
                yield self._con
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            else:
                self._con.execute("COMMIT")

    def _q(self, sql: str, params: list | None = None) -> list[tuple]:
        with self._lock:
            return self._con.execute(sql, params or []).fetchall()

    def _df(self, sql: str, params: list | None = None) -> pd.DataFrame:
        with self._lock:
            return self._con.df(sql, params)

    def _next_id(self, con, table: str) -> int:
        return con.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {table}").fetchone()[0]

    # ------------------------------------------------------------------ import
    def import_parsed(self, parsed) -> ImportResult:
        """Add a parsed file (``studio.formats.ParsedFile``) in one transaction.

        Seeds and conversations get ``source_id`` of a new ``sources`` row. A file whose sha256 was
        imported before adds nothing and returns ``duplicate=True``. Conversations from instruction
        formats with outputs (Alpaca, Evol-Instruct) are linked to their seed.

        Returns:
            ImportResult with the counts and the bad rows reported by the parser.
        """
        bad = [(b.row, b.reason) for b in parsed.bad_rows]
        with self._tx() as con:
            row = con.execute("SELECT id FROM sources WHERE sha256 = ?", [parsed.sha256]).fetchone()
            if row is not None:
                return ImportResult(row[0], parsed.name, parsed.format, bad_rows=bad, duplicate=True)
            now = _now()
            source_id = self._next_id(con, "sources")
            con.execute(
                "INSERT INTO sources VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [source_id, parsed.name, parsed.path, parsed.format, parsed.sha256, now, parsed.n_rows,
                 len(parsed.seeds), len(parsed.conversations), len(bad)],
            )
            seed_base = self._next_id(con, "seeds")
            seed_by_row: dict[int, int] = {}
            if parsed.seeds:
                seeds_df = pd.DataFrame({
                    "id": [seed_base + i for i in range(len(parsed.seeds))],
                    "source_id": source_id,
                    "row_no": [s.row for s in parsed.seeds],
                    "instruction": [s.instruction for s in parsed.seeds],
                    "input": [s.input or "" for s in parsed.seeds],
                    "output": [s.output for s in parsed.seeds],
                    "meta": [json.dumps(s.meta, ensure_ascii=False) for s in parsed.seeds],
                })
                seed_by_row = dict(zip(seeds_df["row_no"], seeds_df["id"]))
                con.register("_seeds_df", seeds_df)
                con.execute("INSERT INTO seeds SELECT id, source_id, row_no, instruction, input, output, "
                            "meta::JSON FROM _seeds_df")
                con.unregister("_seeds_df")
            items = [
                dict(messages=c.messages, external_id=c.external_id, seed_id=seed_by_row.get(c.row),
                     meta=c.meta)
                for c in parsed.conversations
            ]
            ids = self._insert_conversations(con, items, source_id=source_id, origin="imported", now=now)
        self._index_new(ids, [it["messages"] for it in items])
        return ImportResult(source_id, parsed.name, parsed.format, len(parsed.seeds),
                            len(parsed.conversations), bad)

    def _insert_conversations(self, con, items: list[dict], *, source_id: int | None, origin: str,
                              now: datetime, job_id: int | None = None) -> list[int]:
        """Bulk insert conversations + messages + revision 1. ``items``: dicts with ``messages`` and
        optional ``external_id, seed_id, teacher, prompt_version, gen_params, n_prompt_tokens,
        n_completion_tokens``. Returns the new ids. Caller holds the transaction."""
        if not items:
            return []
        base = self._next_id(con, "conversations")
        ids = [base + i for i in range(len(items))]
        conv_rows, msg_rows = [], []
        for cid, it in zip(ids, items):
            msgs = it["messages"]
            st = conversation_stats(msgs)
            conv_rows.append({
                "id": cid, "source_id": source_id, "seed_id": it.get("seed_id"), "job_id": job_id,
                "external_id": it.get("external_id"), "origin": origin, "status": "new",
                "title": st["title"], "n_turns": st["n_turns"], "n_rounds": st["n_rounds"],
                "n_chars": st["n_chars"], "n_prompt_tokens": it.get("n_prompt_tokens"),
                "n_completion_tokens": it.get("n_completion_tokens"), "teacher": it.get("teacher"),
                "prompt_version": it.get("prompt_version"),
                "gen_params": json.dumps(it["gen_params"]) if it.get("gen_params") is not None else None,
                "version": 1, "created_at": now, "updated_at": now, "deleted_at": None,
            })
            for i, m in enumerate(msgs):
                msg_rows.append((cid, i, m["role"], m["content"]))
        conv_df = pd.DataFrame(conv_rows)
        conv_df["deleted_at"] = pd.to_datetime(conv_df["deleted_at"])
        for col in ("source_id", "seed_id", "job_id", "n_prompt_tokens", "n_completion_tokens"):
            conv_df[col] = conv_df[col].astype("Int64")
        for col in ("external_id", "teacher", "prompt_version", "gen_params"):
            conv_df[col] = conv_df[col].astype("object")
        con.register("_conv_df", conv_df)
        con.execute(
            "INSERT INTO conversations (id, source_id, seed_id, job_id, external_id, origin, status, title, n_turns, "
            "n_rounds, n_chars, n_prompt_tokens, n_completion_tokens, teacher, prompt_version, gen_params, version, "
            "created_at, updated_at, deleted_at) SELECT id, source_id, seed_id, job_id, external_id, origin, status, "
            "title, n_turns, n_rounds, n_chars, n_prompt_tokens, n_completion_tokens, teacher, "
            "prompt_version, gen_params::JSON, version, created_at, updated_at, deleted_at FROM _conv_df"
        )
        con.unregister("_conv_df")
        msg_df = pd.DataFrame(msg_rows, columns=["conversation_id", "idx", "role", "content"])
        con.register("_msg_df", msg_df)
        con.execute("INSERT INTO messages SELECT * FROM _msg_df")
        con.unregister("_msg_df")
        return ids

    def add_conversation(self, messages: list[dict], *, source_id: int | None = None,
                         origin: str = "expanded", **fields: Any) -> int:
        """Insert one conversation (e.g. written by hand or generated) and return its id."""
        with self._tx() as con:
            cid = self._insert_conversations(con, [dict(messages=messages, **fields)], source_id=source_id,
                                             origin=origin, now=_now())[0]
        self._index_new([cid], [messages])
        return cid

    def _index_new(self, ids: list[int], message_lists: list[list[dict]]) -> None:
        """New conversations: the background indexer picks them up (their ids are above the watermark)."""
        self._start_indexer()

    # ------------------------------------------------------------------ sources and seeds
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
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        rows = self._q("SELECT id, source_id, instruction, input, meta, output FROM seeds WHERE id IN "
                       f"({','.join('?' * len(ids))})", ids)
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
            base = self._next_id(con, "seeds")
            ids = [base + i for i in range(len(seeds))]
            if seeds:
                con.executemany("INSERT INTO seeds VALUES (?, ?, ?, ?, ?, ?, ?::JSON)", [
                    (sid, int(source_id), s.row or None, s.instruction, s.input or "", s.output,
                     json.dumps(s.meta, ensure_ascii=False)) for sid, s in zip(ids, seeds)])
                con.execute("UPDATE sources SET n_seeds = coalesce(n_seeds, 0) + ? WHERE id = ?",
                            [len(seeds), int(source_id)])
            if job_id is not None:
                con.execute("UPDATE job_items SET status = 'done', error = NULL WHERE job_id = ? AND seed_id = ?",
                            [int(job_id), int(seed_id)])
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
            sid = self._next_id(con, "sources")
            con.execute("INSERT INTO sources VALUES (?, ?, NULL, 'evolved', ?, ?, 0, 0, 0, 0)",
                        [sid, f"evolved from {row[0]}", key, _now()])
            return sid

    def evolved_seeds(self, job_id: int, limit: int = 20) -> pd.DataFrame:
        """Seeds an Evol-Instruct job created, newest first: ``id, operation, parent, instruction``."""
        return self._df("SELECT id, json_extract_string(meta, '$.operation') AS operation, "
                        "TRY_CAST(json_extract_string(meta, '$.parent_seed_id') AS INTEGER) AS parent, instruction "
                        "FROM seeds WHERE TRY_CAST(json_extract_string(meta, '$.job_id') AS INTEGER) = ? "
                        "ORDER BY id DESC LIMIT ?", [int(job_id), int(limit)])

    def job_item_seed_ids(self, job_id: int) -> list[int]:
        """Every item's seed id of a job (done or not), in the order the items were added."""
        return [r[0] for r in self._q("SELECT seed_id FROM job_items WHERE job_id = ? ORDER BY rowid",
                                      [int(job_id)])]

    # ------------------------------------------------------------------ conversations
    def _conv_where(self, f: "ConvFilter") -> tuple[str, list, pd.DataFrame | None]:
        """SQL condition on ``conversations c`` for a filter, its parameters, and the search matches (a
        DataFrame ``id, rank`` to register as ``_match``) when the filter has a text query."""
        where, params = [], []
        if f.status == "deleted":
            where.append("c.deleted_at IS NOT NULL")
        else:
            where.append("c.deleted_at IS NULL")
            if f.status == "flagged":
                where.append("c.flag IS NOT NULL")
            elif f.status and f.status != "all":
                where.append("c.status = ?")
                params.append(f.status)
        for col, val in (("c.source_id", f.source_id), ("c.job_id", f.job_id)):
            if val is not None:
                where.append(f"{col} = ?")
                params.append(int(val))
        for col, val in (("c.origin", f.origin), ("c.teacher", f.teacher)):
            if val and val != "all":
                where.append(f"{col} = ?")
                params.append(val)
        for col, lo, hi in (("c.n_rounds", f.min_rounds, f.max_rounds), ("c.n_tokens", f.min_tokens, f.max_tokens),
                            ("c.n_chars", f.min_chars, f.max_chars)):
            if lo is not None:
                where.append(f"{col} >= ?")
                params.append(int(lo))
            if hi is not None:
                where.append(f"{col} <= ?")
                params.append(int(hi))
        if f.flagged is not None:
            where.append("c.flag IS NOT NULL" if f.flagged else "c.flag IS NULL")
        if f.edited is not None:
            where.append("c.version > 1" if f.edited else "c.version = 1")
        if f.tags:
            where.append(f"c.id IN (SELECT conversation_id FROM tags WHERE tag IN ({','.join('?' * len(f.tags))}))")
            params.extend(f.tags)
        if f.ids is not None:
            ids = [int(i) for i in f.ids] or [-1]
            where.append(f"c.id IN ({','.join(str(i) for i in ids)})")
        match = None
        if f.query and f.query.strip():
            wm = self.search.watermark()
            ids = [i for i in self.search.match_ids(f.query) if i <= wm]
            ids += self._scan_unindexed(f.query, wm)
            match = pd.DataFrame({"id": pd.array(ids, dtype="int64"), "rank": range(len(ids))})
            where.append("c.id IN (SELECT id FROM _match)")
        return " AND ".join(where), params, match

    def _scan_unindexed(self, query: str, watermark: int) -> list[int]:
        """Conversations above the index's watermark (imported moments ago) that match the query, so a search
        is complete while the index catches up. DuckDB narrows the candidates to messages containing every word
        (accents folded); an in-memory FTS5 index of just those messages then decides with the same matcher as
        the main index, so results don't change once the index has caught up."""
        import re as _re

        words = [w.lower() for w in _re.findall(r"\w+", query)]
        if not words:
            return []
        conds = " AND ".join(["contains(strip_accents(lower(content)), strip_accents(?))"] * len(words))
        with self._lock:
            rows = self._con.execute(
                f"SELECT conversation_id, idx, content FROM messages WHERE conversation_id > ? AND {conds}",
                [watermark] + words).fetchall()
        if not rows:
            return []
        scratch = SearchIndex(":memory:")
        try:
            scratch.add(rows)
            return sorted(scratch.match_ids(query))
        finally:
            scratch.close()

    @contextmanager
    def _filtered(self, f: "ConvFilter"):
        """Hold the lock with the filter's search matches registered as ``_match``; yields (where, params)."""
        w, params, match = self._conv_where(f)
        with self._lock:
            if match is not None:
                self._con.register("_match", match)
            try:
                yield w, params, match is not None
            finally:
                if match is not None:
                    self._con.unregister("_match")

    def list_conversations(self, f: "ConvFilter | None" = None, *, limit: int = 25, offset: int = 0,
                           sort: str | None = None, descending: bool = False, **filters) -> tuple[pd.DataFrame, int]:
        """A page of conversations and the total count for the filter.

        Args:
            f: a ``ConvFilter``; or give its fields as keyword arguments (``source_id=1, status="new"``).
            sort: a column of the result (``id, source, origin, turns, rounds, chars, tokens, status, teacher,
                updated_at, relevance``); default ``relevance`` for a text query, else ``id``.

        Returns:
            (DataFrame with ``id, source, origin, title, turns, rounds, chars, tokens, status, flag, tags,
            teacher, version, updated_at``, total matching).

        Raises:
            ValueError: an unknown sort column.
        """
        f = f or ConvFilter(**filters)
        sort = sort or ("relevance" if f.query else "id")
        if sort not in SORT_COLUMNS:
            raise ValueError(f"cannot sort by '{sort}' (one of {', '.join(SORT_COLUMNS)})")
        with self._filtered(f) as (w, params, searching):
            order = SORT_COLUMNS[sort] if (sort != "relevance" or searching) else "c.id"
            order = f"{order} {'DESC' if descending else 'ASC'} NULLS LAST, c.id"
            join = "LEFT JOIN _match ON _match.id = c.id" if searching else ""
            total = self._con.execute(f"SELECT count(*) FROM conversations c WHERE {w}", params).fetchone()[0]
            df = self._con.df(
                f"SELECT c.id, src.name AS source, c.origin, c.n_turns AS turns, c.n_rounds AS rounds, "
                f"c.n_chars AS chars, c.n_tokens AS tokens, "
                f"CASE WHEN c.deleted_at IS NULL THEN c.status ELSE 'deleted' END AS status, c.flag, "
                f"(SELECT string_agg(t.tag, ', ' ORDER BY t.tag) FROM tags t WHERE t.conversation_id = c.id) AS tags, "
                f"c.teacher, c.version, c.updated_at, c.title FROM conversations c "
                f"LEFT JOIN sources src ON src.id = c.source_id {join} WHERE {w} ORDER BY {order} LIMIT ? OFFSET ?",
                params + [int(limit), int(offset)])
        return df, total

    def count_conversations(self, f: "ConvFilter | None" = None, **filters) -> int:
        """Number of conversations matching a filter (a ``ConvFilter`` or its fields as keywords)."""
        with self._filtered(f or ConvFilter(**filters)) as (w, params, _):
            return self._con.execute(f"SELECT count(*) FROM conversations c WHERE {w}", params).fetchone()[0]

    def conversation_ids(self, f: "ConvFilter | None" = None, **filters) -> list[int]:
        """Ids of every conversation matching a filter, in id order."""
        with self._filtered(f or ConvFilter(**filters)) as (w, params, _):
            return [r[0] for r in self._con.execute(f"SELECT c.id FROM conversations c WHERE {w} ORDER BY c.id",
                                                    params).fetchall()]

    def search_snippets(self, query: str, ids: list[int]) -> dict[int, str]:
        """The best matching passage of each conversation for a text query (see ``search.highlight_html``);
        conversations the index has not reached yet get a passage cut around the first matching word."""
        import re as _re

        from .search import HIGHLIGHT_CLOSE, HIGHLIGHT_OPEN

        ids = [int(i) for i in ids]
        out = self.search.snippets(query, ids)
        words = [w.lower() for w in _re.findall(r"\w+", query)]
        missing = [i for i in ids if i not in out]
        if missing and words:
            rows = self._q(f"SELECT conversation_id, content FROM messages WHERE conversation_id IN "
                           f"({','.join(map(str, missing))}) AND contains(lower(content), ?) ORDER BY conversation_id, idx",
                           [words[0]])
            for cid, content in rows:
                if cid in out:
                    continue
                k = content.lower().find(words[0])
                lo = max(0, k - 60)
                piece = content[lo:k] + HIGHLIGHT_OPEN + content[k:k + len(words[0])] + HIGHLIGHT_CLOSE + \
                    content[k + len(words[0]):k + 80]
                out[cid] = ("…" if lo else "") + piece + "…"
        return out

    def get_conversation(self, conv_id: int) -> dict:
        """One conversation with its messages.

        Returns:
            dict with the ``conversations`` columns plus ``messages`` (list of role/content dicts) and
            ``source`` (file name).

        Raises:
            StoreError: no such conversation.
        """
        with self._lock:
            cur = self._con.execute(
                "SELECT c.*, src.name AS source FROM conversations c LEFT JOIN sources src "
                "ON src.id = c.source_id WHERE c.id = ?", [int(conv_id)])
            row = cur.fetchone()
            if row is None:
                raise StoreError(f"conversation {conv_id} does not exist")
            conv = dict(zip([d[0] for d in cur.description], row))
            conv["messages"] = [
                {"role": r, "content": c} for r, c in self._con.execute(
                    "SELECT role, content FROM messages WHERE conversation_id = ? ORDER BY idx",
                    [int(conv_id)]).fetchall()
            ]
        if conv.get("gen_params"):
            conv["gen_params"] = json.loads(conv["gen_params"])
        conv["tags"] = [r[0] for r in self._q("SELECT tag FROM tags WHERE conversation_id = ? ORDER BY tag",
                                              [int(conv_id)])]
        return conv

    def save_messages(self, conv_id: int, messages: list[dict], *, expected_version: int,
                      note: str = "edit", max_message_chars: int = 100_000) -> int:
        """Replace a conversation's messages, keeping the previous ones as a revision.

        Args:
            expected_version: the version the editor loaded; the save is refused if the stored version
                differs (optimistic concurrency).

        Returns:
            The new version number.

        Raises:
            StaleVersionError: someone saved a newer version first; nothing was written.
            StoreError: unknown conversation, or the messages break the role/empty/length rules.
        """
        from .formats import validate_messages

        problem = validate_messages(messages, max_message_chars=max_message_chars)
        if problem:
            raise StoreError(f"conversation {conv_id} not saved: {problem}")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        with self._tx() as con:
            row = con.execute("SELECT version FROM conversations WHERE id = ?", [int(conv_id)]).fetchone()
            if row is None:
                raise StoreError(f"conversation {conv_id} does not exist")
            if row[0] != expected_version:
                raise StaleVersionError(
                    f"conversation {conv_id} was saved by someone else (version {row[0]}, you edited "
                    f"version {expected_version}); reload it and apply your change again")
            new_version = row[0] + 1
            now = _now()
            st = conversation_stats(messages)
            has_original = con.execute("SELECT count(*) FROM revisions WHERE conversation_id = ?",
                                       [int(conv_id)]).fetchone()[0]
            if not has_original:  # keep the original as version 1 before its first change
                created, = con.execute("SELECT created_at FROM conversations WHERE id = ?", [int(conv_id)]).fetchone()
                old = [{"role": r, "content": c} for r, c in con.execute(
                    "SELECT role, content FROM messages WHERE conversation_id = ? ORDER BY idx",
                    [int(conv_id)]).fetchall()]
                con.execute("INSERT INTO revisions VALUES (?, ?, ?::JSON, 'original', ?)",
                            [int(conv_id), row[0], json.dumps(old, ensure_ascii=False), created])
            con.execute("DELETE FROM messages WHERE conversation_id = ?", [int(conv_id)])
            con.executemany("INSERT INTO messages VALUES (?, ?, ?, ?)",
                            [(int(conv_id), i, m["role"], m["content"]) for i, m in enumerate(messages)])
            con.execute(
                "UPDATE conversations SET version = ?, status = 'edited', updated_at = ?, title = ?, "
                "n_turns = ?, n_rounds = ?, n_chars = ? WHERE id = ?",
                [new_version, now, st["title"], st["n_turns"], st["n_rounds"], st["n_chars"], int(conv_id)])
            con.execute("INSERT INTO revisions VALUES (?, ?, ?::JSON, ?, ?)",
                        [int(conv_id), new_version, json.dumps(messages, ensure_ascii=False), note, now])
            con.execute("UPDATE conversations SET n_tokens = NULL WHERE id = ?", [int(conv_id)])
        self._reindex(int(conv_id), [m["content"] for m in messages])
        return new_version

    def list_revisions(self, conv_id: int) -> pd.DataFrame:
        """Every version of a conversation: ``version, note, created_at, n_messages``, newest first (a
        never-edited conversation has one: the original)."""
        df = self._df("SELECT version, note, created_at, json_array_length(messages) AS n_messages "
                      "FROM revisions WHERE conversation_id = ? ORDER BY version DESC", [int(conv_id)])
        if len(df):
            return df
        return self._df("SELECT version, 'original' AS note, created_at, n_turns + (SELECT count(*) FROM messages m "
                        "WHERE m.conversation_id = c.id AND m.role = 'system') AS n_messages FROM conversations c "
                        "WHERE id = ?", [int(conv_id)])

    def get_revision(self, conv_id: int, version: int) -> list[dict]:
        """The messages of one version. Raises StoreError if there is no such version."""
        row = self._q("SELECT messages FROM revisions WHERE conversation_id = ? AND version = ?",
                      [int(conv_id), int(version)])
        if row:
            return json.loads(row[0][0])
        current = self._q("SELECT version, (SELECT count(*) FROM revisions r WHERE r.conversation_id = c.id) "
                          "FROM conversations c WHERE id = ?", [int(conv_id)])
        if current and current[0][0] == int(version) and current[0][1] == 0:
            return self.get_conversation(conv_id)["messages"]
        raise StoreError(f"conversation {conv_id} has no version {version}")

    def delete_conversations(self, ids: Iterable[int]) -> int:
        """Soft-delete: set ``deleted_at``; ``restore_conversations`` undoes it. Returns rows changed."""
        return self._set_deleted(ids, True)

    def restore_conversations(self, ids: Iterable[int]) -> int:
        """Undo a delete. Returns rows changed."""
        return self._set_deleted(ids, False)

    def _set_deleted(self, ids: Iterable[int], deleted: bool) -> int:
        ids = [int(i) for i in ids]
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        cond = "deleted_at IS NULL" if deleted else "deleted_at IS NOT NULL"
        with self._tx() as con:
            n = con.execute(f"SELECT count(*) FROM conversations WHERE id IN ({marks}) AND {cond}",
                            ids).fetchone()[0]
            con.execute(f"UPDATE conversations SET deleted_at = ? WHERE id IN ({marks}) AND {cond}",
                        [_now() if deleted else None] + ids)
        return n

    def iter_conversations(self, f: "ConvFilter | None" = None, *, batch: int = 2000, with_ids: bool = False,
                           **filters) -> Iterator[tuple[str | int, list[dict]]]:
        """Yield ``(export_id, messages)`` for every conversation matching the filter, in id order.

        ``export_id`` is the imported ShareGPT id when there was one, else the studio's id as a string; with
        ``with_ids`` it is the studio's integer id. Messages are fetched in batches of ``batch`` conversations.
        """
        ids = self.conversation_ids(f or ConvFilter(**filters))
        for k in range(0, len(ids), batch):
            chunk = ids[k:k + batch]
            marks = ",".join(str(i) for i in chunk)
            with self._lock:
                convs = self._con.execute(
                    f"SELECT c.id, coalesce(c.external_id, CAST(c.id AS VARCHAR)) FROM conversations c "
                    f"WHERE c.id IN ({marks}) ORDER BY c.id").fetchall()
                msgs = self._con.execute(
                    f"SELECT conversation_id, role, content FROM messages WHERE conversation_id IN ({marks}) "
                    f"ORDER BY conversation_id, idx").fetchall()
            by_conv: dict[int, list[dict]] = {}
            for cid, role, content in msgs:
                by_conv.setdefault(cid, []).append({"role": role, "content": content})
            for cid, eid in convs:
                yield (cid if with_ids else eid), by_conv.get(cid, [])

    # ------------------------------------------------------------------ tags, flags, bulk actions
    def list_tags(self) -> list[tuple[str, int]]:
        """``[(tag, n_conversations)]``, most used first."""
        return self._q("SELECT tag, count(*) FROM tags t JOIN conversations c ON c.id = t.conversation_id "
                       "WHERE c.deleted_at IS NULL GROUP BY tag ORDER BY count(*) DESC, tag")

    def teachers(self) -> list[str]:
        """Teacher names that generated stored conversations."""
        return [r[0] for r in self._q("SELECT DISTINCT teacher FROM conversations WHERE teacher IS NOT NULL "
                                      "ORDER BY 1")]

    def bulk(self, action: str, ids: Iterable[int], arg: str | None = None) -> tuple[int, int]:
        """Apply one action to many conversations in one transaction, recorded so it can be undone.

        Args:
            action: ``tag``/``untag`` (arg = the tag), ``flag`` (arg = the reason), ``unflag``, ``delete``,
                ``restore``.
            ids: the conversations (e.g. ``conversation_ids(filter)``).

        Returns:
            (operation id for ``undo_bulk``, number of conversations actually changed).

        Raises:
            ValueError: unknown action, or a tag/flag action without its argument.
        """
        if action not in BULK_ACTIONS:
            raise ValueError(f"unknown bulk action '{action}' (one of {', '.join(BULK_ACTIONS)})")
        if action in ("tag", "untag", "flag") and not (arg and arg.strip()):
            raise ValueError(f"'{action}' needs a {'reason' if action == 'flag' else 'tag'}")
        arg = arg.strip() if arg else None
        ids_df = pd.DataFrame({"id": pd.array(sorted({int(i) for i in ids}), dtype="int64")})
        now = _now()
        with self._tx() as con:
            con.register("_ids", ids_df)
            try:
                if action == "tag":
                    changed = con.execute("SELECT id FROM _ids WHERE id IN (SELECT id FROM conversations) AND id NOT IN "
                                          "(SELECT conversation_id FROM tags WHERE tag = ?)", [arg]).fetchall()
                    con.execute("INSERT INTO tags SELECT id, ? FROM _ids WHERE id IN (SELECT id FROM conversations) "
                                "AND id NOT IN (SELECT conversation_id FROM tags WHERE tag = ?)", [arg, arg])
                    payload = {"ids": [r[0] for r in changed]}
                elif action == "untag":
                    changed = con.execute("SELECT conversation_id FROM tags WHERE tag = ? AND conversation_id IN "
                                          "(SELECT id FROM _ids)", [arg]).fetchall()
                    con.execute("DELETE FROM tags WHERE tag = ? AND conversation_id IN (SELECT id FROM _ids)", [arg])
                    payload = {"ids": [r[0] for r in changed]}
                elif action in ("flag", "unflag"):
                    prev = con.execute("SELECT id, flag FROM conversations WHERE id IN (SELECT id FROM _ids) AND "
                                       "flag IS DISTINCT FROM ?", [arg]).fetchall()
                    con.execute("UPDATE conversations SET flag = ? WHERE id IN (SELECT id FROM _ids) AND "
                                "flag IS DISTINCT FROM ?", [arg, arg])
                    payload = {"prev": [[i, f] for i, f in prev]}
                    changed = prev
                else:
                    cond = "deleted_at IS NULL" if action == "delete" else "deleted_at IS NOT NULL"
                    changed = con.execute(f"SELECT id, deleted_at FROM conversations WHERE id IN (SELECT id FROM _ids) "
                                          f"AND {cond}").fetchall()
                    con.execute(f"UPDATE conversations SET deleted_at = ? WHERE id IN (SELECT id FROM _ids) AND {cond}",
                                [now if action == "delete" else None])
                    payload = {"prev": [[i, t.isoformat() if t else None] for i, t in changed]}
            finally:
                con.unregister("_ids")
            op_id = self._next_id(con, "bulk_ops")
            con.execute("INSERT INTO bulk_ops VALUES (?, ?, ?, ?, ?::JSON, ?, NULL)",
                        [op_id, action, arg, len(changed), json.dumps(payload), now])
        return op_id, len(changed)

    def split(self, plans: list[tuple[int, list[list[dict]]]]) -> tuple[int, list[int]]:
        """Replace conversations by chunks of them, in one transaction, as one undoable operation.

        Args:
            plans: ``[(conversation_id, [chunk messages, ...])]`` (e.g. from ``quality.split_conversations``).
                Each chunk becomes a conversation with origin ``split``, the original's source, seed, teacher
                and prompt version, and external id ``<original id>_<k>``; the originals are soft-deleted.

        Returns:
            (operation id for ``undo_bulk``, which deletes the chunks and restores the originals; new ids).
        """
        now = _now()
        new_ids: list[int] = []
        with self._tx() as con:
            for cid, chunks in plans:
                row = con.execute("SELECT source_id, seed_id, teacher, prompt_version, gen_params, "
                                  "coalesce(external_id, CAST(id AS VARCHAR)) FROM conversations WHERE id = ? AND "
                                  "deleted_at IS NULL", [int(cid)]).fetchone()
                if row is None:
                    raise StoreError(f"conversation {cid} does not exist or is deleted")
                src, seed, teacher, pv, gp, ext = row
                items = [dict(messages=ch, seed_id=seed, teacher=teacher, prompt_version=pv,
                              gen_params=json.loads(gp) if gp else None, external_id=f"{ext}_{k}")
                         for k, ch in enumerate(chunks)]
                new_ids += self._insert_conversations(con, items, source_id=src, origin="split", now=now)
                con.execute("UPDATE conversations SET deleted_at = ? WHERE id = ?", [now, int(cid)])
            op_id = self._next_id(con, "bulk_ops")
            con.execute("INSERT INTO bulk_ops VALUES (?, 'split', NULL, ?, ?::JSON, ?, NULL)",
                        [op_id, len(plans), json.dumps({"originals": [int(c) for c, _ in plans], "chunks": new_ids}),
                         now])
        self._start_indexer()
        return op_id, new_ids

    def undo_bulk(self, op_id: int) -> int:
        """Undo a bulk action (once). Returns the number of conversations restored to their earlier state.

        Raises:
            StoreError: unknown operation, or one already undone.
        """
        with self._tx() as con:
            row = con.execute("SELECT action, arg, payload, undone_at FROM bulk_ops WHERE id = ?",
                              [int(op_id)]).fetchone()
            if row is None:
                raise StoreError(f"bulk operation {op_id} does not exist")
            action, arg, payload, undone = row
            if undone is not None:
                raise StoreError(f"bulk operation {op_id} was undone already")
            payload = json.loads(payload)
            if action == "split":
                chunks = ",".join(map(str, payload["chunks"])) or "-1"
                originals = ",".join(map(str, payload["originals"])) or "-1"
                con.execute(f"UPDATE conversations SET deleted_at = ? WHERE id IN ({chunks})", [_now()])
                con.execute(f"UPDATE conversations SET deleted_at = NULL WHERE id IN ({originals})")
                n = len(payload["originals"])
            elif action == "tag":
                ids = payload["ids"]
                if ids:
                    con.execute(f"DELETE FROM tags WHERE tag = ? AND conversation_id IN ({','.join(map(str, ids))})",
                                [arg])
                n = len(ids)
            elif action == "untag":
                ids = payload["ids"]
                if ids:
                    con.register("_ids", pd.DataFrame({"id": pd.array(ids, dtype="int64")}))
                    try:
                        con.execute("INSERT INTO tags SELECT id, ? FROM _ids WHERE id NOT IN "
                                    "(SELECT conversation_id FROM tags WHERE tag = ?)", [arg, arg])
                    finally:
                        con.unregister("_ids")
                n = len(ids)
            else:
                prev = payload["prev"]
                col = "flag" if action in ("flag", "unflag") else "deleted_at"
                if prev:
                    df = pd.DataFrame(prev, columns=["id", "v"])
                    if col == "deleted_at":
                        df["v"] = pd.to_datetime(df["v"])
                    con.register("_prev", df)
                    try:
                        con.execute(f"UPDATE conversations SET {col} = _prev.v FROM _prev WHERE conversations.id = _prev.id")
                    finally:
                        con.unregister("_prev")
                n = len(prev)
            con.execute("UPDATE bulk_ops SET undone_at = ? WHERE id = ?", [_now(), int(op_id)])
        return n

    def list_bulk_ops(self, limit: int = 20) -> pd.DataFrame:
        """Recent bulk actions, newest first: ``id, action, arg, n, created_at, undone_at``."""
        return self._df("SELECT id, action, arg, n, created_at, undone_at FROM bulk_ops ORDER BY id DESC LIMIT ?",
                        [limit])

    def set_token_counts(self, counts: dict[int, int]) -> None:
        """Store per-conversation token counts (``{conversation_id: n_tokens}``), used by token filters."""
        if not counts:
            return
        df = pd.DataFrame({"id": list(counts), "n": list(counts.values())})
        with self._tx() as con:
            con.register("_tok", df)
            try:
                con.execute("UPDATE conversations SET n_tokens = _tok.n FROM _tok WHERE conversations.id = _tok.id")
            finally:
                con.unregister("_tok")

    def clear_token_counts(self) -> None:
        """Forget every token count (before counting again with another model's tokenizer)."""
        with self._tx() as con:
            con.execute("UPDATE conversations SET n_tokens = NULL WHERE n_tokens IS NOT NULL")

    def conversations_without_tokens(self, limit: int = 5000) -> list[tuple[int, list[str]]]:
        """Up to ``limit`` conversations with no token count yet: ``[(id, [message texts])]``."""
        with self._lock:
            ids = [r[0] for r in self._con.execute(
                "SELECT id FROM conversations WHERE n_tokens IS NULL ORDER BY id LIMIT ?", [limit]).fetchall()]
            if not ids:
                return []
            rows = self._con.execute(
                f"SELECT conversation_id, content FROM messages WHERE conversation_id IN ({','.join(map(str, ids))}) "
                f"ORDER BY conversation_id, idx").fetchall()
        out: dict[int, list[str]] = {i: [] for i in ids}
        for cid, content in rows:
            out[cid].append(content)
        return list(out.items())

    # ------------------------------------------------------------------ statistics
    def stats(self, f: "ConvFilter | None" = None) -> dict[str, pd.DataFrame]:
        """Aggregates for the statistics plots, over the conversations of a filter.

        Returns:
            ``{"by_source": (source, origin, n), "rounds": (rounds, n), "chars": (bucket, n) of characters per
            conversation in log2 buckets, "tokens": (bucket, n) likewise for token counts where known,
            "edits": (day, n) revisions after the original per day, "totals": one row of counts}``.
        """
        f = f or ConvFilter()
        with self._filtered(f) as (w, params, _):
            sub = f"SELECT c.* FROM conversations c WHERE {w}"
            q = lambda sql: self._con.df(sql, params)  # noqa: E731
            return {
                "by_source": q(f"SELECT coalesce(src.name, '(none)') AS source, c.origin, count(*) AS n FROM ({sub}) c "
                               f"LEFT JOIN sources src ON src.id = c.source_id GROUP BY 1, 2 ORDER BY 3 DESC"),
                "rounds": q(f"SELECT c.n_rounds AS rounds, count(*) AS n FROM ({sub}) c GROUP BY 1 ORDER BY 1"),
                "chars": q(f"SELECT CAST(pow(2, floor(log2(greatest(c.n_chars, 1)))) AS BIGINT) AS bucket, count(*) AS n "
                           f"FROM ({sub}) c GROUP BY 1 ORDER BY 1"),
                "tokens": q(f"SELECT CAST(pow(2, floor(log2(greatest(c.n_tokens, 1)))) AS BIGINT) AS bucket, "
                            f"count(*) AS n FROM ({sub}) c WHERE c.n_tokens IS NOT NULL GROUP BY 1 ORDER BY 1"),
                "edits": q(f"SELECT CAST(date_trunc('day', r.created_at) AS DATE) AS day, count(*) AS n FROM revisions r "
                           f"WHERE r.version > 1 AND r.conversation_id IN (SELECT id FROM ({sub})) GROUP BY 1 ORDER BY 1"),
                "totals": q(f"SELECT count(*) AS conversations, coalesce(sum(c.n_rounds), 0) AS rounds, "
                            f"coalesce(sum(c.n_chars), 0) AS chars, sum(c.n_tokens) AS tokens, "
                            f"count(*) FILTER (WHERE c.version > 1) AS edited, "
                            f"count(*) FILTER (WHERE c.flag IS NOT NULL) AS flagged FROM ({sub}) c"),
            }

    # ------------------------------------------------------------------ models
    def upsert_model(self, name: str, kind: str, spec: dict) -> None:
        """Insert or replace a registry entry (``spec`` is JSON-serialisable, never holds a secret)."""
        with self._tx() as con:
            con.execute("DELETE FROM models WHERE name = ?", [name])
            con.execute("INSERT INTO models VALUES (?, ?, ?::JSON, ?)", [name, kind, json.dumps(spec), _now()])

    def list_models(self) -> list[tuple[str, str, dict]]:
        """``[(name, kind, spec)]`` in insertion order."""
        return [(n, k, json.loads(s)) for n, k, s in
                self._q("SELECT name, kind, spec FROM models ORDER BY created_at, name")]

    def delete_model(self, name: str) -> bool:
        """Remove a registry entry; True if it existed."""
        with self._tx() as con:
            n = con.execute("SELECT count(*) FROM models WHERE name = ?", [name]).fetchone()[0]
            con.execute("DELETE FROM models WHERE name = ?", [name])
        return n > 0

    # ------------------------------------------------------------------ jobs
    def create_job(self, kind: str, params: dict, seed_ids: list[int]) -> int:
        """A new job in status ``queued`` with one pending item per seed. Returns the job id."""
        with self._tx() as con:
            job_id = self._next_id(con, "jobs")
            con.execute("INSERT INTO jobs (id, kind, status, params, total, created_at) VALUES "
                        "(?, ?, 'queued', ?::JSON, ?, ?)", [job_id, kind, json.dumps(params), len(seed_ids), _now()])
            if seed_ids:
                con.executemany("INSERT INTO job_items (job_id, seed_id) VALUES (?, ?)",
                                [(job_id, int(s)) for s in seed_ids])
        return job_id

    def get_job(self, job_id: int) -> dict:
        """The job row as a dict (``params`` decoded). Raises StoreError if unknown."""
        with self._lock:
            cur = self._con.execute("SELECT * FROM jobs WHERE id = ?", [int(job_id)])
            row = cur.fetchone()
            if row is None:
                raise StoreError(f"job {job_id} does not exist")
            job = dict(zip([d[0] for d in cur.description], row))
        job["params"] = json.loads(job["params"]) if job["params"] else {}
        return job

    def list_jobs(self, kind: str | None = None, limit: int = 20) -> pd.DataFrame:
        """Recent jobs, newest first: ``id, kind, status, total, n_done, n_failed, created_at, finished_at,
        error``."""
        where, params = ("WHERE kind = ?", [kind]) if kind else ("", [])
        return self._df(f"SELECT id, kind, status, total, n_done, n_failed, created_at, finished_at, error "
                        f"FROM jobs {where} ORDER BY id DESC LIMIT ?", params + [limit])

    def set_job_status(self, job_id: int, status: str, error: str | None = None) -> None:
        """Set a job's status (``queued, running, stopping, stopped, done, failed, interrupted``)."""
        now = _now()
        with self._tx() as con:
            if status == "running":
                con.execute("UPDATE jobs SET status = ?, started_at = coalesce(started_at, ?), error = NULL, "
                            "finished_at = NULL WHERE id = ?", [status, now, int(job_id)])
            elif status in ("stopped", "done", "failed", "interrupted"):
                con.execute("UPDATE jobs SET status = ?, finished_at = ?, error = ? WHERE id = ?",
                            [status, now, error, int(job_id)])
            else:
                con.execute("UPDATE jobs SET status = ? WHERE id = ?", [status, int(job_id)])

    def mark_interrupted_jobs(self) -> list[int]:
        """Jobs left ``running``/``stopping``/``queued`` by a process that died become ``interrupted``
        (resumable). Called once at start-up; returns their ids."""
        ids = [r[0] for r in self._q("SELECT id FROM jobs WHERE status IN ('running', 'stopping', 'queued')")]
        for j in ids:
            self.set_job_status(j, "interrupted", "the studio stopped while this job ran; resume it")
        return ids

    def pending_items(self, job_id: int) -> list[int]:
        """Seed ids of the job's items not yet done (pending or failed), in order."""
        return [r[0] for r in self._q("SELECT seed_id FROM job_items WHERE job_id = ? AND status != 'done' "
                                      "ORDER BY rowid", [int(job_id)])]

    def complete_item(self, job_id: int, seed_id: int, conversation: dict, *, source_id: int | None) -> int | None:
        """Atomically store a generated conversation and mark its job item done.

        If the item is already done (a resumed job racing an old one) nothing is written and None is
        returned, so a conversation is never stored twice. ``conversation`` is a dict as accepted by
        ``_insert_conversations`` (``messages``, ``teacher``, ``prompt_version``, ``gen_params``, token
        counts). Returns the new conversation id.
        """
        with self._tx() as con:
            row = con.execute("SELECT status FROM job_items WHERE job_id = ? AND seed_id = ?",
                              [int(job_id), int(seed_id)]).fetchone()
            if row is None or row[0] == "done":
                return None
            cid = self._insert_conversations(con, [dict(conversation, seed_id=int(seed_id))],
                                             source_id=source_id, origin="expanded", now=_now(),
                                             job_id=int(job_id))[0]
            con.execute("UPDATE job_items SET status = 'done', conversation_id = ?, error = NULL "
                        "WHERE job_id = ? AND seed_id = ?", [cid, int(job_id), int(seed_id)])
            self._refresh_job_counts(con, job_id)
        self._index_new([cid], [conversation["messages"]])
        return cid

    def fail_item(self, job_id: int, seed_id: int, error: str) -> None:
        """Mark a job item failed with its reason (it is retried on resume)."""
        with self._tx() as con:
            con.execute("UPDATE job_items SET status = 'failed', error = ? WHERE job_id = ? AND seed_id = ?",
                        [error[:2000], int(job_id), int(seed_id)])
            self._refresh_job_counts(con, job_id)

    def _refresh_job_counts(self, con, job_id: int) -> None:
        con.execute(
            "UPDATE jobs SET n_done = (SELECT count(*) FROM job_items WHERE job_id = ? AND status = 'done'), "
            "n_failed = (SELECT count(*) FROM job_items WHERE job_id = ? AND status = 'failed') WHERE id = ?",
            [int(job_id), int(job_id), int(job_id)])

    def job_item_errors(self, job_id: int) -> list[tuple[int, str]]:
        """``[(seed_id, error)]`` of the job's failed items."""
        return self._q("SELECT seed_id, error FROM job_items WHERE job_id = ? AND status = 'failed'",
                       [int(job_id)])

    # --- jobs-helper additions (to be replaced by store package)
    def set_job_counts(self, job_id: int, *, total: int | None = None, done: int | None = None,
                       failed: int | None = None) -> None:
        """Set a job's ``total``, ``n_done`` and/or ``n_failed`` directly (the arguments given; None leaves a
        count as it is). For jobs without items, e.g. a training run: total = steps, done = steps taken."""
        sets, params = [], []
        for col, v in (("total", total), ("n_done", done), ("n_failed", failed)):
            if v is not None:
                sets.append(f"{col} = ?")
                params.append(int(v))
        if sets:
            with self._tx() as con:
                con.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", params + [int(job_id)])

    def set_job_status(self, job_id: int, status: str, error: str | None = None, log: str | None = None) -> None:
        """Set a job's status (``queued, running, stopping, stopped, done, failed, interrupted``).

        ``running`` clears the error, the log and the finish time (a new attempt); a final status sets the
        finish time, ``error`` (the one-line reason or note) and ``log`` (e.g. the full traceback of a failure,
        kept for a person to read)."""
        now = _now()
        with self._tx() as con:
            if status == "running":
                con.execute("UPDATE jobs SET status = ?, started_at = coalesce(started_at, ?), error = NULL, "
                            "log = NULL, finished_at = NULL WHERE id = ?", [status, now, int(job_id)])
            elif status in ("stopped", "done", "failed", "interrupted"):
                con.execute("UPDATE jobs SET status = ?, finished_at = ?, error = ?, log = ? WHERE id = ?",
                            [status, now, error, log, int(job_id)])
            else:
                con.execute("UPDATE jobs SET status = ? WHERE id = ?", [status, int(job_id)])
