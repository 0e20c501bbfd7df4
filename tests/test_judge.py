"""LLM-as-judge (``studio.judge``, ``studio.store.judge``, ``wvstudio judge``).

The parsers, the swap rule and the table mode's shuffle are pure functions. Runs use a real loopback
OpenAI-compatible server (FastAPI under uvicorn on a free 127.0.0.1 port) that plays both the candidate models
(each answers with a marker naming itself) and a canned judge (its verdict is computed from the markers it is
shown), and counts every request; the end-to-end command-line runs use the real default model as candidate (and,
in one, as judge).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections import Counter
from typing import Iterator

import pytest

from studio.cli import main
from studio.config import Settings
from studio.core import Studio
from studio.judge import (JudgeConfig, answer_temperature, breakdown, combine_swapped, judge_messages,
                          load_judge_prompts, pairwise_table, parse_rating, parse_table_scores, parse_verdict,
                          prompt_name, relative_scores, score_table, scores_by_model, shuffled_order, to_csv,
                          to_markdown, verdict_winner)
from studio.questions import Question, builtin_set
from studio.registry import DEFAULT_MODEL_NAME

# ---------------------------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize("text, want", [
    ("The answer is fine. [[8]]", 8.0),
    ("[[8.5]]", 8.5),
    ("Rating: [[3]]", 3.0),
    ("Rating: [7]", 7.0),                      # FastChat's backup pattern
    ("A helpful answer, no rating.", None),
    ("", None),
    ("Rating: [[10]]", 10.0),
])
def test_parse_rating_fastchat_formats(text, want):
    assert parse_rating(text) == want


def test_parse_rating_two_ratings_takes_the_first_like_fastchat():
    assert parse_rating("First I thought [[3]], but on reflection: Rating: [[9]]") == 3.0
    # [[n]] wins over an earlier [n] (the backup is tried only when there is no [[n]])
    assert parse_rating("see [2] ... Rating: [[6]]") == 6.0


def test_parse_verdict_fastchat_precedence():
    assert parse_verdict("... [[A]]") == "A"
    assert parse_verdict("[[B]]") == "B"
    assert parse_verdict("it is a tie [[C]]") == "tie"
    assert parse_verdict("no verdict") is None
    assert parse_verdict("[[B]] or maybe [[A]]") == "A"  # FastChat checks [[A]] first


@pytest.mark.parametrize("g1, g2, want", [
    ("model_a", "model_a", "model_a"),   # both orders agree on model_a
    ("model_b", "model_b", "model_b"),   # both orders agree on model_b
    ("model_a", "model_b", "tie"),       # disagree
    ("model_b", "model_a", "tie"),       # disagree the other way
    ("tie", "model_a", "tie"),
    ("model_b", "tie", "tie"),
    ("tie", "tie", "tie"),
    (None, "model_a", None),             # an unparsable game: the pair is left out
])
def test_swap_rule(g1, g2, want):
    assert combine_swapped(g1, g2) == want


def test_verdicts_map_through_the_order():
    # game AB shows model_a as A; game BA shows model_b as A. A judge that always prefers the first shown
    # answer (position bias) gives model_a in one game and model_b in the other: a tie, not a win
    assert verdict_winner("A", "AB") == "model_a" and verdict_winner("A", "BA") == "model_b"
    assert verdict_winner("B", "AB") == "model_b" and verdict_winner("B", "BA") == "model_a"
    assert combine_swapped(verdict_winner("A", "AB"), verdict_winner("A", "BA")) == "tie"
    # a judge that really prefers model_a says A in game AB and B in game BA: a win
    assert combine_swapped(verdict_winner("A", "AB"), verdict_winner("B", "BA")) == "model_a"
    with pytest.raises(ValueError):
        verdict_winner("A", "BB")


def test_table_scores_parse_and_map_back_through_the_shuffle():
    models = ["alpha", "beta", "gamma", "delta"]
    order = shuffled_order(models, 7, "81")
    assert sorted(order) == sorted(models)
    assert shuffled_order(models, 7, "81") == order                   # seeded: the same every time
    orders = {tuple(shuffled_order(models, 7, str(q))) for q in range(81, 91)}
    assert len(orders) > 1                                            # and it differs between questions
    truth = {"alpha": 91, "beta": 40, "gamma": 77, "delta": 12}
    text = "Assistant 1 is thorough; Assistant 3 is vague.\n\n" + "\n".join(
        f"Assistant {k}: {truth[m]}" for k, m in enumerate(order, 1))
    scores = parse_table_scores(text, 4)
    assert scores == [float(truth[m]) for m in order]
    assert scores_by_model(order, scores) == {m: float(v) for m, v in truth.items()}
    # markdown emphasis and "/100" are fine; the same line twice is fine
    assert parse_table_scores("**Assistant 1:** 80/100\n**Assistant 2**: 55\nAssistant 2: 55", 2) == [80.0, 55.0]


@pytest.mark.parametrize("text", [
    "Assistant 1: 80",                               # Assistant 2 missing
    "Assistant 1: 80\nAssistant 2: 101",             # out of 1-100
    "Assistant 1: 80\nAssistant 2: 50\nAssistant 3: 40",   # more assistants than shown
    "Assistant 1: 80\nAssistant 2: 50\nAssistant 1: 70",   # two different scores for one assistant
    "Both are good, 8/10.",
])
def test_table_scores_unparsable(text):
    assert parse_table_scores(text, 2) is None


def test_temperatures_and_prompt_choice_follow_fastchat():
    assert [answer_temperature(c) for c in ("writing", "roleplay", "extraction", "math", "coding", "reasoning",
                                            "stem", "humanities", "arena-hard-200", "Generic", "")] == \
        [0.7, 0.7, 0.0, 0.0, 0.0, 0.0, 0.1, 0.1, 0.0, 0.7, 0.7]
    qs = {q.category: q for q in builtin_set("mt_bench") if q.reference or q.category in ("writing",)}
    math_q, writing_q = qs["math"], qs["writing"]
    assert prompt_name("single", math_q, 1) == "single-math-v1"
    assert prompt_name("single", math_q, 2) == "single-math-v1-multi-turn"
    assert prompt_name("single", writing_q, 1) == "single-v1"
    assert prompt_name("single", writing_q, 2) == "single-v1-multi-turn"
    assert prompt_name("pairwise", math_q, 1) == "pair-math-v1" and prompt_name("pairwise", writing_q, 2) == \
        "pair-v2-multi-turn"
    no_ref = Question("x", ("2+2?",), "math")
    assert prompt_name("single", no_ref, 1) == "single-v1"           # math without a reference: general prompt
    prompts = load_judge_prompts()
    msgs = judge_messages(prompts["single-math-v1-multi-turn"], math_q, 2, [["first answer", "second answer"]])
    assert msgs[0]["role"] == "system" and "second answer" in msgs[1]["content"]
    assert math_q.reference[1] in msgs[1]["content"] and math_q.turns[1] in msgs[1]["content"]
    table_msgs = judge_messages(prompts["table-v1"], writing_q, 1, [["a1"], ["b1"], ["c1"]])
    assert "Assistant 3: <score>" in table_msgs[0]["content"] and "Assistant 4" not in table_msgs[0]["content"]


def test_config_validation_names_the_setting():
    for cfg, word in [(JudgeConfig("mt_bench", [], "j"), "models"),
                      (JudgeConfig("mt_bench", ["a", "a"], "j"), "twice"),
                      (JudgeConfig("mt_bench", ["a"], "j", mode="pairwise"), "pairwise"),
                      (JudgeConfig("mt_bench", ["a"], "j", mode="vote"), "mode"),
                      (JudgeConfig("mt_bench", ["a"], "j", limit=0), "limit"),
                      (JudgeConfig("mt_bench", ["a", "b"], "j", baseline="a"), "baseline")]:
        with pytest.raises(ValueError, match=word):
            cfg.validate()


def test_store_keeps_each_answer_and_judgment_once(tmp_path):
    from studio.store import Store, StoreError

    store = Store(tmp_path / "s.duckdb", index_in_background=False)
    try:
        p = {"max_new_tokens": 8, "temperature": 0.7}
        assert store.add_answer("m", "mt_bench", "81", p, ["a1", "a2"]) == ["a1", "a2"]
        assert store.add_answer("m", "mt_bench", "81", dict(reversed(list(p.items()))), ["other"]) == ["a1", "a2"]
        assert store.get_answer("m", "mt_bench", "81", {**p, "temperature": 0.0}) is None   # other params: none
        assert store.answer_count() == 1
        run_id = store.add_judge_run(mode="single", judge="j", models=["m"], question_set="mt_bench",
                                     questions=[{"question_id": "81", "turns": ["q"]}])
        j = {"question_id": "81", "turn": 1, "jkey": "single|m", "model": "m", "score": 7, "prompt_name": "single-v1",
             "judgment": "[[7]]"}
        assert store.add_judgment(run_id, j) is True
        assert store.add_judgment(run_id, {**j, "score": 2}) is False
        assert [x["score"] for x in store.judgments(run_id)] == [7.0]
        assert store.judgment_keys(run_id) == {("81", 1, "single|m")}
        with pytest.raises(StoreError, match="unknown fields"):
            store.add_judgment(run_id, {**j, "turn": 2, "votes": 3})
        with pytest.raises(StoreError, match="unknown mode"):
            store.add_judge_run(mode="vote", judge="j", models=["m"], question_set="x", questions=[{}])
        assert store.latest_judge_run_id() == run_id and store.judge_runs()[0]["n_questions"] == 1
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------- loopback server


MARK = re.compile(r"ANSWER-FROM-(\w+)")


def single_rating(model: str, text: str) -> int:
    """The canned judge's 1-10 rating of an answer by ``model`` (varies with the prompt's length)."""
    return {"alpha": 6, "beta": 3}.get(model, 5) + len(text) % 4


TABLE_SCORE = {"alpha": 88, "beta": 61, "gamma": 35}


class Canned:
    """A FastAPI OpenAI-compatible app: models ``alpha``, ``beta``, ``gamma``, ``delta`` answer
    ``ANSWER-FROM-<model> turn <n>``; model ``judge`` judges what it is shown: single grading ``Rating: [[r]]``
    (``single_rating``; answers of ``delta`` get no rating: unparsable), the table ``Assistant k: s`` lines
    (``TABLE_SCORE``), pairwise ``[[A]]``/``[[B]]`` for the answer of the model first in alphabetical order.
    ``counts``: requests answered per model; ``on_judge(n)`` runs before the n-th judge request is answered;
    ``fail_at``: the judge request numbers answered with HTTP 400."""

    def __init__(self):
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse

        self.counts: Counter = Counter()
        self.judge_requests = 0
        self.on_judge = None
        self.fail_at: set[int] = set()
        self.lock = threading.Lock()
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def complete(body: dict):
            return await self._complete(body, JSONResponse)

        self.app = app

    async def _complete(self, body: dict, JSONResponse):
        import asyncio

        model, msgs = body["model"], body["messages"]
        if model == "judge":
            with self.lock:
                self.judge_requests += 1
                n = self.judge_requests
            if self.on_judge is not None:
                await asyncio.to_thread(self.on_judge, n)
            if n in self.fail_at:
                return JSONResponse({"error": {"message": "canned failure", "type": "invalid_request_error"}},
                                    status_code=400)
            text = self.judgment(msgs)
        else:
            text = f"ANSWER-FROM-{model} turn {sum(1 for m in msgs if m['role'] == 'user')}"
        with self.lock:
            self.counts[model] += 1
        return {"id": "c", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    @staticmethod
    def judgment(msgs: list[dict]) -> str:
        system, user = msgs[0]["content"], msgs[-1]["content"]
        shown = list(dict.fromkeys(MARK.findall(user)))  # models in the order shown
        if "Assistant 1: <score>" in system:
            return "Here is my comparison.\n" + "\n".join(f"Assistant {k}: {TABLE_SCORE[m]}"
                                                         for k, m in enumerate(shown, 1))
        if "[[A]]" in system:
            return "Assistant A is better. [[A]]" if shown[0] == min(shown) else "Assistant B is better. [[B]]"
        if shown == ["delta"]:
            return "This answer is hard to rate."
        return f"A fair answer. Rating: [[{single_rating(shown[0] if shown else 'other', user)}]]"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port in a thread; yields its ``/v1`` base URL."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True, name="canned-judge")
    t.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert t.is_alive() and time.monotonic() < deadline, "the canned server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        srv.should_exit = True
        t.join(timeout=30)


@pytest.fixture
def canned():
    c = Canned()
    with serving(c.app) as url:
        c.url = url
        yield c


def add_endpoints(studio, url: str, names=("judge", "alpha", "beta", "gamma", "delta")) -> None:
    for n in names:
        studio.registry.add_endpoint(n, url, n, timeout=60)


def wait_finished(studio, job_id: int, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        p = studio.jobs.progress(job_id)
        if p.finished and job_id not in studio.jobs.active():
            return p
        assert time.monotonic() < deadline, f"job {job_id} did not finish: {p.line()}"
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- runs


def test_stopped_run_resumes_without_judging_twice(studio, canned):
    """4 MT-bench questions, 2 models, single grading: 4 judgments per question (2 models x 2 turns). The run
    is stopped while the judge answers question 2; resumed, it makes exactly the 16 judgments once, and no
    answer is generated twice. A second run on the same questions reuses every answer."""
    add_endpoints(studio, canned.url)

    def stop_on_5(n):
        if n == 5:
            for j in studio.jobs.active():
                studio.jobs.stop(j)

    canned.on_judge = stop_on_5
    run_id, job_id = studio.judge(JudgeConfig("mt_bench", ["alpha", "beta"], "judge", limit=4, batch_size=1,
                                              max_new_tokens=32))
    p = wait_finished(studio, job_id)
    assert p.status == "stopped" and p.done == 2 and p.total == 4
    assert canned.judge_requests == 8 and len(studio.store.judgments(run_id)) == 8
    canned.on_judge = None
    studio.jobs.resume(job_id)
    p = wait_finished(studio, job_id)
    assert p.status == "done" and p.done == 4
    js = studio.store.judgments(run_id)
    keys = [(j["question_id"], j["turn"], j["jkey"]) for j in js]
    assert len(keys) == len(set(keys)) == 16
    assert canned.judge_requests == 16                                 # nothing judged twice
    assert canned.counts["alpha"] == canned.counts["beta"] == 8        # 4 questions x 2 turns, once each
    assert all(j["error"] is None and j["score"] is not None for j in js)
    assert {j["prompt_name"] for j in js} <= {"single-v1", "single-v1-multi-turn", "single-math-v1",
                                              "single-math-v1-multi-turn"}
    # turn 2 of a model sees its own turn-1 answer
    assert studio.store.get_answer("alpha", "mt_bench", "81", json.loads(json.dumps(
        {"max_new_tokens": 32, "temperature": 0.7, "top_p": 1.0, "repetition_penalty": 1.0, "seed": None}))) == \
        ["ANSWER-FROM-alpha turn 1", "ANSWER-FROM-alpha turn 2"]

    run2, job2 = studio.judge(JudgeConfig("mt_bench", ["alpha", "beta"], "judge", limit=4, max_new_tokens=32))
    assert wait_finished(studio, job2).status == "done"
    assert canned.counts["alpha"] == canned.counts["beta"] == 8        # answers reused, not regenerated
    assert canned.judge_requests == 32


def test_failed_judge_request_resumes_losing_nothing(studio, canned):
    """The judge fails (HTTP 400) on its 6th request (question 2): the job fails, every judgment made is kept
    (the other 3 of question 2 too); resumed, only the missing one is asked: 16 judgments, each made once."""
    add_endpoints(studio, canned.url)
    canned.fail_at = {6}
    run_id, job_id = studio.judge(JudgeConfig("mt_bench", ["alpha", "beta"], "judge", limit=4, batch_size=1,
                                              max_new_tokens=32))
    p = wait_finished(studio, job_id)
    assert p.status == "failed" and "canned failure" in p.message
    assert len(studio.store.judgments(run_id)) == 7 and p.done == 1
    studio.jobs.resume(job_id)
    assert wait_finished(studio, job_id).status == "done"
    keys = [(j["question_id"], j["turn"], j["jkey"]) for j in studio.store.judgments(run_id)]
    assert len(keys) == len(set(keys)) == 16
    assert canned.counts["judge"] == 16 and canned.judge_requests == 17   # the failed one asked again


def test_average_row_is_the_mean_of_parsed_scores_and_errors_are_counted(studio, canned, tmp_path):
    """Single grading of 3 models on 5 WizardLM questions; the judge cannot rate ``delta``'s answers: each such
    judgment is asked twice, then stored with its error, left out of the averages and counted."""
    add_endpoints(studio, canned.url)
    run_id, job_id = studio.judge(JudgeConfig("wizardlm", ["alpha", "beta", "delta"], "judge", limit=5,
                                              max_new_tokens=32))
    assert wait_finished(studio, job_id).status == "done"
    assert canned.judge_requests == 5 * 2 + 5 * 2                     # alpha, beta once; delta twice (retry)
    js = studio.store.judgments(run_id)
    t = score_table(studio.store, run_id)
    for m in ("alpha", "beta"):
        scores = {j["question_id"]: j["score"] for j in js if j["model"] == m}
        assert len(scores) == 5 and len(set(scores.values())) > 1
        assert t.average[m] == pytest.approx(sum(scores.values()) / 5)
        assert {r.question_id: r.scores[m] for r in t.rows} == scores
    assert t.average["delta"] is None and t.n_errors == {"alpha": 0, "beta": 0, "delta": 5} and t.errors == 5
    assert all("after one retry" in j["error"] and j["judgment"] for j in js if j["model"] == "delta")
    md = to_markdown(t).strip().splitlines()
    assert md[0] == "| Question | alpha | beta | delta |" and len(md) == 2 + 5 + 1
    assert md[-1].startswith("| Average |") and md[2].startswith("| Q1 |") and "| error |" in md[2]
    avg_cells = [c.strip() for c in md[-1].strip("|").split("|")]
    assert float(avg_cells[1]) == pytest.approx(t.average["alpha"], abs=0.005)
    assert float(avg_cells[2]) == pytest.approx(t.average["beta"], abs=0.005) and avg_cells[3] == ""
    csv_rows = to_csv(t).strip().splitlines()
    assert csv_rows[0] == "question_id,category,difficulty,alpha,beta,delta" and csv_rows[-1].startswith("Average,")
    # WizardLM's per-skill view: groups are skills; "x% of beta"
    skills = breakdown(t, "category")
    assert set(skills) == {r.category for r in t.rows}
    rel = relative_scores(t, "beta")
    assert rel["all"]["beta"] == pytest.approx(100.0)
    assert rel["all"]["alpha"] == pytest.approx(100 * sum(r.scores["alpha"] for r in t.rows)
                                                / sum(r.scores["beta"] for r in t.rows))
    assert rel["all"]["delta"] is None


def test_table_mode_maps_shuffled_scores_back_to_models(studio, canned):
    """WizardVicunaLM table: all three answers in one prompt, shown in a per-question shuffled order that is
    recorded; the scores land on the right models whatever the order."""
    add_endpoints(studio, canned.url)
    run_id, job_id = studio.judge(JudgeConfig("wizardlm", ["alpha", "beta", "gamma"], "judge", mode="table",
                                              limit=6, max_new_tokens=16))
    assert wait_finished(studio, job_id).status == "done"
    js = studio.store.judgments(run_id)
    assert len(js) == 6 and canned.judge_requests == 6
    orders = [tuple(j["models"]) for j in js]
    assert all(list(o) == shuffled_order(["alpha", "beta", "gamma"], run_id, j["question_id"])
               for o, j in zip(orders, js))
    assert len(set(orders)) > 1 and any(o != ("alpha", "beta", "gamma") for o in orders)
    for j in js:
        assert j["scores"] == {m: float(s) for m, s in TABLE_SCORE.items()}
    t = score_table(studio.store, run_id)
    assert t.scale == 100 and t.average == {m: float(s) for m, s in TABLE_SCORE.items()}


def test_pairwise_mode_judges_both_orders(studio, canned):
    """Pairwise against a baseline: each pair judged in orders AB and BA; the canned judge prefers the model
    first in alphabetical order whatever its position, so alpha beats the baseline beta both times."""
    add_endpoints(studio, canned.url)
    run_id, job_id = studio.judge(JudgeConfig("wizardlm", ["alpha", "gamma"], "judge", mode="pairwise",
                                              baseline="beta", limit=3, max_new_tokens=16))
    assert wait_finished(studio, job_id).status == "done"
    js = studio.store.judgments(run_id)
    assert len(js) == 2 * 2 * 3 and Counter(j["order"] for j in js) == {"AB": 6, "BA": 6}
    pt = pairwise_table(studio.store, run_id)
    rates = {r.model: r for r in pt.rates}
    assert set(rates) == {"alpha", "gamma"}                            # the baseline is left out
    assert (rates["alpha"].win, rates["alpha"].loss, rates["alpha"].tie) == (3, 0, 0)
    assert (rates["gamma"].win, rates["gamma"].loss) == (0, 3) and rates["alpha"].win_rate == 1.0


# ---------------------------------------------------------------------------------------------- command line


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.slow
def test_cli_default_model_with_canned_judge(tmp_path, capsys, canned, default_model_dir):
    """``wvstudio judge run`` with the real default model answering 3 MT-bench questions (both turns) and the
    canned judge; ``judge table`` ends with the Average row; ``judge export`` writes Markdown and CSV."""
    d = tmp_path / "data"
    s = Studio(Settings(data_dir=d), start_jobs=False)
    try:
        add_endpoints(s, canned.url, ("judge",))
    finally:
        s.close()
    rc, out, err = run(capsys, "judge", "run", "--questions", "mt_bench", "--limit", 3, "--models", DEFAULT_MODEL_NAME,
                       "--judge", "judge", "--max-new-tokens", 12, "--data-dir", d)
    assert rc == 0, err
    assert "judge run 1 (job 1): 3 questions" in out
    assert canned.judge_requests == 6
    rc, out, err = run(capsys, "judge", "table", "--data-dir", d)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[-1].startswith("Average") and any(line.startswith("Q81") for line in lines)
    assert "unparsable judgments left out: 0" in out
    rc, out, err = run(capsys, "judge", "export", "1", "--out", tmp_path / "table.md", "--data-dir", d)
    assert rc == 0, err
    md = (tmp_path / "table.md").read_text().strip().splitlines()
    assert md[0] == f"| Question | {DEFAULT_MODEL_NAME} |" and md[-1].startswith("| Average |") and len(md) == 6
    rc, _, err = run(capsys, "judge", "export", "--out", tmp_path / "table.csv", "--data-dir", d)
    assert rc == 0, err
    assert (tmp_path / "table.csv").read_text().strip().splitlines()[-1].startswith("Average,")
    rc, _, err = run(capsys, "judge", "export", "--out", tmp_path / "table.txt", "--data-dir", d)
    assert rc == 2 and ".md or .csv" in err
    rc, _, err = run(capsys, "judge", "table", "9", "--data-dir", d)
    assert rc == 2 and "judge run 9 does not exist" in err


@pytest.mark.slow
def test_cli_ten_mt_bench_questions_default_model_and_a_lora_judged_by_the_default_model(tmp_path, capsys,
                                                                                        default_model_dir):
    """Issue 10's command-line path, offline: a LoRA checkpoint trained by ``wvstudio train`` on 6 conversations,
    then a 10-question MT-bench run (both turns) with the default model and the LoRA as candidates and the default
    model as judge, WizardVicunaLM's table mode; ``judge table`` ends with the Average row and ``judge export``
    writes the README's layout. The 135M judge explains without ``Assistant k: score`` lines, so the one retry
    continues its text from the cue (``judge._cue_retry``): most judgments become readable scores, the rest are
    counted as errors, and the Average row is the mean of the parsed ones."""
    d = tmp_path / "data"
    convs = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"What is {i} plus 2?"},
                                               {"from": "gpt", "value": f"{i} plus 2 is {i + 2}."}]} for i in range(6)]
    f = tmp_path / "convs.json"
    f.write_text(json.dumps(convs), encoding="utf-8")
    rc, out, err = run(capsys, "import", f, "--data-dir", d)
    assert rc == 0, err
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"base_model": DEFAULT_MODEL_NAME, "method": "lora", "name": "cli-lora",
                               "hyperparams": {"max_steps": 2, "global_batch_size": 2, "per_device_train_batch_size": 2,
                                               "max_length": 64, "learning_rate": 1e-4, "logging_steps": 1}}))
    rc, out, err = run(capsys, "train", "--config", cfg, "--data-dir", d)
    assert rc == 0, out + err
    rc, out, err = run(capsys, "judge", "run", "--questions", "mt_bench", "--limit", 10, "--models",
                       f"{DEFAULT_MODEL_NAME},cli-lora", "--judge", DEFAULT_MODEL_NAME, "--mode", "table",
                       "--max-new-tokens", 16, "--judge-max-new-tokens", 24, "--data-dir", d)
    assert rc == 0, err
    assert "10 questions" in out
    s = Studio(Settings(data_dir=d), start_jobs=False)
    try:
        run_id = s.store.latest_judge_run_id()
        js = s.store.judgments(run_id)
        t = score_table(s.store, run_id)
    finally:
        s.close()
    assert len(js) == 20  # 10 questions x 2 turns, one table judgment each
    assert all((j["error"] is None) == bool(j.get("scores")) for j in js), js[:2]
    parsed = [j for j in js if j["error"] is None]
    assert len(parsed) >= 10, [j["judgment"][-200:] for j in js if j["error"]][:3]   # the cue retry reads most
    assert all("after one retry" in j["error"] for j in js if j["error"])
    assert t.n_scored[DEFAULT_MODEL_NAME] + t.n_errors[DEFAULT_MODEL_NAME] == 20
    for m in (DEFAULT_MODEL_NAME, "cli-lora"):
        scores = [j["scores"][m] for j in parsed]
        assert t.average[m] == pytest.approx(sum(scores) / len(scores)) if scores else t.average[m] is None
    rc, out, err = run(capsys, "judge", "table", "--data-dir", d)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[-1].startswith("Average") and sum(bool(re.match(r"Q\d+ ", line)) for line in lines) == 10
    rc, _, err = run(capsys, "judge", "export", "--out", tmp_path / "table.md", "--data-dir", d)
    assert rc == 0, err
    md = (tmp_path / "table.md").read_text().strip().splitlines()
    assert md[0] == f"| Question | {DEFAULT_MODEL_NAME} | cli-lora |" and md[-1].startswith("| Average |")
    assert len(md) == 13  # header, rule, 10 questions, average


def test_judge_commands_run_inside_a_running_studio(studio, canned, capsys, tmp_path):
    """``judge run|table|export|runs`` sent to the studio holding the database (``studio.remote`` calls
    ``run_payload``) run on its open store and print what they print locally."""
    from studio.cli import build_parser, payload_of, run_payload

    add_endpoints(studio, canned.url)
    data = str(studio.settings.data_dir)
    for argv, name in ((["judge", "run", "--questions", "wizardlm", "--limit", "2", "--models", "alpha,beta",
                         "--judge", "judge", "--mode", "table"], "cmd_judge_run"),
                       (["judge", "table", "1"], "cmd_judge_table"),
                       (["judge", "export", "--out", str(tmp_path / "t.csv")], "cmd_judge_export"),
                       (["judge", "runs"], "cmd_judge_runs")):
        payload = json.loads(json.dumps(payload_of(build_parser().parse_args([*argv, "--data-dir", data]))))
        assert payload["__command__"] == name
        assert run_payload(payload, studio) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "judge run 1 (job 1): 2 questions, table" in out and "scale 1-100" in out
    assert [line.split() for line in out.splitlines() if line.startswith("Average")] == [["Average", "88", "61"]] * 2
    assert (tmp_path / "t.csv").read_text().splitlines()[-1] == "Average,,,88,61"
