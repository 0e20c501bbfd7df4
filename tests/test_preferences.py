"""Preference sets: pairs from Arena votes, Chat thumbs and pairwise judge runs (ties and both-bad left out and
counted), import of TRL-format and UltraFeedback-style files, browse/edit (swap, drop) with the set's hash kept
current, and counts per source and model."""

from __future__ import annotations

import hashlib
import json

import pytest

from studio.judge import JudgeConfig, answer_params, question_from_dict
from studio.preferences import (PreferenceError, build_set, counts, import_set, pairs_from_judge,
                                pairs_from_thumbs, pairs_from_votes, read_preference_file, snapshot_bytes)
from studio.store import Store, StoreError


def conv(q, a):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def vote(store, i, winner, a="A", b="B"):
    return store.add_battle({"model_a": a, "model_b": b, "winner": winner, "round_id": f"r{i}",
                             "conversation_a": conv(f"q{i}", f"answer A{i}"),
                             "conversation_b": conv(f"q{i}", f"answer B{i}")})


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "s.duckdb", index_in_background=False)
    yield s
    s.close()


def test_votes_winner_vs_loser_ties_and_bothbad_counted(store):
    for i, w in enumerate(["model_a", "model_b", "tie", "tie (bothbad)", "tie", "model_a"]):
        vote(store, i, w)
    pairs, skipped = pairs_from_votes(store.battles())
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        ("answer A0", "answer B0"), ("answer B1", "answer A1"), ("answer A5", "answer B5")]
    assert [(p["model_chosen"], p["model_rejected"]) for p in pairs] == [("A", "B"), ("B", "A"), ("A", "B")]
    assert pairs[1]["prompt"] == [{"role": "user", "content": "q1"}]
    assert skipped["tie"] == 2 and skipped["tie (bothbad)"] == 1 and skipped["user turns differ"] == 0
    assert all(p["source"] == "votes" and p["ref"].startswith("battle ") for p in pairs)


def test_thumbs_pair_up_with_down_on_the_same_prompt(store):
    store.add_rating("A", conv("hi", "good"), 1)
    store.add_rating("B", conv("hi", "bad"), -1)
    store.add_rating("A", conv("only up", "x"), 1)
    store.add_rating("A", conv("only down", "y"), -1)
    store.add_rating("A", conv("flip", "z"), 1)
    store.add_rating("A", conv("flip", "z"), -1)  # the same answer rated both ways: the latest counts (down only)
    pairs, skipped = pairs_from_thumbs(store.ratings())
    assert len(pairs) == 1
    p = pairs[0]
    assert (p["prompt"], p["chosen"], p["rejected"]) == ([{"role": "user", "content": "hi"}], "good", "bad")
    assert (p["model_chosen"], p["model_rejected"], p["source"]) == ("A", "B", "thumbs")
    assert skipped["only up"] == 1 and skipped["only down"] == 2


def _pairwise_run(store, verdicts):
    """A pairwise run between m1 and m2 over len(verdicts) one-turn questions; ``verdicts[i]`` = (AB winner, BA
    winner) in the models' terms (None: unparsable)."""
    qs = [{"question_id": str(i), "turns": [f"question {i}"], "category": "writing", "difficulty": None,
           "reference": []} for i in range(len(verdicts))]
    cfg = JudgeConfig(questions="mt_bench", models=["m1", "m2"], judge="j", mode="pairwise", max_new_tokens=32)
    run_id = store.add_judge_run(mode="pairwise", judge="j", models=["m1", "m2"], question_set="mt_bench",
                                 questions=qs, params=cfg.to_params())
    for q, (ab, ba) in zip(qs, verdicts):
        p = answer_params(question_from_dict(q), cfg.max_new_tokens, cfg.seed).as_dict()
        for m in ("m1", "m2"):
            store.add_answer(m, "mt_bench", q["question_id"], p, [f"{m} on {q['question_id']}"])
        for order, w in (("AB", ab), ("BA", ba)):
            store.add_judgment(run_id, {"question_id": q["question_id"], "turn": 1, "jkey": f"pair|m1|m2|{order}",
                                        "prompt_name": "pair-v2", "model_a": "m1", "model_b": "m2", "order": order,
                                        "winner": w, "error": None if w else "no verdict"})
    return run_id


def test_judge_wins_agreed_in_both_orders_only(store):
    run_id = _pairwise_run(store, [("model_a", "model_a"), ("model_b", "model_b"), ("model_a", "model_b"),
                                   ("tie", "model_a"), ("model_a", None)])
    pairs, skipped = pairs_from_judge(store, run_id)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("m1 on 0", "m2 on 0"), ("m2 on 1", "m1 on 1")]
    assert pairs[0]["prompt"] == [{"role": "user", "content": "question 0"}]
    assert skipped == {"tie": 2, "unparsable": 1, "missing answer": 0}
    single = store.add_judge_run(mode="single", judge="j", models=["m1"], question_set="mt_bench",
                                 questions=[{"question_id": "0", "turns": ["x"]}])
    with pytest.raises(PreferenceError, match="pairwise"):
        pairs_from_judge(store, single)


def test_build_set_all_sources_counts_and_hash(store):
    for i, w in enumerate(["model_a", "tie", "model_b", "tie (bothbad)"]):
        vote(store, i, w)
    store.add_rating("A", conv("hi", "good"), 1)
    store.add_rating("B", conv("hi", "bad"), -1)
    run_id = _pairwise_run(store, [("model_a", "model_a")])
    set_id, skipped = build_set(store, "mine", votes=True, thumbs=True, judge_runs=[run_id])
    s = store.preference_set(set_id)
    assert (s["name"], s["n_pairs"], s["n_kept"]) == ("mine", 4, 4)
    assert skipped["votes: tie"] == 1 and skipped["votes: tie (bothbad)"] == 1 and s["skipped"] == skipped
    pairs = store.preference_pairs(set_id)
    assert s["sha256"] == hashlib.sha256(snapshot_bytes(pairs)).hexdigest()
    c = counts(pairs)
    assert c["total"] == 4 and c["by_source"] == {"votes": 2, "thumbs": 1, "judge": 1}
    assert c["by_model"]["A"] == {"chosen": 2, "rejected": 1} and c["by_model"]["m1"] == {"chosen": 1, "rejected": 0}

    # Edits: swap and drop change the hash; restore and swapping back bring it back.
    before = s["sha256"]
    after_swap = store.edit_preference_pair(set_id, 0, "swap")
    p0 = store.preference_pairs(set_id)[0]
    assert (p0["chosen"], p0["model_chosen"]) == (pairs[0]["rejected"], pairs[0]["model_rejected"])
    assert after_swap["sha256"] != before
    dropped = store.edit_preference_pair(set_id, 1, "drop")
    assert dropped["n_kept"] == 3 and counts(store.preference_pairs(set_id))["total"] == 3
    assert len(store.preference_pairs(set_id, include_dropped=False)) == 3
    store.edit_preference_pair(set_id, 1, "restore")
    assert store.edit_preference_pair(set_id, 0, "swap")["sha256"] == before
    with pytest.raises(StoreError, match="no pair 99"):
        store.edit_preference_pair(set_id, 99, "drop")
    with pytest.raises(StoreError, match="unknown action"):
        store.edit_preference_pair(set_id, 0, "flip")


def test_build_set_with_nothing_to_pair_says_what_was_left_out(store):
    vote(store, 0, "tie")
    with pytest.raises(PreferenceError, match="votes: tie 1"):
        build_set(store, "empty", votes=True, thumbs=False)
    with pytest.raises(PreferenceError, match="choose at least one source"):
        build_set(store, "none", votes=False, thumbs=False)
    assert store.preference_sets() == []


def test_import_trl_file_strings_conversations_and_implicit_prompt(store, tmp_path):
    rows = [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": "Go away."}]},
        {"chosen": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}],
         "rejected": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Green."}]},
        # UltraFeedback binarized: prompt string, full conversations, scores
        {"prompt": "Name a fruit", "prompt_id": "x", "score_chosen": 8.0, "score_rejected": 3.0,
         "chosen": [{"role": "user", "content": "Name a fruit"}, {"role": "assistant", "content": "Apple"}],
         "rejected": [{"role": "user", "content": "Name a fruit"}, {"role": "assistant", "content": "Car"}],
         "messages": [{"role": "user", "content": "Name a fruit"}, {"role": "assistant", "content": "Apple"}]},
    ]
    f = tmp_path / "prefs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    set_id = import_set(store, f)
    pairs = store.preference_pairs(set_id)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ([{"role": "user", "content": "What is 2+2?"}], "4", "5"),
        ([{"role": "user", "content": "Hi"}], "Hello!", "Go away."),
        ([{"role": "user", "content": "Sky?"}], "Blue.", "Green."),
        ([{"role": "user", "content": "Name a fruit"}], "Apple", "Car")]
    assert {p["source"] for p in pairs} == {"import:prefs.jsonl"} and pairs[3]["ref"] == "line 4"
    assert store.preference_set(set_id)["name"] == "prefs.jsonl"

    # a JSON array and Parquet read the same
    arr = tmp_path / "prefs.json"
    arr.write_text(json.dumps(rows))
    assert [p["chosen"] for p in read_preference_file(arr)] == ["4", "Hello!", "Blue.", "Apple"]
    import pandas as pd

    pq = tmp_path / "prefs.parquet"
    pd.DataFrame([{"prompt": "a?", "chosen": "yes", "rejected": "no"}]).to_parquet(pq)
    assert [p["chosen"] for p in read_preference_file(pq)] == ["yes"]


def test_import_bad_rows_named_by_file_and_line(store, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n\n"
                 + json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    with pytest.raises(PreferenceError, match=r"upload\.jsonl line 3: missing 'rejected'"):
        import_set(store, f, display_name="upload.jsonl")
    f.write_text("{not json\n")
    with pytest.raises(PreferenceError, match=r"bad\.jsonl"):
        read_preference_file(f)
    f.write_text(json.dumps({"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}))
    with pytest.raises(PreferenceError, match="line 1: the prompt must end with a user message"):
        read_preference_file(f)
    with pytest.raises(PreferenceError, match="file not found"):
        read_preference_file(tmp_path / "missing.jsonl")
    assert store.preference_sets() == []
