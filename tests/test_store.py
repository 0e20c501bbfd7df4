"""Tests for studio/store.py through the Studio service: imports, listing, editing with revisions, soft delete,
export round trips and the persisted model registry, all on a real DuckDB file in a temporary folder."""

from __future__ import annotations

import dataclasses

import json
import os
from pathlib import Path

import duckdb
import pytest

from studio.core import Studio
from studio.formats import ConversationRecord, ParsedFile, SeedRecord, read_file
from studio.registry import DEFAULT_MODEL_NAME, RegistryError
from studio.store import StaleVersionError, StoreError


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def table_count(studio: Studio, table: str) -> int:
    return studio.store._q(f"SELECT count(*) FROM {table}")[0][0]


# A ShareGPT file: 3 good rows (one multi-round with a system message, one with a numeric id, one without id)
# and 3 bad rows (roles not alternating, unknown 'from', empty message).
SHAREGPT_ROWS = [
    {"id": "wv-1", "conversations": [
        {"from": "system", "value": "You are terse."},
        {"from": "human", "value": "What is DuckDB?"},
        {"from": "gpt", "value": "An in-process analytical database."},
        {"from": "human", "value": "Does it need a server?"},
        {"from": "gpt", "value": "No, it runs inside your process."},
    ]},
    {"id": "wv-2", "conversations": [
        {"from": "human", "value": "Hi"},
        {"from": "human", "value": "Hello?"},
        {"from": "gpt", "value": "Hello."},
    ]},
    {"id": 42, "conversations": [
        {"from": "human", "value": "Name a prime."},
        {"from": "gpt", "value": "7"},
    ]},
    {"id": "wv-4", "conversations": [
        {"from": "robot", "value": "beep"},
        {"from": "gpt", "value": "boop"},
    ]},
    {"id": "wv-5", "conversations": [
        {"from": "human", "value": "   "},
        {"from": "gpt", "value": "Nothing to answer."},
    ]},
    {"conversations": [
        {"from": "human", "value": "Café ou thé ?"},
        {"from": "gpt", "value": "  Thé, merci.\n"},
    ]},
]


@pytest.fixture
def sharegpt_file(tmp_path) -> Path:
    return write_json(tmp_path / "crafted_sharegpt.json", SHAREGPT_ROWS)


# ------------------------------------------------------------------------------------------------ imports


def test_import_wizardlm_testset(studio, data_dir):
    res = studio.import_file(data_dir / "wizardlm_testset.jsonl")
    assert res.format == "wizardlm_testset"
    assert (res.n_seeds, res.n_conversations, res.bad_rows, res.duplicate) == (218, 0, [], False)
    df, total = studio.store.list_seeds(res.source_id, limit=3)
    assert total == 218
    first = json.loads((data_dir / "wizardlm_testset.jsonl").read_text().splitlines()[0])
    assert df.iloc[0]["instruction"] == first["Instruction"]
    assert df.iloc[0]["skill"] == first["Skill"]
    assert int(df.iloc[0]["difficulty"]) == int(first["Difficulty"])
    assert df.iloc[0]["row_no"] == 1
    assert studio.store.count_conversations() == 0
    src = studio.store.list_sources()
    assert list(src["name"]) == ["wizardlm_testset.jsonl"]
    assert int(src.iloc[0]["n_seeds"]) == 218


def test_import_alpaca_links_conversations_to_seeds(studio, data_dir):
    rows = json.loads((data_dir / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    res = studio.import_file(data_dir / "alpaca_en_demo.json")
    assert res.format == "alpaca"
    # the file repeats 14 of its rows exactly: each is imported once and counted as a duplicate
    distinct = {(r["instruction"], r["input"], r["output"]) for r in rows}
    assert len(rows) == 999 and len(distinct) == 985
    assert (res.n_seeds, res.n_conversations, res.bad_rows, res.n_duplicates) == (985, 985, [], 14)
    assert "14 duplicate rows skipped" in res.summary()
    assert studio.store.count_conversations(source_id=res.source_id, origin="imported") == 985
    # every conversation points at the seed of the same row
    pairs = studio.store._q(
        "SELECT c.id, s.row_no, s.instruction, s.input, s.output FROM conversations c "
        "JOIN seeds s ON s.id = c.seed_id ORDER BY c.id")
    assert len(pairs) == 985
    first_rows = sorted({(r["instruction"], r["input"], r["output"]): n
                         for n, r in reversed(list(enumerate(rows, 1)))}.values())
    assert [p[1] for p in pairs] == first_rows
    # spot-check one row with an input and one without, message by message
    with_input = next(i for i, r in enumerate(rows) if r["input"].strip())
    without = next(i for i, r in enumerate(rows) if not r["input"].strip())
    for i in (with_input, without):
        cid = pairs[i][0]
        conv = studio.store.get_conversation(cid)
        r = rows[i]
        user = r["instruction"] + (f"\n\n{r['input']}" if r["input"].strip() else "")
        assert conv["messages"] == [{"role": "user", "content": user}, {"role": "assistant", "content": r["output"]}]
        assert conv["origin"] == "imported" and conv["status"] == "new" and conv["version"] == 1
        assert conv["source"] == "alpaca_en_demo.json"
        assert (pairs[i][2], pairs[i][3], pairs[i][4]) == (r["instruction"], r["input"], r["output"])


def test_import_sharegpt_with_bad_rows(studio, sharegpt_file):
    res = studio.import_file(sharegpt_file)
    assert res.format == "sharegpt"
    assert res.n_seeds == 0 and res.n_conversations == 3
    assert [r for r, _ in res.bad_rows] == [2, 4, 5]
    reasons = dict(res.bad_rows)
    assert "roles must alternate" in reasons[2]
    assert "unknown role 'robot'" in reasons[4]
    assert "empty text" in reasons[5]
    assert "3 bad rows skipped" in res.summary()
    df, total = studio.store.list_conversations(source_id=res.source_id)
    assert total == 3
    assert list(df["title"]) == ["What is DuckDB?", "Name a prime.", "Café ou thé ?"]
    assert list(df["rounds"]) == [2, 1, 1]
    assert list(df["turns"]) == [4, 2, 2]
    first = studio.store.get_conversation(int(df.iloc[0]["id"]))
    assert first["external_id"] == "wv-1"
    assert first["messages"][0] == {"role": "system", "content": "You are terse."}
    assert len(first["messages"]) == 5
    assert studio.store.get_conversation(int(df.iloc[1]["id"]))["external_id"] == "42"
    assert studio.store.get_conversation(int(df.iloc[2]["id"]))["external_id"] is None
    # content is kept verbatim, whitespace included
    assert studio.store.get_conversation(int(df.iloc[2]["id"]))["messages"][1]["content"] == "  Thé, merci.\n"
    assert int(studio.store.list_sources().iloc[0]["n_bad"]) == 3


def test_import_openai_messages_with_bad_rows(studio, tmp_path):
    rows = [
        {"id": "oa-1", "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "assistant", "content": "I start"}, {"role": "user", "content": "no"}]},
        {"messages": [{"role": "user", "content": "ends with user"}]},
        {"messages": "not a list"},
        {"id": "oa-5", "messages": [{"role": "system", "content": "Be kind."},
                                    {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    with path.open("a", encoding="utf-8") as f:
        f.write("{broken json\n")
    res = studio.import_file(path)
    assert res.format == "openai_messages"
    assert res.n_conversations == 2 and res.n_seeds == 0
    assert [r for r, _ in res.bad_rows] == [2, 3, 4, 6]
    reasons = dict(res.bad_rows)
    assert "first message must be from 'user'" in reasons[2]
    assert "must end with an assistant message" in reasons[3]
    assert "not a list" in reasons[4]
    assert "invalid JSON" in reasons[6]
    ids = [eid for eid, _ in studio.store.iter_conversations(source_id=res.source_id)]
    assert ids == ["oa-1", "oa-5"]
    df, _ = studio.store.list_conversations()
    conv = studio.store.get_conversation(int(df.iloc[1]["id"]))
    assert conv["messages"] == rows[4]["messages"]


def test_import_same_file_twice_is_duplicate(studio, data_dir, tmp_path):
    first = studio.import_file(data_dir / "wizardlm_testset.jsonl")
    again = studio.import_file(data_dir / "wizardlm_testset.jsonl")
    assert again.duplicate is True
    assert again.source_id == first.source_id
    assert (again.n_seeds, again.n_conversations) == (0, 0)
    assert "already imported" in again.summary()
    # same bytes under another name are the same content
    copy = tmp_path / "renamed.jsonl"
    copy.write_bytes((data_dir / "wizardlm_testset.jsonl").read_bytes())
    assert studio.import_file(copy).duplicate is True
    assert table_count(studio, "seeds") == 218
    assert table_count(studio, "sources") == 1


def test_import_is_one_transaction(studio, sharegpt_file):
    """A failure half way through an import (a hand-built ParsedFile whose second conversation has a message
    without a role, which violates messages.role NOT NULL after the source, seeds and conversations were
    inserted) rolls everything back, and the store keeps working."""
    studio.import_file(sharegpt_file)
    before = {t: table_count(studio, t) for t in ("sources", "seeds", "conversations", "messages", "revisions")}
    good = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    broken = [{"role": "user", "content": "q2"}, {"role": None, "content": "a2"}]
    parsed = ParsedFile(path="hand.json", name="hand.json", format="alpaca", sha256="cd" * 32, n_rows=2,
                        seeds=[SeedRecord(1, "q"), SeedRecord(2, "q2")],
                        conversations=[ConversationRecord(1, good), ConversationRecord(2, broken)], bad_rows=[])
    with pytest.raises(duckdb.Error):
        studio.store.import_parsed(parsed)
    after = {t: table_count(studio, t) for t in before}
    assert after == before
    # not recorded as imported: the fixed file goes in, not as a duplicate
    parsed.conversations[1] = ConversationRecord(2, [{"role": "user", "content": "q2"},
                                                     {"role": "assistant", "content": "a2"}])
    res = studio.store.import_parsed(parsed)
    assert res.duplicate is False and (res.n_seeds, res.n_conversations) == (2, 2)
    assert table_count(studio, "conversations") == before["conversations"] + 2
    assert table_count(studio, "messages") == before["messages"] + 4


# ------------------------------------------------------------------------------------------------ listing


def test_list_conversations_filters_and_pages(studio, data_dir, sharegpt_file):
    alp = studio.import_file(data_dir / "alpaca_en_demo.json")
    sg = studio.import_file(sharegpt_file)
    seed = studio.store.get_seeds([1])[1]
    expanded_id = studio.store.add_conversation(
        [{"role": "user", "content": seed["instruction"]}, {"role": "assistant", "content": "Generated."}],
        source_id=alp.source_id, origin="expanded", seed_id=1, teacher="t")

    _, total = studio.store.list_conversations()
    assert total == 989   # alpaca_en_demo.json: 985 distinct rows (14 exact repeats skipped)
    page, total = studio.store.list_conversations(source_id=alp.source_id, limit=25, offset=976)
    assert total == 986
    assert len(page) == 10
    assert list(page["id"]) == sorted(page["id"])
    assert studio.store.list_conversations(source_id=sg.source_id)[1] == 3
    df, total = studio.store.list_conversations(origin="expanded")
    assert total == 1 and list(df["id"]) == [expanded_id] and df.iloc[0]["teacher"] == "t"
    assert studio.store.list_conversations(origin="imported")[1] == 988
    assert studio.store.list_conversations(origin="all")[1] == 989

    sg_ids = [int(i) for i in studio.store.list_conversations(source_id=sg.source_id)[0]["id"]]
    conv = studio.store.get_conversation(sg_ids[0])
    studio.store.save_messages(sg_ids[0], conv["messages"][:3], expected_version=1)
    studio.store.delete_conversations([sg_ids[1]])

    df, total = studio.store.list_conversations(status="edited")
    assert total == 1 and list(df["id"]) == [sg_ids[0]] and list(df["status"]) == ["edited"]
    df, total = studio.store.list_conversations(status="deleted")
    assert total == 1 and list(df["id"]) == [sg_ids[1]] and list(df["status"]) == ["deleted"]
    assert studio.store.list_conversations(status="new")[1] == 987
    assert studio.store.list_conversations(status="all")[1] == 988
    assert studio.store.list_conversations(source_id=sg.source_id, status="new")[1] == 1
    assert studio.store.count_conversations(source_id=sg.source_id) == 2
    # an empty page past the end still reports the total
    page, total = studio.store.list_conversations(source_id=sg.source_id, offset=50)
    assert len(page) == 0 and total == 2


def test_get_conversation_unknown_raises(studio):
    with pytest.raises(StoreError, match="conversation 999 does not exist"):
        studio.store.get_conversation(999)


# ------------------------------------------------------------------------------------------------ editing


def _two_round(studio, sharegpt_file) -> int:
    res = studio.import_file(sharegpt_file)
    return int(studio.store.list_conversations(source_id=res.source_id)[0].iloc[0]["id"])


def test_save_messages_keeps_revisions(studio, sharegpt_file):
    cid = _two_round(studio, sharegpt_file)
    original = studio.store.get_conversation(cid)["messages"]
    edit1 = [dict(m) for m in original]
    edit1[2]["content"] = "An embedded OLAP database."
    v = studio.store.save_messages(cid, edit1, expected_version=1, note="fix answer")
    assert v == 2
    edit2 = edit1[:3]  # drop the second round
    v = studio.store.save_messages(cid, edit2, expected_version=2)
    assert v == 3

    conv = studio.store.get_conversation(cid)
    assert conv["messages"] == edit2
    assert (conv["status"], conv["version"]) == ("edited", 3)
    assert (conv["n_turns"], conv["n_rounds"]) == (2, 1)
    assert conv["updated_at"] >= conv["created_at"]

    revs = studio.store.list_revisions(cid)
    assert list(revs["version"]) == [3, 2, 1]
    assert list(revs["note"]) == ["edit", "fix answer", "original"]
    assert list(revs["n_messages"]) == [3, 5, 5]
    assert studio.store.get_revision(cid, 1) == original
    assert studio.store.get_revision(cid, 1)[2]["content"] == "An in-process analytical database."
    assert studio.store.get_revision(cid, 2) == edit1
    with pytest.raises(StoreError, match="no version 4"):
        studio.store.get_revision(cid, 4)


def _snapshot(studio, cid):
    conv = studio.store.get_conversation(cid)
    return conv["messages"], conv["version"], conv["status"], list(studio.store.list_revisions(cid)["version"])


def test_stale_save_is_refused_and_changes_nothing(studio, sharegpt_file):
    cid = _two_round(studio, sharegpt_file)
    msgs = studio.store.get_conversation(cid)["messages"]
    mine = [dict(m) for m in msgs]
    theirs = [dict(m) for m in msgs]
    theirs[4]["content"] = "Theirs."
    assert studio.store.save_messages(cid, theirs, expected_version=1) == 2
    before = _snapshot(studio, cid)
    mine[4]["content"] = "Mine."
    with pytest.raises(StaleVersionError, match="version 2"):
        studio.store.save_messages(cid, mine, expected_version=1)
    assert _snapshot(studio, cid) == before
    assert studio.store.get_conversation(cid)["messages"][4]["content"] == "Theirs."


@pytest.mark.parametrize("mutate, reason", [
    (lambda m: m[2].update(content="   "), "empty text"),
    (lambda m: m.__setitem__(slice(1, 3), [m[2], m[1]]), "first message must be from 'user'"),
    (lambda m: m.pop(), "must end with an assistant message"),
    (lambda m: m.append({"role": "system", "content": "late"}), "system message is only allowed"),
    (lambda m: m[1].update(role="human"), "unknown role 'human'"),
])
def test_invalid_edit_is_refused_and_changes_nothing(studio, sharegpt_file, mutate, reason):
    cid = _two_round(studio, sharegpt_file)
    before = _snapshot(studio, cid)
    msgs = [dict(m) for m in before[0]]
    mutate(msgs)
    with pytest.raises(StoreError, match=reason):
        studio.store.save_messages(cid, msgs, expected_version=1)
    assert _snapshot(studio, cid) == before
    assert before[2] == "new"


def test_save_unknown_conversation_raises(studio):
    with pytest.raises(StoreError, match="does not exist"):
        studio.store.save_messages(7, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                                   expected_version=1)


def test_delete_and_restore(studio, sharegpt_file):
    res = studio.import_file(sharegpt_file)
    ids = [int(i) for i in studio.store.list_conversations()[0]["id"]]
    assert studio.store.delete_conversations(ids[:2]) == 2
    assert studio.store.delete_conversations(ids[:2]) == 0  # already deleted
    assert studio.store.list_conversations()[1] == 1
    assert [int(i) for i in studio.store.list_conversations(status="deleted")[0]["id"]] == ids[:2]
    assert [e for e, _ in studio.store.iter_conversations()] == [str(ids[2])]
    assert int(studio.store.list_sources().iloc[0]["n_conversations"]) == 1
    # still readable while deleted
    assert studio.store.get_conversation(ids[0])["deleted_at"] is not None
    assert studio.store.restore_conversations([ids[0]]) == 1
    assert studio.store.restore_conversations([ids[0]]) == 0
    df, total = studio.store.list_conversations(source_id=res.source_id)
    assert total == 2 and [int(i) for i in df["id"]] == [ids[0], ids[2]]
    conv = studio.store.get_conversation(ids[0])
    assert conv["deleted_at"] is None and conv["status"] == "new"
    assert studio.store.delete_conversations([]) == 0


# ------------------------------------------------------------------------------------------------ export


def test_iter_conversations_export_ids(studio, data_dir, sharegpt_file):
    sg = studio.import_file(sharegpt_file)
    studio.import_file(data_dir / "wizardlm_testset.jsonl")
    items = list(studio.store.iter_conversations(source_id=sg.source_id, batch=2))  # crosses a batch edge
    db_ids = [int(i) for i in studio.store.list_conversations(source_id=sg.source_id)[0]["id"]]
    assert [e for e, _ in items] == ["wv-1", "42", str(db_ids[2])]
    assert [len(m) for _, m in items] == [5, 2, 2]
    assert items[0][1][1] == {"role": "user", "content": "What is DuckDB?"}
    assert list(studio.store.iter_conversations(origin="expanded")) == []


def test_export_reimport_round_trip(tmp_path, sharegpt_file):
    from studio.config import Settings

    a = Studio(Settings(data_dir=tmp_path / "a"), start_jobs=False)
    try:
        a.import_file(sharegpt_file)
        originals = list(a.store.iter_conversations())
        path, n = a.export(tmp_path / "out.json")
        assert n == 3
        exported = json.loads(path.read_text(encoding="utf-8"))
        assert [r["id"] for r in exported] == [e for e, _ in originals]
        assert exported[0]["conversations"][0] == {"from": "system", "value": "You are terse."}
        assert exported[0]["conversations"][1]["from"] == "human"
        assert exported[0]["conversations"][2]["from"] == "gpt"
        opath, on = a.export(tmp_path / "out.jsonl", fmt="openai")
        assert on == 3
        with pytest.raises(ValueError, match="unknown export format"):
            a.export(tmp_path / "x.csv", fmt="csv")
    finally:
        a.close()

    b = Studio(Settings(data_dir=tmp_path / "b"), start_jobs=False)
    try:
        res = b.import_file(path)
        assert res.format == "sharegpt" and res.n_conversations == 3 and res.bad_rows == []
        assert list(b.store.iter_conversations()) == originals
        res2 = b.import_file(opath)
        assert res2.format == "openai_messages" and res2.n_conversations == 3
        assert [m for _, m in b.store.iter_conversations(source_id=res2.source_id)] == [m for _, m in originals]
    finally:
        b.close()


def test_export_default_path_and_filters(studio, sharegpt_file):
    studio.import_file(sharegpt_file)
    ids = [int(i) for i in studio.store.list_conversations()[0]["id"]]
    studio.store.delete_conversations([ids[0]])
    path, n = studio.export()
    assert path.parent == studio.settings.export_dir and path.suffix == ".json"
    assert n == 2
    assert [r["id"] for r in json.loads(path.read_text(encoding="utf-8"))] == ["42", str(ids[2])]
    path, n = studio.export(studio.settings.export_dir / "deleted.json", status="deleted")
    assert n == 1 and json.loads(path.read_text(encoding="utf-8"))[0]["id"] == "wv-1"


# ------------------------------------------------------------------------------------------------ models table


@pytest.fixture
def secret_env():
    """A secret in the environment variable WV_TEST_API_KEY for the test's duration."""
    secret = "sk-test-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
    old = os.environ.get("WV_TEST_API_KEY")
    os.environ["WV_TEST_API_KEY"] = secret
    yield secret
    if old is None:
        del os.environ["WV_TEST_API_KEY"]
    else:
        os.environ["WV_TEST_API_KEY"] = old


def test_registry_entries_persist_and_keys_are_never_stored(settings, secret_env):
    secret = secret_env
    settings = dataclasses.replace(settings, endpoint_key_envs=("WV_TEST_API_KEY",))  # the admin allows it
    s = Studio(settings, start_jobs=False)
    try:
        assert s.registry.names() == [DEFAULT_MODEL_NAME]
        s.registry.add_endpoint("remote", "http://127.0.0.1:9/v1/", "gpt-x", api_key_env="WV_TEST_API_KEY",
                                description="test endpoint")
        s.registry.add_endpoint("local-server", "http://localhost:8000/v1", "llama")
        with pytest.raises(RegistryError, match="cannot be removed"):
            s.registry.remove(DEFAULT_MODEL_NAME)
    finally:
        s.close()

    s = Studio(settings, start_jobs=False)
    try:
        assert s.registry.names() == [DEFAULT_MODEL_NAME, "remote", "local-server"]
        spec = s.registry.get("remote")
        assert (spec.kind, spec.base_url, spec.model, spec.api_key_env, spec.description) == (
            "endpoint", "http://127.0.0.1:9/v1", "gpt-x", "WV_TEST_API_KEY", "test endpoint")
        assert s.registry.get("local-server").api_key_env is None
        assert s.registry.get(DEFAULT_MODEL_NAME).builtin is True
        # a call that fails (nothing listens on port 9) does not leak the key into its error either
        with pytest.raises(RegistryError, match="cannot reach") as e:
            s.registry.chat("remote", [{"role": "user", "content": "hi"}])
        assert secret not in str(e.value)
        s.registry.remove("local-server")
        with pytest.raises(RegistryError, match="no model named 'local-server'"):
            s.registry.remove("local-server")
        rows = s.store._q("SELECT name, kind, CAST(spec AS VARCHAR) FROM models ORDER BY name")
        assert [r[0] for r in rows] == [DEFAULT_MODEL_NAME, "remote"]
        assert all(secret not in r[2] for r in rows)
    finally:
        s.close()

    s = Studio(settings, start_jobs=False)
    try:
        assert s.registry.names() == [DEFAULT_MODEL_NAME, "remote"]
    finally:
        s.close()

    db = Path(settings.db_path)
    blobs = [p.read_bytes() for p in db.parent.glob(db.name + "*")]
    assert blobs and any(b"WV_TEST_API_KEY" in b for b in blobs)  # the variable's name is stored ...
    assert not any(secret.encode() in b for b in blobs)  # ... its value never
