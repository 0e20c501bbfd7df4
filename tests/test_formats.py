"""Tests for studio/formats.py: detection, parsing, bad rows, whole-file errors and export round trips."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
from pathlib import Path

import pytest

from studio.formats import (
    FORMATS,
    BadRow,
    ConversationRecord,
    FormatError,
    ParsedFile,
    SeedRecord,
    detect_format,
    read_file,
    sharegpt_record,
    validate_messages,
    write_openai_jsonl,
    write_sharegpt,
)


def shared_data() -> Path:
    """The reference data folder: $STUDIO_SHARED_DATA, else <repo>/../shared/data (i.e. /work/shared/data)."""
    env = os.environ.get("STUDIO_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def write_json(path: Path, rows) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_rows(tmp_path: Path, rows, layout: str = "json", name: str = "data") -> Path:
    if layout == "json":
        return write_json(tmp_path / f"{name}.json", rows)
    return write_jsonl(tmp_path / f"{name}.jsonl", rows)


def conv(*pairs, system: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system is not None else []
    for q, a in pairs:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return msgs


JSON_FORMATS = [f for f in FORMATS if f != "text"]  # text is plain lines, tested on its own

# Two good rows of each JSON format.
SAMPLES = {
    "evol_instruct": [
        {"instruction": "Explain recursion.", "output": "Recursion is a function calling itself."},
        {"instruction": "Name a prime.", "output": "7"},
    ],
    "alpaca": [
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
    ],
    "wizardlm_testset": [
        {"idx": 1, "Skill": "Math", "Difficulty": 3, "Instruction": "What is 2+2?"},
        {"idx": 2, "Skill": "Writing", "Difficulty": 8, "Instruction": "Write a sonnet."},
    ],
    "instructions": [
        {"instruction": "Give three tips for staying healthy."},
        {"instruction": "Summarise the text.", "input": "The sky is blue."},
    ],
    "sharegpt": [
        {"id": "a1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"id": 7, "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "user", "value": "Q1"}, {"from": "chatgpt", "value": "A1"},
            {"from": "Human", "value": "Q2"}, {"from": "bard", "value": "A2"},
        ]},
    ],
    "openai_messages": [
        {"id": "x", "messages": conv(("Hi", "Hello"), system="sys")},
        {"messages": conv(("Q1", "A1"), ("Q2", "A2"))},
    ],
}


# ----------------------------------------------------------------------------------------------------
# Real reference files
# ----------------------------------------------------------------------------------------------------


def test_real_wizardlm_testset():
    path = shared_data() / "wizardlm_testset.jsonl"
    assert detect_format(path) == "wizardlm_testset"
    pf = read_file(path)
    assert isinstance(pf, ParsedFile)
    assert pf.format == "wizardlm_testset"
    assert pf.name == "wizardlm_testset.jsonl"
    assert pf.path == str(path)
    assert pf.n_rows == 218
    assert len(pf.seeds) == 218
    assert pf.conversations == []
    assert pf.bad_rows == []
    assert pf.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    first = pf.seeds[0]
    assert first.row == 1
    assert first.instruction == "If a car travels 120 miles in 2 hours, what is its average speed in miles per hour?"
    assert first.input == "" and first.output is None
    assert first.meta == {"idx": 1, "skill": "Math", "difficulty": 1}
    assert [s.row for s in pf.seeds] == list(range(1, 219))
    assert all(1 <= s.meta["difficulty"] <= 10 for s in pf.seeds)
    assert {"Math", "Code Generation", "Reasoning"} <= {s.meta["skill"] for s in pf.seeds}


def test_real_alpaca_demo():
    path = shared_data() / "alpaca_en_demo.json"
    assert detect_format(path) == "alpaca"
    pf = read_file(path)
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert pf.format == "alpaca"
    assert pf.n_rows == 999
    assert pf.bad_rows == []  # every row of the demo file is complete
    # 14 rows repeat an earlier row exactly: imported once, counted as duplicates.
    unique = {(r["instruction"], r["input"], r["output"]) for r in raw}
    assert len(unique) == 985
    assert pf.n_duplicates == 14
    assert len(pf.seeds) == 985
    assert len(pf.conversations) == 985
    assert [s.row for s in pf.seeds] == [c.row for c in pf.conversations]
    assert pf.seeds[0].instruction == "Describe a process of making crepes."
    assert pf.seeds[0].input == ""
    assert pf.seeds[0].output.startswith("Making crepes is an easy and delicious process!")
    assert pf.conversations[0].messages == [
        {"role": "user", "content": "Describe a process of making crepes."},
        {"role": "assistant", "content": raw[0]["output"]},
    ]
    with_input = [s for s in pf.seeds if s.input.strip()]
    assert len(with_input) == len({(r["instruction"], r["input"], r["output"]) for r in raw if r["input"].strip()})
    s = with_input[0]
    c = next(c for c in pf.conversations if c.row == s.row)
    assert c.row == s.row
    assert c.messages[0]["content"] == s.instruction + "\n\n" + s.input
    assert c.messages[1]["content"] == s.output


@pytest.mark.parametrize("name", ["mt_bench_questions.jsonl", "judge_prompts.jsonl"])
def test_real_files_of_other_shapes_are_not_recognised(name):
    path = shared_data() / name
    with pytest.raises(FormatError) as ei:
        read_file(path)
    assert str(path) in str(ei.value)
    assert "format not recognised" in ei.value.reason


# ----------------------------------------------------------------------------------------------------
# Detection and parsing of each format, JSON array and JSON lines
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["json", "jsonl"])
@pytest.mark.parametrize("fmt", JSON_FORMATS)
def test_detect_each_format_in_both_layouts(tmp_path, fmt, layout):
    path = write_rows(tmp_path, SAMPLES[fmt], layout)
    assert detect_format(path) == fmt
    pf = read_file(path)
    assert pf.format == fmt
    assert pf.n_rows == 2
    assert pf.bad_rows == []


def test_array_and_lines_give_the_same_records(tmp_path):
    a = read_file(write_rows(tmp_path, SAMPLES["sharegpt"], "json", "a"))
    b = read_file(write_rows(tmp_path, SAMPLES["sharegpt"], "jsonl", "b"))
    assert a.conversations == b.conversations
    assert a.sha256 != b.sha256


def test_evol_instruct_records(tmp_path):
    pf = read_file(write_rows(tmp_path, SAMPLES["evol_instruct"]))
    assert pf.seeds == [
        SeedRecord(row=1, instruction="Explain recursion.", input="", output="Recursion is a function calling itself."),
        SeedRecord(row=2, instruction="Name a prime.", input="", output="7"),
    ]
    assert pf.conversations == [
        ConversationRecord(row=1, messages=[
            {"role": "user", "content": "Explain recursion."},
            {"role": "assistant", "content": "Recursion is a function calling itself."},
        ]),
        ConversationRecord(row=2, messages=[
            {"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"},
        ]),
    ]


def test_alpaca_records_join_instruction_and_input(tmp_path):
    pf = read_file(write_rows(tmp_path, SAMPLES["alpaca"], "jsonl"))
    assert pf.seeds[0] == SeedRecord(row=1, instruction="Translate to French.", input="Good morning", output="Bonjour")
    assert pf.conversations[0].messages[0] == {"role": "user", "content": "Translate to French.\n\nGood morning"}
    assert pf.conversations[1].messages == [
        {"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"},
    ]


def test_wizardlm_testset_records(tmp_path):
    pf = read_file(write_rows(tmp_path, SAMPLES["wizardlm_testset"], "jsonl"))
    assert pf.seeds == [
        SeedRecord(row=1, instruction="What is 2+2?", meta={"idx": 1, "skill": "Math", "difficulty": 3}),
        SeedRecord(row=2, instruction="Write a sonnet.", meta={"idx": 2, "skill": "Writing", "difficulty": 8}),
    ]
    assert pf.conversations == []


def test_sharegpt_records_map_roles_and_ids(tmp_path):
    rows = SAMPLES["sharegpt"] + [
        {"conversations": [{"from": "bing", "value": "x"}]},  # bad: first message from assistant
        {"conversations": [{"from": "user", "value": "q"}, {"from": "model", "value": "a"},
                           {"from": "human", "value": "q2"}, {"from": "assistant", "value": "a2"}],
         "idx": 5},
    ]
    pf = read_file(write_rows(tmp_path, rows))
    assert [c.external_id for c in pf.conversations] == ["a1", "7", None]
    assert pf.conversations[0].messages == conv(("Hi", "Hello"))
    assert pf.conversations[1].messages == conv(("Q1", "A1"), ("Q2", "A2"), system="Be brief.")
    assert pf.conversations[2].messages == conv(("q", "a"), ("q2", "a2"))
    assert pf.conversations[2].meta == {"idx": 5}
    assert pf.bad_rows == [BadRow(3, "message 1: the first message must be from 'user', not 'assistant'")]


def test_openai_records(tmp_path):
    pf = read_file(write_rows(tmp_path, SAMPLES["openai_messages"], "jsonl"))
    assert pf.conversations == [
        ConversationRecord(row=1, messages=conv(("Hi", "Hello"), system="sys"), external_id="x"),
        ConversationRecord(row=2, messages=conv(("Q1", "A1"), ("Q2", "A2"))),
    ]
    assert pf.seeds == []


def test_openai_extra_message_keys_are_dropped(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q", "name": "bob"},
                          {"role": "assistant", "content": "a", "weight": 1}]}]
    pf = read_file(write_rows(tmp_path, rows, "jsonl"))
    assert pf.conversations[0].messages == conv(("q", "a"))


def test_detection_majority_of_first_rows(tmp_path):
    rows = ["not an object", 3] + SAMPLES["alpaca"] * 2 + SAMPLES["evol_instruct"] + [{"unrelated": 1}]
    path = write_rows(tmp_path, rows)
    assert detect_format(path) == "alpaca"
    pf = read_file(path)
    # evol rows parse fine under alpaca (input is optional); the two non-objects are bad rows.
    assert pf.n_rows == 9
    assert [b.row for b in pf.bad_rows] == [1, 2, 9]
    assert pf.bad_rows[0].reason == "row is not a JSON object (string)"
    assert pf.bad_rows[1].reason == "row is not a JSON object (number)"
    assert pf.bad_rows[2].reason == "missing field 'instruction'"
    # the second copy of the two alpaca rows repeats the first: imported once, counted
    assert [s.row for s in pf.seeds] == [3, 4, 7, 8]
    assert pf.n_duplicates == 2


def test_detection_only_looks_at_first_20_objects(tmp_path):
    rows = SAMPLES["evol_instruct"] * 6 + SAMPLES["sharegpt"] * 20  # 12 evol + 8 sharegpt in the first 20
    assert detect_format(write_rows(tmp_path, rows, "jsonl")) == "evol_instruct"


def test_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "crlf.jsonl"
    text = "\r\n".join(json.dumps(r) for r in SAMPLES["openai_messages"]) + "\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    pf = read_file(path)
    assert pf.format == "openai_messages"
    assert len(pf.conversations) == 2 and pf.bad_rows == []


def test_single_object_file_is_one_row(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(SAMPLES["sharegpt"][0], indent=2), encoding="utf-8")
    pf = read_file(path)
    assert pf.format == "sharegpt" and pf.n_rows == 1
    assert pf.conversations[0].external_id == "a1"


# ----------------------------------------------------------------------------------------------------
# Bad rows
# ----------------------------------------------------------------------------------------------------

GOOD_EVOL = {"instruction": "ok", "output": "fine"}
GOOD_SHAREGPT = SAMPLES["sharegpt"][0]
GOOD_OPENAI = SAMPLES["openai_messages"][1]
GOOD_TEST = SAMPLES["wizardlm_testset"][0]
H = lambda v: {"from": "human", "value": v}  # noqa: E731
G = lambda v: {"from": "gpt", "value": v}  # noqa: E731

BAD_CASES = {
    # name: (good row for the file, bad row, expected reason)
    "not_object": (GOOD_EVOL, ["instruction", "output"], "row is not a JSON object (array)"),
    "missing_instruction": (GOOD_EVOL, {"output": "x", "instruction_": "y"}, "missing field 'instruction'"),
    "missing_output": (GOOD_EVOL, {"instruction": "x"}, "missing field 'output'"),
    "output_not_string": (GOOD_EVOL, {"instruction": "x", "output": 42}, "field 'output' is not a string (number)"),
    "instruction_null": (GOOD_EVOL, {"instruction": None, "output": "y"}, "field 'instruction' is not a string (null)"),
    "empty_instruction": (GOOD_EVOL, {"instruction": "  \n\t", "output": "y"}, "field 'instruction': empty text"),
    "empty_output": (GOOD_EVOL, {"instruction": "x", "output": ""}, "field 'output': empty text"),
    "instruction_too_long": (GOOD_EVOL, {"instruction": "x" * 51, "output": "y"},
                             "field 'instruction': text is 51 characters, longer than the limit of 50"),
    "alpaca_input_not_string": ({"instruction": "a", "input": "", "output": "b"},
                                {"instruction": "a", "input": ["z"], "output": "b"},
                                "field 'input' is not a string (array)"),
    "alpaca_joined_too_long": ({"instruction": "a", "input": "", "output": "b"},
                               {"instruction": "x" * 30, "input": "y" * 30, "output": "b"},
                               "message 1 (user): text is 62 characters, longer than the limit of 50"),
    "testset_empty_instruction": (GOOD_TEST, {"idx": 3, "Skill": "Math", "Difficulty": 2, "Instruction": ""},
                                    "field 'Instruction': empty text"),
    "testset_bad_difficulty": (GOOD_TEST, {"idx": 3, "Skill": "Math", "Difficulty": "hard", "Instruction": "q"},
                               "field 'Difficulty' is not an integer ('hard')"),
    "sharegpt_unknown_from": (GOOD_SHAREGPT, {"conversations": [H("q"), {"from": "narrator", "value": "a"}]},
                              "message 2: unknown role 'narrator' in 'from' "
                              "(expected human, gpt, system, function_call or observation)"),
    "sharegpt_user_follows_user": (GOOD_SHAREGPT, {"conversations": [H("q"), G("a"), H("q2"), H("q3"), G("a3")]},
                                   "message 4: role 'user' follows 'user' (roles must alternate)"),
    "sharegpt_assistant_follows_assistant": (GOOD_SHAREGPT, {"conversations": [H("q"), G("a"), G("a2")]},
                                             "message 3: role 'assistant' follows 'assistant' (roles must alternate)"),
    "sharegpt_first_is_assistant": (GOOD_SHAREGPT, {"conversations": [G("a"), H("q"), G("a")]},
                                    "message 1: the first message must be from 'user', not 'assistant'"),
    "sharegpt_first_after_system_is_assistant": (
        GOOD_SHAREGPT, {"conversations": [{"from": "system", "value": "s"}, G("a")]},
        "message 2: the first message must be from 'user', not 'assistant'"),
    "sharegpt_ends_with_user": (GOOD_SHAREGPT, {"conversations": [H("q"), G("a"), H("q2")]},
                                "message 3 (user): the conversation must end with an assistant message"),
    "sharegpt_system_in_middle": (GOOD_SHAREGPT,
                                  {"conversations": [H("q"), G("a"), {"from": "system", "value": "s"}, H("q"), G("a")]},
                                  "message 3: a system message is only allowed as the first message"),
    "sharegpt_only_system": (GOOD_SHAREGPT, {"conversations": [{"from": "system", "value": "s"}]},
                             "conversation has only a system message"),
    "sharegpt_empty_conversation": (GOOD_SHAREGPT, {"id": "e", "conversations": []}, "conversation has no messages"),
    "sharegpt_empty_message": (GOOD_SHAREGPT, {"conversations": [H("q"), G("   ")]}, "message 2 (assistant): empty text"),
    "sharegpt_message_too_long": (GOOD_SHAREGPT, {"conversations": [H("q"), G("z" * 60)]},
                                  "message 2 (assistant): text is 60 characters, longer than the limit of 50"),
    "sharegpt_missing_conversations": (GOOD_SHAREGPT, {"id": "z", "messages_": []}, "missing field 'conversations'"),
    "sharegpt_conversations_not_list": (GOOD_SHAREGPT, {"conversations": "hi"},
                                        "field 'conversations' is not a list (string)"),
    "sharegpt_missing_value": (GOOD_SHAREGPT, {"conversations": [H("q"), {"from": "gpt"}]},
                               "message 2: missing field 'value'"),
    "sharegpt_value_not_string": (GOOD_SHAREGPT, {"conversations": [H("q"), {"from": "gpt", "value": None}]},
                                  "message 2 (assistant): field 'value' is not a string (null)"),
    "sharegpt_message_not_object": (GOOD_SHAREGPT, {"conversations": [H("q"), "a"]},
                                    "message 2: not an object (string)"),
    "openai_unknown_role": (GOOD_OPENAI, {"messages": [{"role": "user", "content": "q"},
                                                       {"role": "function", "content": "r"}]},
                            "message 2: unknown role 'function' (expected system, user, assistant or tool)"),
    "openai_tool_after_user": (GOOD_OPENAI, {"messages": [{"role": "user", "content": "q"},
                                                          {"role": "tool", "content": "r"}]},
                               "message 2: role 'tool' follows 'user' (roles must alternate)"),
    "openai_content_not_string": (GOOD_OPENAI, {"messages": [{"role": "user", "content": 5},
                                                             {"role": "assistant", "content": "a"}]},
                                  "message 1 (user): field 'content' is not a string (number)"),
    "openai_text_part_without_text": (GOOD_OPENAI, {"messages": [{"role": "user", "content": [{"type": "text"}]},
                                                                 {"role": "assistant", "content": "a"}]},
                                      "message 1 (user): content part 1 (text) has no 'text' string"),
    "openai_missing_role": (GOOD_OPENAI, {"messages": [{"content": "q"}]}, "message 1: missing field 'role'"),
    "openai_empty_messages": (GOOD_OPENAI, {"messages": []}, "conversation has no messages"),
    "openai_messages_not_list": (GOOD_OPENAI, {"messages": {"role": "user"}},
                                 "field 'messages' is not a list (object)"),
}


def vary(row: dict, k: int) -> dict:
    """A copy of a good row whose first text ends with `` k``."""
    row = copy.deepcopy(row)
    if "conversations" in row:
        row["conversations"][0]["value"] += f" {k}"
    elif "messages" in row:
        row["messages"][0]["content"] += f" {k}"
    else:
        key = "Instruction" if "Instruction" in row else "instruction"
        row[key] += f" {k}"
    return row


@pytest.mark.parametrize("layout", ["json", "jsonl"])
@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_row_reason_and_number(tmp_path, case, layout):
    good, bad, reason = BAD_CASES[case]
    rows = [vary(good, 1), vary(good, 2), bad, vary(good, 4)]  # distinct, so none is a duplicate
    path = write_rows(tmp_path, rows, layout)
    # The bad row is the third row in the array, and on the third line of the JSONL file.
    fmt = detect_format(write_rows(tmp_path, [good], layout, "probe"))
    pf = read_file(path, max_message_chars=50, format=fmt)
    assert pf.bad_rows == [BadRow(3, reason)]
    assert pf.n_rows == 4
    good_records = pf.seeds if fmt == "wizardlm_testset" else pf.conversations
    assert [r.row for r in good_records] == [1, 2, 4]


def test_bad_rows_do_not_stop_good_rows(tmp_path):
    rows = []
    for i in range(10):
        if i in (2, 5, 9):
            rows.append({"conversations": [H(f"q{i}")]})  # ends with user
        else:
            rows.append({"id": f"c{i}", "conversations": [H(f"q{i}"), G(f"a{i}")]})
    pf = read_file(write_rows(tmp_path, rows))
    assert pf.n_rows == 10
    assert [b.row for b in pf.bad_rows] == [3, 6, 10]
    assert len(pf.conversations) == 7
    assert [c.external_id for c in pf.conversations] == ["c0", "c1", "c3", "c4", "c6", "c7", "c8"]
    assert pf.conversations[-1].messages == conv(("q8", "a8"))


def test_jsonl_invalid_line_and_blank_lines(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps(GOOD_SHAREGPT), "", "   ", '{"conversations": [', json.dumps(vary(GOOD_SHAREGPT, 5)), "", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    pf = read_file(path)
    assert pf.format == "sharegpt"
    assert pf.n_rows == 3  # blank lines are not rows
    assert len(pf.bad_rows) == 1
    assert pf.bad_rows[0].row == 4  # the line number in the file
    assert pf.bad_rows[0].reason.startswith("invalid JSON: ")
    assert "column 20" in pf.bad_rows[0].reason
    assert [c.row for c in pf.conversations] == [1, 5]


def test_message_length_limit_default_and_custom(tmp_path):
    rows = [{"conversations": [H("q"), G("a" * 100_001)]}, {"conversations": [H("q"), G("a" * 100_000)]}]
    path = write_rows(tmp_path, rows, "jsonl")
    pf = read_file(path)
    assert pf.bad_rows == [BadRow(1, "message 2 (assistant): text is 100001 characters, longer than the limit of 100000")]
    assert len(pf.conversations) == 1
    pf2 = read_file(path, max_message_chars=200_000)
    assert pf2.bad_rows == [] and len(pf2.conversations) == 2


# ----------------------------------------------------------------------------------------------------
# validate_messages
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("messages", [
    conv(("q", "a")),
    conv(("q", "a"), system="s"),
    conv(("q1", "a1"), ("q2", "a2"), ("q3", "a3"), system="s"),
])
def test_validate_messages_ok(messages):
    assert validate_messages(messages) is None


@pytest.mark.parametrize("messages, reason", [
    ([], "conversation has no messages"),
    ("q", "messages must be a list, not string"),
    ([{"role": "user", "content": "q"}], "message 1 (user): the conversation must end with an assistant message"),
    ([{"role": "user", "content": "q"}, {"role": "gpt", "content": "a"}],
     "message 2: unknown role 'gpt' (expected system, user, assistant or tool)"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}], "message 2 (assistant): empty text"),
    ([{"role": "system", "content": " "}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
     "message 1 (system): empty text"),
    (conv(("q", "a")) + [{"role": "user", "content": "b"}, {"role": "user", "content": "c"}],
     "message 4: role 'user' follows 'user' (roles must alternate)"),
    ([{"role": "assistant", "content": "a"}], "message 1: the first message must be from 'user', not 'assistant'"),
    (conv(("q", "a"), system="s") + [{"role": "system", "content": "s2"}],
     "message 4: a system message is only allowed as the first message"),
    ([{"role": "user", "content": "q"}, None], "message 2: not an object (null)"),
    ([{"role": 1, "content": "q"}], "message 1: field 'role' is not a string (number)"),
])
def test_validate_messages_reasons(messages, reason):
    assert validate_messages(messages) == reason


def test_validate_messages_length_limit():
    assert validate_messages(conv(("q", "abcdef")), max_message_chars=5) == (
        "message 2 (assistant): text is 6 characters, longer than the limit of 5"
    )
    assert validate_messages(conv(("q", "abcde")), max_message_chars=5) is None


# ----------------------------------------------------------------------------------------------------
# Whole-file errors
# ----------------------------------------------------------------------------------------------------


def _raises_format_error(path, fragment: str, **kw) -> FormatError:
    with pytest.raises(FormatError) as ei:
        read_file(path, **kw)
    e = ei.value
    assert e.path == str(path)
    assert str(e) == f"{path}: {e.reason}"
    assert fragment in e.reason, e.reason
    with pytest.raises(FormatError):
        detect_format(path)
    return e


def test_missing_file(tmp_path):
    _raises_format_error(tmp_path / "nope.json", "file not found")


def test_directory(tmp_path):
    _raises_format_error(tmp_path, "not a regular file")


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"instruction": "café", "output": "x"}\n'.encode("latin-1"))
    _raises_format_error(path, "not UTF-8")


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("\n  \n\n", "empty"),
    ("[]", "JSON array is empty"),
    ("hello world\nthis is text\n", "neither a JSON array nor JSON lines (line 1: Expecting value"),
    ('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c"\n', "not valid JSON (a JSON array was expected)"),
    ("42", "single JSON int"),
    ('"text"', "single JSON str"),
    ('[{"foo": 1}, {"bar": 2}]', "format not recognised from the keys of the first rows ['bar', 'foo']"),
    ("[1, 2, 3]", "format not recognised: no row is a JSON object"),
])
def test_whole_file_errors(tmp_path, text, fragment):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    _raises_format_error(path, fragment)


def test_format_error_is_value_error_and_pickles():
    e = FormatError("/x/y.json", "file not found")
    assert isinstance(e, ValueError)
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.path, e2.reason, str(e2)) == ("/x/y.json", "file not found", "/x/y.json: file not found")


# ----------------------------------------------------------------------------------------------------
# Explicit format
# ----------------------------------------------------------------------------------------------------


def test_explicit_format_skips_detection_but_validates(tmp_path):
    path = write_rows(tmp_path, SAMPLES["wizardlm_testset"], "jsonl")
    pf = read_file(path, format="sharegpt")
    assert pf.format == "sharegpt"
    assert pf.conversations == [] and pf.seeds == []
    assert pf.bad_rows == [BadRow(1, "missing field 'conversations'"), BadRow(2, "missing field 'conversations'")]


def test_explicit_format_overrides_detection(tmp_path):
    path = write_rows(tmp_path, SAMPLES["evol_instruct"])
    assert detect_format(path) == "evol_instruct"
    pf = read_file(path, format="alpaca")
    assert pf.format == "alpaca"
    assert [s.instruction for s in pf.seeds] == ["Explain recursion.", "Name a prime."]


def test_explicit_format_works_where_detection_fails(tmp_path):
    path = write_rows(tmp_path, [1, {"foo": 1}], "json")
    with pytest.raises(FormatError):
        read_file(path)
    pf = read_file(path, format="openai_messages")
    assert pf.bad_rows == [BadRow(1, "row is not a JSON object (number)"), BadRow(2, "missing field 'messages'")]


def test_explicit_unknown_format_is_a_caller_error(tmp_path):
    path = write_rows(tmp_path, SAMPLES["alpaca"])
    with pytest.raises(ValueError) as ei:
        read_file(path, format="csv")
    assert not isinstance(ei.value, FormatError)
    assert "csv" in str(ei.value)


# ----------------------------------------------------------------------------------------------------
# Export and round trips
# ----------------------------------------------------------------------------------------------------

CONVS = [
    ("conv-1", conv(("What is 2+2?", "4."))),
    ("conv-2", conv(("Plan a trip.", "Where to?"), ("Kyoto.", "Day 1: temples."), system="You are a travel agent.")),
    ("conv-3", conv(("q1", "a1"), ("q2", "a2"), ("q3", "a3"))),
]
NON_ASCII = [
    ("ü-1", conv(("你好，世界", "こんにちは 🌸"), ("Ünïcödé — “quotes”", "line\u2028sep and \u0000 nul"),
                 system="Système: répondez en français")),
]


def test_sharegpt_record_shape():
    rec = sharegpt_record("c9", conv(("q", "a"), system="s"))
    assert rec == {"id": "c9", "conversations": [
        {"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
    ]}
    with pytest.raises(ValueError):
        sharegpt_record("c", [{"role": "narrator", "content": "x"}])


def test_write_sharegpt_round_trip(tmp_path):
    path = tmp_path / "out.json"
    n = write_sharegpt(path, iter(CONVS))
    assert n == 3
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps([sharegpt_record(i, m) for i, m in CONVS], ensure_ascii=False, indent=2) + "\n"
    pf = read_file(path)
    assert pf.format == "sharegpt"
    assert pf.bad_rows == []
    assert [(c.external_id, c.messages) for c in pf.conversations] == CONVS
    assert pf.conversations[1].messages[0] == {"role": "system", "content": "You are a travel agent."}
    assert len(pf.conversations[2].messages) == 6


def test_write_sharegpt_empty(tmp_path):
    path = tmp_path / "empty.json"
    assert write_sharegpt(path, []) == 0
    assert json.loads(path.read_text(encoding="utf-8")) == []


def test_write_openai_jsonl_round_trip(tmp_path):
    path = tmp_path / "out.jsonl"
    assert write_openai_jsonl(path, CONVS) == 3
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 4
    assert json.loads(lines[0]) == {"messages": CONVS[0][1]}
    pf = read_file(path)
    assert pf.format == "openai_messages"
    assert [c.messages for c in pf.conversations] == [m for _, m in CONVS]
    assert [c.external_id for c in pf.conversations] == [None, None, None]

    path2 = tmp_path / "with_id.jsonl"
    write_openai_jsonl(path2, CONVS, include_id=True)
    pf2 = read_file(path2)
    assert [(c.external_id, c.messages) for c in pf2.conversations] == CONVS


@pytest.mark.parametrize("writer, fmt", [(write_sharegpt, "sharegpt"), (write_openai_jsonl, "openai_messages")])
def test_non_ascii_round_trip(tmp_path, writer, fmt):
    path = tmp_path / "uni.out"
    writer(path, NON_ASCII)
    raw = path.read_bytes()
    assert "你好，世界".encode("utf-8") in raw  # written as UTF-8, not \\u escapes
    assert "🌸".encode("utf-8") in raw
    pf = read_file(path)
    assert pf.format == fmt
    assert pf.bad_rows == []
    assert pf.conversations[0].messages == NON_ASCII[0][1]
    if fmt == "sharegpt":
        assert pf.conversations[0].external_id == "ü-1"


@pytest.mark.parametrize("writer", [write_sharegpt, write_openai_jsonl])
def test_writes_are_atomic(tmp_path, writer):
    path = tmp_path / "export.out"
    writer(path, CONVS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.out"]  # no temp file left
    before = path.read_bytes()

    def failing():
        yield CONVS[0]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        writer(path, failing())
    assert path.read_bytes() == before  # old file untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.out"]

    with pytest.raises(ValueError):
        writer(path, [("bad", [{"role": "narrator", "content": "x"}])])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.out"]


def test_export_then_import_real_alpaca(tmp_path):
    pf = read_file(shared_data() / "alpaca_en_demo.json")
    items = [(f"alpaca-{c.row}", c.messages) for c in pf.conversations]
    out = tmp_path / "alpaca_sharegpt.json"
    assert write_sharegpt(out, items) == 985
    back = read_file(out)
    assert back.format == "sharegpt" and back.bad_rows == []
    assert [(c.external_id, c.messages) for c in back.conversations] == items


# ----------------------------------------------------------------------------------------------------
# Instruction-only lists and plain text (seeds without answers)
# ----------------------------------------------------------------------------------------------------

# Shaped like self-instruct's data/seed_tasks.jsonl (yizhongw/self-instruct): instruction + instances, no output.
SELF_INSTRUCT_SEEDS = [
    {"id": "seed_task_0", "name": "breakfast_suggestion",
     "instruction": "Is there anything I can eat for a breakfast that doesn't include eggs, yet includes protein, "
                    "and has roughly 700-1000 calories?",
     "instances": [{"input": "", "output": "Yes, you can have 1 oatmeal banana protein shake and 4 strips of bacon."}],
     "is_classification": False},
    {"id": "seed_task_1", "name": "antonym_relation",
     "instruction": "What is the relation between the given pairs?",
     "instances": [{"input": "Night : Day :: Right : Left", "output": "The relation is antonym."}],
     "is_classification": False},
]


def test_instruction_only_jsonl_gives_seeds(tmp_path):
    rows = SELF_INSTRUCT_SEEDS + [
        {"id": "seed_task_2", "instruction": "  "},               # bad: empty
        dict(SELF_INSTRUCT_SEEDS[0]),                            # duplicate of row 1
        {"instruction": "Summarise the text.", "input": "The sky is blue."},
    ]
    path = write_rows(tmp_path, rows, "jsonl")
    assert detect_format(path) == "instructions"
    pf = read_file(path)
    assert pf.format == "instructions"
    assert pf.n_rows == 5
    assert pf.conversations == []
    assert pf.bad_rows == [BadRow(3, "field 'instruction': empty text")]
    assert pf.n_duplicates == 1
    assert [s.row for s in pf.seeds] == [1, 2, 5]
    first = pf.seeds[0]
    assert first.instruction == SELF_INSTRUCT_SEEDS[0]["instruction"]
    assert first.input == "" and first.output is None
    assert first.meta == {k: v for k, v in SELF_INSTRUCT_SEEDS[0].items() if k != "instruction"}
    assert (pf.seeds[2].instruction, pf.seeds[2].input) == ("Summarise the text.", "The sky is blue.")


def test_prompt_and_question_lists_give_seeds(tmp_path):
    # Shaped like awesome-chatgpt-prompts (act, prompt) and like question lists (question, category).
    prompts = [
        {"act": "Linux Terminal", "prompt": "I want you to act as a linux terminal. My first command is pwd"},
        {"act": "English Translator", "prompt": "I want you to act as an English translator and improver."},
        {"act": "Broken", "prompt": 42},
    ]
    pf = read_file(write_rows(tmp_path, prompts, "json", "prompts"))
    assert pf.format == "instructions"
    assert [(s.row, s.instruction, s.meta) for s in pf.seeds] == [
        (1, prompts[0]["prompt"], {"act": "Linux Terminal"}),
        (2, prompts[1]["prompt"], {"act": "English Translator"}),
    ]
    assert pf.bad_rows == [BadRow(3, "field 'prompt' is not a string (number)")]

    questions = [{"question": "How can I improve my time management skills?", "category": "generic"},
                 {"question": "What are the most effective ways to deal with stress?", "category": "generic"}]
    pf = read_file(write_rows(tmp_path, questions, "jsonl", "questions"))
    assert pf.format == "instructions"
    assert [s.instruction for s in pf.seeds] == [q["question"] for q in questions]
    assert pf.seeds[0].meta == {"category": "generic"}


def test_rows_with_output_are_still_evol_instruct(tmp_path):
    # A mostly instruction-only list keeps the answer of a row that has one.
    rows = [{"instruction": "a"}, {"instruction": "b"}, {"instruction": "c", "output": "C."}]
    pf = read_file(write_rows(tmp_path, rows))
    assert pf.format == "instructions"
    assert [(s.instruction, s.output) for s in pf.seeds] == [("a", None), ("b", None), ("c", "C.")]
    assert [c.row for c in pf.conversations] == [3]


def test_plain_text_one_instruction_per_line(tmp_path):
    path = tmp_path / "seeds.txt"
    lines = ["Write a haiku about autumn.", "", "  Explain how a bicycle stays upright.  ", "   ",
             "Write a haiku about autumn.", "x" * 60, "List three uses of baking soda."]
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n\r\n")
    assert detect_format(path) == "text"
    pf = read_file(path, max_message_chars=50)
    assert pf.format == "text"
    assert pf.n_rows == 5  # blank lines are not rows
    assert [(s.row, s.instruction) for s in pf.seeds] == [
        (1, "Write a haiku about autumn."), (3, "Explain how a bicycle stays upright."),
        (7, "List three uses of baking soda."),
    ]
    assert all(s.input == "" and s.output is None and s.meta == {} for s in pf.seeds)
    assert pf.bad_rows == [BadRow(6, "line: text is 60 characters, longer than the limit of 50")]
    assert pf.n_duplicates == 1
    assert pf.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_txt_holding_json_lines_is_read_as_json(tmp_path):
    path = tmp_path / "alpaca_rows.txt"
    path.write_text("".join(json.dumps(r) + "\n" for r in SAMPLES["alpaca"]), encoding="utf-8")
    assert detect_format(path) == "alpaca"
    assert len(read_file(path).conversations) == 2
    # ...unless asked to read it as text
    pf = read_file(path, format="text")
    assert pf.format == "text" and [s.instruction for s in pf.seeds] == [json.dumps(r) for r in SAMPLES["alpaca"]]


def test_txt_with_a_json_looking_line_is_text(tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_text('[1] Name a prime.\n{"instruction": "hi", "output": "x"}\nWhat is 2+2?\n', encoding="utf-8")
    pf = read_file(path)
    assert pf.format == "text" and len(pf.seeds) == 3


@pytest.mark.parametrize("text, fragment", [("", "empty"), ("\n \n", "empty")])
def test_empty_text_file(tmp_path, text, fragment):
    path = tmp_path / "empty.txt"
    path.write_text(text, encoding="utf-8")
    _raises_format_error(path, fragment)


# ----------------------------------------------------------------------------------------------------
# OpenAI messages with content parts
# ----------------------------------------------------------------------------------------------------

# LLaMA-Factory data/v1_sft_demo.jsonl: parts carry "value" (not "text") and messages a loss_weight.
V1_SFT_DEMO = [
    {"messages": [
        {"role": "user", "content": [{"type": "text", "value": "hi"}], "loss_weight": 0.0},
        {"role": "assistant", "content": [{"type": "text", "value": "Hello! I am {{name}}, an AI assistant developed "
                                           "by {{author}}. How can I assist you today?"}], "loss_weight": 1.0}]},
    {"messages": [
        {"role": "user", "content": [{"type": "text", "value": "Who are you?"}], "loss_weight": 0.0},
        {"role": "assistant", "content": [{"type": "text", "value": "I am {{name}}, an AI assistant developed by "
                                           "{{author}}. How can I assist you today?"}], "loss_weight": 1.0}]},
]


def test_v1_sft_demo_content_parts(tmp_path):
    pf = read_file(write_rows(tmp_path, V1_SFT_DEMO, "jsonl"))
    assert pf.format == "openai_messages" and pf.bad_rows == []
    assert pf.conversations[0].messages == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": V1_SFT_DEMO[0]["messages"][1]["content"][0]["value"]},
    ]
    assert pf.conversations[1].messages[0] == {"role": "user", "content": "Who are you?"}


def test_chat_completions_parts_joined_and_non_text_refused(tmp_path):
    rows = [
        {"messages": [
            {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
            {"role": "user", "content": [{"type": "text", "text": "Compare these:"}, {"type": "text", "text": "A and B"}]},
            {"role": "assistant", "content": "A is older."}]},
        {"messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is in this image?"},
                                         {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]},
            {"role": "assistant", "content": "A cat."}]},
        {"messages": [
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]},
            {"role": "assistant", "content": "Hello."}]},
        {"messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": [{"type": "text", "text": ""}]}]},
    ]
    pf = read_file(write_rows(tmp_path, rows, "jsonl"))
    assert pf.conversations[0].messages == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Compare these:\nA and B"},
        {"role": "assistant", "content": "A is older."},
    ]
    assert pf.bad_rows == [
        BadRow(2, "message 1 (user): content part 2 is of type 'image_url'; only text parts can be imported"),
        BadRow(3, "message 1 (user): content part 1 is of type 'input_audio'; only text parts can be imported"),
        BadRow(4, "message 2 (assistant): empty text"),
    ]


# ----------------------------------------------------------------------------------------------------
# Tool calls: ShareGPT function_call/observation (LLaMA-Factory) and OpenAI tool_calls
# ----------------------------------------------------------------------------------------------------

AREA_TOOLS = [
    {"name": "calculate_area", "description": "Calculate the area of a given shape",
     "parameters": {"type": "object", "properties": {
         "shape": {"type": "string", "description": "The shape for which to calculate the area"},
         "dimensions": {"type": "array", "items": {"type": "number"},
                        "description": "The dimensions required to calculate the area"}},
         "required": ["shape", "dimensions"]}},
    {"name": "calculate_discount", "description": "Calculate the discounted price based on original price and "
                                                  "discount percentage",
     "parameters": {"type": "object", "properties": {
         "original_price": {"type": "number", "description": "The original price of the item"},
         "discount_percentage": {"type": "number", "description": "The discount percentage"}},
         "required": ["original_price", "discount_percentage"]}},
]
# Shaped like LLaMA-Factory data/glaive_toolcall_en_demo.json: tools is a JSON *string*.
GLAIVE = [
    {"conversations": [
        {"from": "human", "value": "Write a definition of \"photoshop\"."},
        {"from": "gpt", "value": "Photoshop is a software application developed by Adobe."}],
     "tools": "[]"},
    {"conversations": [
        {"from": "human", "value": "I need to calculate the area of a rectangle. The length is 5 units and the "
                                   "breadth is 3 units."},
        {"from": "function_call", "value": "{\"name\": \"calculate_area\", \"arguments\": {\"shape\": \"rectangle\", "
                                           "\"dimensions\": [5, 3]}}"},
        {"from": "observation", "value": "{\"area\": 15}"},
        {"from": "gpt", "value": "The area of the rectangle with length 5 units and breadth 3 units is 15 square units."},
        {"from": "human", "value": "What about a circle with a radius of 4 units?"},
        {"from": "function_call", "value": "{\"name\": \"calculate_area\", \"arguments\": {\"shape\": \"circle\", "
                                           "\"dimensions\": [4]}}"},
        {"from": "observation", "value": "{\"area\": 50.24}"},
        {"from": "gpt", "value": "The area of the circle with radius 4 units is approximately 50.24 square units."}],
     "tools": json.dumps(AREA_TOOLS)},
]


def call(name: str, arguments: str) -> dict:
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}]}


def test_glaive_tool_turns_become_openai_shaped_messages(tmp_path):
    pf = read_file(write_rows(tmp_path, GLAIVE, "json", "glaive_toolcall_en_demo"))
    assert pf.format == "sharegpt" and pf.bad_rows == []
    plain, tooled = pf.conversations
    assert plain.tools == [] and plain.messages == conv(
        ("Write a definition of \"photoshop\".", "Photoshop is a software application developed by Adobe."))
    assert tooled.tools == AREA_TOOLS
    assert tooled.meta == {}
    t = GLAIVE[1]["conversations"]
    assert tooled.messages == [
        {"role": "user", "content": t[0]["value"]},
        call("calculate_area", '{"shape": "rectangle", "dimensions": [5, 3]}'),
        {"role": "tool", "content": "{\"area\": 15}"},
        {"role": "assistant", "content": t[3]["value"]},
        {"role": "user", "content": t[4]["value"]},
        call("calculate_area", '{"shape": "circle", "dimensions": [4]}'),
        {"role": "tool", "content": "{\"area\": 50.24}"},
        {"role": "assistant", "content": t[7]["value"]},
    ]
    assert validate_messages(tooled.messages) is None


def test_glaive_round_trips_through_sharegpt_and_openai(tmp_path):
    pf = read_file(write_rows(tmp_path, GLAIVE, "json", "glaive"))
    items = [(f"g{c.row}", c.messages, c.tools) for c in pf.conversations]

    out = tmp_path / "back.json"
    assert write_sharegpt(out, items) == 2
    written = json.loads(out.read_text(encoding="utf-8"))
    for orig, rec in zip(GLAIVE, written):  # function_call, observation and tools come back, JSON-equal
        assert [t["from"] for t in rec["conversations"]] == [t["from"] for t in orig["conversations"]]
        for a, b in zip(orig["conversations"], rec["conversations"]):
            if a["from"] == "function_call":
                assert json.loads(b["value"]) == json.loads(a["value"])
            else:
                assert b["value"] == a["value"]
        assert isinstance(rec["tools"], str) and json.loads(rec["tools"]) == json.loads(orig["tools"])
    back = read_file(out)
    assert [(c.external_id, c.messages, c.tools) for c in back.conversations] == items

    out2 = tmp_path / "back.jsonl"
    assert write_openai_jsonl(out2, items) == 2
    line = json.loads(out2.read_text(encoding="utf-8").splitlines()[1])
    assert line["tools"] == [{"type": "function", "function": t} for t in AREA_TOOLS]
    msgs = line["messages"]
    assert msgs[1] == {"role": "assistant", "content": "", "tool_calls": [{
        "id": "call_1", "type": "function",
        "function": {"name": "calculate_area", "arguments": '{"shape": "rectangle", "dimensions": [5, 3]}'}}]}
    assert msgs[2] == {"role": "tool", "content": "{\"area\": 15}", "tool_call_id": "call_1"}
    assert msgs[5]["tool_calls"][0]["id"] == "call_2" and msgs[6]["tool_call_id"] == "call_2"
    back2 = read_file(out2)
    assert back2.format == "openai_messages"
    assert [(c.messages, c.tools) for c in back2.conversations] == [(m, t) for _, m, t in items]


def test_openai_tool_calls_import(tmp_path):
    # The OpenAI fine-tuning "function calling" example shape: no content on the call, ids, wrapped tools.
    tools = [{"type": "function", "function": {"name": "get_current_weather",
                                               "description": "Get the current weather",
                                               "parameters": {"type": "object", "properties": {
                                                   "location": {"type": "string"}}, "required": ["location"]}}}]
    row = {"messages": [
        {"role": "user", "content": "What is the weather in San Francisco?"},
        {"role": "assistant", "tool_calls": [{"id": "call_id", "type": "function", "function": {
            "name": "get_current_weather", "arguments": "{\"location\": \"San Francisco, USA\"}"}}]},
        {"role": "tool", "tool_call_id": "call_id", "content": "21 degrees celsius"},
        {"role": "assistant", "content": "It is 21 degrees celsius in San Francisco, CA."}],
        "tools": tools}
    two_calls = {"messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking both.", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_current_weather", "arguments": {"location": "Paris"}}},
            {"id": "b", "type": "function", "function": {"name": "get_current_weather", "arguments": "{\"location\": \"Rome\"}"}}]},
        {"role": "tool", "tool_call_id": "a", "content": "18C"},
        {"role": "tool", "tool_call_id": "b", "content": "25C"},
        {"role": "assistant", "content": "Paris 18C, Rome 25C."}]}
    pf = read_file(write_rows(tmp_path, [row, two_calls], "jsonl"))
    assert pf.bad_rows == []
    c1, c2 = pf.conversations
    assert c1.tools == [tools[0]["function"]]
    assert c1.messages[1] == call("get_current_weather", "{\"location\": \"San Francisco, USA\"}")
    assert c1.messages[2] == {"role": "tool", "content": "21 degrees celsius"}
    assert c2.messages[1]["content"] == "Checking both."
    assert [tc["function"]["arguments"] for tc in c2.messages[1]["tool_calls"]] == [
        '{"location": "Paris"}', '{"location": "Rome"}']
    # Text plus calls survives ShareGPT (a gpt turn, then the function_call turn with both calls).
    out = tmp_path / "two.json"
    write_sharegpt(out, [("x", c2.messages)])
    rec = json.loads(out.read_text(encoding="utf-8"))[0]
    assert [t["from"] for t in rec["conversations"]] == ["human", "gpt", "function_call", "observation",
                                                          "observation", "gpt"]
    assert json.loads(rec["conversations"][2]["value"]) == [
        {"name": "get_current_weather", "arguments": {"location": "Paris"}},
        {"name": "get_current_weather", "arguments": {"location": "Rome"}}]
    assert "tools" not in rec
    assert read_file(out).conversations[0].messages == c2.messages


TOOL_BAD_CASES = {
    "function_call_not_json": (
        [H("q"), {"from": "function_call", "value": "calculate_area(5, 3)"}, {"from": "observation", "value": "15"},
         G("a")],
        "message 2 (function_call): value is not valid JSON: Expecting value at column 1"),
    "function_call_without_name": (
        [H("q"), {"from": "function_call", "value": "{\"arguments\": {}}"}, {"from": "observation", "value": "15"},
         G("a")],
        "message 2 (function_call): value must be {\"name\", \"arguments\"} (or a list of them), with a function name"),
    "observation_without_call": (
        [H("q"), G("a"), {"from": "observation", "value": "15"}, G("b")],
        "message 3: role 'tool' follows an assistant message without tool_calls"),
    "answer_instead_of_observation": (
        [H("q"), {"from": "function_call", "value": "{\"name\": \"f\", \"arguments\": {}}"}, H("q2"), G("a")],
        "message 3: role 'user' follows an assistant tool call (expected 'tool', its result)"),
    "user_after_observation": (
        [H("q"), {"from": "function_call", "value": "{\"name\": \"f\", \"arguments\": {}}"},
         {"from": "observation", "value": "15"}, H("q2"), G("a")],
        "message 4: role 'user' follows 'tool' (a tool result is followed by the assistant)"),
    "ends_with_call": (
        [H("q"), {"from": "function_call", "value": "{\"name\": \"f\", \"arguments\": {}}"}],
        "message 2 (assistant): the conversation ends with a tool call (no result, no answer)"),
    "ends_with_observation": (
        [H("q"), {"from": "function_call", "value": "{\"name\": \"f\", \"arguments\": {}}"},
         {"from": "observation", "value": "15"}],
        "message 3 (tool): the conversation must end with an assistant message"),
}


@pytest.mark.parametrize("case", sorted(TOOL_BAD_CASES))
def test_tool_turn_bad_rows(tmp_path, case):
    turns, reason = TOOL_BAD_CASES[case]
    rows = [GLAIVE[1], {"conversations": turns, "tools": "[]"}]
    pf = read_file(write_rows(tmp_path, rows))
    assert pf.bad_rows == [BadRow(2, reason)]
    assert len(pf.conversations) == 1


def test_bad_tools_field(tmp_path):
    rows = [GLAIVE[0], {"conversations": [H("q"), G("a")], "tools": "[{\"name\": "},
            {"conversations": [H("q2"), G("a2")], "tools": 7}]
    pf = read_file(write_rows(tmp_path, rows))
    assert pf.bad_rows == [
        BadRow(2, "field 'tools' is not valid JSON: Expecting value at column 11"),
        BadRow(3, "field 'tools' is not a list of function schemas (number)"),
    ]


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "q"}, call("f", "{}"), {"role": "tool", "content": "r"},
     {"role": "assistant", "content": "a"}],
    [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
     {**call("f", "{}"), "content": "Let me check."}, {"role": "tool", "content": "r1"},
     {"role": "tool", "content": "r2"}, {"role": "assistant", "content": "a"},
     {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2", "tool_calls": []}],
])
def test_validate_messages_accepts_tool_turns(messages):
    assert validate_messages(messages) is None


@pytest.mark.parametrize("messages, reason", [
    ([{"role": "user", "content": "q", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": ""}}]},
      {"role": "assistant", "content": "a"}],
     "message 1 (user): only an assistant message can have tool_calls"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": "f()"}],
     "message 2 (assistant): field 'tool_calls' is not a list (string)"),
    ([{"role": "user", "content": "q"},
      {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}],
     "message 2 (assistant): tool call 1 (f): field 'arguments' is not a string (null)"),
    ([{"role": "user", "content": "q"},
      {"role": "assistant", "content": "", "tool_calls": [{"type": "retrieval", "function": {"name": "f"}}]}],
     "message 2 (assistant): tool call 1: field 'type' must be 'function', not 'retrieval'"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "r"}],
     "message 3: role 'tool' follows an assistant message without tool_calls"),
    ([{"role": "user", "content": "q"}, call("f", "{}"), {"role": "assistant", "content": "a"}],
     "message 3: role 'assistant' follows an assistant tool call (expected 'tool', its result)"),
    ([{"role": "user", "content": "q"}, call("f", "{}"), {"role": "tool", "content": " "},
      {"role": "assistant", "content": "a"}],
     "message 3 (tool): empty text"),
])
def test_validate_messages_refuses_bad_tool_turns(messages, reason):
    assert validate_messages(messages) == reason


# ----------------------------------------------------------------------------------------------------
# Duplicate rows within one file
# ----------------------------------------------------------------------------------------------------


def test_duplicate_conversations_and_seeds(tmp_path):
    a = {"id": "a", "conversations": [H("Hi"), G("Hello")]}
    b = {"id": "b", "conversations": [H("Hi"), G("Hello")]}            # same messages, other id: a duplicate
    c = {"id": "c", "conversations": [H("Hi"), G("Hello there")]}
    d = {"id": "d", "conversations": [H("Hi"), G("Hello")], "tools": "[{\"name\": \"f\"}]"}  # other tools
    pf = read_file(write_rows(tmp_path, [a, b, c, a, d], "jsonl", "convs"))
    assert [x.external_id for x in pf.conversations] == ["a", "c", "d"]
    assert pf.n_duplicates == 2 and pf.n_rows == 5 and pf.bad_rows == []

    seeds = [{"instruction": "x", "input": "", "category": "a"}, {"instruction": "x", "input": "", "category": "b"},
             {"instruction": "x", "input": "ctx"}]
    pf = read_file(write_rows(tmp_path, seeds, "json", "seeds"))
    assert [(s.row, s.input) for s in pf.seeds] == [(1, ""), (3, "ctx")]
    assert pf.n_duplicates == 1


# ----------------------------------------------------------------------------------------------------
# Parquet, datasets folders, hub ids
# ----------------------------------------------------------------------------------------------------


def alpaca_rows(n: int) -> list[dict]:
    return [{"instruction": f"Give example {k}.", "input": "" if k % 2 else f"context {k}", "output": f"Example {k}."}
            for k in range(n)]


def test_parquet_alpaca_with_bad_and_duplicate_rows(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from studio import formats

    monkeypatch.setattr(formats, "BATCH_ROWS", 4)  # rows cross batch boundaries
    rows = alpaca_rows(10)
    rows[5] = {"instruction": "Give example 5.", "input": "", "output": ""}
    rows[8] = dict(rows[2])
    path = tmp_path / "alpaca.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert detect_format(path) == "alpaca"
    pf = read_file(path)
    assert (pf.format, pf.kind, pf.name, pf.path) == ("alpaca", "file", "alpaca.parquet", str(path))
    assert pf.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert pf.n_rows == 10
    assert pf.bad_rows == [BadRow(6, "field 'output': empty text")]
    assert pf.n_duplicates == 1
    assert [s.row for s in pf.seeds] == [1, 2, 3, 4, 5, 7, 8, 10]
    assert pf.seeds[2] == SeedRecord(row=3, instruction="Give example 2.", input="context 2", output="Example 2.")
    assert pf.conversations[2].messages[0] == {"role": "user", "content": "Give example 2.\n\ncontext 2"}


def test_parquet_sharegpt_with_optional_keys(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Missing keys become null columns in Parquet: they must read as absent, as in JSON.
    rows = [{"id": "p1", "conversations": [H("q"), G("a")]},
            {"conversations": [H("q2"), G("a2")]},
            {"id": "p3", "conversations": [H("q3")]},
            GLAIVE[1]]
    keys = ["id", "conversations", "tools"]
    path = tmp_path / "sharegpt.parquet"
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), path)
    pf = read_file(path)
    assert pf.format == "sharegpt"
    assert [(c.row, c.external_id, c.tools, c.meta) for c in pf.conversations] == [
        (1, "p1", None, {}), (2, None, None, {}), (4, None, AREA_TOOLS, {})]
    assert pf.bad_rows == [BadRow(3, "message 1 (user): the conversation must end with an assistant message")]


def test_broken_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    _raises_format_error(path, "not a readable Parquet file")


def test_datasets_folder_dataset_and_dict(tmp_path):
    import datasets

    rows = alpaca_rows(6)
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "one"))
    ds.save_to_disk(str(tmp_path / "again"))
    pf = read_file(tmp_path / "one")
    assert (pf.format, pf.kind, pf.name, pf.n_rows, pf.bad_rows) == ("alpaca", "folder", "one", 6, [])
    assert [s.instruction for s in pf.seeds] == [r["instruction"] for r in rows]
    # the digest identifies the data: the same rows saved twice agree, other rows differ
    assert read_file(tmp_path / "again").sha256 == pf.sha256
    datasets.Dataset.from_list(alpaca_rows(7)).save_to_disk(str(tmp_path / "other"))
    assert read_file(tmp_path / "other").sha256 != pf.sha256

    bad = [{"id": "x1", "conversations": [H("q")]}, {"id": "t3", "conversations": [H("q"), G("a")]}]
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"id": f"t{k}", "conversations": [H(f"q{k}"), G(f"a{k}")]}
                                             for k in range(3)]),
        "test": datasets.Dataset.from_list(bad),
    })
    dd.save_to_disk(str(tmp_path / "dict"))
    assert detect_format(tmp_path / "dict") == "sharegpt"
    pf = read_file(tmp_path / "dict")
    assert pf.n_rows == 5
    assert [c.external_id for c in pf.conversations] == ["t0", "t1", "t2", "t3"]
    assert pf.n_duplicates == 0
    assert pf.bad_rows == [BadRow(4, "split 'test' row 1: message 1 (user): the conversation must end with an "
                                     "assistant message")]


def test_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "notes.json").write_text("[]", encoding="utf-8")
    e = _raises_format_error(tmp_path, "not a Hugging Face datasets folder")
    assert "save_to_disk" in e.reason


def test_hub_id_offline_is_a_clear_format_error(monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FormatError) as ei:
        read_file("junelee/wizard_vicuna_70k")
    e = ei.value
    assert e.path == "junelee/wizard_vicuna_70k"
    assert "Hugging Face dataset 'junelee/wizard_vicuna_70k' could not be loaded" in e.reason
    assert "Traceback" not in str(e) and "\n" not in str(e)


@pytest.mark.parametrize("missing", ["data/train.json", "owner/name/extra", "no_slash"])
def test_missing_paths_that_are_not_hub_ids(missing):
    with pytest.raises(FormatError) as ei:
        read_file(missing)
    assert ei.value.reason == "file not found"


def test_text_format_refuses_columnar_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_pylist(alpaca_rows(2)), path)
    with pytest.raises(FormatError) as ei:
        read_file(path, format="text")
    assert "format 'text' reads a plain text file" in ei.value.reason


# ----------------------------------------------------------------------------------------------------
# Studio.import_file: folders, keep_copy, hub ids
# ----------------------------------------------------------------------------------------------------


def test_studio_imports_a_datasets_folder_and_keeps_a_copy(studio, tmp_path):
    import datasets

    folder = tmp_path / "wizard_vicuna_subset"
    datasets.Dataset.from_list([{"id": f"w{k}", "conversations": [H(f"q{k}"), G(f"a{k}")]}
                                for k in range(4)]).save_to_disk(str(folder))
    res = studio.import_file(folder, keep_copy=True)
    assert (res.format, res.n_conversations, res.bad_rows) == ("sharegpt", 4, [])
    kept = list(studio.settings.upload_dir.iterdir())
    assert len(kept) == 1 and kept[0].is_dir() and kept[0].name.endswith("-wizard_vicuna_subset")
    # the kept copy is the same dataset
    assert read_file(kept[0]).sha256 == read_file(folder).sha256
    again = studio.import_file(folder, keep_copy=True)
    assert again.duplicate
    assert len(list(studio.settings.upload_dir.iterdir())) == 1


def test_studio_imports_a_text_file_and_refuses_an_offline_hub_id(studio, tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    path = tmp_path / "seeds.txt"
    path.write_text("Write a limerick.\n\nName the planets.\n", encoding="utf-8")
    res = studio.import_file(path, keep_copy=True)
    assert (res.format, res.n_seeds, res.n_conversations) == ("text", 2, 0)

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FormatError, match="junelee/wizard_vicuna_70k"):
        studio.import_file("junelee/wizard_vicuna_70k", keep_copy=True)
    assert len(list(studio.settings.upload_dir.iterdir())) == 1  # only the text file
