"""Tool-use conversations in the store, on a real DuckDB file: a message's ``tool_calls`` and a conversation's
``tools`` go in through every insert path (import, add, job item, split) and come back unchanged from
``get_conversation``, ``iter_conversations``, revisions and saves; messages without tool calls stay exactly
``{"role", "content"}`` and a conversation without tools has no ``tools`` key."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest

from studio.formats import ConversationRecord, ParsedFile
from studio.store import Store, StoreError

CALL = [{"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": json.dumps({"city": "Lima", "unit": "°C"})}}]
TOOLS = [{"name": "get_weather", "description": "Current weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
TOOL_CHAT = [
    {"role": "system", "content": "You can call tools."},
    {"role": "user", "content": "What is the weather in Lima?"},
    {"role": "assistant", "content": "Let me check.", "tool_calls": CALL},
    {"role": "tool", "content": '{"temperature": 19, "sky": "overcast"}'},
    {"role": "assistant", "content": "It is 19 °C and overcast in Lima."},
]
PLAIN = [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "Seven."}]


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "tools.duckdb", index_in_background=False)
    yield s
    s.close()


def parsed(records: list, name: str = "tools.json") -> ParsedFile:
    digest = hashlib.sha256((name + repr(records)).encode()).hexdigest()
    return ParsedFile(path=name, name=name, format="sharegpt", sha256=digest, n_rows=len(records), seeds=[],
                      conversations=records, bad_rows=[])


def test_import_keeps_tool_calls_and_tools(store):
    tool_rec = ConversationRecord(row=1, messages=TOOL_CHAT, external_id="t-1")
    tool_rec.tools = TOOLS                 # a parser that reads ShareGPT's "tools" sets this attribute
    plain_rec = ConversationRecord(row=2, messages=PLAIN, external_id="p-1")
    res = store.import_parsed(parsed([tool_rec, plain_rec]))
    assert res.n_conversations == 2
    tool_id, plain_id = store.conversation_ids()
    conv = store.get_conversation(tool_id)
    assert conv["messages"] == TOOL_CHAT and conv["tools"] == TOOLS
    assert (conv["n_turns"], conv["n_rounds"], conv["title"]) == (4, 2, "What is the weather in Lima?")
    plain = store.get_conversation(plain_id)
    assert "tools" not in plain and all(set(m) == {"role", "content"} for m in plain["messages"])
    assert list(store.iter_conversations()) == [("t-1", TOOL_CHAT), ("p-1", PLAIN)]
    assert list(store.iter_conversations(with_tools=True, batch=1)) == [("t-1", TOOL_CHAT, TOOLS),
                                                                        ("p-1", PLAIN, None)]
    # the text of a tool conversation is searchable (scan now, index later) like any other
    assert store.conversation_ids(query="overcast") == [tool_id]
    store.start_indexing()
    assert store.wait_for_index(60)
    assert store.conversation_ids(query="overcast lima") == [tool_id]


def test_add_and_job_item_keep_tools(store):
    cid = store.add_conversation(TOOL_CHAT, tools=TOOLS, teacher="t")
    assert store.get_conversation(cid)["messages"] == TOOL_CHAT
    job = store.create_job("expand", {}, [1])
    jid = store.complete_item(job, 1, {"messages": TOOL_CHAT, "tools": {"format": "sharegpt", "list": TOOLS}},
                              source_id=None)
    conv = store.get_conversation(jid)
    assert conv["tools"] == {"format": "sharegpt", "list": TOOLS} and conv["messages"] == TOOL_CHAT
    # an empty tool-call list is a value too: kept, not dropped
    empty = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello", "tool_calls": []}]
    assert store.get_conversation(store.add_conversation(empty))["messages"] == empty


def test_save_and_revisions_keep_tool_calls(store):
    msgs = [{"role": "user", "content": "Weather in Lima?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": CALL},
            {"role": "tool", "content": '{"temp_c": 19}'},
            {"role": "assistant", "content": "19 degrees."}]
    cid = store.add_conversation(msgs, tools=TOOLS)
    edited = [dict(m) for m in msgs]
    edited[1]["content"] = "Checking the weather service."
    edited[1]["tool_calls"] = CALL + [{"id": "call_2", "type": "function",
                                       "function": {"name": "get_weather", "arguments": '{"city": "Cusco"}'}}]
    assert store.save_messages(cid, edited, expected_version=1) == 2
    conv = store.get_conversation(cid)
    assert conv["messages"] == edited and conv["tools"] == TOOLS   # the save leaves the tools alone
    assert store.get_revision(cid, 1) == msgs                     # the original, kept at the first edit
    assert store.get_revision(cid, 2) == edited
    # dropping the calls in an edit drops the key
    plain = [{"role": "user", "content": "Weather in Lima?"}, {"role": "assistant", "content": "Mild."}]
    store.save_messages(cid, plain, expected_version=2)
    assert store.get_conversation(cid)["messages"] == plain
    assert store.get_revision(cid, 3) == plain


def test_split_chunks_keep_tools(store):
    long_chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "tool_calls": CALL},
                 {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    cid = store.add_conversation(long_chat, tools=TOOLS)
    op, new = store.split([(cid, [long_chat[:2], long_chat[2:]])])
    assert [store.get_conversation(i)["messages"] for i in new] == [long_chat[:2], long_chat[2:]]
    assert all(store.get_conversation(i)["tools"] == TOOLS for i in new)
    assert all(store.get_conversation(i)["origin"] == "split" for i in new)


def test_unknown_origin_is_refused(store):
    with pytest.raises(StoreError, match="unknown conversation origin 'pasted'"):
        store.add_conversation(PLAIN, origin="pasted")
    assert store.count_conversations(status="all") == 0


def test_duplicate_rows_reported_in_the_import_summary(store):
    p = parsed([ConversationRecord(row=1, messages=PLAIN)], "dups.json")
    res = store.import_parsed(p)
    assert res.n_duplicates == 0 and "duplicate" not in res.summary()
    p2 = parsed([ConversationRecord(row=1, messages=PLAIN)], "dups2.json")
    p2.n_duplicates = 4                                         # the parser counted repeated rows
    res = store.import_parsed(p2)
    assert res.n_duplicates == 4
    assert res.summary() == "dups2.json (sharegpt): 0 seeds, 1 conversations imported; 4 duplicate rows skipped."
