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
