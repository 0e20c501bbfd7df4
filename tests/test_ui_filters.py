"""The filter as page controls (``studio/ui/filters.py``) and as command-line options (``studio/cli.py``), both
built from ``studio.filters.FILTER_FIELDS``: choices come from that one declaration, control values become the
``ConvFilter`` the store counts with, bad values are refused with the control's name, fresh store choices (a new
tag) reach the controls; and the page and the command line do not import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import gradio as gr
import pytest

from studio import cli
from studio.filters import FIELDS_BY_NAME, FILTER_FIELDS, STATUS_CHOICES, ConvFilter
from studio.ui.filters import ELEM_SUFFIX, FilterControls

ROOT = Path(__file__).resolve().parents[1]


def msgs(*texts: str) -> list[dict]:
    out = []
    for t in texts:
        out += [{"role": "user", "content": t}, {"role": "assistant", "content": t + " (answer)"}]
    return out


@pytest.fixture
def convs(studio):
    """Three conversations of 1, 2 and 3 rounds; the 3-round one tagged ``long``."""
    store = studio.store
    ids = [store.add_conversation(msgs(*[f"question {k} of {n}" for k in range(n)])) for n in (1, 2, 3)]
    store.bulk("tag", [ids[2]], "long")
    return ids


def test_controls_come_from_the_one_declaration(studio, convs):
    with gr.Blocks():
        fc = FilterControls.build(studio, elem_prefix="train")
    assert fc.names == [f.name for f in FILTER_FIELDS]
    assert fc["status"].choices == [tuple(c) for c in STATUS_CHOICES]
    assert fc["status"].value == "all" and fc["edited"].value == "any"
    assert fc["min_rounds"].elem_id == "train-min-rounds" and fc["query"].elem_id == "train-search"
    assert fc["source_id"].elem_id == "train-source" and fc["tags"].elem_id == "train-tags"
    assert set(ELEM_SUFFIX) == set(FIELDS_BY_NAME)
    assert [v for _, v in fc["tags"].choices] == ["long"]
    assert len(fc.triggers) == len(FILTER_FIELDS)
    assert fc.choice_outputs == [fc["source_id"], fc["teacher"], fc["tags"]]
    # the controls' starting values are the open filter
    assert fc.to_filter(*[c.value for c in fc.inputs]) == ConvFilter()


def test_control_values_become_the_stores_filter(studio, convs):
    store = studio.store
    with gr.Blocks():
        fc = FilterControls.build(studio, fields=("min_rounds", "max_rounds", "tags", "status"),
                                  defaults={"status": "new"})
    assert fc["status"].value == "new"
    # positional values, in the order of .inputs; 0 in a range box is no bound (Gradio sends empty as 0)
    f = fc.to_filter(2, 0, [], "all")
    assert f == ConvFilter(min_rounds=2)
    assert store.conversation_ids(f) == convs[1:]
    # one {component: value} dict, as Gradio passes a set of inputs (other components may be in it)
    other = gr.Textbox()
    f = fc.to_filter({fc["min_rounds"]: 0, fc["max_rounds"]: 2.0, fc["tags"]: [], fc["status"]: "new",
                      other: "ignored"})
    assert store.conversation_ids(f) == convs[:2]
    assert store.conversation_ids(fc.to_filter(None, None, ["long"], "all")) == [convs[2]]


@pytest.mark.parametrize("values, words", [
    ((5, 2, [], "all"), "Min rounds (min_rounds): the minimum (5) is above the maximum (2)"),
    ((-3, 0, [], "all"), "Min rounds (min_rounds): expected a whole number >= 0, not -3"),
    ((0, 0, [], "archived"), "Status (status): 'archived' is not one of all, new, edited, flagged, deleted"),
])
def test_a_bad_value_names_the_control(studio, values, words):
    with gr.Blocks():
        fc = FilterControls.build(studio, fields=("min_rounds", "max_rounds", "tags", "status"))
    with pytest.raises(ValueError) as e:
        fc.to_filter(*values)
    assert str(e.value) == words


def test_wrong_use_is_refused(studio):
    with gr.Blocks():
        with pytest.raises(ValueError, match="unknown filter field 'colour'"):
            FilterControls(studio, defaults={"colour": "red"})
        fc = FilterControls(studio)
        fc.render("status")
        with pytest.raises(ValueError, match="'status' is already on the page"):
            fc.render("status")
    with pytest.raises(ValueError, match=r"expected 1 filter values \(status\), got 2"):
        fc.to_filter("all", "new")
    with pytest.raises(ValueError, match="lack the filter control"):
        fc.to_filter({})


def test_refresh_brings_new_tags_sources_and_teachers(studio, convs):
    store = studio.store
    with gr.Blocks():
        fc = FilterControls.build(studio, fields=("source_id", "teacher", "tags", "min_rounds"))
    assert [v for _, v in fc["teacher"].choices] == [""]
    store.bulk("tag", convs[:2], "short")
    store.add_conversation(msgs("from a teacher"), origin="expanded", teacher="tutor-model")
    out = fc.refresh()
    assert set(out) == {fc["source_id"], fc["teacher"], fc["tags"]}
    assert out[fc["tags"]]["choices"] == ["short", "long"]          # most used first
    assert out[fc["teacher"]]["choices"] == [("Any teacher", ""), ("tutor-model", "tutor-model")]
    assert out[fc["source_id"]]["choices"] == [("All sources", 0)]
    assert "value" not in out[fc["tags"]]                             # chosen values are kept


def test_cli_options_come_from_the_one_declaration(capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["list", "--status", "flagged", "--origin", "split", "--has-tag", "a", "--tag", "b",
                              "--min-rounds", "2", "--not-edited", "--flagged", "--search", "fox", "--ids", "3-5",
                              "--job", "7", "--source", "2", "--teacher", "tutor"])
    assert cli.filter_from_args(args) == ConvFilter(
        status="flagged", origin="split", tags=["a", "b"], min_rounds=2, edited=False, flagged=True, query="fox",
        ids=[3, 4, 5], job_id=7, source_id=2, teacher="tutor")
    assert cli.filter_given(args) and not cli.filter_given(parser.parse_args(["list"]))
    for name in ("status", "origin"):
        action = next(a for a in parser._subparsers._group_actions[0].choices["list"]._actions
                      if a.dest == f"filter_{name}")
        assert tuple(action.choices) == FIELDS_BY_NAME[name].values
    with pytest.raises(SystemExit):
        parser.parse_args(["list", "--status", "archived"])
    assert "invalid choice: 'archived'" in capsys.readouterr().err
    with pytest.raises(cli.CliError, match=r"^--min-chars: the minimum \(9\) is above the maximum \(3\)$"):
        cli.filter_from_args(parser.parse_args(["list", "--min-chars", "9", "--max-chars", "3"]))
    with pytest.raises(cli.CliError, match=r"^--min-rounds: expected a whole number >= 0, not -1$"):
        cli.filter_from_args(parser.parse_args(["list", "--min-rounds", "-1"]))
    # quality run keeps --tag for itself (--has-tag filters)
    q = parser.parse_args(["quality", "run", "refusals", "--tag", "refusal", "--has-tag", "x", "--flagged"])
    assert q.tag == "refusal" and cli.filter_from_args(q) == ConvFilter(tags=["x"], flagged=True)


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules a studio module imports (relative imports resolved)."""
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = pkg.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = ".".join(p for p in (base, node.module) if p)
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def test_the_page_does_not_import_the_command_line():
    for path in sorted((ROOT / "studio" / "ui").glob("*.py")):
        assert not any(m == "studio.cli" or m.startswith("studio.cli.") for m in _imports(path)), path.name
