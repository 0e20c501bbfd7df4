"""The model registry's persisted entries (``models``): name, kind and spec (JSON, never a secret)."""

from __future__ import annotations

import json

from .base import _now


class ModelsMixin:
    """Registry entries of the ``Store`` (``studio.registry.Registry`` is their only user)."""

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
