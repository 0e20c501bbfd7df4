"""What every part of the store shares: the errors, the connection wrapper, the lock, transactions and new ids.

Every write runs in one transaction under one lock (``StoreBase._tx``); a failure rolls everything back.
Statements never carry values pasted into their text: values, and id lists (``= ANY(?)`` with a list), are
bound parameters; larger tables of values are registered DataFrames.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import duckdb
import pandas as pd

from .schema import ID_SEQUENCES, check_readable, migrate


class StoreError(Exception):
    """A store operation was refused (unknown id, invalid messages); nothing was written."""


class StaleVersionError(StoreError):
    """A save was based on an older version than the one stored (someone else saved first)."""


def _now() -> datetime:
    """The current time in UTC without a zone (how every ``TIMESTAMP`` column holds it)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _id_list(ids) -> list[int]:
    """Ids as a list of Python ints, to bind as one ``BIGINT[]`` parameter (``c.id = ANY(?::BIGINT[])``)."""
    return [int(i) for i in ids]


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


class StoreBase:
    """The connection, the lock and the migrations; the concept mixins (``conversations``, ``bulk``, ...)
    build on these helpers.

    Args:
        path: the ``.duckdb`` file (created with its folder if missing), or ``":memory:"``.
        read_only: open without write access (no migration: the file must be at this studio's schema version).

    Raises:
        StoreError: the file can't be opened (locked by another process, unreadable), its schema is newer than
            this studio's, or (read-only) older.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False):
        self.path = str(path)
        self.read_only = read_only
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = _Con(duckdb.connect(self.path, read_only=read_only))
        except duckdb.IOException as e:  # lock held by another process, unreadable file
            raise StoreError(f"cannot open database {self.path}: {e}") from e
        self._lock = threading.RLock()
        try:
            with self._lock:
                problem = check_readable(self._con.raw) if read_only else migrate(self._con.raw)
        except BaseException:
            self._con.close()
            raise
        if problem:
            self._con.close()
            raise StoreError(f"cannot open database {self.path}: {problem}")

    @contextmanager
    def _tx(self) -> Iterator[_Con]:
        """The connection inside one transaction under the lock: committed at the end, rolled back on error."""
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
        """All rows of one statement, under the lock."""
        with self._lock:
            return self._con.execute(sql, params or []).fetchall()

    def _df(self, sql: str, params: list | None = None) -> pd.DataFrame:
        """One statement's result as a DataFrame, under the lock."""
        with self._lock:
            return self._con.df(sql, params)

    def _new_ids(self, con, table: str, n: int = 1) -> list[int]:
        """``n`` new ids for ``table`` from its sequence (``schema.ID_SEQUENCES``), ascending. Ids are never
        reused, even when the transaction that drew them rolls back."""
        if n <= 0:
            return []
        seq = ID_SEQUENCES[table]
        if n == 1:
            return [con.execute(f"SELECT nextval('{seq}')").fetchone()[0]]
        return [r[0] for r in con.execute(f"SELECT nextval('{seq}') AS id FROM range(?) ORDER BY id", [n]).fetchall()]

    def _new_id(self, con, table: str) -> int:
        return self._new_ids(con, table, 1)[0]

    @contextmanager
    def _registered(self, con, name: str, df: pd.DataFrame):
        """``df`` visible to SQL as the table ``name`` for the block (the caller holds the lock)."""
        con.register(name, df)
        try:
            yield name
        finally:
            con.unregister(name)
