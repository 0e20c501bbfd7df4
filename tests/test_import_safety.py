"""Imports a public host can take: nesting bombs, server paths in messages, files whose every row is bad, and
uploads (size limit, names, the kept copy). Issue 8, "Safe to host".

Every test works on real files in a temporary folder and, where it imports, on a real DuckDB file.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from studio.config import Settings
from studio.core import Studio, check_upload_name, stored_upload_name
from studio.formats import (
    MAX_NESTING,
    ConversationRecord,
    FormatError,
    ParsedFile,
    SeedRecord,
    read_file,
    require_records,
    sharegpt_record,
    validate_messages,
    write_openai_jsonl,
    write_sharegpt,
)

DEPTH = 100_000  # far past Python's recursion limit (1000)
NESTED = f"nested deeper than {MAX_NESTING} levels"
GOOD = {"id": "g1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}


def deep_array(depth: int = DEPTH) -> str:
    return "[" * depth + "]" * depth


def deep_object(depth: int = DEPTH) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def nested_value(depth: int):
    """A list nested ``depth`` levels, built without recursion."""
    v: list = []
    for _ in range(depth - 1):
        v = [v]
    return v


def count(studio: Studio, table: str) -> int:
    return studio.store._q(f"SELECT count(*) FROM {table}")[0][0]


def nothing_written(studio: Studio) -> bool:
    return (count(studio, "sources"), count(studio, "seeds"), count(studio, "conversations")) == (0, 0, 0) and \
        not any(studio.settings.upload_dir.iterdir())


@pytest.fixture
def upload_folder(tmp_path) -> Path:
    """Where Gradio would have put an upload: a temporary folder the visitor must never see."""
    d = tmp_path / "gradio" / "abc123"
    d.mkdir(parents=True)
    return d


# ------------------------------------------------------------------------------------------------ 1. nesting


@pytest.mark.parametrize("text", [deep_array(), "[" + deep_array() + "]", deep_object(),
                                  '[{"conversations": ' + deep_array() + "}]",
                                  "{\n" + deep_object()[1:].replace(": ", ":\n", 1000)])  # one object, many lines
def test_deep_json_file_is_a_format_error(tmp_path, text):
    path = tmp_path / "deep.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FormatError) as ei:
        read_file(path, display_name="deep.json")
    assert ei.value.path == "deep.json"
    assert NESTED in ei.value.reason


def test_deep_jsonl_row_is_a_bad_row_and_the_others_import(tmp_path):
    other = {"id": "g2", "conversations": [{"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye!"}]}
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join([json.dumps(GOOD), deep_object(), '{"id": "x", "conversations": ' + deep_array() + "}",
                               json.dumps(other)]) + "\n", encoding="utf-8")
    pf = read_file(path)
    assert [(b.row, b.reason) for b in pf.bad_rows] == [(2, NESTED), (3, NESTED)]
    assert [c.external_id for c in pf.conversations] == ["g1", "g2"]


def test_only_deep_jsonl_rows_is_a_format_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text(deep_object() + "\n" + deep_object() + "\n", encoding="utf-8")
    with pytest.raises(FormatError) as ei:
        read_file(path)
    assert ei.value.reason == f"no row could be read (line 1: {NESTED})"
    # a first line that opens an array is read as a JSON array file, which is too deep to parse at all
    path.write_text(deep_array() + "\n" + deep_object() + "\n", encoding="utf-8")
    with pytest.raises(FormatError, match=NESTED):
        read_file(path)


def test_rows_nested_past_the_limit_are_refused_even_when_python_could_parse_them(tmp_path):
    """150 levels parse (under the recursion limit) but stay out: nothing deeper than MAX_NESTING reaches the
    hashing of duplicate rows, json.dumps of meta or the database."""
    rows = [{**GOOD, "extra": nested_value(MAX_NESTING + 50)}, {**GOOD, "id": "ok", "extra": nested_value(MAX_NESTING - 2)}]
    for layout, text in [("json", json.dumps(rows)), ("jsonl", "\n".join(json.dumps(r) for r in rows))]:
        path = tmp_path / f"rows.{layout}"
        path.write_text(text, encoding="utf-8")
        pf = read_file(path)
        assert [(b.row, b.reason) for b in pf.bad_rows] == [(1, NESTED)], layout
        assert [c.external_id for c in pf.conversations] == ["ok"]


def test_deep_json_inside_fields_is_a_bad_row(tmp_path):
    call = {"from": "function_call", "value": deep_array()}
    rows = [
        {**GOOD, "tools": deep_array()},
        {"conversations": [{"from": "human", "value": "q"}, call, {"from": "observation", "value": "r"},
                           {"from": "gpt", "value": "a"}]},
        GOOD,
    ]
    path = tmp_path / "tools.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    pf = read_file(path)
    assert [(b.row, b.reason) for b in pf.bad_rows] == [
        (1, f"field 'tools' is {NESTED}"), (2, f"message 2 (function_call): value is {NESTED}")]
    assert len(pf.conversations) == 1


def test_validate_messages_refuses_deep_values():
    msgs = [{"role": "user", "content": "q", "note": nested_value(DEPTH)}, {"role": "assistant", "content": "a"}]
    assert validate_messages(msgs) == f"message 1: {NESTED}"


def test_export_keeps_deep_json_arguments_as_text(tmp_path):
    """Tool call arguments are text; text that is deeply nested JSON exports (and reads back) as that text."""
    args = "[" * 50_000 + "]" * 50_000
    msgs = [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                                                                   "function": {"name": "f", "arguments": args}}]},
            {"role": "tool", "content": "r"}, {"role": "assistant", "content": "a"}]
    assert sharegpt_record("c1", msgs)["conversations"][1]["value"] == json.dumps({"name": "f", "arguments": args})
    write_sharegpt(tmp_path / "out.json", [("c1", msgs)])
    write_openai_jsonl(tmp_path / "out.jsonl", [("c1", msgs)])
    back = read_file(tmp_path / "out.json")
    assert back.bad_rows == [] and back.conversations[0].messages == msgs


def test_studio_import_of_a_deep_file_writes_nothing(studio, tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(deep_array(), encoding="utf-8")
    with pytest.raises(FormatError, match=NESTED):
        studio.import_file(path, keep_copy=True)
    assert nothing_written(studio)


# ------------------------------------------------------------------------------------------------ memory


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_huge_text_line_is_refused_without_holding_it(tmp_path):
    path = tmp_path / "seeds.txt"
    with path.open("w", encoding="utf-8") as f:
        f.write("Name a prime.\n")
        f.write("x" * 30_000_000 + "\n")
        f.write("Name a planet.\n")
    result = {}
    peak = peak_bytes(lambda: result.setdefault("pf", read_file(path, max_message_chars=1000)))
    pf = result["pf"]
    assert [s.instruction for s in pf.seeds] == ["Name a prime.", "Name a planet."]
    assert [b.row for b in pf.bad_rows] == [2] and "longer than the limit of 1000" in pf.bad_rows[0].reason
    assert peak < 5_000_000, peak


def test_jsonl_is_read_line_by_line(tmp_path):
    """8 MB of JSON lines that repeat one row: the reader holds a line at a time, not the file (reading it whole
    would take the bytes, the text and its lines: over 16 MB)."""
    row = {"id": "long", "conversations": [{"from": "human", "value": "Tell me. " * 250},
                                           {"from": "gpt", "value": "Well. " * 250}]}
    line = json.dumps(row) + "\n"
    path = tmp_path / "repeats.jsonl"
    path.write_text(line * (8_000_000 // len(line)), encoding="utf-8")
    result = {}
    peak = peak_bytes(lambda: result.setdefault("pf", read_file(path)))
    assert len(result["pf"].conversations) == 1 and result["pf"].n_duplicates > 1000
    assert peak < 4_000_000, peak


def test_jsonl_row_over_max_row_bytes_is_a_bad_row(tmp_path):
    path = tmp_path / "rows.jsonl"
    big = {"id": "big", "conversations": [{"from": "human", "value": "p" * 5000}, {"from": "gpt", "value": "ok"}]}
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(big) + "\n", encoding="utf-8")
    pf = read_file(path, max_row_bytes=4096)
    assert [b.row for b in pf.bad_rows] == [2]
    assert pf.bad_rows[0].reason.startswith("row is ") and "longer than the limit of 4096 bytes" in pf.bad_rows[0].reason
    assert len(read_file(path).conversations) == 2  # the default limit (64 MiB) takes it


# ------------------------------------------------------------------------------------------------ 2. names


@pytest.mark.parametrize("name, content, fragment", [
    ("data.json", b"", "empty"),
    ("data.json", b'{"instruction": "caf\xe9", "output": "x"}\n', "not UTF-8"),
    ("data.json", b'[\n {"instruction": "a"\n', "not valid JSON"),
    ("data.json", b"hello\nworld\n", "neither a JSON array nor JSON lines"),
    ("data.json", b'[{"foo": 1}]', "format not recognised"),
    ("data.json", deep_array().encode(), NESTED),
    ("data.parquet", b"PAR1 not parquet", "not a readable Parquet file"),
    ("notes.txt", b"\n \n", "empty"),
])
def test_format_errors_name_the_upload_never_the_server_path(upload_folder, name, content, fragment):
    path = upload_folder / name
    path.write_bytes(content)
    with pytest.raises(FormatError) as ei:
        read_file(path, display_name=name)
    e = ei.value
    assert e.path == name and str(e).startswith(f"{name}: ") and fragment in e.reason
    assert "gradio" not in str(e) and str(upload_folder) not in str(e)


def test_missing_and_oversized_files_name_the_upload(upload_folder):
    with pytest.raises(FormatError) as ei:
        read_file(upload_folder / "gone.json", display_name="gone.json")
    assert str(ei.value) == "gone.json: file not found"
    path = upload_folder / "big.json"
    path.write_text(json.dumps([GOOD] * 50), encoding="utf-8")
    with pytest.raises(FormatError) as ei:
        read_file(path, display_name="big.json", max_bytes=1000)
    assert str(ei.value).startswith("big.json: the file is ") and "larger than the upload limit of 1000 bytes" in str(ei.value)
    assert "gradio" not in str(ei.value)


def test_bad_rows_and_results_name_the_upload(studio, upload_folder):
    path = upload_folder / "chats.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{broken\n", encoding="utf-8")
    pf = read_file(path, display_name="chats.jsonl")
    assert pf.name == "chats.jsonl" and pf.path == str(path)
    res = studio.import_upload(path, "chats.jsonl")
    assert res.name == "chats.jsonl" and res.bad_rows and "gradio" not in res.summary() + repr(res.bad_rows)


# ------------------------------------------------------------------------------------------------ 3. all bad


ALL_BAD = [{"id": "b1", "conversations": [{"from": "human", "value": "q"}]},
           {"id": "b2"}, {"id": "b3", "conversations": "text"}, {"id": "b4", "conversations": []}]


def test_all_bad_rows_import_nothing(studio, tmp_path):
    path = tmp_path / "all_bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ALL_BAD), encoding="utf-8")
    pf = read_file(path)  # read_file reports the rows; the import refuses them
    assert len(pf.bad_rows) == 4 and not pf.conversations
    with pytest.raises(FormatError) as ei:
        studio.import_file(path, keep_copy=True)
    e = ei.value
    assert e.path == str(path)
    assert e.reason.startswith("nothing to import: all 4 rows are bad (row 1: message 1 (user): the conversation must "
                               "end with an assistant message; row 2: missing field 'conversations'; row 3: ")
    assert e.reason.endswith("; 1 more)")
    assert [b.row for b in e.bad_rows] == [1, 2, 3, 4]
    assert nothing_written(studio)
    # fixed, the same name goes in (it was not recorded as imported)
    path.write_text(json.dumps(GOOD) + "\n", encoding="utf-8")
    assert studio.import_file(path, keep_copy=True).n_conversations == 1


def test_store_refuses_a_parsed_file_without_records(studio):
    parsed = ParsedFile(path="/tmp/gradio/x/hand.json", name="hand.json", format="alpaca", sha256="ab" * 32,
                        n_rows=1, seeds=[], conversations=[], bad_rows=[])
    with pytest.raises(FormatError, match="hand.json: nothing to import: the file has no rows"):
        studio.store.import_parsed(parsed)
    assert count(studio, "sources") == 0
    parsed.seeds = [SeedRecord(1, "q")]
    parsed.conversations = [ConversationRecord(1, [{"role": "user", "content": "q"},
                                                   {"role": "assistant", "content": "a"}])]
    require_records(parsed)  # no error
    assert studio.store.import_parsed(parsed).n_seeds == 1


def test_one_bad_row_message(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps([{"instruction": "", "output": "x"}]), encoding="utf-8")
    with pytest.raises(FormatError) as ei:
        require_records(read_file(path, display_name="one.json"))
    assert str(ei.value) == "one.json: nothing to import: the only row is bad (row 1: field 'instruction': empty text)"


# ------------------------------------------------------------------------------------------------ 4. uploads


def test_max_upload_setting(monkeypatch, tmp_path):
    monkeypatch.delenv("STUDIO_MAX_UPLOAD_MB", raising=False)
    assert Settings(data_dir=tmp_path).max_upload_mb == 512
    assert Settings(data_dir=tmp_path).max_upload_bytes == 512 * 1024 * 1024
    monkeypatch.setenv("STUDIO_MAX_UPLOAD_MB", "1.5")
    assert Settings(data_dir=tmp_path).max_upload_bytes == 1536 * 1024
    for bad in ("0", "-3", "lots", "inf"):
        monkeypatch.setenv("STUDIO_MAX_UPLOAD_MB", bad)
        with pytest.raises(ValueError, match="STUDIO_MAX_UPLOAD_MB"):
            Settings(data_dir=tmp_path)


def test_oversized_upload_is_refused_before_reading(studio, upload_folder):
    """A 600 MB upload (sparse, so the test writes nothing) is refused by its size alone: the refusal takes no
    memory to speak of, and nothing is written."""
    path = upload_folder / "huge.jsonl"
    with path.open("wb") as f:
        f.truncate(600 * 1024 * 1024)
    errors = []

    def attempt():
        try:
            studio.import_upload(path, "huge.jsonl")
        except FormatError as e:
            errors.append(e)

    peak = peak_bytes(attempt)
    assert [str(e) for e in errors] == ["huge.jsonl: the file is 600 MB, larger than the upload limit of 512 MB"]
    assert peak < 1_000_000, peak
    assert nothing_written(studio)


@pytest.mark.parametrize("name", ["../evil.json", "a/b.json", "..\\evil.json", "..", ".", "", "  ", "x\n.json",
                                  "x" * 256 + ".json", None])
def test_upload_names_with_path_parts_are_refused(studio, upload_folder, name):
    path = upload_folder / "evil.json"
    path.write_text(json.dumps([GOOD]), encoding="utf-8")
    with pytest.raises(FormatError, match="not allowed as an upload name"):
        studio.import_upload(path, name)
    assert nothing_written(studio)


def test_upload_is_kept_under_a_safe_name_after_the_parse(studio, upload_folder):
    name = "My data (1).json"
    path = upload_folder / name
    path.write_text(json.dumps([GOOD]), encoding="utf-8")
    res = studio.import_upload(path, name)
    assert (res.name, res.n_conversations, res.duplicate) == (name, 1, False)
    kept = list(studio.settings.upload_dir.iterdir())
    assert [k.name for k in kept] == [stored_upload_name(read_file(path).sha256, name)]
    assert kept[0].name.endswith("-My_data__1_.json") and kept[0].read_bytes() == path.read_bytes()
    assert studio.store._q("SELECT name, path FROM sources") == [(name, str(kept[0]))]
    # the same bytes under another name: a duplicate, and no second copy
    other = upload_folder / "again.json"
    other.write_bytes(path.read_bytes())
    assert studio.import_upload(other, "again.json").duplicate
    assert len(list(studio.settings.upload_dir.iterdir())) == 1


def test_upload_with_all_bad_rows_keeps_nothing(studio, upload_folder):
    path = upload_folder / "bad.json"
    path.write_text(json.dumps(ALL_BAD), encoding="utf-8")
    with pytest.raises(FormatError) as ei:
        studio.import_upload(path, "bad.json")
    assert str(ei.value).startswith("bad.json: nothing to import: all 4 rows are bad")
    assert nothing_written(studio)


def test_upload_takes_its_kind_from_the_original_name(studio, upload_folder):
    path = upload_folder / "blob"
    path.write_text("Name a prime.\nName a planet.\n", encoding="utf-8")
    res = studio.import_upload(path, "seeds.txt")
    assert (res.format, res.n_seeds) == ("text", 2)


def test_upload_is_never_a_folder_or_a_hub_id(studio, upload_folder):
    with pytest.raises(FormatError, match="^name: the upload is not on the server"):
        studio.import_upload("owner/name", "name")  # never looked up as a hub dataset
    with pytest.raises(FormatError, match="^name.json: the upload is not on the server"):
        studio.import_upload("owner/name.json", "name.json")
    with pytest.raises(FormatError, match="^folder: not a regular file"):
        studio.import_upload(upload_folder, "folder")
    assert nothing_written(studio)


def test_kept_copy_cannot_be_led_outside_uploads(studio, upload_folder, tmp_path):
    path = upload_folder / "data.json"
    path.write_text(json.dumps([GOOD]), encoding="utf-8")
    outside = tmp_path / "outside"
    outside.mkdir()
    link = studio.settings.upload_dir / stored_upload_name(read_file(path).sha256, "data.json")
    link.symlink_to(outside / "planted.json")
    with pytest.raises(ValueError, match="leads outside"):
        studio.import_upload(path, "data.json")
    assert not (outside / "planted.json").exists()
    assert count(studio, "sources") == 0


def test_check_upload_name_and_stored_name():
    assert check_upload_name("Café notes v2.jsonl") == "Café notes v2.jsonl"
    stored = stored_upload_name("0123456789abcdef" * 4, "x" * 200 + ".jsonl")
    assert len(stored) == 64 and stored.startswith("0123456789ab-x") and stored.endswith(".jsonl")
    assert stored_upload_name("f" * 64, "Café notes.json") == "ffffffffffff-Caf__notes.json"
