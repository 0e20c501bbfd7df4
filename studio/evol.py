"""Evol-Instruct: an evolver model rewrites seed instructions into harder or rarer ones (WizardLM).

Method (Xu et al. 2023, "WizardLM: Empowering Large Language Models to Follow Complex Instructions";
nlpxucan/WizardLM ``Evol_Instruct/depth.py`` and ``breadth.py``): each seed instruction is given to an LLM
with one of these prompts:

- in depth (the prompt becomes more complex, adding only 10 to 20 words): *add constraints* (one more
  constraint or requirement), *deepen* (more depth and breadth of inquiry), *concretize* (general concepts
  replaced by more specific ones), *increase reasoning steps* (ask explicitly for multi-step reasoning);
- in breadth: a brand-new instruction of the same domain, rarer, of similar length and complexity.

The evolved instruction is then answered by the same model, and the pair is eliminated (WizardLM's
"elimination evolving") when the evolved instruction brings no information gain, copies words of the
evolving prompt ("#Rewritten Prompt#", "given prompt"), is too short, or only punctuation and stop words,
or when the response is a short apology ("sorry", under 80 words) or only punctuation and stop words. See
``eliminate``. WizardLM put failed evolutions back in the pool to try again in the next epoch; here they
stay as failed job items with their reason, which a resume retries.

Accepted evolutions become new seeds linked to their parent (``meta``: ``parent_seed_id``, ``operation``,
``evol_prompt_version``, ``evolver``, ``generation`` ...), in a source ``evolved from <file>`` (or the
parent's own source), so they can be expanded into conversations like any seed. With ``generations > 1``
each accepted seed is queued in the same job to be evolved again, as WizardLM's successive epochs do.

The prompts are our own wording of WizardLM's templates, editable (``EvolPrompts``) and versioned by a hash
of their text, stored with every evolved seed. The job runner mirrors ``studio.expand``: seeds are evolved
as a pipeline (each advancing on its own), each finished step is kept and each result is stored atomically
with its job item, so a stopped or killed job resumes from each seed's last finished step without duplicates.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, field

from .expand import seed_prompt
from .formats import SeedRecord
from .registry import GenParams, Registry, RegistryError

JOB_KIND = "evol"

OPERATIONS: dict[str, str] = {
    "add_constraints": "In depth: add constraints",
    "deepen": "In depth: deepen",
    "concretize": "In depth: concretize",
    "increase_reasoning": "In depth: increase reasoning steps",
    "breadth": "In breadth: a new, rarer instruction of the same domain",
}
"""Operation name -> label. The four in-depth ones use ``EvolPrompts.depth``; ``breadth`` uses
``EvolPrompts.breadth``."""

DEPTH_OPERATIONS = ("add_constraints", "deepen", "concretize", "increase_reasoning")

TARGET_SOURCES = ("evolved", "parent")
"""Where evolved seeds go: a source ``evolved from <parent source name>`` (one per parent source), or the
parent's own source."""

EVOLVED_FORMAT = "evolved"
"""``sources.format`` of the ``evolved from ...`` sources."""


@dataclass
class EvolPrompts:
    """The editable Evol-Instruct templates (``str.format``; write literal braces as ``{{`` and ``}}``).

    Attributes:
        depth: the in-depth rewriter prompt; fields ``{method}`` (one of the four method sentences below)
            and ``{instruction}``.
        add_constraints, deepen, concretize, increase_reasoning: the method sentence of each in-depth
            operation.
        breadth: the in-breadth creator prompt; field ``{instruction}``.
        equality: WizardLM's "are these two instructions equal" check (used when ``EvolConfig.equality_check``
            is on); fields ``{first}`` and ``{second}``.
        response_system: system message for answering evolved instructions (empty for none).
    """

    depth: str = (
        "I want you to act as a Prompt Rewriter.\n"
        "Rewrite the given prompt into a more complex version, one that well-known AI systems such as ChatGPT "
        "and GPT-4 would find a bit harder to handle. The rewritten prompt must stay reasonable, and people "
        "must be able to understand and answer it.\n"
        "Keep every non-text part of #The Given Prompt#, such as tables and code, and keep its input if it has "
        "one.\n"
        "Make the prompt more complex with this method:\n{method}\n"
        "Do not make #Rewritten Prompt# verbose: it may add only 10 to 20 words to #The Given Prompt#.\n"
        "The words '#The Given Prompt#', '#Rewritten Prompt#', 'given prompt' and 'rewritten prompt' must "
        "not appear in #Rewritten Prompt#.\n\n"
        "#The Given Prompt#:\n{instruction}\n\n"
        "#Rewritten Prompt#:\n"
    )
    add_constraints: str = "Add one more constraint or requirement to #The Given Prompt#."
    deepen: str = ("If #The Given Prompt# asks about certain issues, increase the depth and breadth of the "
                   "inquiry.")
    concretize: str = "Replace general concepts in #The Given Prompt# with more specific concepts."
    increase_reasoning: str = ("If #The Given Prompt# can be solved with only a few simple steps of thinking, "
                               "rewrite it to explicitly ask for reasoning in several steps.")
    breadth: str = (
        "I want you to act as a Prompt Creator.\n"
        "Take inspiration from #Given Prompt# to create a brand-new prompt. The new prompt must belong to the "
        "same domain as #Given Prompt# but be about something rarer.\n"
        "The length and complexity of #Created Prompt# should be similar to those of #Given Prompt#.\n"
        "#Created Prompt# must be reasonable, and people must be able to understand and answer it.\n"
        "The words '#Given Prompt#', '#Created Prompt#', 'given prompt' and 'created prompt' must not appear "
        "in #Created Prompt#.\n\n"
        "#Given Prompt#:\n{instruction}\n\n"
        "#Created Prompt#:\n"
    )
    equality: str = (
        "Here are two instructions for an AI assistant. Are they equal to each other, that is:\n"
        "1. they have the same constraints and requirements, and\n"
        "2. they have the same depth and breadth of inquiry?\n\n"
        "The first instruction: {first}\n\n"
        "The second instruction: {second}\n\n"
        "Your judgement (answer only Equal or Not Equal, without giving a reason):"
    )
    response_system: str = ""

    def validate(self) -> None:
        """Raise ValueError naming the template with a missing or unknown field."""
        checks = [("depth", self.depth, ("method", "instruction")), ("breadth", self.breadth, ("instruction",)),
                  ("equality", self.equality, ("first", "second"))]
        checks += [(op, getattr(self, op), ()) for op in DEPTH_OPERATIONS]
        for name, text, fields in checks:
            if not text.strip():
                raise ValueError(f"the {name} prompt is empty")
            for f in fields:
                if "{" + f + "}" not in text:
                    raise ValueError(f"the {name} prompt must contain {{{f}}}")
            try:
                text.format(**{f: "x" for f in fields})
            except (KeyError, IndexError, ValueError) as e:
                allowed = ", ".join("{" + f + "}" for f in fields) or "none"
                raise ValueError(f"the {name} prompt has a bad field: {e} (allowed: {allowed}; write literal "
                                 "braces as {{ and }})") from e

    def render(self, operation: str, instruction: str) -> str:
        """The evolver's prompt for ``operation`` applied to ``instruction``.

        Raises:
            ValueError: unknown operation.
        """
        if operation == "breadth":
            return self.breadth.format(instruction=instruction)
        if operation in DEPTH_OPERATIONS:
            return self.depth.format(method=getattr(self, operation), instruction=instruction)
        raise ValueError(f"unknown operation '{operation}' (known: {', '.join(OPERATIONS)})")

    @property
    def version(self) -> str:
        """``evol-`` + the first 10 hex digits of the sha256 of the templates (stored with evolved seeds)."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return "evol-" + hashlib.sha256(blob).hexdigest()[:10]


@dataclass
class EvolConfig:
    """One evolution job's settings (stored as the job's params, so a resume uses the same ones).

    Attributes:
        evolver: registry entry name of the model that rewrites (and answers) instructions.
        operations: the operations used, names from ``OPERATIONS`` (default: all five).
        choice: how each seed's operation is picked: ``round_robin`` (in job order) or ``random`` (seeded by
            ``random_seed`` and the seed id, so a resume picks the same).
        random_seed: see ``choice``.
        generations: how many times a seed is evolved in a row (each accepted result is queued in the same
            job and evolved again), 1..10.
        sampling: the evolver's sampling for rewriting.
        respond: also generate a response to each evolved instruction (WizardLM does; it is stored as the
            new seed's ``output`` and checked by the elimination rules).
        response: sampling for responses.
        equality_check: also ask the evolver WizardLM's "are these two instructions equal?" question and
            eliminate the ones it calls equal (costs one short generation per evolution).
        min_words: evolved instructions with fewer words are eliminated as too short.
        min_new_words: evolved instructions adding fewer new content words than this are eliminated as
            bringing no information gain.
        batch_size: seeds in flight at once with a local evolver (an endpoint takes its entry's
            ``concurrency``).
        target_source: ``evolved`` or ``parent`` (see ``TARGET_SOURCES``).
        prompts: the templates.
    """

    evolver: str
    operations: list[str] = field(default_factory=lambda: list(OPERATIONS))
    choice: str = "round_robin"
    random_seed: int = 0
    generations: int = 1
    sampling: GenParams = field(default_factory=lambda: GenParams(max_new_tokens=256, temperature=0.7))
    respond: bool = True
    response: GenParams = field(default_factory=lambda: GenParams(max_new_tokens=512, temperature=0.7))
    equality_check: bool = False
    min_words: int = 3
    min_new_words: int = 2
    batch_size: int = 5
    target_source: str = "evolved"
    prompts: EvolPrompts = field(default_factory=EvolPrompts)

    def to_params(self) -> dict:
        """JSON-serialisable dict (the job's params)."""
        d = asdict(self)
        d["prompt_version"] = self.prompts.version
        return d

    @classmethod
    def from_params(cls, d: dict) -> "EvolConfig":
        """Inverse of ``to_params``."""
        d = {k: v for k, v in d.items() if k != "prompt_version"}
        d["sampling"] = GenParams(**d.get("sampling", {}))
        d["response"] = GenParams(**d.get("response", {}))
        d["prompts"] = EvolPrompts(**d.get("prompts", {}))
        return cls(**d)

    def validate(self) -> None:
        """Raise ValueError for out-of-range settings."""
        if not self.operations:
            raise ValueError("choose at least one operation")
        unknown = [op for op in self.operations if op not in OPERATIONS]
        if unknown:
            raise ValueError(f"unknown operation {', '.join(unknown)} (known: {', '.join(OPERATIONS)})")
        if self.choice not in ("round_robin", "random"):
            raise ValueError("choice must be round_robin or random")
        if not 1 <= int(self.generations) <= 10:
            raise ValueError("generations must be between 1 and 10")
        if not 1 <= int(self.batch_size) <= 64:
            raise ValueError("batch size must be between 1 and 64")
        if int(self.sampling.max_new_tokens) < 1 or int(self.response.max_new_tokens) < 1:
            raise ValueError("max new tokens must be at least 1")
        if int(self.min_words) < 0 or int(self.min_new_words) < 0:
            raise ValueError("min words must not be negative")
        if self.target_source not in TARGET_SOURCES:
            raise ValueError(f"target source must be one of {', '.join(TARGET_SOURCES)}")
        self.prompts.validate()


# ---------------------------------------------------------------------------------------------- elimination

STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her here
hers herself him himself his how i if in into is it its itself just let me more most my myself no nor not now
of off on once only or other our ours ourselves out over own same she should so some such than that the their
theirs them themselves then there these they this those through to too under until up very was we were what
when where which while who whom why will with would you your yours yourself yourselves ok okay yes please
""".split())
"""English stop words for the "only punctuation and stop words" rule and for counting new content words."""

_COPIED = re.compile(r"#\s*(?:the\s+)?(?:given|rewritten|created)\s+prompt\s*#"
                     r"|\b(?:given|rewritten|created)\s+prompt\b", re.IGNORECASE)
_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def only_stop_words(text: str) -> bool:
    """True when ``text`` has no word outside ``STOP_WORDS`` (so only punctuation, spaces and stop words)."""
    return all(w in STOP_WORDS for w in _words(text))


def eliminate(original: str, evolved: str, response: str | None = None, *, min_words: int = 3,
              min_new_words: int = 2, short_response_words: int = 80) -> str | None:
    """WizardLM's elimination rules ("Elimination Evolving", section 3.3 of the paper): why an evolution
    failed, or None when it is kept.

    An evolution fails when:

    1. the evolved instruction is empty, or copies words of the evolving prompt (``#Rewritten Prompt#``,
       ``given prompt``, ``rewritten prompt``, ``created prompt``);
    2. it has only punctuation and stop words, or fewer than ``min_words`` words (too short);
    3. it brings no information gain: the same text as the original once case and spacing are ignored, or
       fewer than ``min_new_words`` content words (not stop words) that the original lacks. (WizardLM asked
       ChatGPT whether the two were "Equal"; that check is ``EvolConfig.equality_check``.)
    4. with a ``response``: the response contains "sorry" and is shorter than ``short_response_words``
       words (the model could not answer it), or has only punctuation and stop words.

    Args:
        original: the instruction before evolution (with its input, as given to the evolver).
        evolved: the evolver's output.
        response: the evolver's answer to the evolved instruction, if generated.

    Returns:
        A reason for people, e.g. ``"copies words of the evolving prompt ('rewritten prompt')"``, or None.
    """
    text = evolved.strip()
    if not text:
        return "the evolver wrote nothing"
    copied = _COPIED.search(text)
    if copied:
        return f"copies words of the evolving prompt ('{' '.join(copied.group(0).split())}')"
    words = _words(text)
    if only_stop_words(text):
        return "only punctuation and stop words"
    if len(words) < min_words:
        return f"too short ({len(words)} word{'s' * (len(words) != 1)}, fewer than {min_words})"
    if " ".join(_words(original)) == " ".join(words):
        return "no information gain: the same as the original"
    known = set(_words(original))
    new = {w for w in words if w not in known and w not in STOP_WORDS}
    if len(new) < min_new_words:
        return (f"no information gain: adds {len(new)} new word{'s' * (len(new) != 1)} to the original "
                f"(fewer than {min_new_words})")
    if response is not None:
        r_words = _words(response)
        if only_stop_words(response):
            return "the response has only punctuation and stop words"
        if "sorry" in response.casefold() and len(r_words) < short_response_words:
            return f"the evolver could not answer it (a {len(r_words)}-word response that says sorry)"
    return None


def equality_verdict(text: str) -> bool | None:
    """Read the evolver's answer to the equality prompt: True for "Equal", False for "Not Equal", None when
    it said neither."""
    t = " ".join(_words(text))
    if re.search(r"\b(?:not|un)\s*equal\b|\bnot the same\b|\bdifferent\b", t):
        return False
    if re.search(r"\bequal\b|\bthe same\b", t):
        return True
    return None


def clean_evolved(text: str) -> str:
    """Tidy an evolved instruction: strip spaces and quotes wrapping the whole text. Anything else (a
    ``#Rewritten Prompt#:`` label copied from the prompt, say) is left for ``eliminate`` to judge."""
    text = text.strip()
    for q1, q2 in (('"', '"'), ("“", "”"), ("'", "'")):
        if len(text) > 1 and text.startswith(q1) and text.endswith(q2) and q1 not in text[1:-1]:
            text = text[1:-1].strip()
    return text


def choose_operation(cfg: EvolConfig, seed_id: int, position: int) -> str:
    """The operation for a seed: ``cfg.operations[position % n]`` for round-robin (``position`` = the item's
    place in the job), or a choice seeded by ``cfg.random_seed`` and the seed id for ``random``."""
    ops = list(cfg.operations)
    if cfg.choice == "random":
        return random.Random(f"{cfg.random_seed}:{seed_id}").choice(ops)
    return ops[position % len(ops)]


# ---------------------------------------------------------------------------------------------- evolution


def evolve_steps(cfg: EvolConfig) -> int:
    """Requests per seed when none is eliminated early: the rewrite, the equality question
    (``cfg.equality_check``), the response (``cfg.respond``)."""
    return 1 + bool(cfg.equality_check) + bool(cfg.respond)


def evolve_seed(registry: Registry, cfg: EvolConfig, seed: dict, operation: str, state: dict | None = None,
                save=lambda steps, state: None, should_stop=lambda: False) -> dict | Rejected | None:
    """Evolve one seed, one request at a time, from its first step or from a kept ``state``: rewrite it with
    ``operation``, ask the equality question (``cfg.equality_check``), answer it (``cfg.respond``), applying
    ``eliminate`` after the rewrite and after the response. After each finished request that is not the seed's
    last, ``save(steps_done, state)`` keeps it (``state``: ``evolved``, ``response``, ``response_finish``,
    ``steps``, ``prompt_tokens``, ``completion_tokens``), so a stop keeps finished steps and a resume goes on.

    Returns:
        An accepted evolution ``{"instruction", "output", "operation", "n_prompt_tokens", "n_completion_tokens",
        "response_finish"}`` (``response_finish``: ``length`` when the response was cut at its token limit), a
        ``Rejected`` (the reason, starting ``"eliminated (<operation>): "``, and the rejected text), or None when
        stopped before its last step.

    Raises:
        RegistryError: the evolver failed (unreachable after its retries, will not load).
        ValueError: an unknown operation.
    """
    original = seed_prompt(seed)
    st = dict(state) if state else {"evolved": None, "response": None, "response_finish": None, "steps": 0,
                                    "equal_checked": False, "prompt_tokens": 0, "completion_tokens": 0}
    kw = dict(min_words=int(cfg.min_words), min_new_words=int(cfg.min_new_words))
    total = evolve_steps(cfg)

    def ask(messages, params):
        if should_stop():
            return None
        out = registry.chat(cfg.evolver, messages, params, should_stop=should_stop)
        if out.finish_reason == "cancelled":  # stopped mid-answer (local engine): the step is not kept
            return None
        st["prompt_tokens"] += int(out.prompt_tokens or 0)
        st["completion_tokens"] += int(out.completion_tokens or 0)
        st["steps"] += 1
        return out

    def rejected(reason: str) -> Rejected:
        return Rejected(f"eliminated ({operation}): {reason}", st["evolved"] or "", st["response"])

    if st["evolved"] is None:
        out = ask([{"role": "user", "content": cfg.prompts.render(operation, original)}], cfg.sampling)
        if out is None:
            return None
        st["evolved"] = clean_evolved(out.text)
        why = eliminate(original, st["evolved"], **kw)
        if why is not None:
            return rejected(why)
        if st["steps"] < total:
            save(st["steps"], st)
    if cfg.equality_check and not st["equal_checked"]:
        params = GenParams(max_new_tokens=8, temperature=0, seed=cfg.sampling.seed)
        out = ask([{"role": "user", "content": cfg.prompts.equality.format(first=original, second=st["evolved"])}],
                  params)
        if out is None:
            return None
        st["equal_checked"] = True
        if equality_verdict(out.text) is True:
            return rejected("no information gain: the evolver judged it equal to the original")
        if st["steps"] < total:
            save(st["steps"], st)
    if cfg.respond and st["response"] is None:
        system = ([{"role": "system", "content": cfg.prompts.response_system}]
                  if cfg.prompts.response_system.strip() else [])
        out = ask(system + [{"role": "user", "content": st["evolved"]}], cfg.response)
        if out is None:
            return None
        st["response"] = out.text.strip()
        st["response_finish"] = out.finish_reason or "stop"
        why = eliminate(original, st["evolved"], st["response"], **kw)
        if why is not None:
            return rejected(why)
    return {"instruction": st["evolved"], "output": st["response"], "operation": operation,
            "n_prompt_tokens": st["prompt_tokens"], "n_completion_tokens": st["completion_tokens"],
            "response_finish": st["response_finish"]}


@dataclass
class Rejected:
    """An eliminated evolution: ``reason`` (``"eliminated (<operation>): <why>"``), the rejected instruction
    (``evolved``) and its response when one was generated."""

    reason: str
    evolved: str
    response: str | None = None

    @property
    def detail(self) -> str:
        """The rejected text for people: the instruction, then ``Response: ...`` when there is one."""
        return self.evolved + (f"\n\nResponse: {self.response}" if self.response else "")


# ---------------------------------------------------------------------------------------------- job


def _job_generation(seed: dict, job_id: int) -> int:
    meta = seed.get("meta") or {}
    return int(meta.get("job_generation", 0)) if meta.get("job_id") == job_id else 0


def run_evol_job(ctx, registry: Registry) -> None:
    """Job runner for ``evol`` jobs (see ``studio.jobs``): evolves the job's pending seeds as a pipeline
    (``studio.jobs.run_pipelined``, ``evolve_seed`` per seed): ``in_flight`` seeds at once (an endpoint's
    ``concurrency``, or ``cfg.batch_size`` for a local evolver), each advancing on its own. Each accepted
    evolution is stored as a new seed atomically with its job item (and queued for the next generation when
    ``generations`` asks for more); each eliminated one marks its item failed with the reason and the rejected
    text (``Store.job_item_failures``). Items that fail are not retried in the same run (a resume retries them).
    A stop keeps each seed's finished steps (``Store.save_item_progress``) and a resume goes on from them.

    An endpoint evolver that fails after its retries pauses the job (``Outcome("paused", reason)``), as in
    ``studio.expand.run_expand_job``: the seeds in progress keep their finished steps and stay pending.

    Returns:
        None (done or stopped), or ``Outcome("paused", reason)``.

    Raises:
        RegistryError: a local evolver is unusable (the job is marked failed with this reason; items stay
            pending).
    """
    from .expand import in_flight
    from .jobs import Outcome, run_pipelined

    store = registry.store
    cfg = EvolConfig.from_params(ctx.params)
    if cfg.evolver not in registry.names():
        raise RegistryError(f"evolver '{cfg.evolver}' is not in the registry")
    endpoint = registry.get(cfg.evolver).kind == "endpoint"
    if not endpoint:
        ctx.report(f"loading {cfg.evolver}")
        registry.load(cfg.evolver)
    n = in_flight(registry, cfg.evolver, cfg.batch_size)
    tried: set[int] = set()
    sources: dict[int, int] = {}
    while not ctx.should_stop():
        pending = [s for s in store.pending_items(ctx.job_id) if s not in tried]
        if not pending:
            return
        order = {s: k for k, s in enumerate(store.job_item_seed_ids(ctx.job_id))}
        tried.update(pending)
        seeds = store.get_seeds(pending)
        for sid in pending:
            if sid not in seeds:
                store.fail_item(ctx.job_id, sid, f"seed {sid} no longer exists")
        ids = [s for s in pending if s in seeds]
        ops = {sid: choose_operation(cfg, sid, order.get(sid, 0)) for sid in ids}

        def work(item):
            return evolve_seed(registry, cfg, seeds[item.seed_id], ops[item.seed_id], item.kept, item.save,
                               item.should_stop)

        def commit(sid, res):
            if isinstance(res, Rejected):
                store.fail_item(ctx.job_id, sid, res.reason, res.detail)
                return
            _store_evolved(store, ctx.job_id, cfg, seeds[sid], sid, res, sources)

        lost = run_pipelined(ctx, store, ids, work, commit, in_flight=n,
                             lost_on=(RegistryError,) if endpoint else (),
                             describe=lambda done, running, total: (f"{done} of {total} seeds ended, {running} in "
                                                                    f"progress on {cfg.evolver}"))
        if lost is not None:
            left = len(store.pending_items(ctx.job_id))
            return Outcome("paused", f"{lost} — {left} seeds left; resume when the endpoint answers again")


def _store_evolved(store, job_id: int, cfg: EvolConfig, parent: dict, sid: int, res: dict,
                   sources: dict[int, int]) -> None:
    """Store an accepted evolution as a new seed linked to its parent, atomically with its job item."""
    pmeta = parent.get("meta") or {}
    job_gen = _job_generation(parent, job_id) + 1
    meta = {
        "parent_seed_id": sid,
        "root_seed_id": int(pmeta.get("root_seed_id", sid)),
        "operation": res["operation"],
        "evol_prompt_version": cfg.prompts.version,
        "evolver": cfg.evolver,
        "generation": int(pmeta.get("generation", 0)) + 1,
        "job_id": job_id,
        "job_generation": job_gen,
        "n_prompt_tokens": res["n_prompt_tokens"],
        "n_completion_tokens": res["n_completion_tokens"],
    }
    if res.get("response_finish"):
        meta["response_finish_reason"] = res["response_finish"]
    src = parent["source_id"]
    if cfg.target_source == "evolved":
        if src not in sources:
            sources[src] = store.evolved_source(src)
        src = sources[src]
    store.add_seeds(src, [SeedRecord(row=0, instruction=res["instruction"], output=res["output"], meta=meta)],
                    job_id=job_id, seed_id=sid, queue_in_job=job_gen < int(cfg.generations))


def step_figures(store, job: dict) -> dict:
    """An evolution job's progress in steps (rewrite, equality question, response: ``evolve_steps``):
    ``{"steps_done", "steps_total"}`` as ``studio.expand.step_figures``."""
    try:
        per = evolve_steps(EvolConfig.from_params(job.get("params") or {}))
    except (TypeError, ValueError):
        per = 1
    ended = int(job.get("n_done") or 0) + int(job.get("n_failed") or 0)
    return {"steps_done": ended * per + store.job_steps_kept(job["id"]),
            "steps_total": int(job.get("total") or 0) * per}


def start_evolution(jobs, cfg: EvolConfig, seed_ids: list[int]) -> int:
    """Validate a configuration and queue an evolution job for ``seed_ids``. Returns the job id.

    Raises:
        ValueError: bad settings or no seeds.
    """
    cfg.validate()
    return jobs.submit(JOB_KIND, cfg.to_params(), seed_ids)


def evolution_of(store, seed_id: int) -> list[dict]:
    """The chain from a seed back to its root: ``[seed, parent, grandparent, ...]`` as ``get_seeds``
    dicts (a seed that was not evolved gives a one-element list)."""
    chain = []
    seen: set[int] = set()
    sid: int | None = int(seed_id)
    while sid is not None and sid not in seen:
        seen.add(sid)
        s = store.get_seeds([sid]).get(sid)
        if s is None:
            break
        chain.append(s)
        sid = (s.get("meta") or {}).get("parent_seed_id")
    return chain
