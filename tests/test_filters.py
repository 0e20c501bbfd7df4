"""The one conversation filter (``studio/filters.py``): its field declarations match the dataclass and the
store, ``filter_from_mapping`` turns control values into a ``ConvFilter`` or names the bad field, the training
rule leaves flagged and deleted conversations out unless chosen (checked against a real store), and
``parse_ids`` is the one id-list parser."""

from __future__ import annotations

import dataclasses

import pytest

from studio import cli, filters
from studio.filters import (FILTER_FIELDS, ORIGIN_VALUES, ORIGINS, STATUS_VALUES, ConvFilter, FilterError,
                            filter_from_mapping, parse_ids)
from studio.store import Store
from studio.store import ConvFilter as StoreConvFilter


def msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": text}, {"role": "assistant", "content": text + "!"}]


def test_fields_declared_once_for_every_filter_field():
    assert StoreConvFilter is ConvFilter
    assert len(FILTER_FIELDS) == len({f.name for f in FILTER_FIELDS})      # each field declared once
    assert {f.name for f in FILTER_FIELDS} == {d.name for d in dataclasses.fields(ConvFilter)}
    assert all(f.kind in ("choice", "number", "text", "tags") for f in FILTER_FIELDS)
    assert all(f.label and f.help and f.option for f in FILTER_FIELDS)
    by = filters.FIELDS_BY_NAME
    assert by["status"].values == STATUS_VALUES == ("all", "new", "edited", "flagged", "deleted")
    assert by["origin"].values == ORIGIN_VALUES == ("all", "imported", "expanded", "split", "arena")
    assert by["source_id"].choices is None and by["source_id"].choices_from == "source_choices"
    assert ORIGINS == ("imported", "expanded", "split", "arena")
    assert cli.parse_ids is parse_ids


def test_every_origin_and_choice_works_in_the_store(tmp_path):
    store = Store(tmp_path / "f.duckdb", index_in_background=False)
    try:
        for o in ORIGINS:
            store.add_conversation(msgs(o), origin=o)
        for o in ORIGINS:
            assert store.count_conversations(filter_from_mapping({"origin": o})) == 1
        for name in ("status", "edited", "flagged"):
            for v in filters.FIELDS_BY_NAME[name].values:
                store.count_conversations(filter_from_mapping({name: v}))   # every fixed choice is accepted
    finally:
        store.close()


def test_filter_from_mapping_converts_control_values():
    f = filter_from_mapping({"query": "  lazy dog ", "source_id": "3", "status": "all", "origin": "split",
                             "teacher": "", "tags": "a, b,", "min_rounds": 2.0, "max_rounds": None,
                             "min_chars": "", "max_tokens": "512", "edited": "yes", "flagged": False,
                             "ids": "3,5,9-11", "job_id": 0})
    assert f == ConvFilter(query="lazy dog", source_id=3, origin="split", tags=["a", "b"], min_rounds=2,
                           max_tokens=512, edited=True, flagged=False, ids=[3, 5, 9, 10, 11])
    assert filter_from_mapping({}) == ConvFilter()
    assert filter_from_mapping({"ids": [4, "7"], "edited": "any"}) == ConvFilter(ids=[4, 7])
    assert filter_from_mapping({"max_rounds": 0, "min_chars": 0}, zero_means_any=True) == ConvFilter()
    assert filter_from_mapping({"max_rounds": 0}) == ConvFilter(max_rounds=0)
    f = ConvFilter(status="flagged", tags=["x"], min_tokens=0, edited=False, ids=[1, 2])
    assert filter_from_mapping(f.to_mapping()) == f


@pytest.mark.parametrize("values, field, words", [
    ({"colour": "red"}, "colour", "unknown filter field"),
    ({"status": "archived"}, "status", "'archived' is not one of all, new, edited, flagged, deleted"),
    ({"origin": "pasted"}, "origin", "is not one of all, imported, expanded, split"),
    ({"min_rounds": "two"}, "min_rounds", "expected a whole number"),
    ({"max_chars": -5}, "max_chars", "whole number >= 0"),
    ({"min_tokens": 1.5}, "min_tokens", "whole number >= 0"),
    ({"source_id": True}, "source_id", "expected a whole number"),
    ({"edited": "maybe"}, "edited", "expected any, yes or no"),
    ({"ids": "3,x"}, "ids", "'x' is not an id"),
    ({"tags": [1, 2]}, "tags", "expected tag names"),
    ({"teacher": 7}, "teacher", "expected text"),
    ({"min_rounds": 5, "max_rounds": 2}, "min_rounds", "the minimum (5) is above the maximum (2)"),
])
def test_filter_from_mapping_names_the_bad_field(values, field, words):
    with pytest.raises(FilterError) as e:
        filter_from_mapping(values)
    assert e.value.field == field and f"filter field '{field}'" in str(e.value) and words in str(e.value)
    assert isinstance(e.value, ValueError)


def test_training_rule_leaves_flagged_and_deleted_out_unless_chosen(tmp_path):
    assert ConvFilter().for_training() == ConvFilter(flagged=False)
    assert ConvFilter(status="flagged").for_training() == ConvFilter(status="flagged")
    assert ConvFilter(flagged=True).for_training() == ConvFilter(flagged=True)
    assert ConvFilter(status="deleted").for_training() == ConvFilter(status="deleted")
    f = ConvFilter(tags=["a"], ids=[1])
    t = f.for_training()
    t.tags.append("b")
    t.ids.append(2)
    assert f == ConvFilter(tags=["a"], ids=[1])            # a copy: the original is untouched

    store = Store(tmp_path / "t.duckdb", index_in_background=False)
    try:
        ok, flagged, deleted, both = (store.add_conversation(msgs(t)) for t in ("ok", "flag", "del", "both"))
        store.bulk("flag", [flagged, both], "too short")
        store.delete_conversations([deleted, both])
        ids = lambda f: store.conversation_ids(f)  # noqa: E731
        assert ids(ConvFilter().for_training()) == [ok]
        assert ids(ConvFilter(status="new").for_training()) == [ok]
        assert ids(ConvFilter(status="flagged").for_training()) == [flagged]
        assert ids(ConvFilter(flagged=True).for_training()) == [flagged]
        assert ids(ConvFilter(status="deleted").for_training()) == [deleted, both]
        assert ids(ConvFilter()) == [ok, flagged]               # without the rule, flagged ones are listed
    finally:
        store.close()


def test_parse_ids():
    assert parse_ids("3,5,9-12") == [3, 5, 9, 10, 11, 12]
    assert parse_ids(" 7 2  2,1-1 ") == [1, 2, 7]
    for bad, words in (("", "no ids given"), ("3,a", "'a' is not an id"), ("9-3", "backwards"),
                       ("1-1000002", "too long"), ("-4", "not an id")):
        with pytest.raises(ValueError, match=words):
            parse_ids(bad)
