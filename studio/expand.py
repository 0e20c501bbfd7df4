"""The WizardVicuna expansion: a teacher turns each seed instruction into a multi-round conversation.

Method (WizardVicunaLM, melodysdreamj/WizardVicunaLM README): each WizardLM instruction is expanded by a
teacher (ChatGPT there) into a continuous conversation that explores several areas of the same topic.
Here:

- round 1: the teacher answers the instruction;
- round k > 1: the teacher, prompted as the curious user, writes a follow-up question that explores another
  area of the same topic, then (prompted as the assistant) answers it.

The prompts are plain ``str.format`` templates (``ExpansionPrompts``) that a person can read and edit; their
version (a short hash of their text) is stored with every conversation. Seeds are expanded as a pipeline: each
seed's conversation advances as soon as its previous step is done, as many seeds at once as the teacher takes
(an endpoint's ``concurrency``; the job's setting for a local model, whose engine batches concurrent requests).
Each finished step is kept and each finished conversation is stored atomically with its job item, so a stopped
or killed job resumes from each seed's last finished step, without duplicates or losses (see ``studio.jobs``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field

from .registry import GenParams, Registry, RegistryError

JOB_KIND = "expand"


@dataclass
class ExpansionPrompts:
    """The editable prompt templates.

    Attributes:
        system: system message the teacher answers under (empty for none).
        followup: the curious-user prompt; fields ``{topic}`` (the seed instruction) and ``{transcript}``
            (the conversation so far as ``User: ...`` / ``Assistant: ...`` lines). It must contain
            ``{transcript}``.
        max_transcript_chars: each message is cut to this many characters inside the transcript, so the
            follow-up prompt fits a small teacher's context.
    """

    system: str = ("You are a helpful, knowledgeable assistant. Give detailed, accurate and well-organised "
                   "answers.")
    followup: str = (
        "Read this conversation about: {topic}\n\n{transcript}\n\n"
        "Now write the next message of the curious user: one new question about a related but different "
        "aspect of the same topic, building on what was said. Output only the question, ending with a "
        "question mark."
    )
    max_transcript_chars: int = 800

    def validate(self) -> None:
        """Raise ValueError if the follow-up template lacks ``{transcript}`` or has unknown fields."""
        if "{transcript}" not in self.followup:
            raise ValueError("the follow-up prompt must contain {transcript}")
        try:
            self.followup.format(topic="t", transcript="x")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"the follow-up prompt has a bad field: {e} (allowed: {{topic}}, {{transcript}}; "
                             "write literal braces as {{ and }})") from e

    @property
    def version(self) -> str:
        """``wv-`` + the first 10 hex digits of the sha256 of the templates (stored with conversations)."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return "wv-" + hashlib.sha256(blob).hexdigest()[:10]


@dataclass
class ExpandConfig:
    """One expansion job's settings (stored as the job's params, so a resume uses the same ones).

    Attributes:
        teacher: registry entry name.
        rounds: user/assistant rounds per conversation (the WizardVicuna data has several; default 3).
        answer: sampling for the teacher's answers.
        question_max_new_tokens: cap on a follow-up question's length, tokens.
        batch_size: seeds in flight at once with a local teacher (each advancing on its own; the model's engine
            batches their requests). An endpoint teacher takes up to its entry's ``ModelSpec.concurrency`` at once.
        source_id: the source the seeds came from (stored on the conversations).
        prompts: the templates.
    """

    teacher: str
    rounds: int = 3
    answer: GenParams = field(default_factory=GenParams)
    question_max_new_tokens: int = 96
    batch_size: int = 5
    source_id: int | None = None
    prompts: ExpansionPrompts = field(default_factory=ExpansionPrompts)

    def to_params(self) -> dict:
        """JSON-serialisable dict (the job's params)."""
        d = asdict(self)
        d["prompt_version"] = self.prompts.version
        return d

    @classmethod
    def from_params(cls, d: dict) -> "ExpandConfig":
        """Inverse of ``to_params``."""
        d = {k: v for k, v in d.items() if k != "prompt_version"}
        d["answer"] = GenParams(**d.get("answer", {}))
        d["prompts"] = ExpansionPrompts(**d.get("prompts", {}))
        return cls(**d)

    def validate(self) -> None:
        """Raise ValueError for out-of-range settings."""
        if not 1 <= int(self.rounds) <= 20:
            raise ValueError("rounds must be between 1 and 20")
        if not 1 <= int(self.batch_size) <= 64:
            raise ValueError("batch size must be between 1 and 64")
        if int(self.answer.max_new_tokens) < 1:
            raise ValueError("max new tokens must be at least 1")
        self.prompts.validate()


def seed_prompt(seed: dict) -> str:
    """The first user message of a seed: its instruction, plus its input on a new paragraph if any."""
    return seed["instruction"].strip() + (f"\n\n{seed['input'].strip()}" if seed.get("input", "").strip() else "")


def transcript(messages: list[dict], max_chars: int) -> str:
    """``User: ...`` / ``Assistant: ...`` lines of a conversation, each message cut to ``max_chars``."""
    lines = []
    for m in messages:
        if m["role"] == "system":
            continue
        text = m["content"].strip()
        if len(text) > max_chars:
            text = text[:max_chars].rstrip() + " …"
        lines.append(f"{'User' if m['role'] == 'user' else 'Assistant'}: {text}")
    return "\n".join(lines)


_PREFIX = re.compile(r"^\s*(?:\*\*)?(?:one\s+)?(?:new\s+)?(?:user|question|follow[- ]?up(?: question)?|next message)\s*(?:\*\*)?\s*:"
                     r"\s*(?:\*\*)?\s*", re.IGNORECASE)


def clean_question(text: str) -> str:
    """Tidy a generated follow-up question: drop a ``User:``/``Question:`` prefix, wrapping quotes, anything
    after a line that starts an assistant turn, and anything after the first paragraph's last ``?``."""
    text = text.strip()
    text = re.split(r"\n\s*(?:Assistant|AI|ASSISTANT)\s*:", text)[0]
    text = _PREFIX.sub("", text).strip()
    first = text.split("\n\n")[0]
    if "?" in first:  # keep the question, drop trailing chatter
        text = first[: first.rindex("?") + 1]
    return text.strip().strip('"“”').strip()


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _with_system(cfg: ExpandConfig, messages: list[dict]) -> list[dict]:
    return ([{"role": "system", "content": cfg.prompts.system}] if cfg.prompts.system.strip() else []) + messages


def _params_for(cfg: ExpandConfig, rnd: int, kind: str, retry: int = 0) -> GenParams:
    """Sampling for one request: the answer settings, a follow-up question's own cap, and (with a fixed seed) a
    seed derived per round, step and retry, so rounds don't all sample alike."""
    base = cfg.answer.as_dict()
    if kind == "question":
        base["max_new_tokens"] = int(cfg.question_max_new_tokens)
    if base.get("seed") is not None:
        base["seed"] = int(base["seed"]) + 1000 * rnd + (1 if kind == "question" else 0) + 17 * retry
    if retry:
        base["temperature"] = max(float(base["temperature"]), 0.9)
    return GenParams(**base)


def new_state(seed: dict) -> dict:
    """A seed's expansion before its first step: ``{"messages": [first user message], "prompt_tokens": 0,
    "completion_tokens": 0, "finish_reasons": []}`` (``finish_reasons``: one per answer, ``stop``/``length``)."""
    return {"messages": [{"role": "user", "content": seed_prompt(seed)}], "prompt_tokens": 0,
            "completion_tokens": 0, "finish_reasons": []}


def rounds_done(state: dict) -> int:
    """Rounds of an expansion state that are answered (its assistant messages)."""
    return sum(m["role"] == "assistant" for m in state["messages"])


def expand_seed(registry: Registry, cfg: ExpandConfig, seed: dict, state: dict | None = None,
                save=lambda steps, state: None, should_stop=lambda: False) -> dict | Exception | None:
    """Expand one seed, one request at a time, from its first step or from a kept ``state``.

    Steps: round 1's answer; in each later round, a follow-up question (retried once when it is empty or repeats
    the conversation) and its answer. After each finished request except the last, ``save(rounds_done, state)``
    is called (``state`` as ``new_state``: the messages so far, token counts, finish reasons), so a stop or a
    lost teacher keeps every finished step and a resume goes on from there.

    Args:
        seed: a seed dict (``instruction``, ``input``).
        state: a state saved by an earlier run, or None.
        should_stop: checked before each request and, for a local teacher, at every decoding step (the engine
            ends the request within one step); True ends the seed unfinished (returns None), its finished steps kept.

    Returns:
        A conversation dict for ``Store.complete_item`` (``messages``, ``teacher``, ``prompt_version``,
        ``gen_params``, ``n_prompt_tokens``, ``n_completion_tokens``), the ValueError that made the seed fail (an
        empty answer, an empty or repeated follow-up), or None if stopped. ``gen_params["usage"]`` holds the
        conversation's ``prompt_tokens`` and ``completion_tokens`` (every request made for it, follow-up
        questions and their retries included, as the teacher reported them), the teacher's prices per 1M tokens
        then (``price_in_per_m``, ``price_out_per_m``) and the estimated ``cost`` (``ModelSpec.cost``);
        ``gen_params["finish_reasons"]`` one entry per answer: ``length`` marks an answer cut at
        ``max_new_tokens`` (the Data tab's "cut at the token limit" filter).

    Raises:
        RegistryError: the teacher failed (unreachable after its retries, will not load).
    """
    st = json.loads(json.dumps(state)) if state else new_state(seed)
    msgs = st["messages"]
    rounds = int(cfg.rounds)

    def count(out) -> None:
        st["prompt_tokens"] += int(out.prompt_tokens or 0)
        st["completion_tokens"] += int(out.completion_tokens or 0)

    while rounds_done(st) < rounds or msgs[-1]["role"] == "user":
        rnd = rounds_done(st) + 1
        if msgs[-1]["role"] == "user":  # the round's answer
            if should_stop():
                return None
            out = registry.chat(cfg.teacher, _with_system(cfg, msgs), _params_for(cfg, rnd, "answer"),
                                should_stop=should_stop)
            if out.finish_reason == "cancelled":  # stopped mid-answer (local engine): the step is not kept
                return None
            count(out)
            if not out.text.strip():
                return ValueError(f"round {rnd}: the teacher wrote an empty answer")
            msgs.append({"role": "assistant", "content": out.text.strip()})
            st["finish_reasons"].append(out.finish_reason or "stop")
            if rnd < rounds:
                save(rnd, st)
            continue
        for attempt in range(2):  # one retry for a question that is empty or repeats the conversation
            if should_stop():
                return None
            prompt = cfg.prompts.followup.format(topic=seed_prompt(seed),
                                                 transcript=transcript(msgs, cfg.prompts.max_transcript_chars))
            out = registry.chat(cfg.teacher, [{"role": "user", "content": prompt}],
                                _params_for(cfg, rnd, "question", attempt), should_stop=should_stop)
            if out.finish_reason == "cancelled":
                return None
            count(out)
            q = clean_question(out.text)
            if q and _norm(q) not in {_norm(m["content"]) for m in msgs}:
                msgs.append({"role": "user", "content": q})
                save(rnd - 1, st)
                break
            if attempt == 1:
                why = "an empty follow-up question" if not q else "a follow-up that repeats the conversation"
                return ValueError(f"round {rnd}: the teacher wrote {why}")
    spec = registry.get(cfg.teacher)
    p, c = st["prompt_tokens"], st["completion_tokens"]
    return {
        "messages": msgs, "teacher": cfg.teacher, "prompt_version": cfg.prompts.version,
        "gen_params": {"rounds": rounds, "answer": cfg.answer.as_dict(),
                       "question_max_new_tokens": int(cfg.question_max_new_tokens),
                       "system": cfg.prompts.system,
                       "finish_reasons": list(st["finish_reasons"]),
                       "usage": {"prompt_tokens": p, "completion_tokens": c,
                                 "price_in_per_m": float(getattr(spec, "price_in_per_m", 0) or 0),
                                 "price_out_per_m": float(getattr(spec, "price_out_per_m", 0) or 0),
                                 "cost": round(spec.cost(p, c), 10) if hasattr(spec, "cost") else 0.0}},
        "n_prompt_tokens": p, "n_completion_tokens": c,
    }


def in_flight(registry: Registry, name: str, local: int) -> int:
    """How many seeds a job advances at once: an endpoint entry's ``concurrency`` (its requests in flight), or
    ``local`` (the job's setting) for a local model, whose engine batches the concurrent requests."""
    spec = registry.get(name)
    if getattr(spec, "kind", "") == "endpoint" and getattr(spec, "concurrency", None):
        return int(spec.concurrency)
    return max(1, int(local))


def run_expand_job(ctx, registry: Registry) -> None:
    """Job runner for ``expand`` jobs (see ``studio.jobs``): expands the job's pending seeds as a pipeline
    (``studio.jobs.run_pipelined``): ``in_flight`` seeds at once (an endpoint's ``concurrency``, or
    ``cfg.batch_size`` for a local teacher), each advancing round by round on its own with ``Registry.chat``, so
    a slow seed holds only itself. Each finished step is kept (``Store.save_item_progress``) and each finished
    conversation is stored atomically with its job item as soon as it is finished.

    Stop: the requests in flight finish and are kept; a resume goes on from each seed's last finished step. An
    endpoint that fails after its retries (unreachable, rate limited, a server error, a hang, a dropped
    connection) pauses the job: the runner returns ``Outcome("paused", reason)``; the other seeds stop before
    their next step, keeping their finished steps, so a resume continues where it stopped, with nothing stored
    twice and nothing lost. The same holds when the process is killed: the job is ``interrupted``, and its
    resume starts each seed from its kept steps.

    Returns:
        None (done or stopped), or ``Outcome("paused", reason)``.

    Raises:
        RegistryError: a local teacher is unusable, or the teacher is not in the registry (the job is marked
            failed with this reason; items stay pending).
    """
    from .jobs import Outcome, run_pipelined

    store = registry.store
    cfg = ExpandConfig.from_params(ctx.params)
    pending = store.pending_items(ctx.job_id)
    seeds = store.get_seeds(pending)
    if cfg.teacher not in registry.names():
        raise RegistryError(f"teacher '{cfg.teacher}' is not in the registry")
    endpoint = registry.get(cfg.teacher).kind == "endpoint"
    if not endpoint:
        ctx.report(f"loading {cfg.teacher}")
        registry.load(cfg.teacher)
    for sid in pending:
        if sid not in seeds:
            store.fail_item(ctx.job_id, sid, f"seed {sid} no longer exists")
    ids = [s for s in pending if s in seeds]
    n = in_flight(registry, cfg.teacher, cfg.batch_size)

    def work(item):
        return expand_seed(registry, cfg, seeds[item.seed_id], item.kept, item.save, item.should_stop)

    lost = run_pipelined(
        ctx, store, ids, work, lambda sid, res: _store_result(store, ctx.job_id, sid, res, seeds[sid]),
        in_flight=n, lost_on=(RegistryError,) if endpoint else (),
        describe=lambda done, running, total: (f"{done} of {total} seeds ended, {running} in progress on "
                                               f"{cfg.teacher}"))
    if lost is not None:
        left = len(store.pending_items(ctx.job_id))
        return Outcome("paused", f"{lost} — {left} seeds left; resume when the endpoint answers again")
    return None


def _store_result(store, job_id: int, sid: int, res, seed: dict) -> None:
    if isinstance(res, Exception):
        store.fail_item(job_id, sid, str(res))
    else:
        store.complete_item(job_id, sid, res, source_id=seed["source_id"])


def step_figures(store, job: dict) -> dict:
    """An expansion job's progress in steps (a seed's round is one step), for its bar to move during round 1:
    ``{"steps_done": (items done or failed) x rounds + rounds kept of unfinished items, "steps_total": items x
    rounds}``."""
    rounds = int((job.get("params") or {}).get("rounds") or 1)
    ended = int(job.get("n_done") or 0) + int(job.get("n_failed") or 0)
    return {"steps_done": ended * rounds + store.job_steps_kept(job["id"]),
            "steps_total": int(job.get("total") or 0) * rounds}


def start_expansion(jobs, store, cfg: ExpandConfig, seed_ids: list[int]) -> int:
    """Validate a configuration and queue an expansion job for ``seed_ids``. Returns the job id.

    Raises:
        ValueError: bad settings or no seeds.
    """
    cfg.validate()
    return jobs.submit(JOB_KIND, cfg.to_params(), seed_ids)
