"""Edits and revisions: a save replaces a conversation's messages (refused if someone saved first), and every
version stays readable. The original (version 1) is copied into ``revisions`` at the first edit, not at
import: a 70k import does not write its text twice; until then the live messages are version 1."""

from __future__ import annotations

import json

import pandas as pd

from .base import StaleVersionError, StoreError, _now
from .conversations import clean_message, conversation_stats, message_from_row


class RevisionsMixin:
    """Saving edited messages with optimistic concurrency, and reading past versions."""

    def save_messages(self, conv_id: int, messages: list[dict], *, expected_version: int,
                      note: str = "edit", max_message_chars: int = 100_000) -> int:
        """Replace a conversation's messages, keeping the previous ones as a revision.

        Args:
            messages: ``[{"role", "content"}]``, with ``tool_calls`` on a message that has them (kept as given).
            expected_version: the version the editor loaded; the save is refused if the stored version
                differs (optimistic concurrency).

        Returns:
            The new version number.

        Raises:
            StaleVersionError: someone saved a newer version first; nothing was written.
            StoreError: unknown conversation, or the messages break the rules of
                ``formats.validate_messages``.
        """
        from ..formats import validate_messages

        problem = validate_messages(messages, max_message_chars=max_message_chars)
        if problem:
            raise StoreError(f"conversation {conv_id} not saved: {problem}")
        messages = [clean_message(m) for m in messages]
        cid = int(conv_id)
        # the indexer stays out from before the save until the index holds the new text: it can neither miss
        # the edit nor count it twice
        with self._editing_indexed_text(cid) as reindex:
            with self._tx() as con:
                row = con.execute("SELECT version, created_at FROM conversations WHERE id = ?", [cid]).fetchone()
                if row is None:
                    raise StoreError(f"conversation {conv_id} does not exist")
                version, created = row
                if version != expected_version:
                    raise StaleVersionError(
                        f"conversation {conv_id} was saved by someone else (version {version}, you edited "
                        f"version {expected_version}); reload it and apply your change again")
                new_version = version + 1
                now = _now()
                st = conversation_stats(messages)
                has_original = con.execute("SELECT count(*) FROM revisions WHERE conversation_id = ?",
                                           [cid]).fetchone()[0]
                if not has_original:  # keep the original as version 1 before its first change
                    old = [message_from_row(*r) for r in con.execute(
                        "SELECT role, content, tool_calls FROM messages WHERE conversation_id = ? ORDER BY idx",
                        [cid]).fetchall()]
                    con.execute("INSERT INTO revisions VALUES (?, ?, ?::JSON, 'original', ?)",
                                [cid, version, json.dumps(old, ensure_ascii=False), created])
                con.execute("DELETE FROM messages WHERE conversation_id = ?", [cid])
                con.executemany(
                    "INSERT INTO messages (conversation_id, idx, role, content, tool_calls) VALUES (?, ?, ?, ?, ?::JSON)",
                    [(cid, i, m["role"], m["content"],
                      json.dumps(m["tool_calls"], ensure_ascii=False) if "tool_calls" in m else None)
                     for i, m in enumerate(messages)])
                con.execute(
                    "UPDATE conversations SET version = ?, status = 'edited', updated_at = ?, title = ?, "
                    "n_turns = ?, n_rounds = ?, n_chars = ?, n_tokens = NULL WHERE id = ?",
                    [new_version, now, st["title"], st["n_turns"], st["n_rounds"], st["n_chars"], cid])
                con.execute("INSERT INTO revisions VALUES (?, ?, ?::JSON, ?, ?)",
                            [cid, new_version, json.dumps(messages, ensure_ascii=False), note, now])
            reindex([m["content"] for m in messages])
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
        """The messages of one version (with ``tool_calls`` where a message had them). Raises StoreError if
        there is no such version."""
        row = self._q("SELECT messages FROM revisions WHERE conversation_id = ? AND version = ?",
                      [int(conv_id), int(version)])
        if row:
            return json.loads(row[0][0])
        current = self._q("SELECT version, (SELECT count(*) FROM revisions r WHERE r.conversation_id = c.id) "
                          "FROM conversations c WHERE id = ?", [int(conv_id)])
        if current and current[0][0] == int(version) and current[0][1] == 0:
            return self.get_conversation(conv_id)["messages"]
        raise StoreError(f"conversation {conv_id} has no version {version}")
