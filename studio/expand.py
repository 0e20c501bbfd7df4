"""The WizardVicuna expansion: a teacher turns each seed instruction into a multi-round conversation.

Method (WizardVicunaLM, melodysdreamj/WizardVicunaLM README): each WizardLM instruction is expanded by a
teacher (ChatGPT there) into a continuous conversation that explores several areas of the same topic.
Here:

- round 1: the teacher answers the instruction;
- round k > 1: the teacher, prompted as the curious user, writes a follow-up question that explores another
  area of the same topic, then (prompted as the assistant) answers it.

The prompts are plain ``str.format`` templates (``ExpansionPrompts``) that a person can read and edit; their
version (a short hash of their text) is stored with every conversation. A local teacher expands seeds together in
lockstep batches (one padded ``generate`` per step); an endpoint teacher expands each seed on its own, as many at
once as its entry's ``concurrency``. Each finished conversation is stored atomically with its job item, so a
stopped or killed job resumes without duplicates or losses (see ``studio.jobs``).
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
        batch_size: seeds expanded together by a local teacher (one padded batch). An endpoint teacher expands
            each seed on its own, up to its entry's ``ModelSpec.concurrency`` at once.
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


def expand_batch(registry: Registry, cfg: ExpandConfig, seeds: list[dict], should_stop=lambda: False,
                 report=lambda msg: None) -> list[dict | Exception] | None:
    """Expand several seeds together, round by round.

    Args:
        seeds: seed dicts (``instruction``, ``input``).
        should_stop: checked between rounds; when it returns True the batch is abandoned (returns None).
        report: receives a status line before each generation step.

    Returns:
        One entry per seed: a conversation dict ready for ``Store.complete_item`` (``messages``, ``teacher``,
        ``prompt_version``, ``gen_params``, ``n_prompt_tokens``, ``n_completion_tokens``), or the Exception
        that made that seed fail (e.g. an empty follow-up question). None if stopped. ``gen_params["usage"]`` holds
        the conversation's ``prompt_tokens`` and ``completion_tokens`` (every request made for it, follow-up
        questions and their retries included, as the teacher reported them), the teacher's prices per 1M tokens
        then (``price_in_per_m``, ``price_out_per_m``) and the estimated ``cost`` (``ModelSpec.cost``).

    Raises:
        RegistryError: the teacher failed for the whole batch (unreachable, will not load).
    """
    convs = [[{"role": "user", "content": seed_prompt(s)}] for s in seeds]
    alive = list(range(len(seeds)))
    failed: dict[int, Exception] = {}
    ptoks = [0] * len(seeds)
    ctoks = [0] * len(seeds)
    def params_for(rnd: int, kind: str, retry: int = 0) -> GenParams:
        # a fixed seed would make every round sample alike; derive one per round, step and retry
        base = cfg.answer.as_dict()
        if kind == "question":
            base["max_new_tokens"] = int(cfg.question_max_new_tokens)
        if base.get("seed") is not None:
            base["seed"] = int(base["seed"]) + 1000 * rnd + (1 if kind == "question" else 0) + 17 * retry
        if retry:
            base["temperature"] = max(float(base["temperature"]), 0.9)
        return GenParams(**base)

    for rnd in range(1, int(cfg.rounds) + 1):
        if rnd > 1:
            if should_stop():
                return None
            report(f"round {rnd}/{cfg.rounds}: {len(alive)} follow-up questions")
            todo = list(alive)
            for attempt in range(2):  # one retry for questions that are empty or repeat the conversation
                if not todo:
                    break
                prompts = [[{"role": "user", "content": cfg.prompts.followup.format(
                    topic=seed_prompt(seeds[i]), transcript=transcript(convs[i], cfg.prompts.max_transcript_chars))}]
                    for i in todo]
                outs = registry.chat_batch(cfg.teacher, prompts, params_for(rnd, "question", attempt),
                                           batch_size=cfg.batch_size, concurrency=cfg.batch_size)
                again = []
                for i, out in zip(todo, outs):
                    ptoks[i] += out.prompt_tokens
                    ctoks[i] += out.completion_tokens
                    q = clean_question(out.text)
                    seen = {_norm(m["content"]) for m in convs[i]}
                    if q and _norm(q) not in seen:
                        convs[i].append({"role": "user", "content": q})
                    elif attempt == 0:
                        again.append(i)
                    else:
                        why = "an empty follow-up question" if not q else "a follow-up that repeats the conversation"
                        failed[i] = ValueError(f"round {rnd}: the teacher wrote {why}")
                        alive.remove(i)
                todo = again
        if should_stop():
            return None
        report(f"round {rnd}/{cfg.rounds}: {len(alive)} answers")
        outs = registry.chat_batch(cfg.teacher, [_with_system(cfg, convs[i]) for i in alive],
                                   params_for(rnd, "answer"), batch_size=cfg.batch_size, concurrency=cfg.batch_size)
        for i, out in zip(list(alive), outs):
            ptoks[i] += out.prompt_tokens
            ctoks[i] += out.completion_tokens
            if not out.text.strip():
                failed[i] = ValueError(f"round {rnd}: the teacher wrote an empty answer")
                alive.remove(i)
                continue
            convs[i].append({"role": "assistant", "content": out.text.strip()})
    spec = registry.get(cfg.teacher)
    results: list[dict | Exception] = []
    for i in range(len(seeds)):
        if i in failed:
            results.append(failed[i])
            continue
        results.append({
            "messages": convs[i], "teacher": cfg.teacher, "prompt_version": cfg.prompts.version,
            "gen_params": {"rounds": int(cfg.rounds), "answer": cfg.answer.as_dict(),
                           "question_max_new_tokens": int(cfg.question_max_new_tokens),
                           "system": cfg.prompts.system,
                           "usage": {"prompt_tokens": ptoks[i], "completion_tokens": ctoks[i],
                                     "price_in_per_m": float(spec.price_in_per_m),
                                     "price_out_per_m": float(spec.price_out_per_m),
                                     "cost": round(spec.cost(ptoks[i], ctoks[i]), 10)}},
            "n_prompt_tokens": ptoks[i], "n_completion_tokens": ctoks[i],
        })
    return results


def run_expand_job(ctx, registry: Registry) -> None:
    """Job runner for ``expand`` jobs (see ``studio.jobs``): expands the job's pending seeds and stores each
    conversation atomically with its job item, as soon as it is finished.

    A local teacher expands the seeds in lockstep batches of ``cfg.batch_size`` (one padded ``generate`` per step).
    An endpoint teacher expands each seed on its own (``_run_endpoint_seeds``), up to the entry's
    ``ModelSpec.concurrency`` seeds at once, so a slow answer holds up only its own conversation. An endpoint that
    fails after its retries (unreachable, rate limited, a server error, a hang, a dropped connection) pauses the
    job: the runner returns ``Outcome("paused", reason)``; every conversation finished before is stored, those in
    progress are dropped and their seeds stay pending, so a resume continues where it stopped, with nothing stored
    twice and nothing lost.

    Returns:
        None (done or stopped), or ``Outcome("paused", reason)``.

    Raises:
        RegistryError: a local teacher is unusable, or the teacher is not in the registry (the job is marked
            failed with this reason; items stay pending).
    """
    store = registry.store
    cfg = ExpandConfig.from_params(ctx.params)
    pending = store.pending_items(ctx.job_id)
    seeds = store.get_seeds(pending)
    if cfg.teacher not in registry.names():
        raise RegistryError(f"teacher '{cfg.teacher}' is not in the registry")
    if registry.get(cfg.teacher).kind == "endpoint":
        return _run_endpoint_seeds(ctx, registry, cfg, [s for s in pending if s in seeds], seeds)
    ctx.report(f"loading {cfg.teacher}")
    registry.load(cfg.teacher)
    total_left = len(pending)
    for start in range(0, len(pending), int(cfg.batch_size)):
        if ctx.should_stop():
            return
        ids = [s for s in pending[start:start + int(cfg.batch_size)] if s in seeds]
        batch = [seeds[s] for s in ids]
        prefix = f"seeds {start + 1}-{start + len(ids)} of {total_left}"
        results = expand_batch(registry, cfg, batch, ctx.should_stop, lambda m: ctx.report(f"{prefix}, {m}"))
        if results is None:
            return
        for sid, res in zip(ids, results):
            _store_result(store, ctx.job_id, sid, res, seeds[sid])


def _store_result(store, job_id: int, sid: int, res, seed: dict) -> None:
    if isinstance(res, Exception):
        store.fail_item(job_id, sid, str(res))
    else:
        store.complete_item(job_id, sid, res, source_id=seed["source_id"])


def _run_endpoint_seeds(ctx, registry: Registry, cfg: ExpandConfig, ids: list[int], seeds: dict):
    """Expand each seed on its own pipeline of rounds, ``ModelSpec.concurrency`` seeds at once (at most twice as
    many queued), storing each conversation when it is finished (from this thread: the store's writes stay in
    one place). The first RegistryError stops the others at their next round and pauses the job."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from .jobs import Outcome

    store = registry.store
    spec = registry.get(cfg.teacher)
    lost: list[Exception] = []
    stop = lambda: bool(lost) or ctx.should_stop()  # noqa: E731
    todo = list(ids)
    done = 0
    running: dict = {}
    with ThreadPoolExecutor(max_workers=int(spec.concurrency), thread_name_prefix="expand") as pool:
        while todo or running:
            while todo and len(running) < 2 * int(spec.concurrency) and not stop():
                sid = todo.pop(0)
                running[pool.submit(expand_batch, registry, cfg, [seeds[sid]], stop)] = sid
            if not running:
                break
            ctx.report(f"{done} of {len(ids)} seeds expanded, {min(len(running), int(spec.concurrency))} in "
                       f"progress on {cfg.teacher}")
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                sid = running.pop(fut)
                try:
                    results = fut.result()
                except Exception as e:  # noqa: BLE001 - the others stop at their next round; raised below
                    lost.append(e)
                    continue
                if results is not None:
                    _store_result(store, ctx.job_id, sid, results[0], seeds[sid])
                    done += 1
    if lost and not isinstance(lost[0], RegistryError):
        raise lost[0]  # a bug, not the endpoint: the job fails with its traceback
    if lost:
        left = len(store.pending_items(ctx.job_id))
        return Outcome("paused", f"{lost[0]} — {left} seeds left; resume when the endpoint answers again")
    return None


def start_expansion(jobs, store, cfg: ExpandConfig, seed_ids: list[int]) -> int:
    """Validate a configuration and queue an expansion job for ``seed_ids``. Returns the job id.

    Raises:
        ValueError: bad settings or no seeds.
    """
    cfg.validate()
    return jobs.submit(JOB_KIND, cfg.to_params(), seed_ids)
