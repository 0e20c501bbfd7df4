"""The Train and Expand tabs' handlers, called as the page calls them (the functions Gradio registered for the
tabs' events, found by element id), without a browser: the Train tab has every field of the Data tab's filter,
trains on exactly ``filter.for_training()`` of it, and says how many conversations and tokens that is; handlers
return dicts keyed by component; untrusted text reaches the page's Markdown escaped (``studio.ui.common``).

The studio here runs no jobs (``start_jobs=False``): Start makes the run and warns that it cannot start it, so no
training process runs.
"""

from __future__ import annotations

import json

import gradio as gr
import pytest

from studio.filters import FILTER_FIELDS
from studio.registry import ModelSpec
from studio.ui.common import md_block
from studio.ui.filters import ELEM_SUFFIX

from test_train_runs import FAST, add_conversations


@pytest.fixture
def quiet(settings, tiny_model_dir):  # noqa: F811
    """A studio that runs no jobs (Start makes a run but starts no process), with ``tiny`` registered."""
    from studio.core import Studio

    s = Studio(settings, start_jobs=False)
    s.registry.add(ModelSpec(name="tiny", kind="hf", path=str(tiny_model_dir)))
    yield s
    s.close()


LOCAL = None
"""The ``gr.Request`` handlers get first (``ui.common.guarded``): None is nobody signed in on loopback with no login
configured, the local owner (an admin, ``studio.access.caller``)."""


class Page:
    """The whole page's Blocks (``studio.ui.app.build_app``) and a way to call its handlers."""

    def __init__(self, studio):
        from studio.ui.app import build_app

        self.demo = build_app(studio)
        self.by_id = {b.elem_id: b for b in self.demo.blocks.values() if getattr(b, "elem_id", None)}
        ours = [b.elem_id for b in self.demo.blocks.values()
                if str(getattr(b, "elem_id", None)).startswith(("train-", "expand-", "evol-"))]
        assert len(ours) == len(set(ours)), f"element ids used twice: {sorted(i for i in ours if ours.count(i) > 1)}"

    def __getitem__(self, elem_id: str):
        return self.by_id[elem_id]

    def handler(self, elem_id: str, event: str, nth: int = 0):
        """The registered function (``BlockFunction``) of ``event`` on the element ``elem_id``."""
        block = self.by_id[elem_id]
        fns = [f for f in self.demo.fns.values() if any(t[0] == block._id and t[1] == event for t in f.targets)]
        assert fns, f"no {event} handler on #{elem_id}"
        return fns[nth]

    def call(self, elem_id: str, event: str, values: dict | None = None, nth: int = 0) -> dict:
        """Call a handler whose inputs are a set (it takes one ``{component: value}`` dict): the components'
        starting values, with ``values`` (by element id) over them. Returns its output, checked to be a dict
        keyed by its output components."""
        fn = self.handler(elem_id, event, nth)
        given = {c: c.value for c in fn.inputs}
        for eid, v in (values or {}).items():
            assert self.by_id[eid] in given, f"#{eid} is not an input of the {event} handler of #{elem_id}"
            given[self.by_id[eid]] = v
        out = fn.fn(LOCAL, given)
        assert isinstance(out, dict) and set(out) <= set(fn.outputs), out
        return out


def _snapshot_ids(runs, run_id: str) -> set[int]:
    d = runs.run_dir(run_id)
    return {int(json.loads(x)["id"]) for name in ("snapshot.jsonl", "eval.jsonl") if (d / name).exists()
            for x in (d / name).read_text().splitlines()}


HP = {"train-hp-max-steps": 3, "train-hp-global-batch-size": 2, "train-hp-max-length": 64}


def test_the_train_tab_has_the_data_tabs_filter(quiet):
    page = Page(quiet)
    data_fields = [f for f in FILTER_FIELDS if f"data-{ELEM_SUFFIX[f.name]}" in page.by_id]
    assert len(data_fields) >= len(FILTER_FIELDS) - 1  # the Data tab chooses ids by selection
    for f in FILTER_FIELDS:  # every field, incl. search, tags, rounds and tokens, with the same choices
        train_c = page["train-filter-job" if f.name == "job_id" else f"train-{ELEM_SUFFIX[f.name]}"]
        if f in data_fields:
            data_c = page[f"data-{ELEM_SUFFIX[f.name]}"]
            assert type(train_c) is type(data_c) and getattr(train_c, "choices", None) == getattr(
                data_c, "choices", None), f.name
    assert page["train-status"].choices == [("All (not deleted)", "all"), ("New", "new"), ("Edited", "edited"),
                                            ("Flagged", "flagged"), ("Deleted", "deleted")]
    assert ("Split", "split") in page["train-origin"].choices


def test_start_trains_on_exactly_the_filter_for_training(quiet):
    store, runs = quiet.store, quiet.runs
    ids = add_conversations(quiet, 10)
    expanded = add_conversations(quiet, 4, origin="expanded", rounds=2)
    flagged = [ids[0], ids[1], expanded[0]]
    store.bulk("flag", flagged, "same user text as conversation 5")  # as the quality filters flag
    store.bulk("delete", [ids[2]])
    page = Page(quiet)

    with pytest.warns(UserWarning, match="created but not started"):
        out = page.call("train-start", "click", {"train-base": "tiny", "train-status": "all", **HP})
    run_id = runs.default_run()
    assert run_id and runs.status(run_id)["state"] == "created"
    assert page["train-details"] in out and run_id in out[page["train-details"]]
    from studio.filters import ConvFilter

    assert _snapshot_ids(runs, run_id) == set(store.conversation_ids(ConvFilter().for_training()))
    assert not set(flagged) & _snapshot_ids(runs, run_id) and ids[2] not in _snapshot_ids(runs, run_id)
    assert runs.config(run_id)["filters"] == {"flagged": False}

    # more of the filter: expanded, at least 2 rounds, searched; chosen flagged ones come in
    out = page.call("train-start", "click", {"train-base": "tiny", "train-status": "flagged", **HP})
    assert _snapshot_ids(runs, runs.list_runs()[0]["run_id"]) == set(flagged)
    page.call("train-start", "click", {"train-base": "tiny", "train-origin": "expanded", "train-min-rounds": 2,
                                       "train-search": '"plus 1"', **HP})
    newest = runs.list_runs()[0]["run_id"]
    assert _snapshot_ids(runs, newest) == set(expanded[1:])
    assert runs.config(newest)["filters"] == {"origin": "expanded", "min_rounds": 2, "query": '"plus 1"',
                                              "flagged": False}

    # a bad filter value is refused with the control's name, and no run is made
    n = len(runs.list_runs())
    with pytest.raises(gr.Error, match=r"Min rounds \(min_rounds\): the minimum \(5\) is above the maximum \(2\)"):
        page.call("train-start", "click", {"train-base": "tiny", "train-min-rounds": 5, "train-max-rounds": 2, **HP})
    assert len(runs.list_runs()) == n


def test_the_data_line_counts_conversations_and_tokens_of_the_filter(quiet):
    store = quiet.store
    ids = add_conversations(quiet, 20)
    page = Page(quiet)
    line = page["train-count"]
    assert page["train-count"].value.startswith("**20** conversations (20 without token counts yet): 19 train, 1 ")

    store.bulk("flag", ids[:3], "too short")
    store.bulk("delete", ids[3:4])
    store.set_token_counts({i: 100_000 for i in ids[:16]})  # 4 left without a count
    out = page.call("train-status", "change", {"train-status": "all"})
    assert out[line] == ("**16** conversations, **1.2M** tokens (4 without token counts yet; flagged and deleted "
                         "left out: 4): 15 train, 1 held out for evaluation.")
    # the preview follows the filter too
    assert json.loads(out[page["train-config"]])["filters"] == {"flagged": False}

    out = page.call("train-status", "change", {"train-status": "flagged", "train-eval-fraction": 0})
    assert out[line] == "**3** conversations, **300k** tokens: 3 train, 0 held out for evaluation."
    # every other control keeps its starting value here (status "all")
    out = page.call("train-ids", "submit", {"train-ids": f"{ids[0]}-{ids[3]}"})
    assert out[line] == ("**0** conversations to train on (flagged and deleted left out: 4): choose status Flagged "
                         "or Deleted to train on those left out.")
    out = page.call("train-min-tokens", "change", {"train-min-tokens": 100_001})
    assert out[line] == ("**0** conversations to train on: import or expand some in the Data tab, or widen the "
                         "filter.")
    out = page.call("train-min-rounds", "change", {"train-min-rounds": 3, "train-max-rounds": 1})
    assert out[line].replace("\\", "").startswith("⚠ Min rounds (min_rounds): the minimum (3) is above the maximum (1)")
    assert out[page["train-command"]].startswith("# ⚠")
    # the text search counts when Enter is pressed or the box is left
    out = page.call("train-search", "blur", {"train-search": "What is 7 plus"})
    assert out[line] == "**1** conversation, **100k** tokens: 1 train, 0 held out for evaluation."


def test_commands_are_code_blocks_that_their_text_cannot_close():
    # the escaping helpers themselves are tested in test_browser_security.py; the Train tab's command block:
    assert md_block("echo ```x```", "shell") == "````shell\necho ```x```\n````"
    assert md_block("accelerate launch", "shell") == "```shell\naccelerate launch\n```"


def test_run_details_and_the_expand_preview_escape_their_text(quiet):
    from studio.ui.train import run_details

    add_conversations(quiet, 3)
    runs = quiet.runs
    run_id = runs.create_run("tiny", "lora", {}, FAST, name="mine")
    # create_run refuses such a name now; a run.json written before (or by hand) may still hold one
    s = dict(runs.status(run_id), name="<b>mine</b>", message="failed: <img src=x onerror=alert(1)>")
    md = run_details(runs, s)
    shown = md.replace("\\<", "")   # what is left once the escaped (literal) brackets are taken out
    assert "<img" not in shown and "<b>" not in shown and "\\<img src" in md and "\\<b\\>mine" in md
    assert "```shell\naccelerate launch" in md and "(flagged=False)" in md.replace("\\", "")
    # the run id is a code span holding the id itself (escaping backslashes would show inside one)
    assert f"`{run_id}`" in md.splitlines()[0], md.splitlines()[0]

    # the Expand tab shows the newest conversation of a job with the teacher's HTML as text
    job = quiet.store.create_job("expand", {}, [1])
    quiet.store.complete_item(job, 1, {"messages": [{"role": "user", "content": "hi"}, {
        "role": "assistant", "content": "<script>alert(1)</script>"}]}, source_id=None)
    page = Page(quiet)
    fn = page.handler("expand-job", "change")
    out = fn.fn(LOCAL, job)
    assert isinstance(out, dict)
    last = out[page["expand-latest"]][-1]
    assert last["role"] == "assistant" and "<script>" not in last["content"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in last["content"]
    # and its handlers return dicts keyed by component
    out = page.handler("expand-system", "change").fn(LOCAL, "system", "{transcript} {<b>x</b>}")  # quotes the bad field
    shown = out[page["expand-prompt-version"]]
    assert set(out) == {page["expand-prompt-version"]} and "\\<b\\>x" in shown
    assert "<b>" not in shown.replace("\\<", "")
