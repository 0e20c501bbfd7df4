"""Conversations and their messages: insert, filter (the SQL of ``filters.ConvFilter``), list, sort, page,
read, export, soft delete, tags, teachers, token counts and statistics.

A message is ``{"role", "content"}``, plus ``"tool_calls"`` (a list of OpenAI-shaped calls) when it has them;
role may be ``system``, ``user``, ``assistant`` or ``tool``. A conversation may carry ``"tools"`` (any JSON
value: ShareGPT's tool schema). Both are stored as JSON and given back unchanged; a message without
``tool_calls`` is given back as exactly ``{"role", "content"}``, a conversation without tools has no ``tools``.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager, nullcontext
from datetime import datetime
from typing import Any, Iterable, Iterator

import pandas as pd

from ..filters import ORIGINS, ConvFilter
from .base import StoreError, _id_list, _now

SORT_COLUMNS = {
    "id": "c.id", "source": "src.name", "origin": "c.origin", "turns": "c.n_turns", "rounds": "c.n_rounds",
    "chars": "c.n_chars", "tokens": "c.n_tokens", "status": "c.status", "teacher": "c.teacher",
    "updated_at": "c.updated_at", "relevance": "_match.rank",
}
"""Columns ``list_conversations`` can sort by, and their SQL."""


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


def clean_message(m: dict) -> dict:
    """A message as the store keeps it: ``role``, ``content`` and, when present, ``tool_calls``."""
    out = {"role": m["role"], "content": m["content"]}
    if m.get("tool_calls") is not None:
        out["tool_calls"] = m["tool_calls"]
    return out


def message_from_row(role: str, content: str, tool_calls: str | None) -> dict:
    """A message dict from a ``messages`` row (``tool_calls`` as stored JSON text, or NULL)."""
    if tool_calls is None:
        return {"role": role, "content": content}
    return {"role": role, "content": content, "tool_calls": json.loads(tool_calls)}


def _json_or_none(v) -> str | None:
    return None if v is None else json.dumps(v, ensure_ascii=False)


class ConversationsMixin:
    """Conversation reads and writes of the ``Store`` (see the module docstring for the message shape)."""

    # ------------------------------------------------------------------ insert
    def _insert_conversations(self, con, items: list[dict], *, source_id: int | None, origin: str,
                              now: datetime, job_id: int | None = None) -> list[int]:
        """Bulk insert conversations + messages. ``items``: dicts with ``messages`` and optional ``external_id,
        seed_id, teacher, prompt_version, gen_params, n_prompt_tokens, n_completion_tokens, tools``. Returns
        the new ids (from the conversations sequence). Caller holds the transaction.

        Raises:
            StoreError: an origin not in ``filters.ORIGINS``.
        """
        if origin not in ORIGINS:
            raise StoreError(f"unknown conversation origin '{origin}' (one of {', '.join(ORIGINS)})")
        if not items:
            return []
        ids = self._new_ids(con, "conversations", len(items))
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
                "prompt_version": it.get("prompt_version"), "gen_params": _json_or_none(it.get("gen_params")),
                "tools": _json_or_none(it.get("tools")),
                "version": 1, "created_at": now, "updated_at": now, "deleted_at": None,
            })
            for i, m in enumerate(msgs):
                msg_rows.append((cid, i, m["role"], m["content"], _json_or_none(m.get("tool_calls"))))
        conv_df = pd.DataFrame(conv_rows)
        conv_df["deleted_at"] = pd.to_datetime(conv_df["deleted_at"])
        for col in ("source_id", "seed_id", "job_id", "n_prompt_tokens", "n_completion_tokens"):
            conv_df[col] = conv_df[col].astype("Int64")
        for col in ("external_id", "teacher", "prompt_version", "gen_params", "tools"):
            conv_df[col] = conv_df[col].astype("object")
        msg_df = pd.DataFrame(msg_rows, columns=["conversation_id", "idx", "role", "content", "tool_calls"])
        msg_df["tool_calls"] = msg_df["tool_calls"].astype("object")
        with self._registered(con, "_conv_df", conv_df), self._registered(con, "_msg_df", msg_df):
            con.execute(
                "INSERT INTO conversations (id, source_id, seed_id, job_id, external_id, origin, status, title, "
                "n_turns, n_rounds, n_chars, n_prompt_tokens, n_completion_tokens, teacher, prompt_version, "
                "gen_params, tools, version, created_at, updated_at, deleted_at) SELECT id, source_id, seed_id, "
                "job_id, external_id, origin, status, title, n_turns, n_rounds, n_chars, n_prompt_tokens, "
                "n_completion_tokens, teacher, prompt_version, gen_params::JSON, CAST(tools AS VARCHAR)::JSON, "
                "version, created_at, updated_at, deleted_at FROM _conv_df")
            con.execute("INSERT INTO messages (conversation_id, idx, role, content, tool_calls) SELECT "
                        "conversation_id, idx, role, content, CAST(tool_calls AS VARCHAR)::JSON FROM _msg_df")
        return ids

    def add_conversation(self, messages: list[dict], *, source_id: int | None = None,
                         origin: str = "expanded", **fields: Any) -> int:
        """Insert one conversation (e.g. written by hand or generated) and return its id. ``fields``: as for
        an item of ``_insert_conversations`` (``teacher``, ``tools``, ...).

        Raises:
            StoreError: an origin not in ``filters.ORIGINS``.
        """
        with self._tx() as con:
            cid = self._insert_conversations(con, [dict(messages=messages, **fields)], source_id=source_id,
                                             origin=origin, now=_now())[0]
        self._start_indexer()
        return cid

    # ------------------------------------------------------------------ the filter in SQL
    def _conv_where(self, f: ConvFilter, *, any_deleted: bool = False) -> tuple[str, list, pd.DataFrame | None]:
        """SQL condition on ``conversations c`` for a filter, its parameters, and the search matches (a
        DataFrame ``id, rank`` to register as ``_match``) when the filter has a text query. ``any_deleted``
        drops the "not deleted" condition of a status other than ``deleted``."""
        where, params = [], []
        if f.status == "deleted":
            where.append("c.deleted_at IS NOT NULL")
        else:
            if not any_deleted:
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
        if getattr(f, "cut", None) is not None:  # an answer stopped at max_new_tokens (finish reason 'length')
            cut = ("coalesce(json_contains(json_extract(CAST(c.gen_params AS JSON), '$.finish_reasons'), "
                   "'\"length\"'), false)")
            where.append(cut if f.cut else f"NOT {cut}")
        if f.tags:
            where.append("c.id IN (SELECT conversation_id FROM tags WHERE tag = ANY(?::VARCHAR[]))")
            params.append([str(t) for t in f.tags])
        if f.ids is not None:
            where.append("c.id = ANY(?::BIGINT[])")
            params.append(_id_list(f.ids))
        match = None
        if f.query and f.query.strip():
            match = self._search_matches(f.query)
            where.append("c.id IN (SELECT id FROM _match)")
        return " AND ".join(where) or "TRUE", params, match

    @contextmanager
    def _filtered(self, f: ConvFilter):
        """Hold the lock with the filter's search matches registered as ``_match``; yields (where, params,
        searching)."""
        w, params, match = self._conv_where(f)
        with self._lock:
            if match is None:
                yield w, params, False
            else:
                with self._registered(self._con, "_match", match):
                    yield w, params, True

    # ------------------------------------------------------------------ lists and reads
    def list_conversations(self, f: ConvFilter | None = None, *, limit: int = 25, offset: int = 0,
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

    def count_conversations(self, f: ConvFilter | None = None, **filters) -> int:
        """Number of conversations matching a filter (a ``ConvFilter`` or its fields as keywords)."""
        with self._filtered(f or ConvFilter(**filters)) as (w, params, _):
            return self._con.execute(f"SELECT count(*) FROM conversations c WHERE {w}", params).fetchone()[0]

    def conversation_ids(self, f: ConvFilter | None = None, **filters) -> list[int]:
        """Ids of every conversation matching a filter, in id order."""
        with self._filtered(f or ConvFilter(**filters)) as (w, params, _):
            return [r[0] for r in self._con.execute(f"SELECT c.id FROM conversations c WHERE {w} ORDER BY c.id",
                                                    params).fetchall()]

    def training_totals(self, f: ConvFilter | None = None) -> dict[str, int]:
        """What a training run on filter ``f`` takes, ``f.for_training()`` (flagged and deleted conversations stay
        out unless ``f`` chose them), and what that rule leaves out, in one aggregate query.

        Returns:
            ``{"conversations": how many train, "tokens": the sum of their token counts where known,
            "without_tokens": how many of them have no token count yet, "flagged_left_out": flagged conversations
            (not deleted) that meet ``f``'s other conditions but stay out, "deleted_left_out": deleted ones that
            meet them but stay out}``.
        """
        f = f or ConvFilter()
        w_train, p_train, match = self._conv_where(f.for_training())
        # f's own conditions, deleted ones included (the search matches are the same: registered once)
        w_any, p_any, _ = self._conv_where(dataclasses.replace(f, query=None), any_deleted=True)
        if match is not None:
            w_any += " AND c.id IN (SELECT id FROM _match)"
        t = f"coalesce(({w_train}), false)"
        sql = (f"SELECT count(*) FILTER (WHERE {t}), coalesce(sum(c.n_tokens) FILTER (WHERE {t}), 0), "
               f"count(*) FILTER (WHERE {t} AND c.n_tokens IS NULL), "
               f"count(*) FILTER (WHERE NOT {t} AND c.deleted_at IS NULL AND c.flag IS NOT NULL), "
               f"count(*) FILTER (WHERE NOT {t} AND c.deleted_at IS NOT NULL) "
               f"FROM conversations c WHERE {w_any}")
        with self._lock, (self._registered(self._con, "_match", match) if match is not None else nullcontext()):
            row = self._con.execute(sql, p_train * 5 + p_any).fetchone()
        keys = ("conversations", "tokens", "without_tokens", "flagged_left_out", "deleted_left_out")
        return {k: int(v or 0) for k, v in zip(keys, row)}

    def get_conversation(self, conv_id: int) -> dict:
        """One conversation with its messages.

        Returns:
            dict with the ``conversations`` columns (``gen_params`` decoded; ``tools`` decoded, and only when
            the conversation has tools), ``messages`` (role/content dicts, with ``tool_calls`` where a message
            has them), ``source`` (file name) and ``tags``.

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
            conv["messages"] = [message_from_row(*r) for r in self._con.execute(
                "SELECT role, content, tool_calls FROM messages WHERE conversation_id = ? ORDER BY idx",
                [int(conv_id)]).fetchall()]
            conv["tags"] = [r[0] for r in self._con.execute(
                "SELECT tag FROM tags WHERE conversation_id = ? ORDER BY tag", [int(conv_id)]).fetchall()]
        if conv.get("gen_params"):
            conv["gen_params"] = json.loads(conv["gen_params"])
        tools = conv.pop("tools", None)
        if tools is not None:
            conv["tools"] = json.loads(tools)
        return conv

    def iter_conversations(self, f: ConvFilter | None = None, *, batch: int = 2000, with_ids: bool = False,
                           with_tools: bool = False, **filters) -> Iterator[tuple]:
        """Yield ``(export_id, messages)`` for every conversation matching the filter, in id order.

        ``export_id`` is the imported ShareGPT id when there was one, else the studio's id as a string; with
        ``with_ids`` it is the studio's integer id. With ``with_tools`` the items are ``(export_id, messages,
        tools)``, ``tools`` None for a conversation without tools. Messages are fetched in batches of ``batch``
        conversations.
        """
        ids = self.conversation_ids(f or ConvFilter(**filters))
        for k in range(0, len(ids), batch):
            chunk = ids[k:k + batch]
            with self._lock:
                convs = self._con.execute(
                    "SELECT c.id, coalesce(c.external_id, CAST(c.id AS VARCHAR)), c.tools FROM conversations c "
                    "WHERE c.id = ANY(?::BIGINT[]) ORDER BY c.id", [chunk]).fetchall()
                msgs = self._con.execute(
                    "SELECT conversation_id, role, content, tool_calls FROM messages "
                    "WHERE conversation_id = ANY(?::BIGINT[]) ORDER BY conversation_id, idx", [chunk]).fetchall()
            by_conv: dict[int, list[dict]] = {}
            for cid, role, content, calls in msgs:
                by_conv.setdefault(cid, []).append(message_from_row(role, content, calls))
            for cid, eid, tools in convs:
                key = cid if with_ids else eid
                if with_tools:
                    yield key, by_conv.get(cid, []), (json.loads(tools) if tools is not None else None)
                else:
                    yield key, by_conv.get(cid, [])

    # ------------------------------------------------------------------ soft delete
    def delete_conversations(self, ids: Iterable[int]) -> int:
        """Soft-delete: set ``deleted_at``; ``restore_conversations`` undoes it. Returns rows changed."""
        return self._set_deleted(ids, True)

    def restore_conversations(self, ids: Iterable[int]) -> int:
        """Undo a delete. Returns rows changed."""
        return self._set_deleted(ids, False)

    def _set_deleted(self, ids: Iterable[int], deleted: bool) -> int:
        ids = _id_list(ids)
        if not ids:
            return 0
        cond = "deleted_at IS NULL" if deleted else "deleted_at IS NOT NULL"
        with self._tx() as con:
            n = con.execute(f"SELECT count(*) FROM conversations WHERE id = ANY(?::BIGINT[]) AND {cond}",
                            [ids]).fetchone()[0]
            con.execute(f"UPDATE conversations SET deleted_at = ? WHERE id = ANY(?::BIGINT[]) AND {cond}",
                        [_now() if deleted else None, ids])
        return n

    # ------------------------------------------------------------------ tags, teachers, tokens
    def list_tags(self) -> list[tuple[str, int]]:
        """``[(tag, n_conversations)]``, most used first."""
        return self._q("SELECT tag, count(*) FROM tags t JOIN conversations c ON c.id = t.conversation_id "
                       "WHERE c.deleted_at IS NULL GROUP BY tag ORDER BY count(*) DESC, tag")

    def teachers(self) -> list[str]:
        """Teacher names that generated stored conversations."""
        return [r[0] for r in self._q("SELECT DISTINCT teacher FROM conversations WHERE teacher IS NOT NULL "
                                      "ORDER BY 1")]

    def set_token_counts(self, counts: dict[int, int]) -> None:
        """Store per-conversation token counts (``{conversation_id: n_tokens}``), used by token filters."""
        if not counts:
            return
        df = pd.DataFrame({"id": list(counts), "n": list(counts.values())})
        with self._tx() as con, self._registered(con, "_tok", df):
            con.execute("UPDATE conversations SET n_tokens = _tok.n FROM _tok WHERE conversations.id = _tok.id")

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
            rows = self._con.execute("SELECT conversation_id, content FROM messages WHERE conversation_id = "
                                     "ANY(?::BIGINT[]) ORDER BY conversation_id, idx", [ids]).fetchall()
        out: dict[int, list[str]] = {i: [] for i in ids}
        for cid, content in rows:
            out[cid].append(content)
        return list(out.items())

    # ------------------------------------------------------------------ statistics
    def stats(self, f: ConvFilter | None = None) -> dict[str, pd.DataFrame]:
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
