"""Tests for studio/evol.py: the Evol-Instruct prompts, WizardLM's elimination rules, the configuration, and
evolution jobs: with a scripted evolver (linkage, generations, elimination reasons, stop and resume without
duplicates) and with the real default model."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from studio import evol
from studio.evol import (OPERATIONS, EvolConfig, EvolPrompts, choose_operation, clean_evolved, eliminate,
                         equality_verdict, evolution_of, run_evol_job, start_evolution)
from studio.registry import DEFAULT_MODEL_NAME, Completion, GenParams

SEEDS = [
    {"instruction": "Name three primary colors.", "input": "", "output": "Red, blue, yellow."},
    {"instruction": "Summarize the text.", "input": "The cat sat on the mat all day long.", "output": "A cat sat."},
    {"instruction": "Write a haiku about autumn.", "input": "", "output": "Leaves fall..."},
    {"instruction": "Explain what a prime number is.", "input": "", "output": "A number..."},
]


@pytest.fixture
def seeded(studio, tmp_path):
    """The studio with SEEDS imported as an Alpaca file; returns (studio, source id, seed ids)."""
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps(SEEDS), encoding="utf-8")
    res = studio.import_file(path)
    ids = studio.store.pick_seeds(res.source_id, 10, unexpanded_only=False)
    assert len(ids) == len(SEEDS)
    return studio, res.source_id, ids


# ---------------------------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("op", list(OPERATIONS))
def test_prompts_render_each_operation(op):
    p = EvolPrompts()
    text = p.render(op, "Name three primary colors.\n\nExtra input")
    assert "Name three primary colors.\n\nExtra input" in text
    if op == "breadth":
        assert "Prompt Creator" in text and "same domain" in text and "rarer" in text
        assert text.rstrip().endswith("#Created Prompt#:")
    else:
        assert "Prompt Rewriter" in text and "10 to 20 words" in text
        assert getattr(p, op) in text
        assert text.rstrip().endswith("#Rewritten Prompt#:")
    others = [getattr(p, o) for o in evol.DEPTH_OPERATIONS if o != op]
    assert not any(o in text for o in others)


def test_prompts_render_braces_in_instruction_and_unknown_operation():
    p = EvolPrompts()
    assert "f(x) = {x}" in p.render("deepen", "Explain f(x) = {x}")
    with pytest.raises(ValueError, match="unknown operation 'shrink'"):
        p.render("shrink", "x")


def test_prompts_version_follows_the_text():
    a, b = EvolPrompts(), EvolPrompts()
    assert a.version == b.version and a.version.startswith("evol-") and len(a.version) == 15
    b.concretize = "Replace general concepts with very specific ones."
    assert b.version != a.version
    assert EvolPrompts(response_system="Be brief.").version != a.version


@pytest.mark.parametrize("field,text,match", [
    ("depth", "Rewrite: {instruction}", r"must contain \{method\}"),
    ("breadth", "Create something new.", r"must contain \{instruction\}"),
    ("equality", "{first} vs {second} {third}", "bad field"),
    ("deepen", "  ", "empty"),
])
def test_prompts_validate(field, text, match):
    p = EvolPrompts(**{field: text})
    with pytest.raises(ValueError, match=match):
        p.validate()


# ---------------------------------------------------------------------------------------------- elimination

ORIG = "Name three primary colors."


@pytest.mark.parametrize("evolved,response,reason", [
    ("", None, "wrote nothing"),
    ("#Rewritten Prompt#: Name three primary colors and explain how they mix.", None, "#Rewritten Prompt#"),
    ("Here is the rewritten prompt: name three primary colors used by painters.", None, "rewritten prompt"),
    ("For the given prompt, name three primary colors used in printing.", None, "given prompt"),
    ("# The Given Prompt #", None, "copies words"),
    ("Is it? Yes, and what about this...", None, "only punctuation and stop words"),
    ("Colors?", None, "too short (1 word"),
    ("name three  PRIMARY colors", None, "the same as the original"),
    ("Please name the three primary colors.", None, "adds 0 new words"),
    ("Name three primary colors quickly.", None, "adds 1 new word "),
    ("Name three primary colors used in oil painting and explain why.", "I'm sorry, I can't do that.",
     "says sorry"),
    ("Name three primary colors used in oil painting and explain why.", "... !!", "response has only"),
])
def test_eliminate_positive(evolved, response, reason):
    got = eliminate(ORIG, evolved, response)
    assert got is not None and reason in got, got


@pytest.mark.parametrize("evolved,response", [
    ("Name three primary colors used in oil painting and explain how mixing them creates secondary colors.",
     None),
    ("Name three primary colors used in oil painting and explain why.", "Red, yellow and blue, because ..."),
    ("Which pigments did Renaissance fresco painters grind to obtain ultramarine blue?", "Lapis lazuli."),
    # "sorry" in a long answer is not a refusal
    ("Name three primary colors used in oil painting and explain why.",
     "Sorry for the long answer: " + "the primary colors are red, yellow and blue. " * 12),
])
def test_eliminate_negative(evolved, response):
    assert eliminate(ORIG, evolved, response) is None


def test_eliminate_thresholds():
    assert eliminate(ORIG, "Colors?", min_words=1, min_new_words=0) is None
    assert "fewer than 3" in eliminate(ORIG, "Name colors!", min_words=3)
    assert eliminate(ORIG, "Name three primary colors quickly.", min_new_words=1) is None
    long = "Name three primary colors and explain. " + "word " * 100
    assert eliminate(ORIG, long, "sorry " + "word " * 90) is None  # >= 80 words


@pytest.mark.parametrize("text,verdict", [
    ("Equal", True), ("equal.", True), ("They are the same.", True),
    ("Not Equal", False), ("not equal", False), ("Unequal", False), ("They are different", False),
    ("I think so", None), ("", None),
])
def test_equality_verdict(text, verdict):
    assert equality_verdict(text) is verdict


def test_clean_evolved():
    assert clean_evolved('  "Name four colors."  ') == "Name four colors."
    assert clean_evolved("“Name four colors.”") == "Name four colors."
    assert clean_evolved('"a" and "b"') == '"a" and "b"'
    assert clean_evolved("#Rewritten Prompt#: x") == "#Rewritten Prompt#: x"  # left for eliminate


# ---------------------------------------------------------------------------------------------- config


def test_config_round_trip_and_validate():
    cfg = EvolConfig(evolver="m", operations=["breadth", "deepen"], choice="random", random_seed=3,
                     generations=2, sampling=GenParams(max_new_tokens=40, temperature=0.2, seed=1),
                     respond=False, equality_check=True, batch_size=3, target_source="parent",
                     prompts=EvolPrompts(deepen="Go deeper."))
    params = cfg.to_params()
    assert params["prompt_version"] == cfg.prompts.version
    json.dumps(params)
    assert EvolConfig.from_params(json.loads(json.dumps(params))) == cfg
    cfg.validate()
    for kw, match in [(dict(operations=[]), "at least one"), (dict(operations=["shrink"]), "unknown operation"),
                      (dict(choice="best"), "choice"), (dict(generations=0), "generations"),
                      (dict(batch_size=0), "batch size"), (dict(target_source="x"), "target source"),
                      (dict(sampling=GenParams(max_new_tokens=0)), "max new tokens"),
                      (dict(prompts=EvolPrompts(depth="{instruction}")), "method")]:
        with pytest.raises(ValueError, match=match):
            EvolConfig(evolver="m", **kw).validate()


def test_choose_operation():
    cfg = EvolConfig(evolver="m", operations=["add_constraints", "breadth", "deepen"])
    assert [choose_operation(cfg, 100 + k, k) for k in range(4)] == [
        "add_constraints", "breadth", "deepen", "add_constraints"]
    rnd = EvolConfig(evolver="m", operations=list(OPERATIONS), choice="random", random_seed=7)
    picks = [choose_operation(rnd, sid, 0) for sid in range(40)]
    assert picks == [choose_operation(rnd, sid, 5) for sid in range(40)]  # stable on resume
    assert set(picks) == set(OPERATIONS)
    other = EvolConfig(evolver="m", operations=list(OPERATIONS), choice="random", random_seed=8)
    assert picks != [choose_operation(other, sid, 0) for sid in range(40)]


# ---------------------------------------------------------------------------------------------- jobs (scripted)


@dataclass
class ScriptedEvolver:
    """A registry stand-in whose model answers by rule: evolution prompts get ``evolve(instruction, prompt)``,
    other messages get ``answer(text)``. Optionally calls ``on_call`` before each batch."""

    store: object
    evolve: callable = None
    answer: callable = None
    on_call: callable = None
    calls: int = 0

    def names(self):
        return ["scripted"]

    def get(self, name):
        return SimpleNamespace(kind="endpoint", name=name)

    def chat(self, name, messages, params=None, *, should_stop=None):
        return self.chat_batch(name, [messages], params)[0]

    def chat_batch(self, name, conversations, params=None, *, concurrency=8, batch_size=8):
        self.calls += 1
        if self.on_call:
            self.on_call(self.calls)
        out = []
        for msgs in conversations:
            text = msgs[-1]["content"]
            if "#Rewritten Prompt#:" in text or "#Created Prompt#:" in text:
                instr = text.split("Prompt#:\n", 1)[1].rsplit("\n\n#", 1)[0]
                reply = self.evolve(instr, text)
            elif "Your judgement" in text:
                reply = "Not Equal"
            else:
                reply = self.answer(text) if self.answer else f"A detailed answer to: {text}"
            out.append(Completion(reply, 10, 5))
        return out


_WORDS = iter(f"alpha{i} beta{i} gamma{i}" for i in range(10_000))


def _good_evolution(instr, prompt):
    op = "breadth" if "#Created Prompt#" in prompt else "depth"
    return f"{instr} Also consider {next(_WORDS)} and give {op} examples."


def _job(studio, registry, cfg, seed_ids):
    studio.jobs.register(evol.JOB_KIND, run_evol_job, registry)
    return start_evolution(studio.jobs, cfg, seed_ids)


def _evolved(studio, ids=None):
    """All seeds that have a parent, by id."""
    df, _ = studio.store.list_seeds(None, limit=1000)
    seeds = studio.store.get_seeds([int(x) for x in df["id"]])
    return {sid: s for sid, s in seeds.items() if s["meta"].get("parent_seed_id")}


def test_job_stores_linked_seeds_and_elimination_reasons(seeded):
    studio, src, ids = seeded

    def evolve(instr, prompt):
        if instr.startswith("Write a haiku"):
            return "#Rewritten Prompt#: " + instr + " with a seasonal word"
        if instr.startswith("Explain what a prime"):
            return instr
        return _good_evolution(instr, prompt)

    reg = ScriptedEvolver(studio.store, evolve=evolve)
    cfg = EvolConfig(evolver="scripted", operations=["add_constraints", "breadth"], batch_size=3,
                     sampling=GenParams(max_new_tokens=48))
    job = _job(studio, reg, cfg, ids)
    p = studio.jobs.wait(job, timeout=900)
    assert (p.status, p.total, p.done, p.failed) == ("done", 4, 2, 2)
    errors = dict(studio.store.job_item_errors(job))
    assert errors[ids[2]] == ("eliminated (add_constraints): copies words of the evolving prompt "
                              "('#Rewritten Prompt#')")
    assert errors[ids[3]] == "eliminated (breadth): no information gain: the same as the original"
    assert "failed" in p.message

    new = _evolved(studio)
    assert len(new) == 2
    by_parent = {s["meta"]["parent_seed_id"]: s for s in new.values()}
    assert set(by_parent) == {ids[0], ids[1]}
    first, second = by_parent[ids[0]], by_parent[ids[1]]
    assert first["meta"]["operation"] == "add_constraints" and second["meta"]["operation"] == "breadth"
    for s, parent in ((first, ids[0]), (second, ids[1])):
        m = s["meta"]
        assert m["evol_prompt_version"] == cfg.prompts.version and m["evolver"] == "scripted"
        assert m["generation"] == 1 and m["root_seed_id"] == parent and m["job_id"] == job
        assert s["input"] == ""
    # the parent's input is part of what was evolved
    assert second["instruction"].startswith("Summarize the text.\n\nThe cat sat on the mat")
    # a source "evolved from seeds.json" holds them
    sources = studio.store.list_sources().set_index("id")
    evo_src = first["source_id"]
    assert evo_src != src and sources.loc[evo_src, "name"] == "evolved from seeds.json"
    assert sources.loc[evo_src, "format"] == "evolved" and sources.loc[evo_src, "n_seeds"] == 2
    assert second["source_id"] == evo_src
    # the response was stored as the new seed's output
    out = studio.store._q("SELECT output FROM seeds WHERE id = ?", [first["id"]])[0][0]
    assert out.startswith("A detailed answer to: Name three primary colors.")
    assert [s["id"] for s in evolution_of(studio.store, first["id"])] == [first["id"], ids[0]]

    # the evolved seeds can be expanded like any seed
    assert set(studio.store.pick_seeds(evo_src, 10)) == set(new)


def test_job_generations_chain_and_parent_source(seeded):
    studio, src, ids = seeded
    reg = ScriptedEvolver(studio.store, evolve=_good_evolution)
    cfg = EvolConfig(evolver="scripted", operations=["deepen"], generations=3, batch_size=2, respond=False,
                     equality_check=True, target_source="parent")
    job = _job(studio, reg, cfg, ids[:2])
    p = studio.jobs.wait(job, timeout=900)
    assert (p.status, p.total, p.done, p.failed) == ("done", 6, 6, 0)
    new = _evolved(studio)
    assert len(new) == 6 and all(s["source_id"] == src for s in new.values())
    leaves = [s for s in new.values() if s["meta"]["generation"] == 3]
    assert len(leaves) == 2
    for leaf in leaves:
        chain = evolution_of(studio.store, leaf["id"])
        assert [c["meta"].get("generation", 0) for c in chain] == [3, 2, 1, 0]
        assert chain[-1]["id"] in ids[:2] and all(c["meta"].get("root_seed_id", c["id"]) == chain[-1]["id"]
                                                   for c in chain)
        assert all(c["meta"]["operation"] == "deepen" for c in chain[:-1])
    outputs = studio.store._q("SELECT output FROM seeds WHERE id = ANY(?::BIGINT[])", [[int(i) for i in new]])
    assert [o for (o,) in outputs] == [None] * 6  # respond off: no output
    # a seed evolved by this job and evolved again in another job starts at that job's generation 1
    again = _job(studio, reg, EvolConfig(evolver="scripted", operations=["deepen"], respond=False),
                 [leaves[0]["id"]])
    assert studio.jobs.wait(again, timeout=900).done == 1
    top = [s for s in _evolved(studio).values() if s["meta"]["job_id"] == again][0]
    assert top["meta"]["generation"] == 4 and top["meta"]["job_generation"] == 1


def test_stop_and_resume_without_duplicates(seeded):
    studio, src, ids = seeded
    holder = {}
    stopped = threading.Event()

    def on_call(n):
        if n == 2 and not stopped.is_set():  # the first seed's answer: ask to stop during its batch
            stopped.set()
            studio.jobs.stop(holder["job"])

    reg = ScriptedEvolver(studio.store, evolve=_good_evolution, on_call=on_call)
    cfg = EvolConfig(evolver="scripted", operations=list(OPERATIONS), batch_size=1)
    holder["job"] = job = _job(studio, reg, cfg, ids)
    p = studio.jobs.wait(job, timeout=900)
    assert (p.status, p.done, p.failed, p.total) == ("stopped", 1, 0, 4)
    assert "resume" in p.message
    assert len(_evolved(studio)) == 1
    assert studio.store.pending_items(job) == ids[1:]

    studio.jobs.resume(job)
    p = studio.jobs.wait(job, timeout=900)
    assert (p.status, p.done, p.failed, p.total) == ("done", 4, 0, 4)
    new = _evolved(studio)
    assert sorted(s["meta"]["parent_seed_id"] for s in new.values()) == ids  # each seed evolved once
    # round-robin by place in the job, the same before and after the resume
    ops = {s["meta"]["parent_seed_id"]: s["meta"]["operation"] for s in new.values()}
    assert [ops[i] for i in ids] == list(OPERATIONS)[:4]
    with pytest.raises(ValueError, match="nothing left to do"):
        studio.jobs.resume(job)
    # completing an item twice writes nothing
    assert studio.store.add_seeds(src, [evol.SeedRecord(row=0, instruction="x")], job_id=job,
                          seed_id=ids[0]) is None
    assert len(_evolved(studio)) == 4


def test_eliminated_items_are_retried_on_resume(seeded):
    studio, src, ids = seeded
    attempts = {"n": 0}

    def evolve(instr, prompt):
        attempts["n"] += 1
        return "Rewritten prompt: same" if attempts["n"] == 1 else _good_evolution(instr, prompt)

    reg = ScriptedEvolver(studio.store, evolve=evolve)
    job = _job(studio, reg, EvolConfig(evolver="scripted", respond=False, batch_size=1), ids[:1])
    p = studio.jobs.wait(job, timeout=900)
    assert (p.status, p.done, p.failed) == ("done", 0, 1)
    assert "copies words" in studio.store.job_item_errors(job)[0][1]
    studio.jobs.resume(job)
    p = studio.jobs.wait(job, timeout=900)
    assert (p.status, p.done, p.failed) == ("done", 1, 0)
    assert len(_evolved(studio)) == 1


def test_unknown_evolver_fails_the_job_and_keeps_items(seeded):
    studio, src, ids = seeded
    reg = ScriptedEvolver(studio.store, evolve=_good_evolution)
    job = _job(studio, reg, EvolConfig(evolver="nobody"), ids[:2])
    p = studio.jobs.wait(job, timeout=900)
    assert p.status == "failed" and "evolver 'nobody' is not in the registry" in p.message
    assert studio.store.pending_items(job) == ids[:2]
    with pytest.raises(ValueError, match="no seeds"):
        start_evolution(studio.jobs, EvolConfig(evolver="scripted"), [])
    with pytest.raises(ValueError, match="generations"):
        start_evolution(studio.jobs, EvolConfig(evolver="scripted", generations=11), ids)


# ---------------------------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_evolution_with_the_default_model(seeded, default_model_dir):
    studio, src, ids = seeded
    studio.jobs.register(evol.JOB_KIND, run_evol_job, studio.registry)
    cfg = EvolConfig(evolver=DEFAULT_MODEL_NAME, operations=["add_constraints", "breadth"], batch_size=2,
                     sampling=GenParams(max_new_tokens=48, temperature=0.7, seed=0),
                     response=GenParams(max_new_tokens=32, temperature=0.7, seed=0))
    job = start_evolution(studio.jobs, cfg, ids[:2])
    p = studio.jobs.wait(job, timeout=900)
    assert p.status == "done" and p.total == 2 and p.done + p.failed == 2, p.line()
    errors = dict(studio.store.job_item_errors(job))
    new = {s["meta"]["parent_seed_id"]: s for s in _evolved(studio).values()}
    assert set(new) | set(errors) == set(ids[:2]) and not set(new) & set(errors)
    for k, sid in enumerate(ids[:2]):  # round-robin: seed k got operation k
        if sid in errors:
            assert errors[sid].startswith(f"eliminated ({cfg.operations[k]}): ")
        else:
            m = new[sid]["meta"]
            assert m["operation"] == cfg.operations[k] and m["evolver"] == DEFAULT_MODEL_NAME
            assert m["evol_prompt_version"] == cfg.prompts.version and m["generation"] == 1
            assert eliminate(evol.seed_prompt(SEEDS[k]), new[sid]["instruction"]) is None
    print(f"\nevolution with {DEFAULT_MODEL_NAME}: {len(new)} accepted, eliminated: {errors}")
