"""Schema migrations of the store (``studio/store/schema.py``) on real DuckDB files: a database written by the
previous studio (schema version 2, built here from that version's exact schema text) and one from version 1
open, migrate in order and keep every row; a migration runs only above the stored version; a newer database and
a read-only open of an older one are refused; new ids continue above the old ones, from sequences."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from studio.store import SCHEMA_VERSION, Store, StoreError
from studio.store.schema import ID_SEQUENCES, V1_TABLES

# The schema of studio/store.py at schema version 2, verbatim (the last version before the store became a
# package with numbered migrations).
SCHEMA_V2 = """
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
CREATE INDEX IF NOT EXISTS messages_conv ON messages(conversation_id);
CREATE INDEX IF NOT EXISTS tags_conv ON tags(conversation_id);
CREATE INDEX IF NOT EXISTS revisions_conv ON revisions(conversation_id);
CREATE INDEX IF NOT EXISTS job_items_job ON job_items(job_id);
"""


T0 = datetime(2024, 5, 1, 12, 0, 0)
T1 = datetime(2024, 5, 2, 9, 30, 0)

OLD_MESSAGES = {
    1: [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is DuckDB?"},
        {"role": "assistant", "content": "An in-process analytical database."}],
    2: [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "Seven."}],
    5: [{"role": "user", "content": "Describe photosynthesis."},
        {"role": "assistant", "content": "Plants turn light into sugar."}],
}
ORIGINAL_2 = [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}]


def _fill_v2(con) -> None:
    """A few rows in every table of a version-2 database, with gaps in the ids (conversation 3 and 4 never
    existed: the new ids must go on above 5)."""
    con.execute("INSERT INTO meta VALUES ('schema_version', '2')")
    con.execute("INSERT INTO sources VALUES (1, 'chats.json', '/x/chats.json', 'sharegpt', 'abc', ?, 3, 0, 3, 1), "
                "(2, 'seeds.jsonl', NULL, 'alpaca', 'def', ?, 2, 2, 0, 0)", [T0, T0])
    con.execute("INSERT INTO seeds VALUES (1, 2, 1, 'Write a haiku.', '', NULL, '{\"skill\": \"poetry\"}'), "
                "(2, 2, 2, 'Sum 2 and 3.', '', '5', '{}')")
    con.execute(
        "INSERT INTO conversations (id, source_id, seed_id, job_id, external_id, origin, status, title, n_turns, "
        "n_rounds, n_chars, teacher, prompt_version, gen_params, version, created_at, updated_at, deleted_at, flag, "
        "n_tokens) VALUES "
        "(1, 1, NULL, NULL, 'wv-1', 'imported', 'new', 'What is DuckDB?', 2, 1, 64, NULL, NULL, NULL, 1, ?, ?, "
        "NULL, 'too short', 40), "
        "(2, 1, NULL, NULL, '42', 'imported', 'edited', 'Name a prime.', 2, 1, 19, NULL, NULL, NULL, 2, ?, ?, "
        "NULL, NULL, NULL), "
        "(5, NULL, 1, 3, NULL, 'expanded', 'new', 'Describe photosynthesis.', 2, 1, 53, 'gpt-x', 'v1', "
        "'{\"temperature\": 0.7}', 1, ?, ?, ?, NULL, NULL)", [T0, T0, T0, T1, T0, T0, T1])
    for cid, msgs in OLD_MESSAGES.items():
        con.executemany("INSERT INTO messages VALUES (?, ?, ?, ?)",
                        [(cid, i, m["role"], m["content"]) for i, m in enumerate(msgs)])
    con.execute("INSERT INTO revisions VALUES (2, 1, ?::JSON, 'original', ?), (2, 2, ?::JSON, 'fix', ?)",
                [json.dumps(ORIGINAL_2), T0, json.dumps(OLD_MESSAGES[2]), T1])
    con.execute("INSERT INTO tags VALUES (1, 'keep'), (2, 'keep'), (2, 'math')")
    con.execute("INSERT INTO bulk_ops VALUES (2, 'tag', 'math', 1, '{\"ids\": [2]}', ?, NULL)", [T1])
    con.execute("INSERT INTO models VALUES ('remote', 'endpoint', '{\"base_url\": \"http://h/v1\"}', ?)", [T0])
    con.execute("INSERT INTO jobs (id, kind, status, params, total, n_done, n_failed, error, created_at, "
                "started_at, finished_at) VALUES (3, 'expand', 'done', '{\"rounds\": 2}', 2, 1, 1, NULL, ?, ?, ?)",
                [T0, T0, T1])
    con.execute("INSERT INTO job_items VALUES (3, 1, 'done', 5, NULL), (3, 2, 'failed', NULL, 'timeout')")


TABLES = ("sources", "seeds", "conversations", "messages", "revisions", "tags", "bulk_ops", "models", "jobs",
          "job_items")


def make_v2_db(path: Path) -> dict[str, int]:
    """A database file as the previous studio left it; returns its row count per table."""
    con = duckdb.connect(str(path))
    con.execute(SCHEMA_V2)
    _fill_v2(con)
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    con.close()
    return counts


def columns(path: Path, table: str) -> list[str]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return [r[0] for r in con.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = ? "
                                          "ORDER BY column_index", [table]).fetchall()]
    finally:
        con.close()


def stored_version(store: Store) -> int:
    return int(store._q("SELECT value FROM meta WHERE key = 'schema_version'")[0][0])


def test_version_2_database_migrates_and_keeps_every_row(tmp_path):
    db = tmp_path / "old.duckdb"
    counts = make_v2_db(db)
    assert "tool_calls" not in columns(db, "messages")

    store = Store(db, index_in_background=False)
    try:
        assert stored_version(store) == SCHEMA_VERSION
        assert {t: store._q(f"SELECT count(*) FROM {t}")[0][0] for t in TABLES} == counts
        # conversations: messages, columns, tags, flags, soft delete, revisions
        c1 = store.get_conversation(1)
        assert c1["messages"] == OLD_MESSAGES[1] and "tools" not in c1
        assert (c1["external_id"], c1["flag"], c1["n_tokens"], c1["tags"], c1["source"]) == (
            "wv-1", "too short", 40, ["keep"], "chats.json")
        c2 = store.get_conversation(2)
        assert (c2["status"], c2["version"], c2["tags"]) == ("edited", 2, ["keep", "math"])
        assert store.get_revision(2, 1) == ORIGINAL_2 and store.get_revision(2, 2) == OLD_MESSAGES[2]
        assert list(store.list_revisions(2)["note"]) == ["fix", "original"]
        c5 = store.get_conversation(5)
        assert c5["deleted_at"] == T1 and c5["gen_params"] == {"temperature": 0.7} and c5["teacher"] == "gpt-x"
        assert store.count_conversations() == 2 and store.count_conversations(status="deleted") == 1
        assert store.count_conversations(status="flagged") == 1 and store.count_conversations(tags=["math"]) == 1
        assert [m for _, m in store.iter_conversations(status="deleted")] == [OLD_MESSAGES[5]]
        # seeds, sources, models, jobs
        assert store.get_seeds([1, 2])[1]["meta"] == {"skill": "poetry"} and store.get_seeds([2])[2]["output"] == "5"
        assert store.list_models() == [("remote", "endpoint", {"base_url": "http://h/v1"})]
        job = store.get_job(3)
        assert (job["status"], job["params"], job["n_done"], job["n_failed"], job["log"]) == (
            "done", {"rounds": 2}, 1, 1, None)
        assert store.job_item_errors(3) == [(2, "timeout")]
        # the old bulk operation can still be undone
        assert store.undo_bulk(2) == 1 and store.get_conversation(2)["tags"] == ["keep"]
        # full-text search over the migrated rows
        assert store.conversation_ids(query="photosynthesis") == []          # deleted
        assert store.conversation_ids(query="photosynthesis", status="deleted") == [5]
        store.start_indexing()
        assert store.wait_for_index(60)
        assert store.conversation_ids(query="duckdb") == [1]
        # new ids go on above the old ones (from the sequences the migration started)
        assert store.add_conversation(OLD_MESSAGES[2], origin="imported") == 6
        assert store.create_job("expand", {}, [1]) == 4
        assert store.bulk("tag", [1], "new")[0] == 3
        assert store.evolved_source(2) == 3
        assert store.add_seeds(3, [type("S", (), dict(row=1, instruction="x", input="", output=None, meta={}))()]) == [3]
    finally:
        store.close()
    assert "tool_calls" in columns(db, "messages") and "tools" in columns(db, "conversations")
    assert "log" in columns(db, "jobs")

    # opened again: at the current version nothing runs again, and the ids go on
    store = Store(db, index_in_background=False)
    try:
        assert stored_version(store) == SCHEMA_VERSION
        assert store.add_conversation(OLD_MESSAGES[1], origin="imported") == 7
        assert store.get_conversation(2)["messages"] == OLD_MESSAGES[2]
    finally:
        store.close()


def test_version_1_database_gets_the_curation_tables(tmp_path):
    db = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute(V1_TABLES)
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.execute("INSERT INTO conversations (id, origin, status, title, n_turns, n_rounds, n_chars, version, "
                "created_at, updated_at) VALUES (9, 'imported', 'new', 'Hi', 2, 1, 6, 1, ?, ?)", [T0, T0])
    con.executemany("INSERT INTO messages VALUES (9, ?, ?, ?)", [(0, "user", "Hi"), (1, "assistant", "Hello")])
    con.close()
    store = Store(db, index_in_background=False)
    try:
        assert stored_version(store) == SCHEMA_VERSION
        op, n = store.bulk("flag", [9], "check")
        assert n == 1 and store.count_conversations(flagged=True) == 1
        assert store.get_conversation(9)["messages"] == [{"role": "user", "content": "Hi"},
                                                         {"role": "assistant", "content": "Hello"}]
        assert store.add_conversation([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]) == 10
    finally:
        store.close()


def test_a_migration_runs_only_above_the_stored_version(tmp_path):
    """A version-2 database stamped as version 3: migration 3 (the tool-use columns) is taken as done and not
    run; migration 4 (the id sequences) runs."""
    db = tmp_path / "stamped.duckdb"
    make_v2_db(db)
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    con.close()
    Store(db, index_in_background=False).close()
    assert "tool_calls" not in columns(db, "messages") and "log" not in columns(db, "jobs")
    con = duckdb.connect(str(db), read_only=True)
    try:
        seqs = {r[0] for r in con.execute("SELECT sequence_name FROM duckdb_sequences()").fetchall()}
        assert seqs == set(ID_SEQUENCES.values())
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    finally:
        con.close()


def test_newer_database_is_refused_and_left_alone(tmp_path):
    db = tmp_path / "future.duckdb"
    make_v2_db(db)
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    con.close()
    with pytest.raises(StoreError, match=rf"schema is version {SCHEMA_VERSION + 1}, newer than this studio's"):
        Store(db)
    assert "tool_calls" not in columns(db, "messages")


def test_read_only_open_needs_the_current_version(tmp_path):
    db = tmp_path / "old.duckdb"
    make_v2_db(db)
    with pytest.raises(StoreError, match="older than this studio's .* open it once with write access"):
        Store(db, read_only=True)
    Store(db, index_in_background=False).close()       # upgrades
    store = Store(db, read_only=True, index_in_background=False)
    try:
        assert store.get_conversation(1)["messages"] == OLD_MESSAGES[1]
    finally:
        store.close()


def test_fresh_database_ids_from_sequences_never_reused(tmp_path):
    store = Store(tmp_path / "new.duckdb", index_in_background=False)
    try:
        assert stored_version(store) == SCHEMA_VERSION
        msgs = OLD_MESSAGES[2]
        a = store.add_conversation(msgs)
        assert a == 1
        # a split that fails on its second conversation rolls back, chunk ids drawn included
        with pytest.raises(StoreError, match="does not exist"):
            store.split([(a, [msgs, msgs]), (999, [msgs])])
        assert store.conversation_ids() == [a] and store.count_conversations(status="deleted") == 0
        b = store.add_conversation(msgs)
        assert b > a + 2          # ids drawn by the rolled-back split are not handed out again
        assert store.conversation_ids() == [a, b]
    finally:
        store.close()


def test_version_4_database_migrates_to_5_keeping_its_data(tmp_path):
    """A database as the studio left it at schema version 4 (migrations 1-4 run, rows in every table, tool-use
    columns filled) gets migrations 5 (battles, ratings), 6 (judge answers, runs, judgments) and 7 (preference
    sets and pairs) only: every row
    stays, ids go on, the new tables start empty with their own sequences."""
    from studio.store.schema import MIGRATIONS, V4_SEQUENCES

    db = tmp_path / "v4.duckdb"
    counts = make_v2_db(db)
    con = duckdb.connect(str(db))
    for m in MIGRATIONS[2:4]:                          # 3 (tool columns, job log) and 4 (id sequences)
        m.run(con)
    con.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    calls = [{"type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}}]
    con.execute("UPDATE messages SET tool_calls = ?::JSON WHERE conversation_id = 2 AND idx = 1", [json.dumps(calls)])
    con.execute("UPDATE conversations SET tools = '[{\"name\": \"add\"}]' WHERE id = 2")
    con.execute("UPDATE jobs SET log = 'Traceback: ...' WHERE id = 3")
    con.close()
    assert columns(db, "battles") == []                 # no such table yet

    store = Store(db, index_in_background=False)
    try:
        assert stored_version(store) == SCHEMA_VERSION == 8  # 7: preference sets, 8: job item progress
        assert {t: store._q(f"SELECT count(*) FROM {t}")[0][0] for t in TABLES} == counts
        c2 = store.get_conversation(2)
        assert c2["messages"][1]["tool_calls"] == calls and c2["tools"] == [{"name": "add"}]
        assert store.get_job(3)["log"] == "Traceback: ..."
        assert store.get_conversation(1)["messages"] == OLD_MESSAGES[1]
        assert store.battles() == [] and store.ratings() == [] and store.battle_count() == 0
        assert store.judge_runs() == [] and store.answer_count() == 0 and store.latest_judge_run_id() is None
        assert store.preference_sets() == []
        conv = OLD_MESSAGES[2]
        b = store.add_battle({"round_id": "r1", "model_a": "a", "model_b": "b", "winner": "tie",
                              "conversation_a": conv, "conversation_b": conv})
        assert b == 1 and store.add_rating("a", conv, 1) == 1
        assert store.add_conversation(conv, origin="imported") == 6          # ids go on above the old ones
        seqs = {r[0] for r in store._q("SELECT sequence_name FROM duckdb_sequences()")}
        assert seqs == set(ID_SEQUENCES.values()) == set(V4_SEQUENCES.values()) | {"battles_id_seq", "ratings_id_seq",
                                                                     "answers_id_seq", "judge_runs_id_seq",
                                                                     "judgments_id_seq",
                                                                     "preference_sets_id_seq"}
    finally:
        store.close()
