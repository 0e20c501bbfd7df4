"""Curation at the store level, on a real DuckDB file (and its SQLite FTS5 sidecar) in a temporary folder:
full-text search (words, phrases, prefix, ranking, snippets, completeness while the background index is
behind, rebuild of a lost or stale sidecar, edits re-indexed), every ``ConvFilter`` field and sort column,
optimistic concurrency between two editors, revisions (list, diff, restore; the lazily kept original), bulk
actions on 10,000+ conversations with their undo, and ``stats()`` on crafted data."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from studio import search
from studio.formats import ConversationRecord, ParsedFile, read_file
from studio.store import SORT_COLUMNS, ConvFilter, StaleVersionError, Store, StoreError


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------

def conv(*turns: str, system: str | None = None) -> list[dict]:
    """Messages from alternating user/assistant texts (an even number of them)."""
    assert len(turns) % 2 == 0
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return msgs


def parsed(convs: list[list[dict]], name: str = "chats.json") -> ParsedFile:
    """A ParsedFile as ``formats.read_file`` returns it for a ShareGPT file (unique content hash per name)."""
    recs = [ConversationRecord(row=i + 1, messages=m, external_id=f"{name}-{i}") for i, m in enumerate(convs)]
    digest = hashlib.sha256((name + json.dumps(convs)).encode()).hexdigest()
    return ParsedFile(path=name, name=name, format="sharegpt", sha256=digest, n_rows=len(recs), seeds=[],
                      conversations=recs, bad_rows=[])


def import_convs(store: Store, convs: list[list[dict]], name: str = "chats.json") -> list[int]:
    """Import conversations as one file; returns their ids in file order."""
    res = store.import_parsed(parsed(convs, name))
    assert res.n_conversations == len(convs)
    ids = store._q("SELECT id FROM conversations WHERE source_id = ? ORDER BY id", [res.source_id])
    return [r[0] for r in ids]


def ids_of(store: Store, f: ConvFilter | None = None, **kw) -> list[int]:
    df, total = store.list_conversations(f, limit=100_000, **kw)
    assert total == len(df)
    return [int(i) for i in df["id"]]


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "studio.duckdb")
    yield s
    s.close()


def filler(n: int, start: int = 0) -> list[list[dict]]:
    """``n`` dull conversations that match none of the search words used below."""
    return [conv(f"Question number {start + i} about the weather in town", "It is mild and dry today. " * 6)
            for i in range(n)]


# Texts for the search tests.
PHOTO_SHORT = conv("How do plants perform photosynthesis?",
                   "Photosynthesis turns light into sugar. Photosynthesis needs chlorophyll.")
PHOTO_LONG = conv("Tell me about plant biology.",
                  "Plants grow roots, stems and leaves; they take water and minerals from the soil, exchange gases "
                  "through stomata, flower, set seed, and store energy made by photosynthesis in starch, while "
                  "their cells divide, elongate and differentiate over many weeks of the growing season.")
FOX = conv("Type the sentence with every letter.", "The quick brown fox jumps over the lazy dog.")
GARDEN = conv("Any gardening tips for spring?", "Mulch the beds and water in the morning.")
UNRELATED = conv("What is the capital of Peru?", "Lima.")


# ----------------------------------------------------------------------------------------------------
# full-text search
# ----------------------------------------------------------------------------------------------------

@pytest.fixture
def searchable(store):
    ids = import_convs(store, [PHOTO_SHORT, PHOTO_LONG, FOX, GARDEN, UNRELATED])
    assert store.wait_for_index(60)
    return store, dict(zip(["short", "long", "fox", "garden", "peru"], ids))


def test_search_words_phrases_and_prefix(searchable):
    store, c = searchable
    assert set(ids_of(store, query="photosynthesis")) == {c["short"], c["long"]}
    assert ids_of(store, query="quick fox") == [c["fox"]]                     # every word, any order
    assert ids_of(store, query="fox quick") == [c["fox"]]
    assert ids_of(store, query="quick unicorn") == []                        # every word must match
    assert ids_of(store, query='"quick brown fox"') == [c["fox"]]            # a phrase
    assert ids_of(store, query='"brown quick"') == []                        # ... in its order
    assert ids_of(store, query='"lazy dog" jumps') == [c["fox"]]             # phrase + word
    assert ids_of(store, query="garden") == [c["garden"]]                    # prefix of the last word
    assert ids_of(store, query="photosynth") == ids_of(store, query="photosynthesis")
    assert ids_of(store, query="gard tips") == []                            # only the last word is a prefix
    assert ids_of(store, query="gardening tip") == [c["garden"]]
    assert ids_of(store, query='"garden"') == []                             # a quoted word is not a prefix
    assert ids_of(store, query="PHOTOSYNTHESIS") == ids_of(store, query="photosynthesis")  # case-insensitive
    # operators typed by a person are plain words, not FTS5 syntax errors
    assert ids_of(store, query="fox AND") == []
    assert ids_of(store, query='NEAR( "fox') == []
    assert ids_of(store, query="   ") == ids_of(store)                        # blank = no text filter
    assert store.count_conversations(query="photosynthesis") == 2


def test_search_results_ranked_best_first(searchable):
    store, c = searchable
    df, total = store.list_conversations(query="photosynthesis")
    assert total == 2
    # three mentions in two short messages rank above one mention in a long message (BM25)
    assert list(df["id"]) == [c["short"], c["long"]]
    # relevance is the default sort with a query; descending reverses it; another column overrides it
    assert list(store.list_conversations(query="photosynthesis", sort="relevance", descending=True)[0]["id"]) == \
        [c["long"], c["short"]]
    assert list(store.list_conversations(query="photosynthesis", sort="id", descending=True)[0]["id"]) == \
        sorted([c["short"], c["long"]], reverse=True)


def test_search_snippets_highlight_the_match(searchable):
    store, c = searchable
    snips = store.search_snippets("photosynthesis", [c["short"], c["long"], c["peru"]])
    assert set(snips) == {c["short"], c["long"]}
    pat = re.compile(re.escape(search.HIGHLIGHT_OPEN) + "photosynthesis" + re.escape(search.HIGHLIGHT_CLOSE),
                     re.IGNORECASE)
    for cid in (c["short"], c["long"]):
        assert pat.search(snips[cid]), snips[cid]
    # a prefix highlights the whole word it matched; a phrase highlights its words
    g = store.search_snippets("garden", [c["garden"]])[c["garden"]]
    assert search.HIGHLIGHT_OPEN + "gardening" + search.HIGHLIGHT_CLOSE in g
    f = store.search_snippets('"lazy dog"', [c["fox"]])[c["fox"]]
    assert "lazy" in f and "dog" in f and f.count(search.HIGHLIGHT_OPEN) >= 1
    assert search.highlight_html("a <b> " + search.HIGHLIGHT_OPEN + "x" + search.HIGHLIGHT_CLOSE) == \
        "a &lt;b&gt; <mark>x</mark>"


def test_search_combines_with_other_filters(searchable):
    store, c = searchable
    store.delete_conversations([c["long"]])
    assert ids_of(store, query="photosynthesis") == [c["short"]]
    assert ids_of(store, ConvFilter(query="photosynthesis", status="deleted")) == [c["long"]]
    assert ids_of(store, ConvFilter(query="photosynthesis", min_chars=10_000)) == []
    assert store.stats(ConvFilter(query="photosynthesis"))["totals"]["conversations"].iloc[0] == 1


COMPLETE_QUERIES = ["photosynthesis", "quick fox", '"quick brown fox"', "garden", "lazy dog jumps", "lima"]


def test_search_is_complete_while_the_index_catches_up(tmp_path):
    """Right after an import the background indexer is behind: conversations above its watermark are found by
    a DuckDB scan, and the results are the same as once the index has caught up."""
    db = tmp_path / "fresh.duckdb"
    store = Store(db)
    early = import_convs(store, [PHOTO_SHORT, FOX], "early.json")
    assert store.wait_for_index(60)
    store.close()                                             # the indexer thread has ended
    store = Store(db, index_in_background=False)              # no indexer until start_indexing(): deterministic
    try:
        targets = [PHOTO_LONG, GARDEN, UNRELATED, FOX, PHOTO_SHORT]
        ids = import_convs(store, filler(3000) + targets, "big.json")
        late = ids[-len(targets):]
        assert store.search.watermark() == early[-1] and store.index_pending() == len(ids)
        before = {q: ids_of(store, query=q) for q in COMPLETE_QUERIES}
        counts = {q: store.count_conversations(query=q) for q in COMPLETE_QUERIES}
        assert set(before["photosynthesis"]) == {early[0], late[0], late[4]}
        assert before["photosynthesis"][0] == early[0]                  # indexed matches first, by rank
        assert set(before["quick fox"]) == {early[1], late[3]}
        assert before["lima"] == [late[2]]
        assert before["garden"] == [late[1]]
        assert store.wait_for_index(120) is False                # nothing indexes until asked
        store.start_indexing()
        assert store.wait_for_index(120)
        assert store.index_pending() == 0 and store.search.watermark() == max(ids)
        for q in COMPLETE_QUERIES:
            after = ids_of(store, query=q)
            assert sorted(after) == sorted(before[q]), q
            assert counts[q] == len(after)
    finally:
        store.close()


def test_search_right_after_an_import_with_the_indexer_running(tmp_path):
    """The same on a fresh store queried at once while the indexer works (whatever it has reached)."""
    store = Store(tmp_path / "fresh.duckdb")
    try:
        targets = [PHOTO_SHORT, FOX, GARDEN, PHOTO_LONG, UNRELATED]
        ids = import_convs(store, targets + filler(8000) + targets)
        pending = store.index_pending()
        before = {q: ids_of(store, query=q) for q in COMPLETE_QUERIES}
        assert store.wait_for_index(120)
        print(f"conversations not yet indexed at the first query: {pending} of {len(ids)}")
        for q in COMPLETE_QUERIES:
            assert sorted(ids_of(store, query=q)) == sorted(before[q]), q
        assert sorted(before["photosynthesis"]) == [ids[0], ids[3], ids[-5], ids[-2]]
    finally:
        store.close()


@pytest.mark.parametrize("query, texts", [
    pytest.param("cat", [conv("How do I concatenate two lists?", "Use the plus operator.")],
                 id="word-inside-a-longer-word"),
    pytest.param("alpha omega", [conv("Alpha is the first letter.", "And omega is the last.")],
                 id="words-in-different-messages"),
    pytest.param("cafe", [conv("Describe café culture in Paris.", "Small tables, strong coffee.")],
                 id="accents"),
    pytest.param('"brown quick"', [conv("The quick brown fox.", "It jumps.")], id="phrase-word-order"),
])
def test_search_scan_matches_like_the_index(tmp_path, query, texts):
    store = Store(tmp_path / "fresh.duckdb", index_in_background=False)   # the indexer waits: deterministic
    try:
        ids = import_convs(store, filler(3000) + texts)
        assert store.search.watermark() == 0 and store.index_pending() == len(ids)
        before = ids_of(store, query=query)
        store.start_indexing()
        assert store.wait_for_index(120)
        assert ids_of(store, query=query) == before
    finally:
        store.close()


def _sidecar_files(db: Path) -> list[Path]:
    return [p for p in db.parent.iterdir() if p.name.startswith(db.name + ".search.sqlite")]


def test_index_rebuilt_when_the_sidecar_is_deleted(tmp_path):
    db = tmp_path / "studio.duckdb"
    store = Store(db)
    ids = import_convs(store, [PHOTO_SHORT, PHOTO_LONG, FOX, GARDEN, UNRELATED] + filler(3000))
    assert store.wait_for_index(60)
    before = {q: ids_of(store, query=q) for q in COMPLETE_QUERIES}
    n_messages = store._q("SELECT count(*) FROM messages")[0][0]
    store.close()

    # reopened with the sidecar intact: nothing to rebuild
    store = Store(db)
    assert store.search.watermark() == max(ids) and store.index_pending() == 0
    assert store.ensure_search_index() is False
    store.close()

    files = _sidecar_files(db)
    assert files, "no search index file beside the database"
    for p in files:
        p.unlink()
    store = Store(db)
    try:
        assert store.wait_for_index(120)
        assert store.search.count_rows() == n_messages
        for q in COMPLETE_QUERIES:
            assert ids_of(store, query=q) == before[q], q
        assert store.search_snippets("photosynthesis", [ids[0]])
    finally:
        store.close()


def _edit_behind_a_restored_sidecar(store, db: Path, cid: int, messages: list[dict]) -> Store:
    """Let the index catch up, back up its sidecar, edit ``cid`` to ``messages``, put the old sidecar back (as
    a restore from a backup would) and reopen: returns the reopened store."""
    assert store.wait_for_index(60)
    store.close()
    backup = {p.name: p.read_bytes() for p in _sidecar_files(db)}
    store = Store(db)
    store.save_messages(cid, messages, expected_version=1)
    store.close()
    for p in _sidecar_files(db):
        p.unlink()
    for name, data in backup.items():
        (db.parent / name).write_bytes(data)
    return Store(db)


def test_index_rebuilt_when_the_sidecar_is_out_of_step(tmp_path):
    """A sidecar from before an edit that added a round (e.g. restored from a backup) is found out of step at
    open and rebuilt: the new text is found, the old is not."""
    db = tmp_path / "studio.duckdb"
    store = Store(db)
    ids = import_convs(store, [FOX, GARDEN])
    store = _edit_behind_a_restored_sidecar(store, db, ids[0],
                                            conv("Say something.", "Zebras graze.", "More?", "Okapis too."))
    try:
        assert store.wait_for_index(60)
        assert ids_of(store, query="okapis") == [ids[0]]
        assert ids_of(store, query="zebras") == [ids[0]]
        assert ids_of(store, query="quick fox") == []
    finally:
        store.close()


def test_index_rebuilt_when_the_sidecar_missed_a_same_length_edit(tmp_path):
    db = tmp_path / "studio.duckdb"
    store = Store(db)
    ids = import_convs(store, [FOX, GARDEN])
    store = _edit_behind_a_restored_sidecar(store, db, ids[0], conv("Say something.", "Zebras graze."))
    try:
        assert store.wait_for_index(60)
        assert ids_of(store, query="quick fox") == []
        assert ids_of(store, query="zebras") == [ids[0]]
    finally:
        store.close()


def test_edited_conversation_found_by_new_text_not_old(searchable):
    store, c = searchable
    assert ids_of(store, query="lazy dog") == [c["fox"]]
    store.save_messages(c["fox"], conv("Type a pangram.", "Sphinx of black quartz, judge my vow."),
                        expected_version=1)
    assert ids_of(store, query="lazy dog") == []
    assert ids_of(store, query="quartz sphinx") == [c["fox"]]
    snip = store.search_snippets("quartz", [c["fox"]])[c["fox"]]
    assert search.HIGHLIGHT_OPEN + "quartz" + search.HIGHLIGHT_CLOSE in snip
    # restoring the original brings the old text back into the index
    store.save_messages(c["fox"], store.get_revision(c["fox"], 1), expected_version=2)
    assert ids_of(store, query="lazy dog") == [c["fox"]]
    assert ids_of(store, query="quartz") == []
    # the index holds exactly the live messages
    assert store.search.count_rows() == store._q("SELECT count(*) FROM messages")[0][0]


def test_edit_before_the_index_catches_up(tmp_path):
    """An edit of a conversation the indexer has not reached yet: found by its new text at once (scan), and
    still after the indexer reads it."""
    store = Store(tmp_path / "fresh.duckdb", index_in_background=False)   # the indexer does not start yet
    try:
        ids = import_convs(store, filler(50) + [FOX])
        assert store.search.watermark() == 0 and store.index_pending() == len(ids)
        store.save_messages(ids[-1], conv("Type a pangram.", "Sphinx of black quartz, judge my vow."),
                            expected_version=1)
        assert ids_of(store, query="quartz") == [ids[-1]]
        assert ids_of(store, query="lazy dog") == []
        store.start_indexing()
        assert store.wait_for_index(120)
        assert ids_of(store, query="quartz") == [ids[-1]]
        assert ids_of(store, query="lazy dog") == []
        assert store.search.count_rows() == store._q("SELECT count(*) FROM messages")[0][0]
    finally:
        store.close()


def test_search_in_an_imported_sharegpt_file(store, tmp_path):
    rows = [{"id": f"s{i}", "conversations": [{"from": "human", "value": h}, {"from": "gpt", "value": g}]}
            for i, (h, g) in enumerate([("What is DuckDB?", "An in-process analytical database."),
                                        ("What is SQLite?", "An embedded relational database.")])]
    f = tmp_path / "chats.json"
    f.write_text(json.dumps(rows))
    store.import_parsed(read_file(f))
    assert store.count_conversations(query="database") == 2   # at once, indexed or not
    assert store.wait_for_index(60)
    assert store.count_conversations(query="analytical database") == 1
    assert store.count_conversations(query="databas") == 2


# ----------------------------------------------------------------------------------------------------
# filters and sorting
# ----------------------------------------------------------------------------------------------------

@pytest.fixture
def crafted(store):
    """Nine conversations over two sources plus two generated ones, with tags, flags, edits, token counts
    and a deleted one. Returns (store, {name: id})."""
    a = import_convs(store, [
        conv("One round.", "Short."),                                              # a1: 1 round
        conv("Two rounds?", "Yes.", "Really?", "Really."),                         # a2: 2 rounds
        conv("Three?", "One.", "And?", "Two.", "Last?", "Three."),                 # a3: 3 rounds
        conv("Long one.", "x" * 5000),                                             # a4: 1 round, 5k chars
        conv("To delete.", "Gone soon."),                                          # a5
    ], "alpha.json")
    b = import_convs(store, [
        conv("Beta first.", "Answer."),                                            # b1
        conv("Beta second.", "Answer two.", "More?", "More."),                     # b2
        conv("Beta third.", "y" * 900, system="Be brief."),                       # b3
    ], "beta.json")
    g1 = store.add_conversation(conv("Generated.", "By gpt-4."), teacher="gpt-4")
    g2 = store.add_conversation(conv("Generated too.", "By alpaca.", "Again?", "Again."), teacher="alpaca-7b")
    ids = dict(zip(["a1", "a2", "a3", "a4", "a5"], a)) | dict(zip(["b1", "b2", "b3"], b)) | {"g1": g1, "g2": g2}
    store.bulk("tag", [ids["a1"], ids["b1"]], "good")
    store.bulk("tag", [ids["b1"], ids["g1"]], "math")
    store.bulk("flag", [ids["a2"]], "too short")
    store.save_messages(ids["a3"], conv("Three?", "One!", "And?", "Two.", "Last?", "Three."), expected_version=1)
    store.delete_conversations([ids["a5"]])
    store.set_token_counts({ids["a1"]: 10, ids["a2"]: 40, ids["a4"]: 1200, ids["b3"]: 300})
    return store, ids


def test_each_filter_field(crafted):
    store, c = crafted
    live = sorted(v for k, v in c.items() if k != "a5")
    assert ids_of(store) == live
    assert ids_of(store, status="all") == live
    assert ids_of(store, ConvFilter(tags=["good"])) == sorted([c["a1"], c["b1"]])
    assert ids_of(store, ConvFilter(tags=["good", "math"])) == sorted([c["a1"], c["b1"], c["g1"]])  # any of
    assert ids_of(store, ConvFilter(tags=["nope"])) == []
    assert ids_of(store, teacher="gpt-4") == [c["g1"]]
    assert ids_of(store, teacher="alpaca-7b") == [c["g2"]]
    assert ids_of(store, origin="expanded") == sorted([c["g1"], c["g2"]])
    assert ids_of(store, origin="imported") == sorted(c[k] for k in ("a1", "a2", "a3", "a4", "b1", "b2", "b3"))
    src_a = store.get_conversation(c["a1"])["source_id"]
    assert ids_of(store, source_id=src_a) == sorted(c[k] for k in ("a1", "a2", "a3", "a4"))
    # rounds: inclusive ranges, open ends
    assert ids_of(store, min_rounds=2) == sorted(c[k] for k in ("a2", "a3", "b2", "g2"))
    assert ids_of(store, min_rounds=2, max_rounds=2) == sorted(c[k] for k in ("a2", "b2", "g2"))
    assert ids_of(store, max_rounds=1) == sorted(c[k] for k in ("a1", "a4", "b1", "b3", "g1"))
    assert ids_of(store, min_rounds=3, max_rounds=2) == []
    # characters (system message included)
    n_b3 = len("Be brief.") + len("Beta third.") + 900
    assert store.get_conversation(c["b3"])["n_chars"] == n_b3
    assert ids_of(store, min_chars=900) == sorted([c["a4"], c["b3"]])
    assert ids_of(store, min_chars=n_b3, max_chars=n_b3) == [c["b3"]]
    assert ids_of(store, min_chars=n_b3 + 1, max_chars=5000) == []
    assert ids_of(store, min_chars=5000) == [c["a4"]]
    # tokens: only counted conversations match a token range
    assert ids_of(store, min_tokens=0) == sorted(c[k] for k in ("a1", "a2", "a4", "b3"))
    assert ids_of(store, min_tokens=40, max_tokens=300) == sorted([c["a2"], c["b3"]])
    assert ids_of(store, max_tokens=10) == [c["a1"]]
    # edited / status
    assert ids_of(store, edited=True) == [c["a3"]]
    assert ids_of(store, edited=False) == [i for i in live if i != c["a3"]]
    assert ids_of(store, status="edited") == [c["a3"]]
    assert ids_of(store, status="new") == [i for i in live if i != c["a3"]]
    # flags
    assert ids_of(store, flagged=True) == [c["a2"]]
    assert ids_of(store, flagged=False) == [i for i in live if i != c["a2"]]
    assert ids_of(store, status="flagged") == [c["a2"]]
    # deleted
    assert ids_of(store, status="deleted") == [c["a5"]]
    assert store.list_conversations(status="deleted")[0]["status"].tolist() == ["deleted"]
    assert ids_of(store, ConvFilter(status="deleted", source_id=src_a)) == [c["a5"]]
    # ids and combinations
    assert ids_of(store, ConvFilter(ids=[c["a1"], c["a5"], c["g1"]])) == sorted([c["a1"], c["g1"]])
    assert ids_of(store, ConvFilter(ids=[])) == []
    assert ids_of(store, ConvFilter(source_id=src_a, min_rounds=2, flagged=False)) == [c["a3"]]
    assert store.conversation_ids(ConvFilter(tags=["good"], max_rounds=1)) == sorted([c["a1"], c["b1"]])
    assert ConvFilter().describe() == "all conversations"
    assert "min_rounds=2" in ConvFilter(min_rounds=2, ids=[1]).describe()


def test_list_columns_show_tags_flag_and_teacher(crafted):
    store, c = crafted
    df = store.list_conversations(limit=100)[0].set_index("id")
    assert df.loc[c["b1"], "tags"] == "good, math"
    assert df.loc[c["a2"], "flag"] == "too short"
    assert df.loc[c["g1"], "teacher"] == "gpt-4"
    assert df.loc[c["a4"], "tokens"] == 1200
    assert df.loc[c["a3"], "status"] == "edited" and df.loc[c["a3"], "version"] == 2
    assert store.list_tags() == [("good", 2), ("math", 2)]
    assert store.teachers() == ["alpaca-7b", "gpt-4"]


def _expected_order(df: pd.DataFrame, col: str, descending: bool) -> list[int]:
    """Rows ordered by ``col`` (NULLs last either way), ties by id ascending."""
    rows = sorted(df.to_dict("records"), key=lambda r: r["id"])
    present = [r for r in rows if not pd.isna(r[col])]
    missing = [r for r in rows if pd.isna(r[col])]
    present.sort(key=lambda r: r[col], reverse=descending)  # stable: ties keep id order
    return [int(r["id"]) for r in present + missing]


@pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
@pytest.mark.parametrize("key", list(SORT_COLUMNS))
def test_sort_by_each_column(crafted, key, descending):
    store, c = crafted
    store.save_messages(c["b2"], conv("Beta second!", "Answer two.", "More?", "More."), expected_version=1)
    unsorted = store.list_conversations(limit=100)[0]
    got = [int(i) for i in store.list_conversations(limit=100, sort=key, descending=descending)[0]["id"]]
    if key == "relevance":  # without a query: id order
        assert got == sorted(unsorted["id"], reverse=descending)
        q = store.list_conversations(query="beta", sort=key, descending=descending)[0]
        assert sorted(q["id"]) == sorted([c["b1"], c["b2"], c["b3"]])
        best_first = [int(i) for i in store.list_conversations(query="beta")[0]["id"]]
        assert [int(i) for i in q["id"]] == (best_first[::-1] if descending else best_first)
        return
    assert got == _expected_order(unsorted, key, descending), key
    # paging through a sorted list gives the same order
    pages = [int(i) for k in range(0, len(got), 3)
             for i in store.list_conversations(limit=3, offset=k, sort=key, descending=descending)[0]["id"]]
    assert pages == got


def test_unknown_sort_column_is_refused(store):
    with pytest.raises(ValueError, match="cannot sort by"):
        store.list_conversations(sort="title; DROP TABLE conversations")


# ----------------------------------------------------------------------------------------------------
# editing: two sessions, revisions
# ----------------------------------------------------------------------------------------------------

def test_two_sessions_editing_the_same_conversation(store):
    cid = import_convs(store, [FOX])[0]
    a = store.get_conversation(cid)          # browser session A
    b = store.get_conversation(cid)          # browser session B
    assert a["version"] == b["version"] == 1
    a_msgs = [dict(m) for m in a["messages"]]
    a_msgs[1]["content"] = "Edited in session A."
    b_msgs = [dict(m) for m in b["messages"]]
    b_msgs[1]["content"] = "Edited in session B."
    assert store.save_messages(cid, a_msgs, expected_version=a["version"]) == 2
    with pytest.raises(StaleVersionError, match="saved by someone else") as err:
        store.save_messages(cid, b_msgs, expected_version=b["version"])
    assert "version 2" in str(err.value) and "version 1" in str(err.value)
    after = store.get_conversation(cid)
    assert after["version"] == 2
    assert after["messages"][1]["content"] == "Edited in session A."
    assert list(store.list_revisions(cid)["version"]) == [2, 1]
    # B reloads and saves on top of A's version
    assert store.save_messages(cid, b_msgs, expected_version=2) == 3
    assert store.get_conversation(cid)["messages"][1]["content"] == "Edited in session B."


def test_revisions_list_diff_and_restore(store):
    from studio.ui.data import _diff_html

    cid = import_convs(store, [FOX, GARDEN])[0]
    original = store.get_conversation(cid)["messages"]
    # before any edit: the live messages are version 1, nothing is stored in revisions
    revs = store.list_revisions(cid)
    assert list(revs["version"]) == [1] and list(revs["note"]) == ["original"]
    assert list(revs["n_messages"]) == [2]
    assert store._q("SELECT count(*) FROM revisions")[0][0] == 0
    assert store.get_revision(cid, 1) == original
    with pytest.raises(StoreError, match="no version 2"):
        store.get_revision(cid, 2)

    edited = conv("Type the sentence with every letter.", "Pack my box with five dozen liquor jugs.",
                  "Another?", "How vexingly quick daft zebras jump.")
    assert store.save_messages(cid, edited, expected_version=1, note="pangram swap") == 2
    # the original appears as version 1 only now, with the import's time
    revs = store.list_revisions(cid)
    assert list(revs["version"]) == [2, 1]
    assert list(revs["note"]) == ["pangram swap", "original"]
    assert list(revs["n_messages"]) == [4, 2]
    assert store.get_revision(cid, 1) == original
    assert store.get_revision(cid, 2) == edited
    conv_row = store.get_conversation(cid)
    assert revs["created_at"].iloc[1] == conv_row["created_at"]

    diff = _diff_html(store.get_revision(cid, 1), store.get_revision(cid, 2), 1, 2)
    assert "version 1" in diff and "version 2" in diff
    assert 'wv-diff-del">-The quick brown fox jumps over the lazy dog.' in diff
    assert 'wv-diff-add">+Pack my box with five dozen liquor jugs.' in diff
    assert "identical" in _diff_html(original, original, 1, 1)

    # restore = a new version with the old text
    assert store.save_messages(cid, store.get_revision(cid, 1), expected_version=2, note="restored version 1") == 3
    now = store.get_conversation(cid)
    assert now["messages"] == original and now["version"] == 3 and now["status"] == "edited"
    assert now["n_rounds"] == 1 and now["title"] == "Type the sentence with every letter."
    assert list(store.list_revisions(cid)["version"]) == [3, 2, 1]
    assert store.get_revision(cid, 3) == original
    assert store.get_revision(cid, 2) == edited
    # a restore based on a stale version is refused like any save
    with pytest.raises(StaleVersionError):
        store.save_messages(cid, store.get_revision(cid, 2), expected_version=2)
    with pytest.raises(StoreError, match="no version 9"):
        store.get_revision(cid, 9)
    # the other conversation was never touched: still no stored revision
    other = store._q("SELECT count(*) FROM revisions WHERE conversation_id <> ?", [cid])[0][0]
    assert other == 0


# ----------------------------------------------------------------------------------------------------
# bulk actions with undo, on 10,000+ conversations
# ----------------------------------------------------------------------------------------------------

N_BULK = 12_000


@pytest.fixture
def big(store):
    ids = import_convs(store, [conv(f"Question {i}?", f"Answer {i}.") for i in range(N_BULK)])
    return store, ids


def tags_of(store, tag):
    return sorted(r[0] for r in store._q("SELECT conversation_id FROM tags WHERE tag = ?", [tag]))


def test_bulk_tag_untag_with_undo(big):
    store, ids = big
    first, second = ids[:10_000], ids[5_000:]
    op1, n1 = store.bulk("tag", first, "review")
    assert n1 == 10_000 and tags_of(store, "review") == first
    op2, n2 = store.bulk("tag", second, "review")            # only the 2,000 not tagged yet change
    assert n2 == N_BULK - 10_000 and tags_of(store, "review") == ids
    assert store.count_conversations(ConvFilter(tags=["review"])) == N_BULK
    assert store.undo_bulk(op2) == N_BULK - 10_000
    assert tags_of(store, "review") == first
    with pytest.raises(StoreError, match="undone already"):
        store.undo_bulk(op2)
    op3, n3 = store.bulk("untag", ids[:10_500], "review")
    assert n3 == 10_000 and tags_of(store, "review") == []
    assert store.undo_bulk(op3) == 10_000
    assert tags_of(store, "review") == first
    assert store.undo_bulk(op1) == 10_000
    assert tags_of(store, "review") == []
    ops = store.list_bulk_ops()
    assert list(ops["id"]) == [op3, op2, op1]
    assert list(ops["n"]) == [10_000, N_BULK - 10_000, 10_000]
    assert ops["undone_at"].notna().all()
    with pytest.raises(StoreError, match="does not exist"):
        store.undo_bulk(999)
    with pytest.raises(ValueError, match="needs a tag"):
        store.bulk("tag", ids[:3], "  ")
    with pytest.raises(ValueError, match="unknown bulk action"):
        store.bulk("explode", ids[:3])


def test_undo_untag_does_not_duplicate_a_tag_added_again(big):
    store, ids = big
    store.bulk("tag", ids[:10], "review")
    op, _ = store.bulk("untag", ids[:10], "review")
    store.bulk("tag", ids[:10], "review")
    store.undo_bulk(op)
    assert store._q("SELECT count(*) FROM tags WHERE tag = 'review'")[0][0] == 10
    assert store.list_conversations(limit=1)[0]["tags"].iloc[0] == "review"


def test_bulk_flag_unflag_with_undo(big):
    store, ids = big
    store.bulk("flag", ids[:100], "boilerplate")                       # an earlier, different reason
    op1, n1 = store.bulk("flag", ids[:10_000], "too short")
    assert n1 == 10_000
    assert store.count_conversations(status="flagged") == 10_000
    assert store.count_conversations(flagged=False) == N_BULK - 10_000
    op_same, n_same = store.bulk("flag", ids[:10_000], "too short")     # nothing changes
    assert n_same == 0
    assert store.undo_bulk(op_same) == 0
    assert store.undo_bulk(op1) == 10_000
    flags = dict(store._q("SELECT id, flag FROM conversations"))
    assert all(flags[i] == "boilerplate" for i in ids[:100])             # earlier reasons come back
    assert all(flags[i] is None for i in ids[100:])
    op2, n2 = store.bulk("unflag", ids, None)
    assert n2 == 100 and store.count_conversations(flagged=True) == 0
    assert store.undo_bulk(op2) == 100
    assert store.count_conversations(flagged=True) == 100
    with pytest.raises(StoreError):
        store.undo_bulk(op2)


def test_bulk_delete_restore_with_undo(big):
    store, ids = big
    earlier = ids[:50]
    assert store.delete_conversations(earlier) == 50                  # deleted before, one by one
    op_early, _ = store.bulk("delete", ids[50:80])                    # and by an earlier bulk action
    stamps_before = dict(store._q("SELECT id, deleted_at FROM conversations WHERE deleted_at IS NOT NULL"))
    target = store.conversation_ids(ConvFilter(ids=ids[:10_100]))     # what the filter shows: not deleted
    assert len(target) == 10_100 - 80
    op, n = store.bulk("delete", ids[:10_100])                        # overlaps the deleted ones
    assert n == 10_100 - 80
    assert store.count_conversations() == N_BULK - 10_100
    assert store.count_conversations(status="deleted") == 10_100
    assert store.undo_bulk(op) == 10_100 - 80
    # exactly the rows this action deleted are back; the ones deleted earlier stay deleted, same time
    assert store.conversation_ids(ConvFilter(status="deleted")) == ids[:80]
    stamps_after = dict(store._q("SELECT id, deleted_at FROM conversations WHERE deleted_at IS NOT NULL"))
    assert stamps_after == stamps_before
    with pytest.raises(StoreError, match="undone already"):
        store.undo_bulk(op)
    assert store.count_conversations(status="deleted") == 80

    # bulk restore of everything deleted, and its undo (deleted again, with the same times)
    op_r, n_r = store.bulk("restore", store.conversation_ids(ConvFilter(status="deleted")))
    assert n_r == 80 and store.count_conversations(status="deleted") == 0
    assert store.undo_bulk(op_r) == 80
    assert dict(store._q("SELECT id, deleted_at FROM conversations WHERE deleted_at IS NOT NULL")) == stamps_before
    # the earlier bulk delete can still be undone on its own
    assert store.undo_bulk(op_early) == 30
    assert store.conversation_ids(ConvFilter(status="deleted")) == earlier


def test_bulk_on_a_search_filter(big):
    store, ids = big
    assert store.wait_for_index(120)
    match = store.conversation_ids(ConvFilter(query="question"))
    assert len(match) == N_BULK
    op, n = store.bulk("tag", store.conversation_ids(ConvFilter(query='"answer 17"')), "seventeen")
    assert n == 1 and tags_of(store, "seventeen") == [ids[17]]
    assert store.undo_bulk(op) == 1


# ----------------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------------

def test_stats_shapes_and_numbers(crafted):
    store, c = crafted
    st = store.stats()
    assert set(st) == {"by_source", "rounds", "chars", "tokens", "edits", "totals"}
    assert list(st["by_source"].columns) == ["source", "origin", "n"]
    by = {(r.source, r.origin): r.n for r in st["by_source"].itertuples()}
    assert by == {("alpha.json", "imported"): 4, ("beta.json", "imported"): 3, ("(none)", "expanded"): 2}
    assert list(st["by_source"]["n"]) == sorted(st["by_source"]["n"], reverse=True)

    assert list(st["rounds"].columns) == ["rounds", "n"]
    assert dict(zip(st["rounds"]["rounds"], st["rounds"]["n"])) == {1: 5, 2: 3, 3: 1}

    live = [store.get_conversation(v) for k, v in c.items() if k != "a5"]
    expect_chars: dict[int, int] = {}
    for cv in live:
        b = 1 << (max(cv["n_chars"], 1).bit_length() - 1)
        expect_chars[b] = expect_chars.get(b, 0) + 1
    assert list(st["chars"].columns) == ["bucket", "n"]
    assert dict(zip(st["chars"]["bucket"], st["chars"]["n"])) == expect_chars
    assert list(st["chars"]["bucket"]) == sorted(expect_chars)

    # tokens: 10 -> 8, 40 -> 32, 300 -> 256, 1200 -> 1024 (the deleted or uncounted ones are left out)
    assert dict(zip(st["tokens"]["bucket"], st["tokens"]["n"])) == {8: 1, 32: 1, 256: 1, 1024: 1}

    assert list(st["edits"].columns) == ["day", "n"]
    assert int(st["edits"]["n"].sum()) == 1                     # one edit (a3); the original is not an edit
    assert pd.Timestamp(st["edits"]["day"].iloc[0]).date() == datetime.now(timezone.utc).date()

    t = st["totals"].iloc[0]
    assert len(st["totals"]) == 1
    assert int(t["conversations"]) == 9
    assert int(t["rounds"]) == sum(cv["n_rounds"] for cv in live) == 14
    assert int(t["chars"]) == sum(cv["n_chars"] for cv in live)
    assert int(t["tokens"]) == 10 + 40 + 1200 + 300
    assert int(t["edited"]) == 1 and int(t["flagged"]) == 1

    # a restore and another edit are edits too; a filter narrows everything
    store.save_messages(c["a3"], store.get_revision(c["a3"], 1), expected_version=2)
    st = store.stats(ConvFilter(source_id=store.get_conversation(c["a1"])["source_id"]))
    assert int(st["edits"]["n"].sum()) == 2
    assert int(st["totals"]["conversations"].iloc[0]) == 4
    assert dict(zip(st["rounds"]["rounds"], st["rounds"]["n"])) == {1: 2, 2: 1, 3: 1}
    assert {r.source for r in st["by_source"].itertuples()} == {"alpha.json"}
    deleted = store.stats(ConvFilter(status="deleted"))
    assert int(deleted["totals"]["conversations"].iloc[0]) == 1


def test_stats_of_an_empty_store(store):
    st = store.stats()
    t = st["totals"].iloc[0]
    assert int(t["conversations"]) == 0 and int(t["rounds"]) == 0 and int(t["chars"]) == 0
    assert pd.isna(t["tokens"])
    for k in ("by_source", "rounds", "chars", "tokens", "edits"):
        assert len(st[k]) == 0
