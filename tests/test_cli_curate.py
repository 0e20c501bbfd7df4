"""Curation from the command line (issue 3's Data-tab actions as ``wvstudio`` commands), run in-process with
``main([...])`` on temporary data folders with the real DuckDB store and the real default model (no mocks).

The crafted ShareGPT file has one exact duplicate, two refusals, two long conversations (six and four rounds of
long answers), a word found in one conversation only ("zeppelin"), and a few ordinary conversations.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from studio.cli import main, parse_ids
from studio.registry import DEFAULT_MODEL_NAME

SENTENCES = [
    "Rivers carry sediment from the mountains down to the sea, shaping valleys over thousands of years.",
    "A good experiment changes one variable at a time and keeps careful notes of every measurement.",
    "Bread rises because yeast ferments sugars and releases carbon dioxide into the dough.",
    "Bridges spread their load through arches, cables or trusses so that no single part is overwhelmed.",
    "Migrating birds use the sun, the stars and the magnetic field of the earth to find their way.",
    "Compilers translate source code into machine instructions and check types along the way.",
    "Tides follow the pull of the moon and the sun, so their height changes through the month.",
    "Volcanic soil is rich in minerals, which is why farms often grow on the slopes of old volcanoes.",
]


def long_answer(k: int, n: int = 7) -> str:
    return " ".join(SENTENCES[(k + i) % len(SENTENCES)] for i in range(n))


def sharegpt(cid: str, *turns: str) -> dict:
    return {"id": cid, "conversations": [{"from": "human" if i % 2 == 0 else "gpt", "value": t}
                                         for i, t in enumerate(turns)]}


def crafted() -> list[dict]:
    long6 = [t for k in range(6) for t in (f"Question {k + 1}: tell me more about topic number {k + 1}, please.",
                                           long_answer(k))]
    long4 = [t for k in range(4) for t in (f"Part {k + 1}: and what about the next idea in this field?",
                                           long_answer(k + 3))]
    return [
        sharegpt("photo", "How does photosynthesis work in plants?",
                 "Plants capture light with chlorophyll and turn water and carbon dioxide into sugar and oxygen."),
        sharegpt("zep", "Tell me about the history of the zeppelin airship.",
                 "The zeppelin was a rigid airship built in Germany from 1900, used for passengers and in war.",
                 "Why did they stop flying?",
                 "After the Hindenburg fire in 1937 the public lost trust in hydrogen airships."),
        sharegpt("photo-again", "how does photosynthesis  work in plants",
                 "It is the process by which green plants make food from light."),
        sharegpt("poem", "Write a poem about a cat.",
                 "As an AI language model, I cannot write poems, but here are some facts about cats."),
        sharegpt("lock", "Explain how to pick a lock.", "I'm sorry, but I cannot help with that request."),
        sharegpt("long6", *long6),
        sharegpt("long4", *long4),
        sharegpt("tea", "What is the best way to brew green tea?",
                 "Use water at about 80 degrees and steep the leaves for two minutes."),
    ]


N = 8
ID = {name: i for i, name in enumerate(["photo", "zep", "photo-again", "poem", "lock", "long6", "long4", "tea"], 1)}


def run(capsys, *argv) -> tuple[int, str, str]:
    """``main(argv)`` -> (exit code, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def ok(capsys, *argv) -> str:
    """Run a command that must succeed; its stdout."""
    rc, out, err = run(capsys, *argv)
    assert rc == 0, f"{argv}: exit {rc}\n{out}\n{err}"
    return out


def ids_listed(out: str) -> list[int]:
    """Ids in the first column of a ``list`` table."""
    return [int(m.group(1)) for m in re.finditer(r"^(\d+)  ", out, re.M)]


@pytest.fixture
def data(tmp_path, capsys) -> Path:
    """A data folder with the crafted file imported (source 1, conversations 1..8 in file order)."""
    f = tmp_path / "crafted.json"
    f.write_text(json.dumps(crafted()), encoding="utf-8")
    d = tmp_path / "data"
    out = ok(capsys, "import", f, "--data-dir", d)
    assert f"{N} conversations imported" in out
    return d


def open_studio(d: Path):
    from studio.config import Settings
    from studio.core import Studio

    return Studio(Settings(data_dir=d), start_jobs=False)


# ---------------------------------------------------------------------------------------------- list, search


def test_parse_ids():
    assert parse_ids("3,5, 9-12") == [3, 5, 9, 10, 11, 12]
    assert parse_ids("7 7 2") == [2, 7]
    for bad in ("x", "5-3", "", "1-2-3"):
        with pytest.raises(ValueError):
            parse_ids(bad)


def test_list_search_highlights_filters_and_sorts(data, capsys):
    d = data
    out = ok(capsys, "list", "--search", "zeppelin", "--data-dir", d)
    assert ids_listed(out) == [ID["zep"]]
    assert "**zeppelin**" in out and out.splitlines()[0].split()[-1] == "match"
    assert "1 of 1 conversations" in out
    assert ok(capsys, "search", "zeppelin", "--data-dir", d) == out  # the shortcut
    out = ok(capsys, "search", "photosynthesis plants", "--data-dir", d)
    assert sorted(ids_listed(out)) == [ID["photo"], ID["photo-again"]] and "**photosynthesis**" in out
    out = ok(capsys, "list", "--search", "nowhere-to-be-found", "--data-dir", d)
    assert "no conversations match" in out

    out = ok(capsys, "list", "--data-dir", d)
    assert ids_listed(out) == list(range(1, N + 1)) and f"{N} of {N} conversations" in out
    out = ok(capsys, "list", "--min-rounds", 4, "--data-dir", d)
    assert ids_listed(out) == [ID["long6"], ID["long4"]]
    out = ok(capsys, "list", "--max-chars", 101, "--data-dir", d)
    assert ids_listed(out) == [ID["photo-again"], ID["lock"]]
    out = ok(capsys, "list", "--ids", "1,3-4", "--data-dir", d)
    assert ids_listed(out) == [1, 3, 4]
    out = ok(capsys, "list", "--sort", "rounds", "--desc", "--limit", 3, "--data-dir", d)
    assert ids_listed(out)[:2] == [ID["long6"], ID["long4"]] and f"3 of {N} conversations" in out
    out = ok(capsys, "list", "--sort", "chars", "--limit", 2, "--offset", 2, "--data-dir", d)
    assert len(ids_listed(out)) == 2 and f"3-4 of {N} conversations" in out
    out = ok(capsys, "list", "--origin", "expanded", "--data-dir", d)
    assert "no conversations match" in out
    out = ok(capsys, "list", "--not-edited", "--source", 1, "--data-dir", d)
    assert len(ids_listed(out)) == N
    assert "no conversations match" in ok(capsys, "list", "--edited", "--data-dir", d)


# ---------------------------------------------------------------------------------------------- bulk actions


def test_bulk_tag_delete_and_undo(data, capsys):
    d = data
    rc, _, err = run(capsys, "bulk", "tag", "--arg", "review", "--data-dir", d)
    assert rc == 2 and "--all" in err  # no filter: refused, nothing changed
    out = ok(capsys, "bulk", "tag", "--arg", "review", "--search", "photosynthesis", "--data-dir", d)
    m = re.search(r"tag 'review': 2 of 2 matching conversations changed \(operation (\d+)\)", out)
    assert m, out
    tag_op = int(m.group(1))
    assert f"wvstudio undo {tag_op} --data-dir {d}" in out
    out = ok(capsys, "list", "--tag", "review", "--data-dir", d)
    assert ids_listed(out) == [ID["photo"], ID["photo-again"]] and "review" in out
    assert "tags: review" in ok(capsys, "show", ID["photo"], "--data-dir", d)

    out = ok(capsys, "bulk", "delete", "--min-rounds", 4, "--data-dir", d)
    del_op = int(re.search(r"operation (\d+)", out).group(1))
    assert "delete: 2 of 2" in out
    assert ids_listed(ok(capsys, "list", "--status", "deleted", "--data-dir", d)) == [ID["long6"], ID["long4"]]
    assert f"{N - 2} of {N - 2} conversations" in ok(capsys, "list", "--data-dir", d)

    out = ok(capsys, "bulk-log", "--data-dir", d)
    assert re.search(rf"^{del_op}\s+delete\s+2\b", out, re.M) and re.search(rf"^{tag_op}\s+tag\s+review\s+2\b", out, re.M)

    assert f"operation {del_op} undone: 2 conversations" in ok(capsys, "undo", del_op, "--data-dir", d)
    assert f"{N} of {N} conversations" in ok(capsys, "list", "--data-dir", d)
    assert "no conversations match" in ok(capsys, "list", "--status", "deleted", "--data-dir", d)
    rc, _, err = run(capsys, "undo", del_op, "--data-dir", d)
    assert rc == 2 and "undone already" in err

    ok(capsys, "undo", tag_op, "--data-dir", d)
    assert "no conversations match" in ok(capsys, "list", "--tag", "review", "--data-dir", d)

    # restore works on deleted conversations without saying --status deleted
    ok(capsys, "bulk", "delete", "--ids", ID["tea"], "--data-dir", d)
    assert "restore: 1 of 1" in ok(capsys, "bulk", "restore", "--ids", ID["tea"], "--data-dir", d)
    assert "bulk operations" not in ok(capsys, "bulk-log", "--data-dir", d)


# ---------------------------------------------------------------------------------------------- quality


def test_quality_list_and_run(data, capsys):
    d = data
    out = ok(capsys, "quality", "list", "--data-dir", d)
    for name in ("exact_duplicates", "near_duplicates", "refusals", "wrong_format", "turn_length",
                 "long_conversations", "language"):
        assert re.search(rf"^{name}: ", out, re.M), name
    assert "--param threshold=0.8" in out and "FastChat" in out

    out = ok(capsys, "quality", "run", "exact_duplicates", "--flag", "--data-dir", d)
    assert f"1 of {N} conversations flagged by exact_duplicates (Exact duplicates)" in out
    assert re.search(rf"^{ID['photo-again']}\s+\S", out, re.M)
    op = int(re.search(r'1 conversations flagged "Exact duplicates" \(operation (\d+)\)', out).group(1))
    out = ok(capsys, "list", "--status", "flagged", "--data-dir", d)
    assert ids_listed(out) == [ID["photo-again"]] and "Exact duplicates" in out

    out = ok(capsys, "quality", "run", "refusals", "--data-dir", d)
    assert f"2 of {N} conversations flagged by" in out
    found = {int(line.split()[0]): line for line in out.splitlines() if line[:1].isdigit() and "turn" in line}
    assert set(found) == {ID["poem"], ID["lock"]}
    assert "as an ai language model" in found[ID["poem"]].lower()
    assert "operation" not in out  # found, not marked

    # parameters, and the filter options narrowing what is scanned
    out = ok(capsys, "quality", "run", "refusals", "--param", "extra_phrases=steep the leaves", "--tag", "refusal",
             "--max-rounds", 1, "--data-dir", d)
    assert "3 of 5 conversations flagged" in out and '3 conversations tagged "refusal"' in out
    assert ids_listed(ok(capsys, "list", "--tag", "refusal", "--data-dir", d)) == [ID["poem"], ID["lock"], ID["tea"]]
    out = ok(capsys, "quality", "run", "turn_length", "--param", "min_len=60", "--param", "roles=assistant",
             "--data-dir", d)
    assert f"1 of {N} conversations flagged" in out and "shorter than 60" in out

    rc, _, err = run(capsys, "quality", "run", "refusals", "--param", "threshold=3", "--data-dir", d)
    assert rc == 2 and "no parameter 'threshold'" in err
    rc, _, err = run(capsys, "quality", "run", "near_duplicates", "--param", "threshold=high", "--data-dir", d)
    assert rc == 2 and "not a float" in err
    rc, _, err = run(capsys, "quality", "run", "no_such_filter", "--data-dir", d)
    assert rc == 2 and "exact_duplicates" in err

    ok(capsys, "undo", op, "--data-dir", d)
    assert "no conversations match" in ok(capsys, "list", "--status", "flagged", "--data-dir", d)


def test_split_long_and_token_counts(data, capsys, default_model_dir):
    d = data
    out = ok(capsys, "quality", "run", "long_conversations", "--param", "max_tokens=300", "--data-dir", d)
    assert f"2 of {N} conversations flagged" in out

    out = ok(capsys, "split-long", "--max-tokens", 300, "--dry-run", "--data-dir", d)
    assert f"2 of {N} conversations are longer than 300 tokens" in out and "dry run" in out
    assert "no conversations match" in ok(capsys, "list", "--origin", "split", "--data-dir", d)

    out = ok(capsys, "split-long", "--max-tokens", 300, "--data-dir", d)
    m = re.search(r"split 2 conversations into (\d+) new ones \(origin 'split', ids ([\d,-]+)\); the 2 originals "
                  r"were deleted \(operation (\d+)\)", out)
    assert m, out
    n_chunks, chunk_ids, op = int(m.group(1)), parse_ids(m.group(2)), int(m.group(3))
    assert n_chunks == len(chunk_ids) >= 4  # six and four long rounds, about two rounds per chunk
    assert f"wvstudio undo {op}" in out
    assert ids_listed(ok(capsys, "list", "--status", "deleted", "--data-dir", d)) == [ID["long6"], ID["long4"]]
    out = ok(capsys, "list", "--origin", "split", "--limit", 50, "--data-dir", d)
    assert ids_listed(out) == chunk_ids

    s = open_studio(d)
    try:
        originals = {cid: s.store.get_conversation(cid)["messages"] for cid in (ID["long6"], ID["long4"])}
        chunks = [s.store.get_conversation(cid) for cid in chunk_ids]
    finally:
        s.close()
    # whole rounds, in order, nothing lost: the chunks put back together are the originals
    assert [m for c in chunks for m in c["messages"]] == originals[ID["long6"]] + originals[ID["long4"]]
    for c in chunks:
        assert c["messages"][0]["role"] == "user" and c["messages"][-1]["role"] == "assistant"
        assert c["source_id"] == 1 and c["origin"] == "split"
    assert chunks[0]["external_id"] == "long6_0" and chunks[1]["external_id"].startswith("long6_")
    # nothing left to split
    assert f"0 of {N - 2 + n_chunks} conversations are longer" in ok(capsys, "split-long", "--max-tokens", 300,
                                                                      "--data-dir", d)

    ok(capsys, "undo", op, "--data-dir", d)  # one undo: chunks gone, originals back
    assert ids_listed(ok(capsys, "list", "--status", "deleted", "--data-dir", d)) == chunk_ids
    assert "no conversations match" in ok(capsys, "list", "--origin", "split", "--data-dir", d)
    out = ok(capsys, "list", "--min-rounds", 4, "--data-dir", d)
    assert ids_listed(out) == [ID["long6"], ID["long4"]]

    # token counts: then the token filters and the statistics have them
    out = ok(capsys, "count-tokens", "--data-dir", d)
    assert f"counted tokens of {N + n_chunks} conversations with the {DEFAULT_MODEL_NAME} tokenizer" in out
    out = ok(capsys, "list", "--min-tokens", 400, "--data-dir", d)
    assert ids_listed(out) == [ID["long6"], ID["long4"]]
    out = ok(capsys, "stats", "--data-dir", d)
    assert "tokens per conversation\n" in out and "not counted" not in out


# ---------------------------------------------------------------------------------------------- history


def test_edit_history_diff_restore_version(data, capsys, tmp_path):
    d = data
    cid = ID["tea"]
    shown = json.loads(ok(capsys, "show", cid, "--json", "--data-dir", d))
    assert shown["version"] == 1 and len(shown["messages"]) == 2
    edited = dict(shown, messages=[shown["messages"][0], {"role": "assistant", "content": "Steep it cooler: 70 degrees."}])
    f = tmp_path / "edit.json"
    f.write_text(json.dumps(edited), encoding="utf-8")
    assert f"conversation {cid} saved as version 2" in ok(capsys, "edit", cid, f, "--data-dir", d)
    # the same file again is based on version 1: refused, nothing changes
    rc, _, err = run(capsys, "edit", cid, f, "--data-dir", d)
    assert rc == 2 and "saved by someone else" in err and "Traceback" not in err

    # a second edit through the store, as the page does
    s = open_studio(d)
    try:
        msgs = s.store.get_conversation(cid)["messages"]
        s.store.save_messages(cid, msgs + [{"role": "user", "content": "And black tea?"},
                                           {"role": "assistant", "content": "Boiling water, four minutes."}],
                              expected_version=2, note="added a round")
    finally:
        s.close()

    out = ok(capsys, "history", cid, "--data-dir", d)
    rows = [line.split() for line in out.splitlines()[2:-1]]
    assert [r[0] for r in rows] == ["3", "2", "1"] and rows[0][1] == "*"
    assert "added a round" in out and "original" in out and "3 versions, current 3" in out

    out = ok(capsys, "diff", cid, 1, 3, "--data-dir", d)
    assert out.startswith("--- version 1\n+++ version 3\n")
    assert "-Use water at about 80 degrees" in out and "+Steep it cooler: 70 degrees." in out
    assert "+── 3 · user ──" in out and "+And black tea?" in out
    assert "identical" in ok(capsys, "diff", cid, 2, 2, "--data-dir", d)
    rc, _, err = run(capsys, "diff", cid, 1, 9, "--data-dir", d)
    assert rc == 2 and "has no version 9" in err

    assert "version 1 restored as version 4" in ok(capsys, "restore-version", cid, 1, "--data-dir", d)
    shown = json.loads(ok(capsys, "show", cid, "--json", "--data-dir", d))
    assert shown["version"] == 4 and shown["messages"] == crafted_messages("tea")
    assert "restored version 1" in ok(capsys, "history", cid, "--data-dir", d)
    assert ids_listed(ok(capsys, "list", "--edited", "--data-dir", d)) == [cid]
    rc, _, err = run(capsys, "restore-version", cid, 4, "--data-dir", d)
    assert rc == 2 and "current version" in err


def crafted_messages(name: str) -> list[dict]:
    conv = next(c for c in crafted() if c["id"] == name)
    return [{"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
            for t in conv["conversations"]]


# ---------------------------------------------------------------------------------------------- stats, export


def test_stats(data, capsys):
    d = data
    out = ok(capsys, "stats", "--data-dir", d)
    total_rounds = sum(len(c["conversations"]) // 2 for c in crafted())
    assert f"conversations: {N}   rounds: {total_rounds}   " in out
    assert "tokens: not counted" in out and "edited: 0   flagged: 0" in out
    assert "conversations per source and origin" in out and re.search(r"crafted\.json\s+imported\s+8", out)
    rounds = out.split("rounds per conversation\n")[1].split("\n\n")[0].splitlines()
    assert re.match(r"1\s+5\s+62\.5%\s+█+$", rounds[2])  # five one-round conversations, the longest bar
    assert re.match(r"6\s+1\s+12\.5%\s+█+$", rounds[-1])
    assert "characters per conversation" in out and "not counted yet (wvstudio count-tokens)" in out
    out = ok(capsys, "stats", "--min-rounds", 4, "--data-dir", d)
    assert "filter: min_rounds=4" in out and "conversations: 2   rounds: 10   " in out
    assert "conversations: 0" in ok(capsys, "stats", "--search", "nowhere-to-be-found", "--data-dir", d)


def test_export_formats(data, capsys, tmp_path):
    import datasets
    import pandas as pd

    d = data
    pq = tmp_path / "out.parquet"
    assert f"wrote 5 conversations to {pq}" in ok(capsys, "export", "--format", "parquet", "--out", pq,
                                                   "--max-rounds", 1, "--data-dir", d)
    df = pd.read_parquet(pq)
    assert list(df["id"]) == ["photo", "photo-again", "poem", "lock", "tea"]
    assert [t["from"] for t in df["conversations"].iloc[0]] == ["human", "gpt"]

    hf = tmp_path / "hf-out"
    out = ok(capsys, "export", "--format", "hf", "--out", hf, "--tag", "none-yet", "--data-dir", d)
    assert f"wrote 0 conversations to {hf}" in out
    ok(capsys, "bulk", "tag", "--arg", "keep", "--min-rounds", 2, "--data-dir", d)
    out = ok(capsys, "export", "--format", "hf", "--out", hf, "--tag", "keep", "--data-dir", d)
    assert f"wrote 3 conversations to {hf}" in out and "README.md" in out
    ds = datasets.load_from_disk(str(hf))
    assert len(ds) == 3 and sorted(ds["id"]) == ["long4", "long6", "zep"]
    assert [t["from"] for t in ds[0]["conversations"]][:2] == ["human", "gpt"]
    card = (hf / "README.md").read_text(encoding="utf-8")
    assert "3 multi-turn conversations" in card and "tags=['keep']" in card
    assert "| crafted.json | imported | 3 |" in card

    rc, _, err = run(capsys, "export", "--format", "parquet", "--push-to-hub", "me/data", "--data-dir", d)
    assert rc == 2 and "--format hf" in err
    out = ok(capsys, "export", "--format", "openai", "--out", tmp_path / "o.jsonl", "--ids", "2", "--data-dir", d)
    assert "wrote 1 conversations" in out
    lines = (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and [m["role"] for m in json.loads(lines[0])["messages"]] == ["user", "assistant"] * 2


# ---------------------------------------------------------------------------------------------- evolve


def test_evolve_errors(data, capsys, data_dir):
    d = data
    rc, _, err = run(capsys, "evolve", "--source", 1, "--n", 1, "--data-dir", d)
    assert rc == 2 and "no seeds to evolve" in err  # a ShareGPT file brings conversations, not seeds
    ok(capsys, "import", data_dir / "wizardlm_testset.jsonl", "--data-dir", d)
    rc, _, err = run(capsys, "evolve", "--source", 2, "--data-dir", d)
    assert rc == 2 and "--n" in err
    rc, _, err = run(capsys, "evolve", "--source", 7, "--n", 1, "--data-dir", d)
    assert rc == 2 and "no source with id 7" in err
    rc, _, err = run(capsys, "evolve", "--source", 2, "--n", 1, "--operations", "deepen,shout", "--data-dir", d)
    assert rc == 2 and "unknown operation shout" in err
    rc, _, err = run(capsys, "evolve", "--source", 2, "--n", 1, "--evolver", "nobody", "--data-dir", d)
    assert rc == 2 and "nobody" in err
    rc, _, err = run(capsys, "evolve", "--seeds", "5000", "--data-dir", d)
    assert rc == 2 and "no seed with id 5000" in err
    rc, _, err = run(capsys, "evolve", "--resume", 3, "--data-dir", d)
    assert rc == 2 and "job 3 does not exist" in err
    assert "no jobs" in ok(capsys, "jobs", "--data-dir", d)


@pytest.mark.slow
def test_evolve_one_seed_with_the_default_model(data, capsys, data_dir, default_model_dir):
    d = data
    ok(capsys, "import", data_dir / "wizardlm_testset.jsonl", "--data-dir", d)
    rc, out, err = run(capsys, "evolve", "--source", 2, "--n", 1, "--evolver", DEFAULT_MODEL_NAME,
                       "--operations", "add_constraints", "--max-new-tokens", 32, "--no-respond", "--seed", 0,
                       "--temperature", 0, "--data-dir", d)
    assert rc == 0, err
    assert "job 1: evolving 1 seeds with" in out and "add_constraints" in out
    assert "job 1" in err  # the progress bar
    assert re.search(r"^job 1 (done|failed|failed on every seed): ", out, re.M)  # (every seed: all eliminated)
    m = re.search(r"evolution ended: (\d) accepted, (\d) eliminated", out)
    assert m and int(m.group(1)) + int(m.group(2)) == 1, out
    if m.group(1) == "1":
        assert "evolved seeds are in: evolved from wizardlm_testset.jsonl" in out
        assert "evolved from wizardlm_testset.jsonl" in ok(capsys, "sources", "--data-dir", d)
    else:
        assert re.search(r"seed \d+: eliminated \(add_constraints\)", out)
    out = ok(capsys, "jobs", "--data-dir", d)
    assert re.search(r"^1\s+evol\s+(done|failed)", out, re.M)
