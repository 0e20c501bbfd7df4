"""Full-text search over message text: an SQLite FTS5 index kept beside the DuckDB file.

Why not DuckDB's ``fts`` extension: DuckDB downloads extensions from its own server at run time (no network
here, and none on many air-gapped training boxes), and the pip-packaged build (``duckdb-ext-fts``) exists only
for DuckDB 1.4. Measured on this 2-core machine with 150,000 messages (150 MB of text): DuckDB 1.4 ``fts``
built its index in 21.7 s and answered BM25 queries in 0.4-0.8 s; SQLite FTS5 (Python's standard library)
built in 4.7 s and answered ranked queries with highlighted snippets in 1-8 ms. The index holds only
``(rowid, content, conversation_id)``; every other filter stays in DuckDB.

The index follows the store: a background thread (``SearchMixin``, started by the ``Store``) indexes new
conversations above a watermark after each import, an edit replaces the conversation's rows, and the whole index
is rebuilt from DuckDB when it is missing or out of step (``Store.ensure_search_index``). Until the indexer has
caught up, a search scans the not-yet-indexed conversations in DuckDB, so results are complete at once.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

import pandas as pd

HIGHLIGHT_OPEN = "\x02"
HIGHLIGHT_CLOSE = "\x03"
"""Snippet markers (control characters that never occur in text); ``highlight_html`` turns them into <mark>."""

MAX_INDEXED_MESSAGES = 1024
"""Messages per conversation that are indexed (rowid = conversation_id * 1024 + position)."""


def highlight_html(snippet: str) -> str:
    """HTML of a snippet: the text escaped, the matches wrapped in ``<mark>``."""
    import html

    return html.escape(snippet).replace(HIGHLIGHT_OPEN, "<mark>").replace(HIGHLIGHT_CLOSE, "</mark>")


def fts_query(text: str) -> str:
    """Turn what a person typed into an FTS5 query: every word must match (prefix match on the last one),
    ``"quoted phrases"`` match as phrases, and FTS5 operators in the input are treated as plain words.

    Returns ``""`` for input with no searchable word.
    """
    parts: list[str] = []
    for phrase, word in re.findall(r'"([^"]+)"|(\S+)', text or ""):
        if phrase:
            toks = re.findall(r"\w+", phrase)
            if toks:
                parts.append('"' + " ".join(toks) + '"')
        else:
            toks = re.findall(r"\w+", word)
            parts.extend(f'"{t}"' for t in toks)
    if parts and not text.rstrip().endswith('"') and parts[-1].count(" ") == 0:
        parts[-1] = parts[-1] + "*"
    return " AND ".join(parts)


class SearchIndex:
    """An FTS5 index of messages, one row per message (``rowid`` = the store's message key).

    Args:
        path: the SQLite file (``<db>.search.sqlite``), or ``":memory:"``.

    Thread-safe: one connection behind a lock.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._lock = threading.Lock()
        self._con = sqlite3.connect(self.path, check_same_thread=False)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS msg USING fts5(content, conversation_id UNINDEXED, "
            "tokenize='unicode61')")
        self._con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER)")
        self._con.commit()

    def watermark(self) -> int:
        """Every conversation with an id up to this one is indexed (0 = none)."""
        with self._lock:
            row = self._con.execute("SELECT value FROM meta WHERE key = 'watermark'").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Close the SQLite connection."""
        with self._lock:
            self._con.close()

    def count_rows(self) -> int:
        """Messages in the index."""
        with self._lock:
            return self._con.execute("SELECT count(*) FROM msg").fetchone()[0]

    def count_upto(self, conversation_id: int) -> int:
        """Indexed messages of conversations with ids up to ``conversation_id``."""
        with self._lock:
            return self._con.execute("SELECT count(*) FROM msg WHERE rowid < ?",
                                     ((conversation_id + 1) * 1024,)).fetchone()[0]

    def clear(self) -> None:
        """Empty the index (watermark back to 0)."""
        with self._lock:
            self._con.execute("DELETE FROM msg")
            self._con.execute("DELETE FROM meta WHERE key IN ('watermark', 'versions')")
            self._con.commit()

    def add(self, rows: Iterable[tuple[int, int, str]], watermark: int | None = None, versions: int = 0) -> None:
        """Index ``(conversation_id, idx, content)`` rows (``idx`` is the message's position) and, in the same
        transaction, move the watermark up to ``watermark`` and add ``versions`` (the sum of the conversations'
        version numbers) to the version count that ``versions()`` checks against the store."""
        with self._lock:
            self._con.executemany("INSERT INTO msg(rowid, content, conversation_id) VALUES (?, ?, ?)",
                                  ((cid * 1024 + idx, content, cid) for cid, idx, content in rows
                                   if idx < MAX_INDEXED_MESSAGES))
            if watermark is not None:
                self._con.execute("INSERT OR REPLACE INTO meta VALUES ('watermark', ?)", (int(watermark),))
            self._bump(versions)
            self._con.commit()

    def _bump(self, versions: int) -> None:
        if versions:
            self._con.execute("INSERT INTO meta VALUES ('versions', ?) ON CONFLICT(key) DO UPDATE SET "
                              "value = value + excluded.value", (int(versions),))

    def versions(self) -> int:
        """Sum of the version numbers of the indexed conversations, as the index saw them (an edit adds 1):
        when it differs from the store's, the index missed an edit and is rebuilt."""
        with self._lock:
            row = self._con.execute("SELECT value FROM meta WHERE key = 'versions'").fetchone()
        return int(row[0]) if row else 0

    def replace_conversation(self, conversation_id: int, contents: list[str], versions: int = 1) -> None:
        """Re-index one conversation's messages after an edit (which raised its version by ``versions``)."""
        with self._lock:
            self._bump(versions)
            self._con.execute("DELETE FROM msg WHERE rowid BETWEEN ? AND ?",
                              (conversation_id * 1024, conversation_id * 1024 + 1023))
            self._con.executemany("INSERT INTO msg(rowid, content, conversation_id) VALUES (?, ?, ?)",
                                  ((conversation_id * 1024 + i, c, conversation_id)
                                   for i, c in enumerate(contents[:MAX_INDEXED_MESSAGES])))
            self._con.commit()

    def match_ids(self, text: str) -> list[int]:
        """Conversation ids whose messages contain every word of ``text``, best match first (BM25)."""
        q = fts_query(text)
        if not q:
            return []
        with self._lock:
            rows = self._con.execute(
                "SELECT conversation_id, min(rank) AS r FROM msg WHERE msg MATCH ? GROUP BY conversation_id "
                "ORDER BY r", (q,)).fetchall()
        return [int(r[0]) for r in rows]

    def snippets(self, text: str, conversation_ids: list[int], tokens: int = 14) -> dict[int, str]:
        """The best matching passage of each given conversation, matches between ``HIGHLIGHT_OPEN`` and
        ``HIGHLIGHT_CLOSE`` (see ``highlight_html``)."""
        q = fts_query(text)
        if not q or not conversation_ids:
            return {}
        with self._lock:
            rows = self._con.execute(
                "SELECT conversation_id, snippet(msg, 0, ?, ?, '…', ?), rank FROM msg WHERE msg MATCH ? "
                "AND conversation_id IN (SELECT value FROM json_each(?)) ORDER BY rank",
                (HIGHLIGHT_OPEN, HIGHLIGHT_CLOSE, tokens, q, json.dumps([int(i) for i in conversation_ids]))).fetchall()
        out: dict[int, str] = {}
        for cid, snip, _ in rows:
            out.setdefault(int(cid), snip)
        return out


class SearchMixin:
    """The ``Store``'s side of full-text search: the sidecar index (``self.search``), the background indexer
    thread, the scan of conversations the index has not reached yet, and snippets.

    The indexer indexes conversations above the index's watermark, a chunk at a time, on a daemon thread. It
    starts after each write that adds conversations, unless the store was opened with
    ``index_in_background=False``: then no indexer thread starts until ``start_indexing()`` (searches are still
    complete meanwhile, by the scan).
    """

    def _init_search(self, index_in_background: bool) -> None:
        self._index_lock = threading.Lock()      # held while index rows are written: one writer at a time
        self._indexer_guard = threading.Lock()   # guards _indexer / _index_more
        self._indexer: threading.Thread | None = None
        self._index_more = False
        self._closing = False
        self._index_in_background = index_in_background
        self.search = SearchIndex(":memory:" if self.path == ":memory:" else self.path + ".search.sqlite")
        self.ensure_search_index()

    def _close_search(self) -> None:
        """Stop the indexer (it finishes its chunk) and close the index; the caller then closes DuckDB."""
        self._closing = True
        with self._indexer_guard:
            t = self._indexer
        if t is not None:
            t.join(timeout=30)
        self.search.close()

    def ensure_search_index(self, force: bool = False) -> bool:
        """Check the full-text index against the messages; if it is out of step (or ``force``), empty it.
        Then index whatever is not indexed yet (on the background thread, when background indexing is on).
        Returns True if it was emptied."""
        wm = self.search.watermark()
        n_msgs = self._q("SELECT count(*) FROM messages WHERE conversation_id <= ? AND idx < ?",
                         [wm, MAX_INDEXED_MESSAGES])[0][0]
        vsum = self._q("SELECT coalesce(sum(version), 0) FROM conversations WHERE id <= ?", [wm])[0][0]
        reset = force or self.search.count_upto(wm) != n_msgs or self.search.versions() != vsum
        if reset:
            with self._index_lock:
                self.search.clear()
        self._start_indexer()
        return reset

    def start_indexing(self) -> None:
        """Turn background indexing on (for a store opened with ``index_in_background=False``) and start the
        indexer on whatever is not indexed yet. Harmless when it is on already."""
        self._index_in_background = True
        self._start_indexer()

    def index_pending(self) -> int:
        """Conversations not yet in the full-text index (searches still find them, more slowly)."""
        return self._q("SELECT count(*) FROM conversations WHERE id > ?", [self.search.watermark()])[0][0]

    def wait_for_index(self, timeout: float = 120.0) -> bool:
        """Block until the full-text index has caught up (True) or ``timeout`` seconds pass (False). With
        background indexing off (``index_in_background=False`` and no ``start_indexing()`` yet) nothing would
        move the index, so it answers at once whether the index is caught up."""
        deadline = time.monotonic() + timeout
        while self.index_pending():
            if not self._index_in_background or time.monotonic() > deadline:
                return False
            self._start_indexer()
            time.sleep(0.05)
        return True

    def _start_indexer(self) -> None:
        if not self._index_in_background:
            return
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

    @contextmanager
    def _editing_indexed_text(self, conv_id: int):
        """Around an edit of a conversation's messages: waits for an indexer chunk in progress, and keeps the
        indexer out until the edit is committed and re-indexed. Yields a function to call with the new message
        texts after the commit (it replaces them in the index if the indexer had reached the conversation;
        otherwise the indexer reads the new text later)."""
        with self._index_lock:
            def reindex(contents: list[str]) -> None:
                if conv_id <= self.search.watermark():
                    self.search.replace_conversation(conv_id, contents)
            yield reindex

    def _scan_unindexed(self, query: str, watermark: int) -> list[int]:
        """Conversations above the index's watermark (imported moments ago) that match the query, so a search
        is complete while the index catches up. DuckDB narrows the candidates to messages containing every word
        (accents folded); an in-memory FTS5 index of just those messages then decides with the same matcher as
        the main index, so results don't change once the index has caught up."""
        words = [w.lower() for w in re.findall(r"\w+", query)]
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

    def _search_matches(self, query: str) -> pd.DataFrame:
        """The conversations matching a text query, best first: a DataFrame ``id, rank`` (indexed matches by
        BM25, then the scanned ones not indexed yet)."""
        wm = self.search.watermark()
        ids = [i for i in self.search.match_ids(query) if i <= wm]
        ids += self._scan_unindexed(query, wm)
        return pd.DataFrame({"id": pd.array(ids, dtype="int64"), "rank": range(len(ids))})

    def search_snippets(self, query: str, ids: list[int]) -> dict[int, str]:
        """The best matching passage of each conversation for a text query (see ``highlight_html``);
        conversations the index has not reached yet get a passage cut around the first matching word."""
        ids = [int(i) for i in ids]
        out = self.search.snippets(query, ids)
        words = [w.lower() for w in re.findall(r"\w+", query)]
        missing = [i for i in ids if i not in out]
        if missing and words:
            rows = self._q("SELECT conversation_id, content FROM messages WHERE conversation_id = ANY(?::BIGINT[]) "
                           "AND contains(lower(content), ?) ORDER BY conversation_id, idx", [missing, words[0]])
            for cid, content in rows:
                if cid in out:
                    continue
                k = content.lower().find(words[0])
                lo = max(0, k - 60)
                piece = content[lo:k] + HIGHLIGHT_OPEN + content[k:k + len(words[0])] + HIGHLIGHT_CLOSE + \
                    content[k + len(words[0]):k + 80]
                out[cid] = ("…" if lo else "") + piece + "…"
        return out
