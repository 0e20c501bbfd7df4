"""Arena battles in the store (``studio/store/arena.py``), their files (``studio/battles.py``) and the
``wvstudio arena`` commands (``studio/cli_arena.py``), on real DuckDB files, run through the real entry point
(``studio.cli.main`` in-process; ``python -m studio.cli`` once as its own process).

The battle file below is written in the published Chatbot Arena shape (``lmsys/chatbot_arena_conversations``:
``conversation_x = [{"content": ..., "role": "user"}, {"content": ..., "role": "assistant"}]``, plus its
``openai_moderation`` and ``toxic_chat_tag`` fields), with one MT-bench-human-judgments-like row (a number as
``question_id``, no ``anony``/``language``/``tstamp``, other key order)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import duckdb
import pytest

from conftest import ROOT
from studio.battles import (ARENA_FIELDS, WINNERS, preference_pairs, read_arena_jsonl, read_battles,
                            write_arena_jsonl)
from studio.cli import build_parser, main, payload_of, run_payload
from studio.formats import FormatError
from studio.store import Store, StoreError, VoteError


def moderation(flagged: bool = False) -> dict:
    return {"categories": {"harassment": False, "hate": False, "self-harm": False, "sexual": False,
                           "violence": False}, "category_scores": {"harassment": 1.2e-05, "hate": 3.4e-07,
                                                                   "self-harm": 2.1e-09, "sexual": 0.00012,
                                                                   "violence": 5.5e-06}, "flagged": flagged}


def turn(user: str, answer: str) -> list[dict]:
    return [{"content": user, "role": "user"}, {"content": answer, "role": "assistant"}]


ROWS = [
    {"question_id": "58210e39b3fd4441a2bd4a518bb44c2d", "model_a": "vicuna-13b", "model_b": "koala-13b",
     "winner": "model_a", "judge": "arena_user_973",
     "conversation_a": turn("What is the capital of France?", "Paris."),
     "conversation_b": turn("What is the capital of France?", "Lyon, I think."),
     "turn": 1, "anony": True, "language": "English", "tstamp": 1682351591.1322,
     "openai_moderation": moderation(), "toxic_chat_tag": {"roberta-large": {"flagged": False,
                                                                              "probability": 0.0084},
                                                            "t5-large": {"flagged": False, "score": 7.2e-05}}},
    {"question_id": "2564acd09e3942fd97657d05282d4389", "model_a": "alpaca-13b", "model_b": "vicuna-13b",
     "winner": "model_b", "judge": "arena_user_4",
     "conversation_a": turn("Name a prime number.", "Nine.") + turn("Another one?", "Fifteen."),
     "conversation_b": turn("Name a prime number.", "Seven.") + turn("Another one?", "Eleven."),
     "turn": 2, "anony": False, "language": "English", "tstamp": 1682351612.75,
     "openai_moderation": moderation(), "toxic_chat_tag": {"roberta-large": {"flagged": False,
                                                                              "probability": 0.001}}},
    {"question_id": "a1b2", "model_a": "koala-13b", "model_b": "alpaca-13b", "winner": "tie", "judge": "arena_user_7",
     "conversation_a": turn("Say hi.", "Hi!"), "conversation_b": turn("Say hi.", "Hello!"),
     "turn": 1, "anony": True, "language": "English", "tstamp": 1682351700.0,
     "openai_moderation": moderation(), "toxic_chat_tag": {}},
    {"question_id": "c3d4", "model_a": "vicuna-13b", "model_b": "alpaca-13b", "winner": "tie (bothbad)",
     "judge": "arena_user_7", "conversation_a": turn("2+2?", "5"), "conversation_b": turn("2+2?", "22"),
     "turn": 1, "anony": True, "language": "unknown", "tstamp": 1682351800.5,
     "openai_moderation": moderation(True), "toxic_chat_tag": {}},
    # MT-bench human judgment shape: a number as question_id, other key order, no anony/language/tstamp
    {"model_b": "koala-13b", "model_a": "vicuna-13b", "question_id": 81, "judge": "expert_3", "winner": "model_a",
     "turn": 1, "conversation_a": turn("Compose a travel blog post about Hawaii.", "Aloha! ..."),
     "conversation_b": turn("Compose a travel blog post about Hawaii.", "Hawaii is nice.")},
]

# The preference pairs of ROWS, written out: rows 1, 2 and 5 are votes; 3 is a tie and 4 a both-bad tie.
EXPECTED_PAIRS = [
    {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
     "chosen": [{"role": "assistant", "content": "Paris."}],
     "rejected": [{"role": "assistant", "content": "Lyon, I think."}]},
    {"prompt": [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "Seven."},
                {"role": "user", "content": "Another one?"}],
     "chosen": [{"role": "assistant", "content": "Eleven."}],
     "rejected": [{"role": "assistant", "content": "Fifteen."}]},
    {"prompt": [{"role": "user", "content": "Compose a travel blog post about Hawaii."}],
     "chosen": [{"role": "assistant", "content": "Aloha! ..."}],
     "rejected": [{"role": "assistant", "content": "Hawaii is nice."}]},
]
EXPECTED_PAIRS_JSONL = (
    '{"prompt": [{"role": "user", "content": "What is the capital of France?"}], '
    '"chosen": [{"role": "assistant", "content": "Paris."}], '
    '"rejected": [{"role": "assistant", "content": "Lyon, I think."}]}\n'
    '{"prompt": [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "Seven."}, '
    '{"role": "user", "content": "Another one?"}], '
    '"chosen": [{"role": "assistant", "content": "Eleven."}], '
    '"rejected": [{"role": "assistant", "content": "Fifteen."}]}\n'
    '{"prompt": [{"role": "user", "content": "Compose a travel blog post about Hawaii."}], '
    '"chosen": [{"role": "assistant", "content": "Aloha! ..."}], '
    '"rejected": [{"role": "assistant", "content": "Hawaii is nice."}]}\n'
)

CONV = turn("Hi", "Hello there.")
CONV_B = turn("Hi", "Hey.")


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def run(capsys, *argv) -> tuple[int, str, str]:
    """``wvstudio ARGV`` in-process -> (exit code, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "arena.duckdb", index_in_background=False)
    yield s
    s.close()


# ---------------------------------------------------------------------------------------------- votes


def vote(round_id, winner="model_a", **kw) -> dict:
    return {"round_id": round_id, "model_a": "vicuna-13b", "model_b": "koala-13b", "winner": winner,
            "conversation_a": CONV, "conversation_b": CONV_B, "judge": "bob", **kw}


def test_a_second_vote_for_a_round_is_refused_and_the_first_kept(store):
    first = store.add_battle(vote("round-1", "model_a", params={"temperature": 0.7}))
    kept = store.battles()
    assert [(b["id"], b["round_id"], b["winner"], b["origin"], b["anony"], b["turn"], b["params"]) for b in kept] == [
        (first, "round-1", "model_a", "studio", True, 1, {"temperature": 0.7})]
    assert store.has_vote("round-1") and not store.has_vote("round-2")

    with pytest.raises(VoteError, match=r"^round 'round-1' was already voted on; only the first vote counts"):
        store.add_battle(vote("round-1", "model_b", judge="mallory"))
    assert store.battles() == kept and store.battle_count() == 1
    assert isinstance(VoteError("x"), ValueError)

    # the database refuses it too, past the code's check
    with pytest.raises(duckdb.ConstraintException, match="round_id"):
        store._con.execute("INSERT INTO battles (id, round_id, model_a, model_b, winner, conversation_a, "
                           "conversation_b, origin) VALUES (99, 'round-1', 'a', 'b', 'model_b', '[]', '[]', 'studio')")
    assert store.battles() == kept

    # another round, and battles without a round, are fine; ids go on
    assert store.add_battle(vote("round-2", "tie")) == first + 1
    assert store.add_battle(vote(None, "model_b")) == first + 2
    assert store.add_battle(vote(None, "model_b")) == first + 3
    assert store.battle_count() == 4 and store.battle_count(anony_only=True) == 4
    assert [b["winner"] for b in store.battles()] == ["model_a", "tie", "model_b", "model_b"]


def test_bad_votes_are_refused_naming_the_field(store):
    with pytest.raises(StoreError, match=r"field 'winner' is \"a\", expected one of model_a, model_b, tie, "
                                         r"tie \(bothbad\)"):
        store.add_battle(vote("r", "a"))
    with pytest.raises(StoreError, match=r"conversation_b: message 2 \(assistant\): empty text"):
        store.add_battle(vote("r", conversation_b=turn("Hi", " ")))
    with pytest.raises(StoreError, match="unknown field 'colour'"):
        store.add_battle(vote("r", colour="red"))
    with pytest.raises(StoreError, match="model_a and model_b are the same model 'koala-13b'"):
        store.add_battle(vote("r", model_a="koala-13b"))
    assert store.battle_count() == 0 and not store.has_vote("r")


# ---------------------------------------------------------------------------------------------- ratings


def test_ratings_round_trip_and_survive_reopening(tmp_path):
    db = tmp_path / "r.duckdb"
    s = Store(db, index_in_background=False)
    try:
        a = s.add_rating("vicuna-13b", CONV, 1, "clear and short", "bob")
        b = s.add_rating("koala-13b", CONV_B, -1, None, None)
        c = s.add_rating("vicuna-13b", CONV_B, -1, "too terse", "carol")
        for bad, why in ((0, "rating must be 1"), (True, "rating must be 1"), (2, "rating must be 1")):
            with pytest.raises(StoreError, match=why):
                s.add_rating("vicuna-13b", CONV, bad)
        with pytest.raises(StoreError, match=r"conversation: message 1: the first message must be from 'user'"):
            s.add_rating("vicuna-13b", [{"role": "assistant", "content": "Hi"}], 1)
        with pytest.raises(StoreError, match="model name is empty"):
            s.add_rating(" ", CONV, 1)
    finally:
        s.close()
    s = Store(db, index_in_background=False)
    try:
        got = s.ratings()
        assert [(r["id"], r["model"], r["conversation"], r["rating"], r["note"], r["voter"]) for r in got] == [
            (a, "vicuna-13b", CONV, 1, "clear and short", "bob"), (b, "koala-13b", CONV_B, -1, None, None),
            (c, "vicuna-13b", CONV_B, -1, "too terse", "carol")]
        assert all(isinstance(r["tstamp"], float) for r in got) and got[0]["tstamp"] <= got[2]["tstamp"]
        assert [r["id"] for r in s.ratings("vicuna-13b")] == [a, c] and s.ratings("nobody") == []
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------- files


def test_arena_file_imports_and_exports_equal(tmp_path, capsys):
    src = tmp_path / "clean_battle_conv.jsonl"
    write_jsonl(src, ROWS)
    d = tmp_path / "data"
    rc, out, err = run(capsys, "arena", "import", src, "--data-dir", d)
    assert rc == 0, err
    assert out == "clean_battle_conv.jsonl: 5 battles imported\n"

    exported = tmp_path / "out" / "battles.jsonl"
    exported.parent.mkdir()
    rc, out, err = run(capsys, "arena", "export", exported, "--data-dir", d)
    assert rc == 0, err
    assert out == f"wrote 5 battles to {exported}\n"
    back = [json.loads(line) for line in exported.read_text(encoding="utf-8").splitlines()]
    assert back == ROWS                                      # same rows, same values
    assert [list(r) for r in back] == [list(r) for r in ROWS]  # same keys in the same order, absent stays absent

    # a second import of the same file adds nothing
    rc, out, _ = run(capsys, "arena", "import", src, "--data-dir", d)
    assert rc == 0 and out == "clean_battle_conv.jsonl: 0 battles imported, 5 already imported\n"

    s = Store(d / "studio.duckdb", index_in_background=False)
    try:
        stored = s.battles()
        assert len(stored) == 5 and {b["origin"] for b in stored} == {"import:clean_battle_conv.jsonl"}
        assert [b["model_a"] for b in stored] == ["vicuna-13b"] + [r["model_a"] for r in ROWS[:4]]  # no tstamp first
        mt = stored[0]
        assert (mt["question_id"], mt["anony"], mt["tstamp"], mt["language"], mt["extra"], mt["round_id"]) == (
            81, None, None, None, {}, None)
        assert stored[1]["extra"] == {k: ROWS[0][k] for k in ("openai_moderation", "toxic_chat_tag")}
        assert s.battle_count(anony_only=True) == 3
        assert [b["winner"] for b in s.battles(anony_only=True, conversations=False)] == [
            "model_a", "tie", "tie (bothbad)"]
        assert "conversation_a" not in s.battles(conversations=False)[0]
    finally:
        s.close()


def test_studio_votes_export_as_arena_rows(tmp_path):
    s = Store(tmp_path / "v.duckdb", index_in_background=False)
    try:
        s.add_battle(vote("round-1", "model_b", tstamp=1700000000.5, language="English", params={"top_p": 0.9}))
        out = tmp_path / "votes.jsonl"
        assert write_arena_jsonl(s.battles(), out) == 1
    finally:
        s.close()
    row = json.loads(out.read_text())
    assert list(row) == list(ARENA_FIELDS)
    assert row == {"question_id": None, "model_a": "vicuna-13b", "model_b": "koala-13b", "winner": "model_b",
                   "judge": "bob", "conversation_a": CONV, "conversation_b": CONV_B, "turn": 1, "anony": True,
                   "language": "English", "tstamp": 1700000000.5}
    assert [{k: b[k] for k in ARENA_FIELDS} for b in read_arena_jsonl(out)] == [row]


def test_bad_rows_are_named_by_file_and_line(tmp_path, capsys):
    lines = [json.dumps(ROWS[0]),
             json.dumps({**ROWS[1], "winner": "A"}),                          # line 2
             "{not json",                                                      # line 3
             "",                                                               # a blank line still counts
             json.dumps({k: v for k, v in ROWS[2].items() if k != "conversation_b"}),  # line 5
             json.dumps({**ROWS[3], "conversation_a": [{"content": "2+2?", "role": "user"}]}),  # line 6
             json.dumps({**ROWS[4], "turn": "one"}),                           # line 7
             json.dumps([1, 2])]                                               # line 8
    src = tmp_path / "mixed.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    d = tmp_path / "data"
    rc, out, err = run(capsys, "arena", "import", src, "--data-dir", d)
    assert rc == 0, err
    assert out.splitlines() == [
        "mixed.jsonl: 1 battle imported, 6 bad rows skipped",
        "  line 2: field 'winner' is \"A\", expected one of model_a, model_b, tie, tie (bothbad)",
        "  line 3: invalid JSON: Expecting property name enclosed in double quotes at column 2",
        "  line 5: missing field 'conversation_b'",
        "  line 6: conversation_a: message 1 (user): the conversation must end with an assistant message",
        "  line 7: field 'turn' must be a whole number from 0 to 2147483647, not \"one\"",
        "  line 8: row is not a JSON object (array)",
    ]

    # every row bad: an error naming the file and lines, and nothing imported
    all_bad = tmp_path / "all_bad.jsonl"
    all_bad.write_text("\n".join([lines[1], lines[4]]) + "\n", encoding="utf-8")
    rc, out, err = run(capsys, "arena", "import", all_bad, "--data-dir", d)
    assert rc == 2 and out == "" and "Traceback" not in err
    assert err == (f"error: {all_bad}: nothing to import: all 2 rows are bad (line 1: field 'winner' is \"A\", "
                   "expected one of model_a, model_b, tie, tie (bothbad); line 2: missing field 'conversation_b')\n")
    s = Store(d / "studio.duckdb", index_in_background=False)
    try:
        assert s.battle_count() == 1
    finally:
        s.close()

    # the strict reader refuses a file with any bad row, naming file and line
    with pytest.raises(FormatError) as e:
        read_arena_jsonl(src)
    assert str(e.value).startswith(f"{src}: 6 bad rows (line 2: field 'winner' is \"A\"")
    assert [b.row for b in e.value.bad_rows] == [2, 3, 5, 6, 7, 8]
    # an upload is named by its own name, never by the server's path
    with pytest.raises(FormatError, match=r"^my battles\.jsonl: nothing to import: all 2 rows are bad") as e:
        read_battles(all_bad, display_name="my battles.jsonl")
    assert str(tmp_path) not in str(e.value)
    rc, _, err = run(capsys, "arena", "import", tmp_path / "missing.jsonl", "--data-dir", d)
    assert rc == 2 and err.startswith("error: ") and "missing.jsonl: file not found" in err


# ---------------------------------------------------------------------------------------------- preference pairs


def test_preference_pairs_of_three_votes_are_exact(tmp_path, capsys):
    src = tmp_path / "battles.jsonl"
    write_jsonl(src, ROWS)
    assert preference_pairs(read_arena_jsonl(src)) == (EXPECTED_PAIRS, {"tie": 1, "tie (bothbad)": 1,
                                                                        "user turns differ": 0})
    d = tmp_path / "data"
    assert run(capsys, "arena", "import", src, "--data-dir", d)[0] == 0

    out = tmp_path / "pairs.jsonl"
    rc, printed, err = run(capsys, "arena", "pairs", "--out", out, "--data-dir", d)
    assert rc == 0, err
    assert printed == f"wrote 3 preference pairs to {out}\nleft out: 1 tie, 1 both bad\n"
    # stored oldest first: the MT-bench row (no tstamp) comes first
    assert out.read_text(encoding="utf-8").splitlines(keepends=True) == [
        EXPECTED_PAIRS_JSONL.splitlines(keepends=True)[i] for i in (2, 0, 1)]

    import datasets

    folder = tmp_path / "pairs_ds"
    rc, printed, err = run(capsys, "arena", "pairs", "--out", f"{folder}/", "--data-dir", d)
    assert rc == 0, err
    assert printed.startswith(f"wrote 3 preference pairs to {folder} (datasets folder)\n")
    ds = datasets.load_from_disk(str(folder))
    assert ds.column_names == ["prompt", "chosen", "rejected"]
    assert ds.to_list() == [EXPECTED_PAIRS[i] for i in (2, 0, 1)]
    rc, _, err = run(capsys, "arena", "pairs", "--out", f"{folder}/", "--format", "jsonl", "--data-dir", d)
    assert rc == 2 and "datasets folder" in err


def test_pairs_leave_out_battles_whose_user_turns_differ():
    other = {**ROWS[1], "conversation_b": turn("Name a prime number.", "Seven.") + turn("And an even one?", "Two.")}
    pairs, skipped = preference_pairs([ROWS[0], other, ROWS[2]])
    assert pairs == EXPECTED_PAIRS[:1] and skipped == {"tie": 1, "tie (bothbad)": 0, "user turns differ": 1}


# ---------------------------------------------------------------------------------------------- running studio


def test_arena_commands_run_inside_a_running_studio(tmp_path, capsys, studio):
    """A command sent to the studio that holds the database (``studio.remote`` calls ``run_payload``) runs on its
    open store; a separate ``wvstudio`` process finds the database held and says so without a traceback."""
    src = tmp_path / "battles.jsonl"
    write_jsonl(src, ROWS)
    data = studio.settings.data_dir
    args = build_parser().parse_args(["arena", "import", str(src), "--data-dir", str(data)])
    payload = json.loads(json.dumps(payload_of(args)))
    assert payload["__command__"] == "cmd_arena_import"
    assert run_payload(payload, studio) == 0
    assert capsys.readouterr().out == "battles.jsonl: 5 battles imported\n"
    assert studio.store.battle_count() == 5

    proc = subprocess.run([sys.executable, "-m", "studio.cli", "arena", "import", str(src), "--data-dir", str(data)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: cannot open database") and "is the web app" in proc.stderr


# ---------------------------------------------------------------------------------------------- leaderboard


def test_winners_agree_with_the_ratings_module():
    from studio import arena

    assert arena.WINNERS == WINNERS


def test_leaderboard_command_prints_the_ratings_best_first(tmp_path, capsys):
    from studio.arena import leaderboard

    rows = []
    for i in range(12):  # vicuna beats both; koala beats alpaca; a few ties
        a, b, w = [("vicuna-13b", "koala-13b", "model_a"), ("alpaca-13b", "vicuna-13b", "model_b"),
                   ("koala-13b", "alpaca-13b", "model_a"), ("koala-13b", "alpaca-13b", "tie")][i % 4]
        rows.append({**ROWS[0], "question_id": f"q{i}", "model_a": a, "model_b": b, "winner": w,
                     "anony": i % 3 != 0, "tstamp": 1682351591.0 + i})
    src = tmp_path / "battles.jsonl"
    write_jsonl(src, rows)
    d = tmp_path / "data"
    assert run(capsys, "arena", "import", src, "--data-dir", d)[0] == 0
    rc, out, err = run(capsys, "arena", "leaderboard", "--bootstrap", "20", "--data-dir", d)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["rank", "model", "Elo", "Bradley-Terry", "95%", "interval", "battles"]
    expected = leaderboard([{k: r[k] for k in ("model_a", "model_b", "winner", "anony")} for r in rows],
                           bootstrap=20)
    assert [line.split()[1] for line in lines[2:5]] == [r.model for r in expected]
    assert lines[2].split()[:2] == [str(expected[0].rank), "vicuna-13b"]
    assert lines[2].split()[-1] == str(expected[0].battles) == "6"
    assert lines[-1] == "12 battles; 95% interval of Bradley-Terry from 20 bootstrap rounds"
    rc, out, _ = run(capsys, "arena", "leaderboard", "--anony-only", "--bootstrap", "0", "--data-dir", d)
    assert rc == 0 and out.splitlines()[-1] == "8 battles voted with hidden names"
    rc, out, _ = run(capsys, "arena", "leaderboard", "--data-dir", tmp_path / "empty")
    assert rc == 0 and out.startswith("no battles: import a battle file")


def test_leaderboard_refuses_a_negative_bootstrap(tmp_path, capsys):
    rc, _, err = run(capsys, "arena", "leaderboard", "--bootstrap", "-1", "--data-dir", tmp_path / "d")
    assert rc == 2 and err == "error: --bootstrap: expected a whole number >= 0, not -1\n"


def test_parser_knows_every_arena_command():
    p = build_parser()
    for argv, func in ((["arena", "import", "f.jsonl"], "cmd_arena_import"),
                       (["arena", "export", "f.jsonl"], "cmd_arena_export"),
                       (["arena", "leaderboard", "--anony-only", "--bootstrap", "5"], "cmd_arena_leaderboard"),
                       (["arena", "pairs", "--out", "p.jsonl"], "cmd_arena_pairs")):
        assert p.parse_args(argv).func.__name__ == func
