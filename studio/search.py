"""Full-text search over message text: an SQLite FTS5 index kept beside the DuckDB file.

Why not DuckDB's ``fts`` extension: DuckDB downloads extensions from its own server at run time (no network
here, and none on many air-gapped training boxes), and the pip-packaged build (``duckdb-ext-fts``) exists only
for DuckDB 1.4. Measured on this 2-core machine with 150,000 messages (150 MB of text): DuckDB 1.4 ``fts``
built its index in 21.7 s and answered BM25 queries in 0.4-0.8 s; SQLite FTS5 (Python's standard library)
built in 4.7 s and answered ranked queries with highlighted snippets in 1-8 ms. The index holds only
``(rowid, content, conversation_id)``; every other filter stays in DuckDB.

The index follows the store: rows are added after each import, replaced after an edit, and the whole index is
rebuilt from DuckDB when it is missing or out of step (``Store.ensure_search_index``).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from pathlib import Path
from typing import Iterable

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
        marks = ",".join("?" * len(conversation_ids))
        with self._lock:
            rows = self._con.execute(
                f"SELECT conversation_id, snippet(msg, 0, ?, ?, '…', ?), rank FROM msg WHERE msg MATCH ? "
                f"AND conversation_id IN ({marks}) ORDER BY rank",
                (HIGHLIGHT_OPEN, HIGHLIGHT_CLOSE, tokens, q, *conversation_ids)).fetchall()
        out: dict[int, str] = {}
        for cid, snip, _ in rows:
            out.setdefault(int(cid), snip)
        return out
