"""LLM-as-judge: the WizardVicunaLM score table, MT-bench grading and WizardLM's per-skill comparison, for any
checkpoint in the registry.

Public API (for the Judge tab and the command line; every name below is importable from ``studio.judge``)
===========================================================================================================

Starting, following, stopping and resuming a run::

    cfg = JudgeConfig(questions="mt_bench", models=["mine", "SmolLM2-135M-Instruct"], judge="gpt-4o",
                      mode="single", limit=10, baseline=None, max_new_tokens=1024, judge_max_new_tokens=2048)
    run_id, job_id = studio.judge(cfg)      # Studio.judge -> start_run(studio.jobs, studio.store, cfg)
    studio.jobs.progress(job_id)            # studio.jobs.Progress (unit "question"); stop / resume as any job
    studio.jobs.stop(job_id); studio.jobs.resume(job_id)

- ``JudgeConfig(questions, models, judge, mode="single", limit=None, baseline=None, max_new_tokens=1024,
  judge_max_new_tokens=2048, batch_size=8, seed=None)``: ``questions`` is a set key of
  ``studio.questions.set_choices`` (``mt_bench``, ``wizardlm``, ``source:<id>``) or a question file path;
  ``.validate()`` raises ValueError; ``to_params()`` / ``from_params(d)``.
- ``start_run(jobs, store, cfg) -> (run_id, job_id)``: resolves the questions (``resolve_questions``), stores the
  run, queues its job (kind ``JOB_KIND = "judge"``, lane ``generate``, one item per question).
  Raises ValueError (bad settings), ``studio.questions.QuestionError`` (bad set or file).
- ``resolve_questions(key_or_path, store) -> (question_set, [Question])``.
- ``run_judge_job(ctx, registry)``: the job runner (registered by ``studio.core.Studio``).

Reading results (any time, also while the run goes on; judgments not yet made are simply missing)::

- ``score_table(store, run_id) -> ScoreTable`` (modes ``single`` and ``table``): ``rows`` (one ``ScoreRow`` per
  question: ``question_id, category, difficulty, scores {model: mean of its parsed turn scores or None},
  turns {model: [score or None per turn]}``), ``average {model: mean of every parsed score}`` (the "Average"
  row), ``turn_average {turn: {model: mean}}``, ``n_scored``, ``n_errors {model: unparsable judgments}``,
  ``errors`` (unparsable judgment rows), ``scale`` (10 for single, 100 for table).
- ``pairwise_table(store, run_id) -> PairwiseTable``: ``rates`` (``WinRate(model, win, loss, tie, win_rate,
  loss_rate, win_rate_adjusted)``, best first, FastChat ``show_result.py``), ``errors``.
- ``breakdown(table, by="category"|"difficulty") -> {group: {model: mean}}`` (MT-bench categories, WizardLM
  skills or difficulties).
- ``relative_scores(table, reference, by="category") -> {group: {model: percent}}``: WizardLM's "x% of R"
  (sum of a model's scores / sum of R's scores over the questions both have scores for, x 100), per group
  plus ``"all"``.
- ``to_markdown(table)``, ``to_csv(table)``: the WizardVicunaLM README layout (a row per question, a column per
  model, last row ``Average``); ``export_table(store, run_id, path)`` writes ``.md`` or ``.csv``.
- ``store.judge_runs()``, ``store.judge_run(run_id)``, ``store.judgments(run_id)``, ``store.latest_judge_run_id()``
  (``studio.store.judge``): runs and every judgment with the judge's full text and error.

The method's pure parts: ``answer_temperature(category)``, ``answer_params(question, max_new_tokens, seed)``,
``prompt_name(mode, question, turn)``, ``load_judge_prompts()``, ``judge_messages(prompt, question, turn,
answers)``, ``parse_rating(text)``, ``parse_verdict(text)``, ``verdict_winner(verdict, order)``,
``combine_swapped(w1, w2)``, ``parse_table_scores(text, n)``, ``shuffled_order(models, run_id, question_id)``,
``scores_by_model(order, scores)``.

The method
==========

Sources: FastChat ``fastchat/llm_judge`` (``common.py``, ``gen_model_answer.py``, ``gen_judgment.py``,
``show_result.py``; Zheng et al. 2023, "Judging LLM-as-a-judge with MT-Bench and Chatbot Arena"), the
WizardVicunaLM README's score table (melodysdreamj/WizardVicunaLM) and WizardLM's per-skill comparison
(Xu et al. 2023, Figure "WizardLM vs ChatGPT" on the WizardLM test set).

- **Answers** (FastChat ``gen_model_answer.py``): each model answers every turn of a question in one
  conversation (turn 2 sees its own turn-1 answer), sampled at the question category's temperature
  (``TEMPERATURE_CONFIG``: writing and roleplay 0.7, extraction, math, coding, reasoning 0.0, stem and humanities
  0.1, arena-hard-200 0.0; 0.7 for any other category), top-p 1. Answers are kept in the store keyed by model,
  question set, question and generation parameters and reused by later runs.
- **Single grading** (``mode="single"``): the judge rates each model's answer 1-10 with MT-bench's prompts
  (``judge_prompts.jsonl``): ``single-v1`` for turn 1, ``single-v1-multi-turn`` for turn 2; math, reasoning and
  coding questions that carry a reference answer use ``single-math-v1`` / ``single-math-v1-multi-turn``
  (FastChat ``NEED_REF_CATS``). The judge decodes greedily (FastChat: temperature 0).
- **Rating parser** (FastChat ``one_score_pattern`` then ``one_score_pattern_backup``): the first ``[[n]]``
  (``\\[\\[(\\d+\\.?\\d*)\\]\\]``), else the first ``[n]`` (``\\[(\\d+\\.?\\d*)\\]``). With two different ratings
  FastChat's ``re.search`` takes the first one, and so do we. No match: unparsable.
- **Pairwise** (``mode="pairwise"``): with a ``baseline`` every other model is compared with it (FastChat
  ``pairwise-baseline``), else every pair (``pairwise-all``). Each pair is judged twice, in order ``AB`` (model_a
  shown as Assistant A) and ``BA`` (swapped), with ``pair-v2`` / ``pair-math-v1`` (and their multi-turn forms).
  Verdict parser (FastChat ``run_judge_pair``): ``[[A]]`` if present, else ``[[B]]``, else ``[[C]]`` (tie), else
  unparsable. **Swap rule** (FastChat ``show_result.py``): a win counts only when both orders agree on the
  winner; the four cases: both say model_a -> model_a wins; both say model_b -> model_b wins; one says model_a
  and the other model_b -> tie; either says tie -> tie. A pair with an unparsable game is left out (counted).
  Win rate = wins / (wins + losses + ties); adjusted win rate counts a tie as half a win.
- **WizardVicunaLM table** (``mode="table"``): all models' answers to one question in one judge prompt
  (``TABLE_PROMPTS``), each scored 1-100 and written as ``Assistant k: <score>`` lines; the models are shown in an
  order shuffled per question (seeded by run id and question id, ``shuffled_order``), recorded with the judgment,
  and the scores are mapped back to the models (``scores_by_model``). ``parse_table_scores``: every line
  ``Assistant k: s`` (``s`` 1-100, optional ``/100``); unparsable when an assistant is missing, a number is out
  of range or beyond the number shown, or one assistant has two different scores.
- **Unparsable judgments** are asked once more (at temperature 0.7, so a greedy judge can answer differently),
  then stored with their error text: left out of every average and counted (``n_errors``, ``errors``).
- **Runs** are jobs (``studio.jobs``): one item per question; each judgment is stored as soon as it is made under a
  unique key, and a question's item is marked done once all its judgments are stored, so a stopped, failed or
  killed run resumes without judging anything twice and without losing anything.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .questions import RESOURCES, Question, QuestionError, iter_json_lines, load_set, read_question_file
from .registry import GenParams, Registry, RegistryError

JOB_KIND = "judge"
"""The job kind of judge runs (lane ``generate``, unit ``question``)."""

MODES = ("single", "table", "pairwise")
"""``single``: MT-bench 1-10 grading of each answer; ``table``: WizardVicunaLM 1-100 scores of all answers in one
prompt; ``pairwise``: A/B verdicts, each pair judged in both orders."""

NEED_REF_CATS = ("math", "reasoning", "coding")
"""Categories judged against a reference answer when the question has one (FastChat ``NEED_REF_CATS``)."""

TEMPERATURE_CONFIG = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                      "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
"""Answer sampling temperature per question category (FastChat ``fastchat/llm_judge/common.py``
``temperature_config``)."""

DEFAULT_TEMPERATURE = 0.7
"""Temperature of any category not in ``TEMPERATURE_CONFIG`` (FastChat ``gen_model_answer.py``)."""

JUDGE_PROMPTS_FILE = RESOURCES / "judge_prompts.jsonl"
"""MT-bench's judge prompts (FastChat ``fastchat/llm_judge/data/judge_prompts.jsonl``)."""

TABLE_MIN, TABLE_MAX = 1, 100
"""The score range of the table mode."""


class JudgeError(ValueError):
    """A judge run that cannot be started or read (unknown run, wrong mode); the message says why."""


# ---------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class JudgePrompt:
    """One judge prompt: ``name``, ``type`` (``single`` | ``pairwise`` | ``table``), ``system_prompt``,
    ``prompt_template`` (``str.format`` fields; the table prompts are rendered by ``judge_messages`` instead),
    ``output_format`` (``[[rating]]``, ``[[A]]`` or ``table``)."""

    name: str
    type: str
    system_prompt: str
    prompt_template: str
    output_format: str
    description: str = ""
    category: str = ""


TABLE_SYSTEM = (
    "Please act as an impartial judge and evaluate the responses of {n} AI assistants to the user question "
    "displayed below. Rate each response on a scale of 1 to 100 (higher is better) for its helpfulness, "
    "relevance, accuracy, depth, creativity and level of detail. The responses are shown in a random order: "
    "avoid any position bias and do not let the order, the length of a response or the assistant's number "
    "influence your scores. Be as objective as possible. Begin with a short comparison of the responses. Then "
    "end with exactly {n} lines, one per assistant, each strictly in this format, with nothing after the score:\n"
    "{format}"
)
TABLE_SYSTEM_MULTI_TURN = TABLE_SYSTEM.replace(
    "to the user question displayed below", "in their conversations with the user displayed below").replace(
    "Be as objective", "Focus on the responses to the second user question. Be as objective")

TABLE_PROMPTS = {
    "table-v1": JudgePrompt("table-v1", "table", TABLE_SYSTEM, "", "table",
                            "WizardVicunaLM-style: every model's answer to one question, each scored 1-100"),
    "table-v1-multi-turn": JudgePrompt("table-v1-multi-turn", "table", TABLE_SYSTEM_MULTI_TURN, "", "table",
                                       "the table prompt for a question's second turn"),
}
"""The studio's own prompts for the table mode (WizardVicunaLM's table had a score per model and question)."""


def load_judge_prompts(path: str | Path | None = None) -> dict[str, JudgePrompt]:
    """``{name: JudgePrompt}`` of a FastChat judge prompt file (default ``JUDGE_PROMPTS_FILE``) plus
    ``TABLE_PROMPTS``.

    Raises:
        QuestionError: an unreadable line (file and line named).
    """
    path = Path(path or JUDGE_PROMPTS_FILE)
    out: dict[str, JudgePrompt] = {}
    for n, d in iter_json_lines(path, path.name):
        try:
            out[d["name"]] = JudgePrompt(d["name"], d["type"], d["system_prompt"], d["prompt_template"],
                                         d["output_format"], d.get("description", ""), d.get("category", ""))
        except (KeyError, TypeError) as e:
            raise QuestionError(f"{path.name} line {n}: not a judge prompt ({e})") from None
    out.update(TABLE_PROMPTS)
    return out


def answer_temperature(category: str) -> float:
    """The answer sampling temperature of a question category (``TEMPERATURE_CONFIG``, else 0.7)."""
    return TEMPERATURE_CONFIG.get((category or "").strip().lower(), DEFAULT_TEMPERATURE)


def answer_params(question: Question, max_new_tokens: int, seed: int | None = None) -> GenParams:
    """The generation parameters of a model's answers to ``question``: its category's temperature, top-p 1,
    ``max_new_tokens`` per turn (FastChat ``gen_model_answer.py``, which defaults to 1024)."""
    return GenParams(max_new_tokens=int(max_new_tokens), temperature=answer_temperature(question.category),
                     top_p=1.0, seed=seed)


def needs_reference(question: Question, turn: int) -> bool:
    """True when ``question`` is judged against its reference answers up to ``turn`` (its category is in
    ``NEED_REF_CATS`` and it has that many references)."""
    return (question.category or "").lower() in NEED_REF_CATS and len(question.reference) >= turn


def prompt_name(mode: str, question: Question, turn: int) -> str:
    """The judge prompt of a mode, question and turn (1 or 2), FastChat ``gen_judgment.py``'s choice:
    ``single-v1`` / ``single-math-v1`` (with a reference), ``-multi-turn`` for turn 2; ``pair-v2`` /
    ``pair-math-v1`` likewise; ``table-v1`` / ``table-v1-multi-turn``.

    Raises:
        ValueError: an unknown mode, or a turn other than 1 or 2.
    """
    if turn not in (1, 2):
        raise ValueError(f"turn must be 1 or 2, not {turn!r}")
    mt = "-multi-turn" if turn == 2 else ""
    ref = needs_reference(question, turn)
    if mode == "single":
        return ("single-math-v1" if ref else "single-v1") + mt
    if mode == "pairwise":
        return ("pair-math-v1" if ref else "pair-v2") + mt
    if mode == "table":
        return "table-v1" + mt
    raise ValueError(f"unknown judge mode {mode!r} (one of {', '.join(MODES)})")


def judged_turns(question: Question) -> list[int]:
    """The turns judged for a question: 1, and 2 when it has a second turn (MT-bench); later turns are not
    judged (FastChat judges two)."""
    return [1, 2] if len(question.turns) >= 2 else [1]


def _table_user(question: Question, turn: int, answers: list[list[str]]) -> str:
    parts = []
    if turn == 1:
        parts.append(f"[User Question]\n{question.turns[0]}\n")
        for k, a in enumerate(answers, 1):
            parts.append(f"[The Start of Assistant {k}'s Answer]\n{a[0]}\n[The End of Assistant {k}'s Answer]\n")
    else:
        for k, a in enumerate(answers, 1):
            parts.append(f"<|The Start of Assistant {k}'s Conversation with User|>\n\n### User:\n{question.turns[0]}"
                         f"\n\n### Assistant {k}:\n{a[0]}\n\n### User:\n{question.turns[1]}\n\n### Assistant {k}:\n"
                         f"{a[1]}\n\n<|The End of Assistant {k}'s Conversation with User|>\n")
    return "\n".join(parts).rstrip()


def judge_messages(prompt: JudgePrompt, question: Question, turn: int, answers: list[list[str]]) -> list[dict]:
    """The judge's messages (system, user) for one judgment.

    Args:
        prompt: from ``load_judge_prompts``.
        turn: 1 or 2 (turn 2 shows the whole two-turn conversation).
        answers: the turns of each answer shown, in the order shown: one for ``single``, two (A, B) for
            ``pairwise``, one per model for ``table``.

    Raises:
        ValueError: a wrong number of answers for the prompt's type.
    """
    need = {"single": 1, "pairwise": 2}.get(prompt.type)
    if need is not None and len(answers) != need:
        raise ValueError(f"prompt {prompt.name} shows {need} answer(s), got {len(answers)}")
    if prompt.type == "table":
        n = len(answers)
        fmt = "\n".join(f"Assistant {k}: <score>" for k in range(1, n + 1))
        return [{"role": "system", "content": prompt.system_prompt.format(n=n, format=fmt)},
                {"role": "user", "content": _table_user(question, turn, answers)}]
    kw: dict[str, str] = {}
    if "{ref_answer_1}" in prompt.prompt_template:
        kw["ref_answer_1"] = question.reference[0]
    if "{ref_answer_2}" in prompt.prompt_template:
        kw["ref_answer_2"] = question.reference[1]
    if prompt.type == "single":
        a = answers[0]
        if turn == 2:
            kw.update(question_1=question.turns[0], question_2=question.turns[1], answer_1=a[0], answer_2=a[1])
        else:
            kw.update(question=question.turns[0], answer=a[0])
    else:
        a, b = answers
        if turn == 2:
            kw.update(question_1=question.turns[0], question_2=question.turns[1], answer_a_1=a[0], answer_a_2=a[1],
                      answer_b_1=b[0], answer_b_2=b[1])
        else:
            kw.update(question=question.turns[0], answer_a=a[0], answer_b=b[0])
    return [{"role": "system", "content": prompt.system_prompt},
            {"role": "user", "content": prompt.prompt_template.format(**kw)}]


# ---------------------------------------------------------------------------------------------- parsers

ONE_SCORE_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
"""FastChat ``one_score_pattern``: ``[[8]]``, ``[[8.5]]``."""
ONE_SCORE_PATTERN_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
"""FastChat ``one_score_pattern_backup``: ``[8]``, tried when no ``[[n]]`` is found."""


def parse_rating(text: str) -> float | None:
    """A single-grading rating as FastChat reads it: the first ``[[n]]``, else the first ``[n]``; None when there
    is neither (unparsable). With two different ratings the first one counts (FastChat's ``re.search``).

    Examples: ``"Rating: [[8]]" -> 8.0``, ``"[[8.5]]" -> 8.5``, ``"[[3]] ... [[9]]" -> 3.0``, ``"good" -> None``.
    """
    m = ONE_SCORE_PATTERN.search(text or "") or ONE_SCORE_PATTERN_BACKUP.search(text or "")
    return float(m.group(1)) if m else None


def parse_verdict(text: str) -> str | None:
    """A pairwise verdict as FastChat reads it: ``"A"`` if ``[[A]]`` is in the text, else ``"B"`` for ``[[B]]``,
    else ``"tie"`` for ``[[C]]``, else None (unparsable)."""
    text = text or ""
    for tag, verdict in (("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie")):
        if tag in text:
            return verdict
    return None


def verdict_winner(verdict: str | None, order: str) -> str | None:
    """One game's verdict in the models' terms: with ``order`` ``AB`` Assistant A is model_a, with ``BA`` it is
    model_b. Returns ``model_a``, ``model_b``, ``tie`` or None (unparsable).

    Raises:
        ValueError: an order other than ``AB`` / ``BA``.
    """
    if order not in ("AB", "BA"):
        raise ValueError(f"order must be 'AB' or 'BA', not {order!r}")
    if verdict is None:
        return None
    if verdict == "tie":
        return "tie"
    first, second = ("model_a", "model_b") if order == "AB" else ("model_b", "model_a")
    return first if verdict == "A" else second


def combine_swapped(w1: str | None, w2: str | None) -> str | None:
    """The outcome of a pair judged in both orders (each winner from ``verdict_winner``), FastChat's swap rule:
    a win only when both orders agree, otherwise a tie; None when either game is unparsable (left out).

    ``(model_a, model_a) -> model_a``; ``(model_b, model_b) -> model_b``; ``(model_a, model_b)`` or
    ``(model_b, model_a) -> tie``; any tie -> ``tie``.
    """
    if w1 is None or w2 is None:
        return None
    return w1 if w1 == w2 else "tie"


_TABLE_LINE = re.compile(r"^[ \t>*_#-]*Assistant[ \t]*(\d+)(?:[ \t]+score)?[ \t*_]*[:=][ \t*_]*(\d+(?:\.\d+)?)[ \t]*(?:/[ \t]*100)?"
                         r"[ \t*_.]*$", re.IGNORECASE | re.MULTILINE)


def parse_table_scores(text: str, n: int) -> list[float] | None:
    """The table mode's scores, by position shown: every line ``Assistant k: s`` or ``Assistant k score: s``
    (markdown emphasis and a ``/100`` allowed). Returns ``[score of Assistant 1, ..., score of Assistant n]``, or None (unparsable) when
    an assistant has no score, a number is beyond ``n``, a score is outside 1-100, or one assistant has two
    different scores. The same line repeated is fine."""
    found: dict[int, float] = {}
    for m in _TABLE_LINE.finditer(text or ""):
        k, s = int(m.group(1)), float(m.group(2))
        if not 1 <= k <= n or not TABLE_MIN <= s <= TABLE_MAX:
            return None
        if k in found and found[k] != s:
            return None
        found[k] = s
    if sorted(found) != list(range(1, n + 1)):
        return None
    return [found[k] for k in range(1, n + 1)]


def shuffled_order(models: list[str], run_id: int, question_id: str) -> list[str]:
    """The order the table mode shows ``models`` in for one question: shuffled by ``random.Random`` seeded with
    ``"<run_id>:<question_id>"`` (the same every time for that run and question)."""
    order = list(models)
    random.Random(f"{int(run_id)}:{question_id}").shuffle(order)
    return order


def scores_by_model(order: list[str], scores: list[float]) -> dict[str, float]:
    """Map the table mode's scores by position (``parse_table_scores``) back to models: ``{order[i]: scores[i]}``.

    Raises:
        ValueError: lengths differ.
    """
    if len(order) != len(scores):
        raise ValueError(f"{len(scores)} scores for {len(order)} models")
    return dict(zip(order, scores))


# ---------------------------------------------------------------------------------------------- config


@dataclass
class JudgeConfig:
    """One judge run's settings (kept with the run, so a resume uses the same).

    Attributes:
        questions: a question set key (``mt_bench``, ``wizardlm``, ``source:<id>``) or a question file path.
        models: the candidate models (registry names), at least one, no repeats (pairwise: at least two, or
            one and a ``baseline``).
        judge: the judge model (registry name).
        mode: one of ``MODES``.
        limit: judge only the first ``limit`` questions (None: all).
        baseline: pairwise: compare every model with this one (None: every pair); it answers too.
        max_new_tokens: longest answer per turn, tokens.
        judge_max_new_tokens: longest judgment, tokens (FastChat: 2048).
        batch_size: questions handled together (answers batched, judge requests concurrent).
        seed: sampling seed for reproducible answers (None: unseeded).
    """

    questions: str
    models: list[str]
    judge: str
    mode: str = "single"
    limit: int | None = None
    baseline: str | None = None
    max_new_tokens: int = 1024
    judge_max_new_tokens: int = 2048
    batch_size: int = 8
    seed: int | None = None

    def to_params(self) -> dict:
        """JSON-serialisable dict (kept with the run and its job)."""
        return asdict(self)

    @classmethod
    def from_params(cls, d: dict) -> "JudgeConfig":
        """Inverse of ``to_params`` (unknown keys ignored)."""
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def answering_models(self) -> list[str]:
        """The models whose answers the run needs: ``models`` and the baseline (when pairwise)."""
        extra = [self.baseline] if self.mode == "pairwise" and self.baseline and self.baseline not in self.models else []
        return list(self.models) + extra

    def validate(self) -> None:
        """Raise ValueError naming the bad setting."""
        if self.mode not in MODES:
            raise ValueError(f"mode: unknown judge mode {self.mode!r} (one of {', '.join(MODES)})")
        if not self.models or not all(isinstance(m, str) and m.strip() for m in self.models):
            raise ValueError("models: give at least one model")
        if len(set(self.models)) != len(self.models):
            raise ValueError("models: a model is listed twice")
        if not isinstance(self.judge, str) or not self.judge.strip():
            raise ValueError("judge: give the judge model")
        if self.mode == "pairwise" and len(self.answering_models()) < 2:
            raise ValueError("pairwise: give at least two models, or one and a baseline")
        if self.baseline and self.mode != "pairwise":
            raise ValueError("baseline: only the pairwise mode compares with a baseline")
        if self.limit is not None and int(self.limit) < 1:
            raise ValueError(f"limit: must be at least 1, not {self.limit}")
        for name in ("max_new_tokens", "judge_max_new_tokens", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: must be at least 1, not {getattr(self, name)}")


def question_to_dict(q: Question) -> dict:
    """A question as JSON-able dict (kept in the run)."""
    return {"question_id": q.question_id, "turns": list(q.turns), "category": q.category,
            "difficulty": q.difficulty, "reference": list(q.reference)}


def question_from_dict(d: dict) -> Question:
    """Inverse of ``question_to_dict``."""
    return Question(str(d["question_id"]), tuple(d["turns"]), d.get("category") or "", d.get("difficulty"),
                    tuple(d.get("reference") or ()))


def resolve_questions(key: str, store=None) -> tuple[str, list[Question]]:
    """The questions of a set key or a question file path, and the name answers are kept under
    (``question_set``): the key itself, or ``file:<name>#<first 12 hex digits of the file's sha256>``.

    Raises:
        QuestionError: an unknown key, a missing or unreadable file (named).
    """
    if key in ("mt_bench", "wizardlm") or key.startswith("source:"):
        return key, load_set(key, store)
    path = Path(key).expanduser()
    if not path.is_file():
        raise QuestionError(f"{key}: neither a question set (mt_bench, wizardlm, source:<id>) nor a question file")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return f"file:{path.name}#{digest}", read_question_file(path)


def start_run(jobs, store, cfg: JudgeConfig) -> tuple[int, int]:
    """Validate ``cfg``, resolve its questions, store the run and queue its job (one item per question).

    Returns:
        ``(run_id, job_id)``.

    Raises:
        ValueError: bad settings. QuestionError: a bad question set or file.
    """
    cfg.validate()
    qset, questions = resolve_questions(cfg.questions, store)
    if cfg.limit:
        questions = questions[: int(cfg.limit)]
    run_id = store.add_judge_run(mode=cfg.mode, judge=cfg.judge, models=list(cfg.models), question_set=qset,
                                 questions=[question_to_dict(q) for q in questions], limit=cfg.limit,
                                 baseline=cfg.baseline, params=cfg.to_params())
    job_id = jobs.submit(JOB_KIND, {"run_id": run_id, "mode": cfg.mode, "judge": cfg.judge},
                         list(range(1, len(questions) + 1)))
    store.set_judge_run_job(run_id, job_id)
    return run_id, job_id


# ---------------------------------------------------------------------------------------------- the runner


@dataclass
class _Task:
    question: Question
    turn: int
    jkey: str
    prompt: JudgePrompt
    messages: list[dict]
    fields: dict
    n: int = 1


def _pairs(cfg: JudgeConfig) -> list[tuple[str, str]]:
    if cfg.baseline:
        return [(m, cfg.baseline) for m in cfg.models if m != cfg.baseline]
    return [(a, b) for i, a in enumerate(cfg.models) for b in cfg.models[i + 1:]]


def _tasks(cfg: JudgeConfig, run_id: int, q: Question, answers: dict[str, list[str]], prompts: dict,
           done: set) -> list[_Task]:
    out = []
    for turn in judged_turns(q):
        p = prompts[prompt_name(cfg.mode, q, turn)]
        if cfg.mode == "single":
            for m in cfg.models:
                key = f"single|{m}"
                if (q.question_id, turn, key) not in done:
                    out.append(_Task(q, turn, key, p, judge_messages(p, q, turn, [answers[m]]), {"model": m}))
        elif cfg.mode == "table":
            if (q.question_id, turn, "table") not in done:
                order = shuffled_order(cfg.models, run_id, q.question_id)
                out.append(_Task(q, turn, "table", p, judge_messages(p, q, turn, [answers[m] for m in order]),
                                 {"models": order}, len(order)))
        else:
            for a, b in _pairs(cfg):
                for order in ("AB", "BA"):
                    key = f"pair|{a}|{b}|{order}"
                    if (q.question_id, turn, key) in done:
                        continue
                    shown = [answers[a], answers[b]] if order == "AB" else [answers[b], answers[a]]
                    out.append(_Task(q, turn, key, p, judge_messages(p, q, turn, shown),
                                     {"model_a": a, "model_b": b, "order": order}))
    return out


def _read(task: _Task, text: str) -> tuple[dict | None, str | None]:
    """(the judgment's mode fields, None) when ``text`` parses, else (None, why)."""
    if task.prompt.output_format == "[[rating]]":
        r = parse_rating(text)
        return ({"score": r}, None) if r is not None else (None, "no rating [[n]] in the judgment")
    if task.prompt.output_format == "[[A]]":
        v = parse_verdict(text)
        if v is None:
            return None, "no verdict [[A]], [[B]] or [[C]] in the judgment"
        return {"winner": verdict_winner(v, task.fields["order"])}, None
    scores = parse_table_scores(text, task.n)
    if scores is None:
        return None, (f"no readable 'Assistant k: score' line (1-{TABLE_MAX}) for each of the {task.n} assistants")
    return {"scores": scores_by_model(task.fields["models"], scores)}, None


def _gen_answers(registry: Registry, cfg: JudgeConfig, qset: str, qs: list[Question], should_stop,
                 report) -> dict[tuple[str, str], list[str]] | None:
    """Every answering model's answers to ``qs``: stored ones reused, missing ones generated turn by turn (a
    turn's conversation holds the model's earlier answers) and stored. None when stopped."""
    store = registry.store
    out: dict[tuple[str, str], list[str]] = {}
    for m in cfg.answering_models():
        missing: dict[str, list[Question]] = {}
        params_of: dict[str, GenParams] = {}
        for q in qs:
            p = answer_params(q, cfg.max_new_tokens, cfg.seed)
            got = store.get_answer(m, qset, q.question_id, p.as_dict())
            if got is not None:
                out[(m, q.question_id)] = got
            else:
                key = json.dumps(p.as_dict(), sort_keys=True)
                missing.setdefault(key, []).append(q)
                params_of[key] = p
        for key, group in missing.items():
            if should_stop():
                return None
            p = params_of[key]
            report(f"{m} answers {len(group)} question(s)")
            convs = {q.question_id: [] for q in group}
            turns = {q.question_id: [] for q in group}
            for t in range(max(len(q.turns) for q in group)):
                live = [q for q in group if len(q.turns) > t]
                for q in live:
                    convs[q.question_id].append({"role": "user", "content": q.turns[t]})
                outs = registry.chat_batch(m, [convs[q.question_id] for q in live], p,
                                           batch_size=cfg.batch_size, concurrency=cfg.batch_size)
                for q, o in zip(live, outs):
                    text = o.text.strip()
                    # an empty answer is kept (and judged) as it is; the next turn's conversation needs some text
                    # in its place, since a chat template refuses an empty earlier answer
                    convs[q.question_id].append({"role": "assistant", "content": text or "(no answer)"})
                    turns[q.question_id].append(text)
            for q in group:
                out[(m, q.question_id)] = store.add_answer(m, qset, q.question_id, p.as_dict(), turns[q.question_id])
    return out


def _store_judgment(store, run_id: int, t: _Task, text: str, fields: dict | None, why: str | None) -> None:
    j = {"question_id": t.question.question_id, "turn": t.turn, "jkey": t.jkey, "prompt_name": t.prompt.name,
         "judgment": text, **t.fields}
    if fields:
        j.update(fields)
    else:
        j["error"] = why
    store.add_judgment(run_id, j)


def _judge_tasks(registry: Registry, cfg: JudgeConfig, run_id: int, tasks: list[_Task], params: GenParams,
                 retry_params: GenParams) -> None:
    """Ask the judge for every task and store each judgment as soon as it is read: an endpoint judge gets
    ``batch_size`` concurrent requests, each judgment stored when its answer arrives (and, if unreadable, once
    asked again); a local judge runs padded batches of ``batch_size``, stored after each batch.

    Raises:
        RegistryError: the judge failed (judgments already answered are stored; the others are asked on resume).
    """
    store = registry.store
    bs = int(cfg.batch_size)
    if not tasks:
        return
    if registry.get(cfg.judge).kind == "endpoint":
        from concurrent.futures import ThreadPoolExecutor

        def one(t: _Task) -> None:
            text = registry.chat(cfg.judge, t.messages, params).text
            fields, why = _read(t, text)
            if fields is None:
                text = registry.chat(cfg.judge, t.messages, retry_params).text
                fields, why = _read(t, text)
                why = None if fields else f"{why} (after one retry)"
            _store_judgment(store, run_id, t, text, fields, why)

        with ThreadPoolExecutor(max_workers=max(1, min(bs, len(tasks)))) as pool:
            futures = [pool.submit(one, t) for t in tasks]
            errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            raise errors[0]
        return
    for start in range(0, len(tasks), bs):
        part = tasks[start:start + bs]
        outs = registry.chat_batch(cfg.judge, [t.messages for t in part], params, batch_size=bs)
        results = [(t, o.text, *_read(t, o.text)) for t, o in zip(part, outs)]
        again = [i for i, r in enumerate(results) if r[2] is None]
        if again:
            texts = _cue_retry(registry, cfg.judge, [results[i][0] for i in again], [results[i][1] for i in again],
                               bs)
            for i, text in zip(again, texts):
                t = results[i][0]
                fields, why = _read(t, text)
                results[i] = (t, text, fields, None if fields else f"{why} (after one retry)")
        for t, text, fields, why in results:
            _store_judgment(store, run_id, t, text, fields, why)


CUE_RATING = "\n\nRating: [["
"""The retry's prefill for single grading: FastChat's required output, ``"Rating: [[5]]"``, up to the number."""
CUE_VERDICT = "\n\nFinal verdict: [["
"""The retry's prefill for pairwise judging, up to the verdict letter (``[[A]]``, ``[[B]]`` or ``[[C]]``)."""
_NUMBER = re.compile(r"\s*(\d+(?:\.\d+)?)")


def _cue_retry(registry: Registry, judge: str, tasks: list[_Task], texts: list[str], batch_size: int) -> list[str]:
    """The one retry of unparsable judgments by a *local* judge: the judge's own text is kept and continued
    (a prefill, see ``Registry._render``) with the output format's cue, greedy, a few tokens at a time: single
    grading with ``Rating: [[`` (4 tokens), pairwise with ``Final verdict: [[`` (2 tokens), the table with
    ``Assistant k score:`` for each k in turn (4 tokens each, the number it starts with kept). Measured on 8
    MT-bench table judgments by the default model: the cue ``Assistant k:`` got a number 6 times in 16 (the model
    went on copying the answer), ``Assistant k score:`` 16 in 16.

    Why: small local judges (the embedded 135M model) explain but almost never end with ``[[n]]``; asked again
    with sampling they fail the same way (a 10-question MT-bench run here: every judgment unparsable), while
    continuing their text from the cue yields a readable rating. A GPT-4-class endpoint judge is retried as
    FastChat does (the same prompt again, sampled). The stored text is the judge's text, the cue and what
    followed, so a reader sees what was asked.

    Returns:
        One full judgment text per task, in order (parse them with ``_read``).
    """
    out = [t.rstrip() for t in texts]
    fmt = tasks[0].prompt.output_format if tasks else ""

    def cont(which: list[int], prefixes: list[str], n_tokens: int) -> list[str]:
        convs = [tasks[i].messages + [{"role": "assistant", "content": p}] for i, p in zip(which, prefixes)]
        res = registry.chat_batch(judge, convs, GenParams(max_new_tokens=n_tokens, temperature=0.0, top_p=1.0),
                                  batch_size=batch_size)
        return [c.text for c in res]

    if fmt in ("[[rating]]", "[[A]]"):
        cue = CUE_RATING if fmt == "[[rating]]" else CUE_VERDICT
        which = list(range(len(tasks)))
        prefixes = [out[i] + cue for i in which]
        for i, p, more in zip(which, prefixes, cont(which, prefixes, 4 if fmt == "[[rating]]" else 2)):
            out[i] = p + more
        return out
    for k in range(1, max((t.n for t in tasks), default=0) + 1):
        which = [i for i, t in enumerate(tasks) if k <= t.n]
        prefixes = [out[i] + ("\n\n" if k == 1 else "\n") + f"Assistant {k} score: " for i in which]
        for i, p, more in zip(which, prefixes, cont(which, prefixes, 4)):
            m = _NUMBER.match(more)
            out[i] = p + (m.group(1) if m else more)
    return out


def run_judge_job(ctx, registry: Registry) -> None:
    """Job runner of ``judge`` jobs (see ``studio.jobs``): for the run's pending questions, in batches of
    ``batch_size``: the models' answers (reused or generated), then the judgments not stored yet, each stored as
    soon as it is read (an unparsable one after one more try, with its error), then the questions' items marked
    done. Checks for a stop between batches and between answering and judging.

    Raises:
        RegistryError: a model or the judge is not in the registry or fails (the job fails; resume goes on
            where it stopped).
    """
    store = registry.store
    run_id = int(ctx.params["run_id"])
    run = store.judge_run(run_id)
    cfg = JudgeConfig.from_params(run["params"])
    questions = [question_from_dict(d) for d in run["questions"]]
    names = set(registry.names())
    for m in [*cfg.answering_models(), cfg.judge]:
        if m not in names:
            raise RegistryError(f"model '{m}' is not in the registry")
    prompts = load_judge_prompts()
    judge_params = GenParams(max_new_tokens=int(cfg.judge_max_new_tokens), temperature=0.0, top_p=1.0)
    retry_params = GenParams(max_new_tokens=int(cfg.judge_max_new_tokens), temperature=0.7, top_p=1.0,
                             seed=None if cfg.seed is None else int(cfg.seed) + 1)
    pending = store.pending_items(ctx.job_id)
    bs = int(cfg.batch_size)
    for start in range(0, len(pending), bs):
        if ctx.should_stop():
            return
        items = pending[start:start + bs]
        qs = [questions[i - 1] for i in items]
        prefix = f"questions {start + 1}-{start + len(items)} of {len(pending)}"
        answers = _gen_answers(registry, cfg, run["question_set"], qs, ctx.should_stop,
                               lambda msg: ctx.report(f"{prefix}: {msg}"))
        if answers is None or ctx.should_stop():
            return
        done = store.judgment_keys(run_id)
        tasks = [t for q in qs for t in _tasks(cfg, run_id, q, {m: answers[(m, q.question_id)]
                                                                for m in cfg.answering_models()}, prompts, done)]
        ctx.report(f"{prefix}: {len(tasks)} judgment(s) by {cfg.judge}")
        _judge_tasks(registry, cfg, run_id, tasks, judge_params, retry_params)
        for i in items:
            store.complete_judge_item(ctx.job_id, i)


# ---------------------------------------------------------------------------------------------- results


@dataclass
class ScoreRow:
    """One question's row: ``scores {model: mean of its parsed turn scores, or None}``, ``turns {model: [score
    or None per judged turn]}``, ``errors {model: unparsable judgments}``."""

    question_id: str
    category: str
    difficulty: int | None
    scores: dict[str, float | None]
    turns: dict[str, list[float | None]]
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class ScoreTable:
    """A run's question x model table (modes ``single`` and ``table``), see the module docstring."""

    run_id: int
    mode: str
    judge: str
    question_set: str
    models: list[str]
    rows: list[ScoreRow]
    average: dict[str, float | None]
    turn_average: dict[int, dict[str, float | None]]
    n_scored: dict[str, int]
    n_errors: dict[str, int]
    errors: int
    scale: int = 10


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def score_table(store, run_id: int) -> ScoreTable:
    """The question x model table of a ``single`` or ``table`` run from its stored judgments. A cell is the
    mean of the question's parsed turn scores; ``average`` is the mean of every parsed score of the model (both
    turns of MT-bench: FastChat ``show_result.py``'s Average); unparsable judgments count in ``n_errors`` and
    nowhere else.

    Raises:
        StoreError: an unknown run. JudgeError: a pairwise run (see ``pairwise_table``).
    """
    run = store.judge_run(run_id)
    if run["mode"] == "pairwise":
        raise JudgeError(f"run {run_id} is pairwise: it has win rates, not scores (pairwise_table)")
    models = list(run["models"])
    questions = [question_from_dict(d) for d in run["questions"]]
    by_q: dict[str, dict[str, dict[int, float | None]]] = {q.question_id: {m: {} for m in models} for q in questions}
    errs_q: dict[str, dict[str, int]] = {q.question_id: {m: 0 for m in models} for q in questions}
    n_err = {m: 0 for m in models}
    errors = 0
    for j in store.judgments(run_id):
        cell = by_q.get(j["question_id"])
        if cell is None:
            continue
        if j["error"]:
            errors += 1
            hit = [j["model"]] if j["model"] else (j["models"] or [])
            for m in hit:
                if m in n_err:
                    n_err[m] += 1
                    errs_q[j["question_id"]][m] += 1
            continue
        got = {j["model"]: j["score"]} if j["model"] else (j["scores"] or {})
        for m, s in got.items():
            if m in cell and s is not None:
                cell[m][int(j["turn"])] = float(s)
    rows = []
    all_scores: dict[str, list[float]] = {m: [] for m in models}
    per_turn: dict[int, dict[str, list[float]]] = {}
    for q in questions:
        turns = judged_turns(q)
        t_scores = {m: [by_q[q.question_id][m].get(t) for t in turns] for m in models}
        for m in models:
            for t in turns:
                s = by_q[q.question_id][m].get(t)
                if s is not None:
                    all_scores[m].append(s)
                    per_turn.setdefault(t, {mm: [] for mm in models})[m].append(s)
        rows.append(ScoreRow(q.question_id, q.category, q.difficulty,
                             {m: _mean([s for s in t_scores[m] if s is not None]) for m in models}, t_scores,
                             errs_q[q.question_id]))
    return ScoreTable(run_id, run["mode"], run["judge"], run["question_set"], models, rows,
                      {m: _mean(all_scores[m]) for m in models},
                      {t: {m: _mean(v[m]) for m in models} for t, v in sorted(per_turn.items())},
                      {m: len(all_scores[m]) for m in models}, n_err, errors,
                      100 if run["mode"] == "table" else 10)


def breakdown(table: ScoreTable, by: str = "category") -> dict[str, dict[str, float | None]]:
    """Mean cell score per group and model: ``by="category"`` (MT-bench category, WizardLM skill) or
    ``"difficulty"`` (WizardLM 1-10; questions without one are left out). Groups in first-seen order.

    Raises:
        ValueError: another ``by``.
    """
    if by not in ("category", "difficulty"):
        raise ValueError(f"breakdown by 'category' or 'difficulty', not {by!r}")
    groups: dict[str, dict[str, list[float]]] = {}
    for r in table.rows:
        g = r.category if by == "category" else r.difficulty
        if g is None or g == "":
            continue
        d = groups.setdefault(str(g), {m: [] for m in table.models})
        for m in table.models:
            if r.scores[m] is not None:
                d[m].append(r.scores[m])
    return {g: {m: _mean(v) for m, v in d.items()} for g, d in groups.items()}


def relative_scores(table: ScoreTable, reference: str, by: str = "category") -> dict[str, dict[str, float | None]]:
    """WizardLM's comparison with a reference model R: per group (and ``"all"``) and model, 100 x (sum of the
    model's scores) / (sum of R's scores), over the questions where both have a score ("x% of R"); None when
    there is no such question or R's sum is 0.

    Raises:
        ValueError: ``reference`` is not one of the table's models, or a bad ``by``.
    """
    if reference not in table.models:
        raise ValueError(f"reference {reference!r} is not one of the run's models ({', '.join(table.models)})")
    if by not in ("category", "difficulty"):
        raise ValueError(f"relative scores by 'category' or 'difficulty', not {by!r}")
    sums: dict[str, dict[str, list[float]]] = {}
    for r in table.rows:
        g = r.category if by == "category" else r.difficulty
        keys = ["all"] + ([str(g)] if g not in (None, "") else [])
        rs = r.scores[reference]
        for m in table.models:
            s = r.scores[m]
            if s is None or rs is None:
                continue
            for k in keys:
                acc = sums.setdefault(k, {}).setdefault(m, [0.0, 0.0])
                acc[0] += s
                acc[1] += rs
    order = ["all"] + [k for k in sums if k != "all"]
    return {k: {m: (100.0 * sums[k][m][0] / sums[k][m][1] if m in sums.get(k, {}) and sums[k][m][1] else None)
                for m in table.models} for k in order if k in sums}


@dataclass
class WinRate:
    """A model's pairwise record (FastChat ``show_result.py``): wins, losses, ties over pairs judged in both
    orders, ``win_rate``, ``loss_rate`` and ``win_rate_adjusted`` (a tie counts half a win)."""

    model: str
    win: int
    loss: int
    tie: int
    win_rate: float
    loss_rate: float
    win_rate_adjusted: float


@dataclass
class PairwiseTable:
    """A pairwise run's results: ``rates`` best first (by adjusted win rate), ``outcomes`` ``[(question_id, turn,
    model_a, model_b, winner)]`` with ``winner`` ``model_a`` | ``model_b`` | ``tie``, ``errors`` pairs left out
    because a game was unparsable, ``baseline`` (left out of ``rates``, as FastChat does)."""

    run_id: int
    judge: str
    models: list[str]
    baseline: str | None
    rates: list[WinRate]
    outcomes: list[tuple[str, int, str, str, str]]
    errors: int


def pairwise_table(store, run_id: int) -> PairwiseTable:
    """Win, loss and tie rates of a pairwise run (the swap rule: ``combine_swapped``).

    Raises:
        StoreError: an unknown run. JudgeError: not a pairwise run.
    """
    run = store.judge_run(run_id)
    if run["mode"] != "pairwise":
        raise JudgeError(f"run {run_id} is {run['mode']}: it has scores, not win rates (score_table)")
    games: dict[tuple, dict[str, str | None]] = {}
    for j in store.judgments(run_id):
        key = (j["question_id"], int(j["turn"]), j["model_a"], j["model_b"])
        games.setdefault(key, {})[j["order"]] = None if j["error"] else j["winner"]
    counts: dict[str, list[int]] = {}
    outcomes, errors = [], 0
    for (qid, turn, a, b), g in games.items():
        if "AB" not in g or "BA" not in g:
            continue  # the other order is not judged yet
        w = combine_swapped(g["AB"], g["BA"])
        if w is None:
            errors += 1
            continue
        outcomes.append((qid, turn, a, b, w))
        for m in (a, b):
            counts.setdefault(m, [0, 0, 0])
        if w == "tie":
            counts[a][2] += 1
            counts[b][2] += 1
        else:
            win, lose = (a, b) if w == "model_a" else (b, a)
            counts[win][0] += 1
            counts[lose][1] += 1
    rates = []
    for m, (w, l, t) in counts.items():
        if run["baseline"] and m == run["baseline"]:
            continue
        n = w + l + t
        rates.append(WinRate(m, w, l, t, w / n, l / n, (w + 0.5 * t) / n))
    rates.sort(key=lambda r: (-r.win_rate_adjusted, r.model))
    return PairwiseTable(run_id, run["judge"], list(run["models"]), run["baseline"], rates, outcomes, errors)


# ---------------------------------------------------------------------------------------------- export


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


def _qlabel(qid: str) -> str:
    return f"Q{qid}" if str(qid).isdigit() else str(qid)


def table_rows(table: ScoreTable) -> tuple[list[str], list[list[str]]]:
    """``(headers, rows)`` of the score table as text: ``Question`` then one column per model; one row per
    question (``Q<id>``; a cell of only unparsable judgments reads ``error``), last row ``Average``."""
    headers = ["Question", *table.models]
    rows = []
    for r in table.rows:
        cells = [_qlabel(r.question_id)]
        for m in table.models:
            s = r.scores[m]
            cells.append(_fmt(s) if s is not None else ("error" if r.errors.get(m) else ""))
        rows.append(cells)
    rows.append(["Average", *[_fmt(None if table.average[m] is None else round(table.average[m], 2))
                              for m in table.models]])
    return headers, rows


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(table: ScoreTable) -> str:
    """The score table in the WizardVicunaLM README layout: a Markdown table with a row per question, a column
    per model, last row ``Average``."""
    headers, rows = table_rows(table)
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(table: ScoreTable) -> str:
    """The score table as CSV: ``question_id, category, difficulty`` then one column per model (empty: no score),
    last row ``Average``."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["question_id", "category", "difficulty", *table.models])
    for r in table.rows:
        w.writerow([r.question_id, r.category, "" if r.difficulty is None else r.difficulty,
                    *[_fmt(r.scores[m]) for m in table.models]])
    w.writerow(["Average", "", "", *[_fmt(None if table.average[m] is None else round(table.average[m], 4))
                                     for m in table.models]])
    return buf.getvalue()


def export_table(store, run_id: int, path: str | Path) -> Path:
    """Write a run's score table to ``path``: Markdown for ``.md``, CSV for ``.csv``.

    Raises:
        ValueError: another ending. JudgeError: a pairwise run. StoreError: an unknown run.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".md", ".csv"):
        raise ValueError(f"{path.name}: export to a .md or .csv file")
    t = score_table(store, run_id)
    text = to_markdown(t) if suffix == ".md" else to_csv(t)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
