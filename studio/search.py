"""Moved to ``studio.store.search`` (the SQLite FTS5 sidecar lives with the store); this name stays for the
callers that import it from here."""

from .store.search import (HIGHLIGHT_CLOSE, HIGHLIGHT_OPEN, MAX_INDEXED_MESSAGES, SearchIndex, fts_query,  # noqa: F401
                           highlight_html)
