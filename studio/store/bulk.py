"""Bulk actions on many conversations (tag, untag, flag, unflag, delete, restore), the split of long
conversations, and their undo. Each is one transaction, recorded in ``bulk_ops`` with what undoes it."""

from __future__ import annotations

import json
from typing import Iterable

import pandas as pd

from .base import StoreError, _id_list, _now

BULK_ACTIONS = ("tag", "untag", "flag", "unflag", "delete", "restore")
"""What ``Store.bulk`` can do; ``split`` is recorded in ``bulk_ops`` too (``Store.split``)."""


class BulkMixin:
    """Bulk actions, split and undo of the ``Store``."""

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
            with self._registered(con, "_ids", ids_df):
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
            op_id = self._new_id(con, "bulk_ops")
            con.execute("INSERT INTO bulk_ops VALUES (?, ?, ?, ?, ?::JSON, ?, NULL)",
                        [op_id, action, arg, len(changed), json.dumps(payload), now])
        return op_id, len(changed)

    def split(self, plans: list[tuple[int, list[list[dict]]]]) -> tuple[int, list[int]]:
        """Replace conversations by chunks of them, in one transaction, as one undoable operation.

        Args:
            plans: ``[(conversation_id, [chunk messages, ...])]`` (e.g. from ``quality.split_conversations``).
                Each chunk becomes a conversation with origin ``split``, the original's source, seed, teacher,
                prompt version and tools, and external id ``<original id>_<k>``; the originals are soft-deleted.

        Returns:
            (operation id for ``undo_bulk``, which deletes the chunks and restores the originals; new ids).

        Raises:
            StoreError: a conversation that does not exist or is deleted; nothing is written.
        """
        now = _now()
        new_ids: list[int] = []
        with self._tx() as con:
            for cid, chunks in plans:
                row = con.execute("SELECT source_id, seed_id, teacher, prompt_version, gen_params, "
                                  "coalesce(external_id, CAST(id AS VARCHAR)), tools FROM conversations WHERE id = ? "
                                  "AND deleted_at IS NULL", [int(cid)]).fetchone()
                if row is None:
                    raise StoreError(f"conversation {cid} does not exist or is deleted")
                src, seed, teacher, pv, gp, ext, tools = row
                items = [dict(messages=ch, seed_id=seed, teacher=teacher, prompt_version=pv,
                              gen_params=json.loads(gp) if gp else None, external_id=f"{ext}_{k}",
                              tools=json.loads(tools) if tools is not None else None)
                         for k, ch in enumerate(chunks)]
                new_ids += self._insert_conversations(con, items, source_id=src, origin="split", now=now)
                con.execute("UPDATE conversations SET deleted_at = ? WHERE id = ?", [now, int(cid)])
            op_id = self._new_id(con, "bulk_ops")
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
                con.execute("UPDATE conversations SET deleted_at = ? WHERE id = ANY(?::BIGINT[])",
                            [_now(), _id_list(payload["chunks"])])
                con.execute("UPDATE conversations SET deleted_at = NULL WHERE id = ANY(?::BIGINT[])",
                            [_id_list(payload["originals"])])
                n = len(payload["originals"])
            elif action == "tag":
                ids = _id_list(payload["ids"])
                con.execute("DELETE FROM tags WHERE tag = ? AND conversation_id = ANY(?::BIGINT[])", [arg, ids])
                n = len(ids)
            elif action == "untag":
                ids = payload["ids"]
                if ids:
                    ids_df = pd.DataFrame({"id": pd.array(ids, dtype="int64")})
                    with self._registered(con, "_ids", ids_df):
                        con.execute("INSERT INTO tags SELECT id, ? FROM _ids WHERE id NOT IN "
                                    "(SELECT conversation_id FROM tags WHERE tag = ?)", [arg, arg])
                n = len(ids)
            else:
                prev = payload["prev"]
                col = "flag" if action in ("flag", "unflag") else "deleted_at"
                if prev:
                    df = pd.DataFrame(prev, columns=["id", "v"])
                    if col == "deleted_at":
                        df["v"] = pd.to_datetime(df["v"])
                    with self._registered(con, "_prev", df):
                        con.execute(f"UPDATE conversations SET {col} = _prev.v FROM _prev "
                                    f"WHERE conversations.id = _prev.id")
                n = len(prev)
            con.execute("UPDATE bulk_ops SET undone_at = ? WHERE id = ?", [_now(), int(op_id)])
        return n

    def list_bulk_ops(self, limit: int = 20) -> pd.DataFrame:
        """Recent bulk actions, newest first: ``id, action, arg, n, created_at, undone_at``."""
        return self._df("SELECT id, action, arg, n, created_at, undone_at FROM bulk_ops ORDER BY id DESC LIMIT ?",
                        [limit])
