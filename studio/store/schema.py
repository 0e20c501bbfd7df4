"""The database schema as numbered migrations, applied in order.

The version a database is at is kept in ``meta.schema_version``. Opening a database (with write access) runs
each migration N whose number is above the stored version, in order, each in its own transaction together with
moving the stored version to N; a database at the latest version runs none. A database made by a newer studio
(stored version above ``SCHEMA_VERSION``) is refused, as is a read-only open of an older one.

Tables after every migration:

- ``sources``: one row per imported file (name, format, sha256 of the bytes, time, counts).
- ``seeds``: instructions (from an instruction file: Evol-Instruct, Alpaca, the WizardLM test set; or made by
  Evol-Instruct from a parent seed).
- ``conversations``: one row per conversation: origin (``filters.ORIGINS``), status (``new``/``edited``),
  ``deleted_at`` (soft delete, restorable), ``flag``, teacher, prompt version, generation parameters, token
  counts, ``tools`` (the tool schema of a tool-use conversation, JSON) and an optimistic-concurrency ``version``.
- ``messages``: the turns of each conversation, ``(conversation_id, idx)`` ordered; ``tool_calls`` (JSON list of
  OpenAI-shaped calls) on an assistant message that calls tools.
- ``revisions``: every version of every conversation's messages (kept from the first edit on).
- ``tags``, ``bulk_ops``: tags of conversations; bulk actions with what undoes them.
- ``models``: the model registry's persisted entries.
- ``jobs`` / ``job_items``: background jobs (with ``log``: a failure's traceback) and their per-seed items;
  ``job_item_progress``: the finished steps of items not yet done (resume goes on from the last one; migration 8).
- ``battles``: Arena battles (two models' answers to one prompt and the vote between them), voted in the studio
  (``round_id`` unique: one vote per round) or imported from Chatbot Arena battle files (``origin``
  ``import:<file name>``, the row's other fields in ``extra``, its keys in ``fields``, its content hash in
  ``row_sha256`` so a second import of the same row adds nothing); ``ratings``: single thumbs up/down on a
  model's answer in Chat.
- ``preference_sets`` / ``preference_pairs``: preference pairs for DPO, built from votes, thumbs, judge results
  or an imported file (migration 7).

New ids come from one sequence per table (``ID_SEQUENCES``), never from ``max(id) + 1`` at insert time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import duckdb

V4_SEQUENCES = {"sources": "sources_id_seq", "seeds": "seeds_id_seq", "conversations": "conversations_id_seq",
                "jobs": "jobs_id_seq", "bulk_ops": "bulk_ops_id_seq"}
"""The sequences migration 4 creates (for the tables of migrations 1-2; later tables bring their own)."""

ID_SEQUENCES = {**V4_SEQUENCES, "battles": "battles_id_seq", "ratings": "ratings_id_seq",
                "answers": "answers_id_seq", "judge_runs": "judge_runs_id_seq", "judgments": "judgments_id_seq",
                "preference_sets": "preference_sets_id_seq"}
"""The sequence that gives each table's new ids (``nextval``)."""

V1_TABLES = """
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
CREATE INDEX IF NOT EXISTS messages_conv ON messages(conversation_id);
CREATE INDEX IF NOT EXISTS revisions_conv ON revisions(conversation_id);
CREATE INDEX IF NOT EXISTS job_items_job ON job_items(job_id);
"""

V2_CURATION = """
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
CREATE INDEX IF NOT EXISTS tags_conv ON tags(conversation_id);
"""

V3_TOOLS_AND_JOB_LOG = """
ALTER TABLE messages ADD COLUMN IF NOT EXISTS tool_calls JSON;
ALTER TABLE conversations ADD COLUMN IF NOT EXISTS tools JSON;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS log VARCHAR;
"""


V5_ARENA = """
CREATE TABLE IF NOT EXISTS battles (
    id INTEGER PRIMARY KEY,
    round_id VARCHAR UNIQUE,
    model_a VARCHAR NOT NULL,
    model_b VARCHAR NOT NULL,
    winner VARCHAR NOT NULL CHECK (winner IN ('model_a', 'model_b', 'tie', 'tie (bothbad)')),
    judge VARCHAR,
    conversation_a JSON NOT NULL,
    conversation_b JSON NOT NULL,
    turn INTEGER,
    anony BOOLEAN,
    language VARCHAR,
    tstamp DOUBLE,
    params JSON,
    question_id JSON,
    origin VARCHAR NOT NULL,
    extra JSON,
    fields JSON,
    row_sha256 VARCHAR
);
CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY,
    model VARCHAR NOT NULL,
    conversation JSON NOT NULL,
    rating INTEGER NOT NULL CHECK (rating IN (-1, 1)),
    note VARCHAR,
    voter VARCHAR,
    tstamp DOUBLE NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS battles_id_seq START WITH 1;
CREATE SEQUENCE IF NOT EXISTS ratings_id_seq START WITH 1;
"""
"""Migration 5: the Arena's battles (one vote per ``round_id``, enforced by the UNIQUE constraint; NULL for
imported rows, which may repeat) and Chat's single ratings, with their id sequences. ``question_id`` is JSON
because Arena files hold it as text (Chatbot Arena) or as a number (MT-bench human judgments)."""


V6_JUDGE = """
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY,
    model VARCHAR NOT NULL,
    question_set VARCHAR NOT NULL,
    question_id VARCHAR NOT NULL,
    turns JSON NOT NULL,
    params VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    UNIQUE (model, question_set, question_id, params)
);
CREATE TABLE IF NOT EXISTS judge_runs (
    id INTEGER PRIMARY KEY,
    job_id INTEGER,
    mode VARCHAR NOT NULL CHECK (mode IN ('single', 'table', 'pairwise')),
    judge VARCHAR NOT NULL,
    models JSON NOT NULL,
    question_set VARCHAR NOT NULL,
    questions JSON NOT NULL,
    "limit" INTEGER,
    baseline VARCHAR,
    params JSON,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS judgments (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    question_id VARCHAR NOT NULL,
    turn INTEGER NOT NULL,
    jkey VARCHAR NOT NULL,
    model VARCHAR,
    models JSON,
    model_a VARCHAR,
    model_b VARCHAR,
    "order" VARCHAR,
    score DOUBLE,
    scores JSON,
    winner VARCHAR,
    prompt_name VARCHAR NOT NULL,
    judgment VARCHAR,
    error VARCHAR,
    created_at TIMESTAMP NOT NULL,
    UNIQUE (run_id, question_id, turn, jkey)
);
CREATE INDEX IF NOT EXISTS judgments_run ON judgments(run_id);
CREATE SEQUENCE IF NOT EXISTS answers_id_seq START WITH 1;
CREATE SEQUENCE IF NOT EXISTS judge_runs_id_seq START WITH 1;
CREATE SEQUENCE IF NOT EXISTS judgments_id_seq START WITH 1;
"""
"""Migration 6: LLM-as-judge. ``answers``: a model's answers to one question (``turns``: one string per user
turn) under one set of generation parameters (``params``: canonical JSON, temperature included), reused by
later runs; ``judge_runs``: one run (mode, judge, models, the questions asked, as JSON); ``judgments``: one
judge verdict each, unique per ``(run_id, question_id, turn, jkey)`` so a resumed run never judges anything
twice (``jkey``: ``single|<model>``, ``table``, or ``pair|<model_a>|<model_b>|<order>``)."""


V7_PREFERENCES = """
CREATE TABLE IF NOT EXISTS preference_sets (
    id INTEGER PRIMARY KEY,
    name VARCHAR NOT NULL,
    sources JSON NOT NULL,
    skipped JSON NOT NULL,
    sha256 VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS preference_pairs (
    set_id INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    source VARCHAR NOT NULL,
    ref VARCHAR,
    prompt JSON NOT NULL,
    chosen VARCHAR NOT NULL,
    rejected VARCHAR NOT NULL,
    model_chosen VARCHAR,
    model_rejected VARCHAR,
    dropped BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (set_id, idx)
);
CREATE SEQUENCE IF NOT EXISTS preference_sets_id_seq START WITH 1;
"""
"""Migration 7: preference sets for DPO (``studio.preferences``). ``preference_sets``: one set (name, what it was
built from as ``sources``, the counts left out as ``skipped``, ``sha256`` of its kept pairs' snapshot bytes, kept
current on every edit); ``preference_pairs``: its pairs in order (``prompt``: the messages up to the last user
turn; ``chosen``/``rejected``: the two answers; the models that gave them; ``dropped``: left out by an edit)."""

V8_ITEM_PROGRESS = """
CREATE TABLE IF NOT EXISTS job_item_progress (
    job_id INTEGER NOT NULL,
    seed_id INTEGER NOT NULL,
    steps_done INTEGER NOT NULL DEFAULT 0,
    state JSON NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX IF NOT EXISTS job_item_progress_job ON job_item_progress(job_id);
ALTER TABLE job_items ADD COLUMN IF NOT EXISTS detail VARCHAR;
"""
"""Migration 8 (pipelined expansion and evolution): ``job_item_progress``, the
finished steps of a job item not yet done (an expansion's conversation so far, an evolution's rewritten
instruction), one row per ``(job_id, seed_id)``, so a stopped, paused or killed job resumes each seed from its
last finished step instead of its first. A row goes when its item is done or failed (in the same transaction).
``job_items.detail``: what a failed item produced, for people to judge (an eliminated evolution's rejected
instruction and response)."""


def _id_sequences(con: duckdb.DuckDBPyConnection) -> None:
    """One sequence per table with ids, starting just above the table's largest id (1 when empty), so an
    existing database goes on numbering where it was (migration 4: the tables of migrations 1-2)."""
    for table, seq in V4_SEQUENCES.items():
        start = con.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {table}").fetchone()[0]
        con.execute(f"CREATE SEQUENCE IF NOT EXISTS {seq} START WITH {int(start)}")  # DDL takes no parameters


@dataclass(frozen=True)
class Migration:
    """One schema step: ``number`` (1, 2, ...), what it does (``title``), and ``sql`` or a function of the
    connection (``apply``). Each is written to be safe on a database that already has some of its changes
    (``IF NOT EXISTS``): a database made before version numbers were kept can be at a lower stored version than
    its tables."""

    number: int
    title: str
    sql: str | None = None
    apply: Callable[[duckdb.DuckDBPyConnection], None] | None = None

    def run(self, con: duckdb.DuckDBPyConnection) -> None:
        if self.sql:
            con.execute(self.sql)
        if self.apply:
            self.apply(con)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "sources, seeds, conversations, messages, revisions, models, jobs", sql=V1_TABLES),
    Migration(2, "tags, bulk actions with undo, flags, token counts", sql=V2_CURATION),
    Migration(3, "tool-use conversations (messages.tool_calls, conversations.tools); jobs.log", sql=V3_TOOLS_AND_JOB_LOG),
    Migration(4, "id sequences", apply=_id_sequences),
    Migration(5, "Arena battles (one vote per round) and Chat ratings", sql=V5_ARENA),
    Migration(6, "LLM-as-judge: answers, judge runs, judgments", sql=V6_JUDGE),
    Migration(7, "preference sets and pairs (DPO)", sql=V7_PREFERENCES),
    Migration(8, "finished steps of unfinished job items (pipelined expansion and evolution)",
              sql=V8_ITEM_PROGRESS),
)

SCHEMA_VERSION = MIGRATIONS[-1].number
"""The schema version this studio writes (the last migration's number)."""

assert [m.number for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1)), "migrations must be numbered 1, 2, ..."


def stored_version(con: duckdb.DuckDBPyConnection) -> int:
    """The database's ``meta.schema_version`` (0 for a new file or one without the ``meta`` table)."""
    has_meta = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'meta' AND "
                           "schema_name = 'main'").fetchone()[0]
    if not has_meta:
        return 0
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def _too_new(version: int) -> str | None:
    if version > SCHEMA_VERSION:
        return (f"its schema is version {version}, newer than this studio's ({SCHEMA_VERSION}); "
                f"update the studio to open it")
    return None


def migrate(con: duckdb.DuckDBPyConnection) -> str | None:
    """Bring a database up to ``SCHEMA_VERSION``: run each migration above the stored version, in order, each
    in one transaction with the new version number.

    Returns:
        None when the database is at ``SCHEMA_VERSION`` now, else why it can't be opened (made by a newer
        studio; nothing is changed then).
    """
    con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    version = stored_version(con)
    problem = _too_new(version)
    if problem:
        return problem
    for m in MIGRATIONS:
        if version >= m.number:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            m.run(con)
            con.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET "
                        "value = excluded.value", [str(m.number)])
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        version = m.number
    return None


def check_readable(con: duckdb.DuckDBPyConnection) -> str | None:
    """For a read-only open: None when the database is at ``SCHEMA_VERSION``, else why it can't be used as is."""
    version = stored_version(con)
    if version < SCHEMA_VERSION:
        return (f"its schema is version {version}, older than this studio's ({SCHEMA_VERSION}); open it once "
                f"with write access to upgrade it")
    return _too_new(version)
