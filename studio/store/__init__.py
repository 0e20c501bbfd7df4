"""DuckDB store: the only code in the studio that writes SQL, one module per concept.

- ``schema``: numbered migrations, applied in order and recorded in ``meta.schema_version``; id sequences.
- ``base``: the connection, the lock, transactions, new ids, the errors.
- ``sources``: file imports (``ImportResult``), sources and seeds.
- ``conversations``: insert, the SQL of the conversation filter (``studio.filters.ConvFilter``), lists, reads,
  export, soft delete, tags, token counts, statistics.
- ``revisions``: edits with optimistic concurrency, and every past version.
- ``bulk``: bulk actions, the split of long conversations, undo.
- ``jobs``: background jobs and their items; ``models``: the registry's persisted entries.
- ``arena``: Arena battles (one vote per round, ``VoteError``) and imported battle files; Chat ratings.
- ``judge``: LLM-as-judge answers (reused across runs), judge runs and judgments (``studio.judge``).
- ``preferences``: preference sets and pairs for DPO (``studio.preferences``).
- ``search``: the SQLite FTS5 sidecar index and its background indexer.

``Store`` composes them. Every write runs in one transaction under one lock; a failure rolls everything back.
"""

from __future__ import annotations

from pathlib import Path

from ..filters import ORIGINS, STATUSES, ConvFilter
from .arena import ArenaMixin, VoteError
from .base import StaleVersionError, StoreBase, StoreError
from .bulk import BULK_ACTIONS, BulkMixin
from .conversations import SORT_COLUMNS, ConversationsMixin, conversation_stats
from .jobs import JOB_STATUSES, JobsMixin
from .judge import JudgeMixin
from .models import ModelsMixin
from .preferences import PreferencesMixin
from .revisions import RevisionsMixin
from .schema import MIGRATIONS, SCHEMA_VERSION
from .search import MAX_INDEXED_MESSAGES, SearchIndex, SearchMixin
from .sources import ImportResult, SourcesMixin

__all__ = [
    "Store", "StoreError", "StaleVersionError", "VoteError", "ImportResult", "ConvFilter", "STATUSES", "ORIGINS",
    "SORT_COLUMNS", "BULK_ACTIONS", "JOB_STATUSES", "SCHEMA_VERSION", "MIGRATIONS", "MAX_INDEXED_MESSAGES",
    "SearchIndex", "conversation_stats",
]


class Store(SearchMixin, SourcesMixin, ConversationsMixin, RevisionsMixin, BulkMixin, JobsMixin, ModelsMixin,
            ArenaMixin, JudgeMixin, PreferencesMixin, StoreBase):
    """The studio's DuckDB database.

    One instance per process; safe to share between threads (every call holds one lock). DuckDB lets one
    process at a time open a file for writing, so the command line and a running web app should not write
    the same file at once (the CLI's error says so).

    Args:
        path: the ``.duckdb`` file (created with its folder if missing), or ``":memory:"``. The full-text index
            lives beside it in ``<path>.search.sqlite``.
        read_only: open without write access (the file must be at this studio's schema version).
        index_in_background: index new conversations for full-text search on a background thread. With False,
            no indexer thread starts until ``start_indexing()`` (searches are complete meanwhile, by a scan of
            what is not indexed): for tests and tools that need to know exactly what the index holds.

    Raises:
        StoreError: the file can't be opened (e.g. locked by another process), or its schema version does not
            fit (see ``schema``).
    """

    def __init__(self, path: str | Path, *, read_only: bool = False, index_in_background: bool = True):
        StoreBase.__init__(self, path, read_only=read_only)
        try:
            self._init_search(index_in_background)
        except BaseException:
            self._con.close()
            raise

    def close(self) -> None:
        """Stop the background indexer and close the connections (DuckDB and the search index)."""
        self._close_search()
        with self._lock:
            self._con.close()
