"""The command line, ``wvstudio``: every tab's main action is also a command.

Commands (each takes ``--data-dir``, default ``$STUDIO_DATA_DIR`` or ``./data``):

- ``import FILE [FILE...] [--format F]``: import data files, listing their bad rows.
- ``expand (--source ID | --all) --n N [--teacher NAME] ...``: expand seeds into conversations and wait,
  with a progress bar; Ctrl-C stops the job cleanly. ``expand --resume JOB_ID`` finishes a stopped job.
- ``evolve (--source ID | --all | --seeds IDS) --n N --evolver NAME [--operations a,b] ...``: Evol-Instruct
  (WizardLM) on seed instructions, waited for like ``expand``; ``evolve --resume JOB_ID``.
- ``models list | add-hf | add-endpoint | remove | ping``: the model registry.
- ``sources``: imported files and their ids.
- Curation (the Data tab). These take the *filter options*, built from ``studio.filters.FILTER_FIELDS``:
  ``--source --status --origin --teacher --tag (repeatable; also spelled --has-tag, the only spelling on quality
  run) --job --min-rounds --max-rounds --min-tokens --max-tokens --min-chars --max-chars --edited/--not-edited
  --flagged/--not-flagged --cut/--not-cut --search TEXT --ids 3,5,9-12``:

  - ``list [--sort COL --desc --limit N --offset K]`` (with ``--search``: a highlighted snippet column);
    ``search TEXT`` is ``list --search TEXT``. ``show ID [--json]``, ``edit ID FILE.json``.
  - ``export [--out PATH] [--format sharegpt|openai|parquet|hf] [--push-to-hub REPO]``.
  - ``bulk tag|untag|flag|unflag|delete|restore [--arg TAG_OR_REASON]``: one undoable operation;
    ``undo OP_ID``; ``bulk-log``: recent operations.
  - ``history ID``, ``diff ID A B``, ``restore-version ID VERSION``: a conversation's revisions.
  - ``quality list``; ``quality run NAME [--param k=v ...] [--model M] [--flag | --tag TAG | --delete]``.
  - ``split-long --max-tokens N [--model M]`` (no token-range filter here): FastChat's split of long conversations into whole-round chunks.
  - ``stats``: totals and distributions as text tables. ``count-tokens [--model M]``.
- ``jobs [JOB]``: recent jobs of every kind, or one job with its kept log (a failure's traceback).
  ``stop JOB [--force]``, ``resume JOB``: any kind; ``resume`` waits like ``expand``.
- ``train --config FILE.json [--dry-run]`` / ``train --resume RUN_ID``: a training run (a job of kind ``train``),
  waited for with the same progress bar; Ctrl-C stops it after saving a checkpoint. ``runs``: the runs.
  ``merge NAME_OR_RUN``, ``export-model NAME --out DIR [--push-to-hub REPO]``: the trained model.
- ``arena import FILE``, ``arena export FILE``, ``arena leaderboard [--anony-only] [--bootstrap N]``,
  ``arena pairs --out FILE``: Arena battles, ratings and preference pairs (``studio.cli_arena``).
- ``judge run --questions FILE_OR_SOURCE --models A,B --judge J [--mode single|table|pairwise] ...``,
  ``judge table [RUN_ID]``, ``judge export [RUN_ID] --out FILE.md|FILE.csv``, ``judge runs``: LLM-as-judge
  (``studio.cli_judge``).
- ``prefs build|import|list|show|edit``: preference sets for DPO; ``train --config`` with ``"method": "dpo"`` or
  ``"dpo-full"`` tunes a checkpoint on one (``studio.cli_preferences``).
- ``serve``: the web app. ``serve-api``: only the OpenAI-compatible ``/v1`` API.

Exit codes: 0 success; 2 an error (bad file, unknown model, database locked by a running web app, bad value),
printed as ``error: <message>`` on stderr without a traceback; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextvars
import difflib
import json
import os
import re
import sys
import time
from pathlib import Path

from .formats import FORMATS, FormatError
from .jobs import fmt_duration
from .registry import (DEFAULT_ENDPOINT_CONCURRENCY, DEFAULT_ENDPOINT_MAX_RETRIES, DEFAULT_ENDPOINT_TIMEOUT_S,
                       DEFAULT_MODEL_NAME, TEMPLATE_CHOICES, GenParams, ModelSpec,
                       RegistryError)
from .filters import FIELDS_BY_NAME, FILTER_FIELDS, ConvFilter, FilterError, filter_from_mapping, parse_ids
from .store import BULK_ACTIONS, SORT_COLUMNS, StoreError
from .cli_arena import add_arena_commands
from .cli_judge import add_judge_commands
from .cli_preferences import DPO_CLI_METHODS, DPO_CONFIG_FIELDS, add_preference_commands, dpo_train
from .cli_common import (MAX_BAD_ROWS_SHOWN, CliError, DatabaseHeld, _ATTACHED, _Borrowed, _cell, _df_table,  # noqa: F401
                         _open, _path, _path_or_id, _settings, _visible_len, table)

API_PORT = 8000
"""Default port of ``serve-api`` (the web app keeps ``Settings.port``, 7860)."""


# ---------------------------------------------------------------------------------------------- helpers


_INTERRUPT: "contextvars.ContextVar" = contextvars.ContextVar("wvstudio_interrupt", default=None)
"""Inside a running studio: the event set when the command's client presses Ctrl-C (``studio.remote``)."""


def _pause(seconds: float) -> None:
    """Wait between polls. Raises KeyboardInterrupt when the command runs inside a studio and its client
    pressed Ctrl-C meanwhile (locally the signal raises it anyway), so watchers stop jobs the same way."""
    event = _INTERRUPT.get()
    if event is None:
        time.sleep(seconds)
    elif event.wait(seconds):
        event.clear()
        raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------- import


def cmd_import(args) -> int:
    """Import files; prints each file's summary and bad rows. 2 if any file could not be read at all."""
    studio = _open(args)
    rc = 0
    try:
        for f in args.files:
            try:
                res = studio.import_file(f, format=args.format)
            except FormatError as e:
                print(f"error: {e}", file=sys.stderr)
                rc = 2
                continue
            print(f"{res.summary()} [source {res.source_id}]")
            if res.duplicate:
                continue
            for row, reason in res.bad_rows[:MAX_BAD_ROWS_SHOWN]:
                print(f"  row {row}: {reason}")
            if len(res.bad_rows) > MAX_BAD_ROWS_SHOWN:
                print(f"  ... {len(res.bad_rows) - MAX_BAD_ROWS_SHOWN} more")
    finally:
        studio.close()
    return rc


# ---------------------------------------------------------------------------------------------- expand


def _load_prompts(path: str):
    from .expand import ExpansionPrompts

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise CliError(f"{path}: cannot read the prompts file ({e.strerror or e})") from e
    except json.JSONDecodeError as e:
        raise CliError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from e
    if not isinstance(data, dict):
        raise CliError(f"{path}: the prompts file must be a JSON object with system, followup, "
                       "max_transcript_chars")
    allowed = set(ExpansionPrompts.__dataclass_fields__)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise CliError(f"{path}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    prompts = ExpansionPrompts(**data)
    try:
        prompts.validate()
    except ValueError as e:
        raise CliError(f"{path}: {e}") from e
    return prompts


# ---------------------------------------------------------------------------------------------- jobs (every kind)


def _resume_hint(studio, job_id: int) -> str:
    return f"wvstudio resume {job_id} --data-dir {studio.settings.data_dir}"


def _postfix(p) -> str:
    """The progress bar's tail: a training job's loss, eval loss, tokens/s and ETA; else the job's message."""
    if p.unit != "step" or not p.metrics.get("loss"):
        return p.message[:80]
    m, parts = p.metrics, [f"loss {p.metrics['loss']:.4f}"]
    if m.get("eval_loss") is not None:
        parts.append(f"eval {m['eval_loss']:.4f}")
    if m.get("tokens_per_second"):
        parts.append(f"{m['tokens_per_second']:,.0f} tok/s")
    if p.eta_s is not None:
        parts.append(f"ETA {fmt_duration(p.eta_s)}")
    return " · ".join(parts)


def _watch(studio, job_id: int, summary=None) -> int:
    """Show any job's progress (expansion, evolution, training) with one tqdm bar until it finishes.

    Ctrl-C stops the job cleanly (an expansion or evolution once its requests in flight end, keeping finished
    steps; a training run after saving a checkpoint); a second Ctrl-C leaves at once (a training run's process
    is killed; it resumes from its last checkpoint). Prints the job's last line and, for a stopped, interrupted
    or failed job, how to resume it (``wvstudio resume JOB``) and, for a failure, where its full log is
    (``wvstudio jobs JOB``).

    Args:
        summary: ``summary(progress)`` called once the job ended (before the exit code is chosen); it may print
            more and return an exit code to use instead of the default one, or None. Default: the kind's
            (``_summary``).

    Returns:
        The exit code: 0 done (or stopped elsewhere), 130 stopped by Ctrl-C, 2 failed or interrupted.
    """
    from tqdm import tqdm

    jobs = studio.jobs
    p = jobs.progress(job_id)
    items = jobs.kind(p.kind).items
    summary = summary or _summary(studio, job_id, p.kind)
    resume = _resume_hint(studio, job_id)
    # a training run's rate and ETA are the program's (tqdm's would count model loading and earlier attempts)
    fmt = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit}s [{elapsed}]{postfix}" if p.unit == "step" \
        else None
    bar = tqdm(total=p.total or None, unit=p.unit, desc=f"job {job_id} {p.kind}", dynamic_ncols=True,
               file=sys.stderr, bar_format=fmt)
    stopping = False
    try:
        while True:
            try:
                p = jobs.progress(job_id)
                if p.total:  # an evolution queues its next generation as it goes; a run knows its steps late
                    bar.total = max(p.total, bar.total or 0)
                bar.n = p.done + p.failed
                bar.set_postfix_str(_postfix(p), refresh=False)
                bar.refresh()
                if p.finished and job_id not in jobs.active():
                    break
                _pause(0.3)
            except KeyboardInterrupt:
                if stopping:  # second Ctrl-C: leave now (a training process is killed first)
                    try:
                        jobs.stop(job_id, force=True)
                    except ValueError:
                        pass
                    bar.close()
                    print(f"\nleft without waiting; resume with: {resume}", file=sys.stderr)
                    return 130
                stopping = True
                bar.write(("stopping once the requests in flight end (finished steps are kept)" if items
                           else "stopping: saving a checkpoint")
                          + " (Ctrl-C again to leave at once)...", file=sys.stderr)
                try:
                    jobs.stop(job_id)
                except ValueError:  # it ended meanwhile
                    pass
    finally:
        bar.close()
    print(p.line())
    if summary is not None:
        rc = summary(p)
        if rc is not None:
            return rc
    if p.status in ("stopped", "interrupted"):
        print(f"resume with: {resume}")
        return 130 if stopping else (2 if p.status == "interrupted" else 0)
    if p.status in ("failed", "paused"):
        print(f"error: job {job_id} {p.status}: {p.message}\nfull log: wvstudio jobs {job_id} --data-dir "
              f"{studio.settings.data_dir}\nresume with: {resume}", file=sys.stderr)
        return 2
    return 0


def _summary(studio, job_id: int, kind: str):
    """The summary a job kind prints when its job ends (evolution: accepted and eliminated seeds; training:
    the registered model), or None."""
    from .evol import JOB_KIND as EVOL_JOB
    from .runs import TRAIN_JOB

    if kind == EVOL_JOB:
        return _evol_summary(studio, job_id)
    if kind == TRAIN_JOB:
        return _train_summary(studio, job_id)
    return None


def _resume_job(studio, job_id: int, kind: str | None = None, what: str = "") -> int:
    """Resume job ``job_id`` (of ``kind``, when given) after its kind's checks (its model is still in the
    registry; a training run's GPUs); prints what is left and returns the id."""
    from .runs import TRAIN_JOB

    job = studio.store.get_job(job_id)
    if kind is not None and job["kind"] != kind:
        raise CliError(f"job {job_id} is a '{job['kind']}' job, not {what or kind}")
    if job["kind"] == TRAIN_JOB:
        run_id = job["params"]["run_id"]
        ck = studio.runs.checkpoints(run_id)
        studio.runs.resume(run_id)
        print(f"resuming job {job_id} (run {run_id}) " + (f"from {ck[-1].name}" if ck else "from the start")
              + f": {studio.runs.command_str(run_id, resume=bool(ck))}")
        return job_id
    studio.jobs.resume(job_id)
    print(f"resuming job {job_id}: {len(studio.store.pending_items(job_id))} seeds left")
    return job_id


def cmd_resume(args) -> int:
    """Resume a stopped, failed or interrupted job of any kind and wait for it, showing progress."""
    studio = _open(args, start_jobs=True)
    try:
        return _watch(studio, _resume_job(studio, args.job))
    finally:
        studio.close()


def cmd_stop(args) -> int:
    """Stop a job. A training run still going in its own process (the studio that started it closed) is
    re-attached, sent SIGTERM (it saves a checkpoint), and waited for; other jobs run only inside a studio
    (stop them there)."""
    studio = _open(args, start_jobs=True)
    try:
        job = studio.store.get_job(args.job)
        studio.jobs.stop(args.job, force=args.force)
        print(f"stopping job {args.job} ({job['kind']})")
        return _watch(studio, args.job)
    finally:
        studio.close()


def cmd_expand(args) -> int:
    """Queue an expansion (or resume one) and wait for it, showing progress."""
    from .expand import JOB_KIND, ExpandConfig, ExpansionPrompts

    studio = _open(args, start_jobs=True)
    try:
        if args.resume is not None:
            job_id = _resume_job(studio, args.resume, JOB_KIND, "an expansion")
        else:
            if args.n is None:
                raise CliError("give --n N (how many seeds to expand), or --resume JOB_ID")
            if args.source is None and not args.all:
                raise CliError("give --source ID (see 'wvstudio sources') or --all")
            if args.source is not None and args.source not in {sid for _, sid in studio.store.source_choices()}:
                raise CliError(f"no source with id {args.source}")
            cfg = ExpandConfig(
                teacher=args.teacher, rounds=args.rounds,
                answer=GenParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                 top_p=args.top_p, seed=args.seed),
                question_max_new_tokens=args.question_max_new_tokens, batch_size=args.batch_size,
                source_id=args.source,
                prompts=_load_prompts(args.prompts) if args.prompts else ExpansionPrompts())
            job_id = studio.expand(cfg, n=args.n)
            print(f"job {job_id}: expanding {studio.jobs.progress(job_id).total} seeds with {cfg.teacher}, "
                  f"{cfg.rounds} rounds")
        return _watch(studio, job_id)
    finally:
        studio.close()


# ---------------------------------------------------------------------------------------------- evolve


def _evol_summary(studio, job_id: int):
    """What an evolution job left: accepted seeds, eliminated ones with their reasons and rejected text. Every
    evolution being eliminated is an outcome of the method, not an error: the exit code stays 0 then."""

    def summary(p) -> int | None:
        fails = studio.store.job_item_failures(job_id)
        state = "ended" if p.status in ("done", "failed") else p.status
        print(f"evolution {state}: {p.done} accepted, {len(fails)} eliminated")
        for seed_id, reason, rejected in fails[:10]:
            print(f"  seed {seed_id}: {reason}")
            if rejected:  # what was rejected, on one line, for people to judge
                one = " ".join(rejected.split())
                print(f"    rejected: {one[:200]}{'…' if len(one) > 200 else ''}")
        if len(fails) > 10:
            print(f"  ... {len(fails) - 10} more")
        if p.done:
            src = studio.store.list_sources()
            src = src[src["format"] == "evolved"]
            if len(src):
                print("evolved seeds are in: " + ", ".join(f"{r.name} (source {r.id}, {r.n_seeds} seeds)"
                                                      for r in src.itertuples()))
        if p.status == "failed" and fails and p.done + p.failed >= p.total:
            print("every evolution was eliminated; 'evolve --resume' tries them again")
            return 0
        return None

    return summary


def cmd_evolve(args) -> int:
    """Queue an Evol-Instruct job (or resume one) and wait for it, showing progress."""
    from .evol import JOB_KIND, OPERATIONS, EvolConfig

    studio = _open(args, start_jobs=True)
    try:
        if args.resume is not None:
            job_id = _resume_job(studio, args.resume, JOB_KIND, "an evolution")
        else:
            seed_ids = args.seeds
            if seed_ids is None:
                if args.n is None:
                    raise CliError("give --n N (how many seeds to evolve), --seeds IDS, or --resume JOB_ID")
                if args.source is None and not args.all:
                    raise CliError("give --source ID (see 'wvstudio sources'), --all or --seeds IDS")
                if args.source is not None and args.source not in {sid for _, sid in studio.store.source_choices()}:
                    raise CliError(f"no source with id {args.source}")
            else:
                missing = sorted(set(seed_ids) - set(studio.store.get_seeds(seed_ids)))
                if missing:
                    raise CliError(f"no seed with id {_format_ids(missing)}")
            ops = [o.strip() for o in (args.operations or "").split(",") if o.strip()] or list(OPERATIONS)
            cfg = EvolConfig(
                evolver=args.evolver, operations=ops, choice=args.choice,
                random_seed=args.seed if args.seed is not None else 0, generations=args.generations,
                sampling=GenParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                   top_p=args.top_p, seed=args.seed),
                respond=not args.no_respond,
                response=GenParams(max_new_tokens=args.response_max_new_tokens, temperature=args.temperature,
                                   top_p=args.top_p, seed=args.seed),
                equality_check=args.equality_check, batch_size=args.batch_size, target_source=args.target)
            job_id = studio.evolve(cfg, seed_ids=seed_ids, n=args.n, source_id=args.source)
            print(f"job {job_id}: evolving {studio.jobs.progress(job_id).total} seeds with {cfg.evolver} "
                  f"({', '.join(cfg.operations)}; {cfg.generations} generation{'s' * (cfg.generations != 1)})")
        return _watch(studio, job_id)
    finally:
        studio.close()


# ---------------------------------------------------------------------------------------------- filters

_METAVARS = {"source_id": "ID", "job_id": "JOB_ID", "teacher": "NAME", "query": "TEXT", "ids": "3,5,9-12",
             "tags": "TAG"}
"""Metavars of the filter options that are not plain numbers (``N``)."""


def _ids_arg(text: str) -> list[int]:
    try:
        return parse_ids(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _format_ids(ids: list[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5,9"`` (the form ``--ids`` reads)."""
    ids = sorted(set(int(i) for i in ids))
    parts, k = [], 0
    while k < len(ids):
        j = k
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[k]) if j == k else f"{ids[k]}-{ids[j]}")
        k = j + 1
    return ",".join(parts)


def add_filter_options(p: argparse.ArgumentParser, *, search: bool = True, tag: bool = True,
                       tokens: bool = True) -> None:
    """Add the conversation filter options (see ``filter_from_args``) to a subcommand's parser, one per
    ``studio.filters.FILTER_FIELDS`` entry (its option spelling, help and fixed choices):
    ``--search --source --status --origin --teacher --tag/--has-tag --job --min-rounds --max-rounds --min-tokens
    --max-tokens --min-chars --max-chars --edited/--not-edited --flagged/--not-flagged --cut/--not-cut --ids``.

    Their values are stored as ``args.filter_<field>`` (``filter_min_rounds``, ``filter_query``), apart from the
    command's own options. ``--has-tag`` is the same as ``--tag``; ``tag=False`` leaves ``--tag`` to the command
    (``quality run --tag TAG`` tags what it finds), ``tokens=False`` leaves out the token range (``split-long
    --max-tokens`` is its budget), and ``search=False`` leaves out ``--search`` (``search TEXT``)."""
    g = p.add_argument_group("filter (which conversations; all of the given conditions must hold)")
    for f in FILTER_FIELDS:
        if (f.name == "query" and not search) or (f.name in ("min_tokens", "max_tokens") and not tokens):
            continue
        dest, spellings = "filter_" + f.name, f.option.split("/")
        if len(spellings) == 2:   # --edited/--not-edited: the "yes" and "no" of a yes/no/any choice
            labels = dict((v, label) for label, v in f.choices)
            e = g.add_mutually_exclusive_group()
            for spelling, value in zip(spellings, (True, False)):
                e.add_argument(spelling, dest=dest, action="store_const", const=value,
                               help=f"only {labels['yes' if value else 'no'].lower()} conversations")
        elif f.kind == "tags":
            g.add_argument(*((f.option, "--has-tag") if tag else ("--has-tag",)), dest=dest, action="append",
                           metavar=_METAVARS["tags"], help=f"{f.help}; repeatable")
        elif f.choices:
            g.add_argument(f.option, dest=dest, choices=f.values, help=f.help)
        elif f.name == "ids":
            g.add_argument(f.option, dest=dest, type=_ids_arg, metavar=_METAVARS["ids"], help=f.help)
        elif f.kind == "number" or f.name == "source_id":
            g.add_argument(f.option, dest=dest, type=int, metavar=_METAVARS.get(f.name, "N"), help=f.help)
        else:
            g.add_argument(f.option, dest=dest, metavar=_METAVARS.get(f.name, "TEXT"), help=f.help)


def _filter_values(args) -> dict:
    """``{field: value}`` of the filter options given on the command line."""
    out = {}
    for f in FILTER_FIELDS:
        v = getattr(args, "filter_" + f.name, None)
        if v not in (None, [], ""):
            out[f.name] = v
    return out


def filter_given(args) -> bool:
    """Whether any filter option was given on the command line."""
    return bool(_filter_values(args))


def filter_from_args(args) -> ConvFilter:
    """The ``ConvFilter`` of a command's filter options (``add_filter_options``).

    Raises:
        CliError: a value the filter refuses (a negative number, a minimum above its maximum), naming the option.
    """
    try:
        return filter_from_mapping(_filter_values(args))
    except FilterError as e:
        option = FIELDS_BY_NAME[e.field].option.split("/")[0] if e.field in FIELDS_BY_NAME else e.field
        raise CliError(f"{option}: {str(e).removeprefix(f'filter field {e.field!r}: ')}") from e


def _undo_hint(op_id: int, data_dir: Path) -> str:
    return f"undo with: wvstudio undo {op_id} --data-dir {data_dir}"


# ---------------------------------------------------------------------------------------------- export, list


def cmd_export(args) -> int:
    """Write the matching conversations to a file (a folder for ``hf``); prints the path and the count."""
    if args.push_to_hub and args.format != "hf":
        raise CliError("--push-to-hub needs --format hf (a datasets folder)")
    studio = _open(args)
    try:
        path, n = studio.export(args.out, fmt=args.format, filter=filter_from_args(args),
                                push_to_hub=args.push_to_hub)
    finally:
        studio.close()
    print(f"wrote {n} conversations to {path}")
    if args.format == "hf":
        print(f"dataset card: {Path(path) / 'README.md'}")
    if args.push_to_hub:
        print(f"pushed to https://huggingface.co/datasets/{args.push_to_hub}")
    return 0


def cmd_sources(args) -> int:
    """A table of imported sources (id, name, format, counts)."""
    studio = _open(args)
    try:
        df = studio.store.list_sources()
    finally:
        studio.close()
    if df.empty:
        print("no sources: import a file first")
        return 0
    print(_df_table(df, ["id", "name", "format", "n_seeds", "n_conversations", "n_bad", "imported_at"],
                    {"name": 40}))
    return 0


def _bold_markers(tty: bool) -> tuple[str, str]:
    """How a search match is shown: ANSI bold on a terminal (unless ``$NO_COLOR``), else ``**match**``."""
    if tty and not os.environ.get("NO_COLOR"):
        return "\x1b[1m", "\x1b[0m"
    return "**", "**"


def plain_snippet(messages: list[dict], query: str, before: int = 4, after: int = 10) -> str:
    """A passage around the first message word matching a query word, matches between the search index's
    markers (``search.HIGHLIGHT_OPEN``/``HIGHLIGHT_CLOSE``). For conversations the full-text index has not
    reached yet (just imported); ``""`` when no word matches."""
    from .search import HIGHLIGHT_CLOSE, HIGHLIGHT_OPEN

    words = sorted({w for w in re.findall(r"\w+", (query or "").lower())}, key=len, reverse=True)
    if not words:
        return ""
    pat = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")\w*", re.IGNORECASE)
    for m in messages:
        toks = m["content"].split()
        for k, tok in enumerate(toks):
            if pat.search(tok):
                lo, hi = max(0, k - before), min(len(toks), k + after)
                text = " ".join(toks[lo:hi])
                text = pat.sub(lambda x: HIGHLIGHT_OPEN + x.group(0) + HIGHLIGHT_CLOSE, text)
                return ("…" if lo else "") + text + ("…" if hi < len(toks) else "")
    return ""


def cmd_list(args) -> int:
    """A page of conversations (id, source, origin, turns, status, teacher, rounds, chars, tokens, flag, tags,
    title); with ``--search``, a last column with the best matching passage, matches highlighted."""
    from .search import HIGHLIGHT_CLOSE, HIGHLIGHT_OPEN

    f = filter_from_args(args)
    studio = _open(args)
    try:
        df, total = studio.store.list_conversations(f, limit=args.limit, offset=args.offset, sort=args.sort,
                                                    descending=args.desc)
        snippets = {}
        if f.query and len(df):
            ids = [int(i) for i in df["id"]]
            snippets = studio.store.search_snippets(f.query, ids)
            for i in ids:
                if i not in snippets:  # not in the index yet: cut a passage here
                    snippets[i] = plain_snippet(studio.store.get_conversation(i)["messages"], f.query)
    finally:
        studio.close()
    if total == 0:
        print("no conversations" + (" match" if filter_given(args) else ""))
        return 0
    columns = ["id", "source", "origin", "turns", "status", "teacher", "rounds", "chars", "tokens", "flag", "tags",
               "title"]
    widths = {"source": 28, "teacher": 24, "flag": 24, "tags": 24, "title": 60}
    if f.query:
        on, off = _bold_markers(sys.stdout.isatty())
        df = df.assign(match=[snippets.get(int(i), "").replace(HIGHLIGHT_OPEN, on).replace(HIGHLIGHT_CLOSE, off)
                              for i in df["id"]])
        columns.append("match")
        widths["title"] = 40
    if not len(df):
        print(f"{total} conversations; none after the first {args.offset} (--offset)")
        return 0
    print(_df_table(df, columns, widths))
    shown = f"{len(df)} of {total}" if not args.offset else f"{args.offset + 1}-{args.offset + len(df)} of {total}"
    print(f"{shown} conversations")
    return 0


def cmd_search(args) -> int:
    """``search TEXT``: ``list --search TEXT``."""
    args.filter_query = args.text
    return cmd_list(args)


def cmd_show(args) -> int:
    """One conversation's details and messages (``--json``: ``{id, version, messages}``, the form ``edit``
    reads)."""
    studio = _open(args)
    try:
        conv = studio.store.get_conversation(args.id)
        row, _ = studio.store.list_conversations(
            ConvFilter(ids=[args.id], status="deleted" if conv.get("deleted_at") is not None else "all"), limit=1)
        tags = row["tags"].iloc[0] if len(row) and isinstance(row["tags"].iloc[0], str) else ""
    finally:
        studio.close()
    if args.json:
        print(json.dumps({"id": conv["id"], "version": conv["version"], "messages": conv["messages"]},
                         ensure_ascii=False, indent=2))
        return 0
    head = f"conversation {conv['id']} ({conv['origin']}, {conv['status']}, version {conv['version']}"
    if conv.get("source"):
        head += f", from {conv['source']}"
    if conv.get("teacher"):
        head += f", teacher {conv['teacher']}"
    print(head + ")")
    if conv.get("flag"):
        print(f"flagged: {conv['flag']}")
    if tags:
        print(f"tags: {tags}")
    if conv.get("deleted_at") is not None:
        print("(deleted)")
    for i, m in enumerate(conv["messages"], 1):
        print(f"\n[{i}] {m['role']}:\n{m['content']}")
    return 0


def cmd_jobs(args) -> int:
    """Recent jobs of every kind (expansion, evolution, training), newest first; with a job id, that job's
    details and its kept log (a failure's full traceback)."""
    studio = _open(args)
    try:
        if args.job is not None:
            job = studio.store.get_job(args.job)
            p = studio.jobs.progress(args.job, job)
            print(p.line())
            print(f"kind: {p.kind}" + (f" ({p.title})" if p.title else ""))
            print(f"created: {_cell(job['created_at'])}  started: {_cell(job['started_at'])}  finished: "
                  f"{_cell(job['finished_at'])}")
            print("params: " + json.dumps(job["params"], ensure_ascii=False))
            if p.log:
                print("log:\n" + p.log.rstrip())
            if p.finished and p.status != "done":
                print(f"resume with: {_resume_hint(studio, args.job)}")
            return 0
        rows = [[p.job_id, p.kind, p.status, p.counts() + ("" if p.unit == "step" else f" {p.unit}"),
                 p.failed or "", p.title, p.message] for p in studio.jobs.recent(limit=args.limit)]
    finally:
        studio.close()
    if not rows:
        print("no jobs")
        return 0
    print(table(rows, ["id", "kind", "status", "progress", "failed", "on", "message"], {"on": 40, "message": 60}))
    return 0


# ---------------------------------------------------------------------------------------------- edit, history


def _read_messages(path: str) -> tuple[list[dict], int | None]:
    """Messages from a JSON file (``-``: standard input): a list of ``{role, content}``, or an object with
    ``messages`` and optionally ``version`` (what ``show --json`` prints)."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise CliError(f"{path}: cannot read it ({e.strerror or e})") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from e
    version = None
    if isinstance(data, dict):
        version = data.get("version")
        data = data.get("messages")
    if not isinstance(data, list) or not all(isinstance(m, dict) and set(m) >= {"role", "content"} for m in data):
        raise CliError(f"{path}: expected a list of {{\"role\", \"content\"}} messages, or an object with "
                       "\"messages\" (as 'wvstudio show ID --json' prints)")
    return data, (int(version) if version is not None else None)


def cmd_edit(args) -> int:
    """Replace a conversation's messages from a JSON file; refused if the conversation changed since the
    version the file was taken from."""
    messages, version = _read_messages(args.file)
    studio = _open(args)
    try:
        expected = args.version if args.version is not None else version
        if expected is None:
            expected = studio.store.get_conversation(args.id)["version"]
        new = studio.store.save_messages(args.id, messages, expected_version=expected, note=args.note,
                                         max_message_chars=studio.settings.max_message_chars)
    finally:
        studio.close()
    print(f"conversation {args.id} saved as version {new} (undo with: wvstudio restore-version {args.id} "
          f"{expected})")
    return 0


def cmd_history(args) -> int:
    """The versions of a conversation, newest first."""
    studio = _open(args)
    try:
        conv = studio.store.get_conversation(args.id)
        df = studio.store.list_revisions(args.id)
    finally:
        studio.close()
    df = df.assign(current=["*" if int(v) == conv["version"] else "" for v in df["version"]])
    print(_df_table(df, ["version", "current", "note", "created_at", "n_messages"], {"note": 40}))
    print(f"conversation {args.id}: {len(df)} version{'s' * (len(df) != 1)}, current {conv['version']}")
    return 0


def _message_lines(messages: list[dict]) -> list[str]:
    out = []
    for i, m in enumerate(messages, 1):
        out.append(f"── {i} · {m['role']} ──")
        out.extend(m["content"].splitlines() or [""])
    return out


def cmd_diff(args) -> int:
    """Unified diff between two versions of a conversation (messages as ``── n · role ──`` blocks)."""
    studio = _open(args)
    try:
        a = studio.store.get_revision(args.id, args.a)
        b = studio.store.get_revision(args.id, args.b)
    finally:
        studio.close()
    lines = list(difflib.unified_diff(_message_lines(a), _message_lines(b), f"version {args.a}",
                                      f"version {args.b}", lineterm="", n=args.context))
    if not lines:
        print(f"versions {args.a} and {args.b} are identical")
        return 0
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    for line in lines:
        if color and line.startswith("+") and not line.startswith("+++"):
            line = f"\x1b[32m{line}\x1b[0m"
        elif color and line.startswith("-") and not line.startswith("---"):
            line = f"\x1b[31m{line}\x1b[0m"
        print(line)
    return 0


def cmd_restore_version(args) -> int:
    """Make an earlier version the current one again (saved as a new version, so it can be undone too)."""
    studio = _open(args)
    try:
        conv = studio.store.get_conversation(args.id)
        old = studio.store.get_revision(args.id, args.version)
        if args.version == conv["version"]:
            raise CliError(f"version {args.version} is the current version of conversation {args.id}")
        new = studio.store.save_messages(args.id, old, expected_version=conv["version"],
                                         note=f"restored version {args.version}",
                                         max_message_chars=studio.settings.max_message_chars)
    finally:
        studio.close()
    print(f"conversation {args.id}: version {args.version} restored as version {new}")
    return 0


# ---------------------------------------------------------------------------------------------- bulk actions


def cmd_bulk(args) -> int:
    """Apply one action to every conversation of the filter, as one undoable operation."""
    if not filter_given(args) and not args.all:
        raise CliError("give filter options (e.g. --ids 3,5 or --tag x), or --all to act on every conversation")
    f = filter_from_args(args)
    if args.action == "restore":
        if f.status not in (None, "all", "deleted"):
            raise CliError("restore acts on deleted conversations: leave out --status (or give --status deleted)")
        f.status = "deleted"
    studio = _open(args)
    try:
        ids = studio.store.conversation_ids(f)
        if not ids:
            print("no conversation matches: nothing done")
            return 0
        op, n = studio.store.bulk(args.action, ids, args.arg)
    finally:
        studio.close()
    what = f" '{args.arg.strip()}'" if args.arg and args.action in ("tag", "untag", "flag") else ""
    print(f"{args.action}{what}: {n} of {len(ids)} matching conversations changed (operation {op})")
    print(_undo_hint(op, studio.settings.data_dir))
    return 0


def cmd_undo(args) -> int:
    """Undo one bulk operation."""
    studio = _open(args)
    try:
        n = studio.store.undo_bulk(args.op_id)
    finally:
        studio.close()
    print(f"operation {args.op_id} undone: {n} conversations put back as they were")
    return 0


def cmd_bulk_log(args) -> int:
    """Recent bulk operations, newest first."""
    studio = _open(args)
    try:
        df = studio.store.list_bulk_ops(args.limit)
    finally:
        studio.close()
    if df.empty:
        print("no bulk operations yet")
        return 0
    print(_df_table(df, ["id", "action", "arg", "n", "created_at", "undone_at"], {"arg": 40}))
    return 0


# ---------------------------------------------------------------------------------------------- quality


def _tokenizer(studio, model: str | None):
    return studio.registry.load(model or DEFAULT_MODEL_NAME).tokenizer


def _param_value(p, text: str):
    """A ``--param`` value converted to the type of the filter parameter's default."""
    d = p.default
    try:
        if isinstance(d, bool):
            low = text.strip().lower()
            if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError
            return low in ("1", "true", "yes", "on")
        if isinstance(d, int):
            return int(text)
        if isinstance(d, float):
            return float(text)
    except ValueError:
        raise CliError(f"--param {p.name}: '{text}' is not a {type(d).__name__}") from None
    return text.replace("\\n", "\n")


def _filter_params(qf, pairs: list[str]) -> dict:
    known = {p.name: p for p in qf.params}
    out = {}
    for pair in pairs or []:
        name, eq, value = pair.partition("=")
        name = name.strip()
        if not eq:
            raise CliError(f"--param needs NAME=VALUE (got '{pair}')")
        if name == "tokenizer":
            raise CliError("the tokenizer is chosen with --model NAME")
        if name not in known:
            raise CliError(f"filter '{qf.name}' has no parameter '{name}' (parameters: "
                           f"{', '.join(n for n in known if n != 'tokenizer') or 'none'})")
        p = known[name]
        out[name] = _param_value(p, value)
        if p.minimum is not None and out[name] < p.minimum or p.maximum is not None and out[name] > p.maximum:
            raise CliError(f"--param {name} must be between {p.minimum} and {p.maximum if p.maximum is not None else '…'}")
    return out


def cmd_quality(args) -> int:
    """``quality list`` (the filters, explained) and ``quality run NAME`` (find; optionally flag, tag or delete
    what was found as one undoable bulk operation)."""
    import textwrap

    from . import quality

    if args.quality_cmd == "list":
        for qf in quality.FILTERS.values():
            print(f"{qf.name}: {qf.title}")
            print(textwrap.fill(qf.explanation, 100, initial_indent="  ", subsequent_indent="  "))
            print(f"  source: {qf.source}")
            for p in qf.params:
                if p.name == "tokenizer":
                    print("  --model NAME: the model whose tokenizer counts tokens (default "
                          f"{DEFAULT_MODEL_NAME})")
                    continue
                extra = f"; one of {', '.join(map(str, p.choices))}" if p.choices else ""
                print(f"  --param {p.name}={p.default}: {p.help}{extra}")
            print()
        print("run one with: wvstudio quality run NAME [--param k=v ...] [--flag | --tag TAG | --delete] "
              "[filter options]")
        return 0

    qf = quality.FILTERS.get(args.name)
    if qf is None:
        raise CliError(f"unknown quality filter '{args.name}' (known: {', '.join(quality.FILTERS)})")
    params = _filter_params(qf, args.param)
    f = filter_from_args(args)
    studio = _open(args)
    try:
        uses_tokens = qf.needs_tokenizer and (qf.name != "turn_length" or params.get("unit") == "tokens")
        if uses_tokens or (qf.needs_tokenizer and args.model):
            params["tokenizer"] = _tokenizer(studio, args.model)
        convs = list(studio.store.iter_conversations(f, with_ids=True))
        flags = quality.run_filter(qf.name, convs, **params)
        print(f"{len(flags)} of {len(convs)} conversations flagged by {qf.name} ({qf.title})")
        if flags:
            print(table([[i, r] for i, r in flags[:args.show]], ["id", "reason"], {"reason": 100}))
            if len(flags) > args.show:
                print(f"... {len(flags) - args.show} more (ids: {_format_ids([i for i, _ in flags])})")
        action = "flag" if args.flag else "tag" if args.tag else "delete" if args.delete else None
        if action and flags:
            arg = qf.title if action == "flag" else args.tag
            op, n = studio.store.bulk(action, [i for i, _ in flags], arg)
            done = {"flag": f'flagged "{arg}"', "tag": f'tagged "{arg}"', "delete": "deleted"}[action]
            print(f"{n} conversations {done} (operation {op})")
            print(_undo_hint(op, studio.settings.data_dir))
    finally:
        studio.close()
    return 0


def cmd_split_long(args) -> int:
    """Split conversations over a token budget into whole-round chunks (FastChat
    ``fastchat/data/split_long_conversation.py``): the chunks become new conversations (origin ``split``, the
    same source, seed and teacher; id ``<original>_<first message index>`` as FastChat names them) and the
    originals are deleted as one undoable bulk operation."""
    from tqdm import tqdm

    from . import quality

    f = filter_from_args(args)
    if f.status == "deleted":
        raise CliError("split-long works on conversations that are not deleted")
    studio = _open(args)
    store = studio.store
    try:
        tok = _tokenizer(studio, args.model)
        total = store.count_conversations(f)
        plans: list[tuple[int, list]] = []
        skipped: list[tuple[int, str]] = []
        for cid, msgs in tqdm(store.iter_conversations(f, with_ids=True), total=total, unit="conv",
                              desc="measuring", file=sys.stderr, disable=total < 2000):
            try:
                out = quality.split_conversations([(cid, msgs)], tok, args.max_tokens)
            except ValueError as e:
                skipped.append((cid, str(e)))
                continue
            if len(out) > 1:
                plans.append((cid, out))
        n_chunks = sum(len(out) for _, out in plans)
        print(f"{len(plans)} of {total} conversations are longer than {args.max_tokens} tokens "
              f"({args.model or DEFAULT_MODEL_NAME} tokenizer, FastChat counting): {n_chunks} chunks")
        for cid, reason in skipped[:10]:
            print(f"  skipped {cid}: {reason}")
        if not plans or args.dry_run:
            if plans:
                print("dry run: nothing changed")
            return 0
        op, new_ids = store.split([(cid, [chunk for _, chunk in out]) for cid, out in plans])
    finally:
        studio.close()
    data_dir = studio.settings.data_dir
    print(f"split {len(plans)} conversations into {len(new_ids)} new ones (origin 'split', ids "
          f"{_format_ids(new_ids)}); the {len(plans)} originals were deleted (operation {op})")
    print(f"undo with: wvstudio undo {op} --data-dir {data_dir}   (removes the chunks, restores the originals)")
    return 0


# ---------------------------------------------------------------------------------------------- statistics


def _bars(df, label: str, col: str, width: int = 40) -> str:
    """A text histogram: ``label, n, share, bar``."""
    total = int(df["n"].sum()) or 1
    top = int(df["n"].max()) or 1
    rows = [[v, int(n), f"{100 * int(n) / total:.1f}%", "█" * max(1, round(width * int(n) / top))]
            for v, n in zip(df[col], df["n"])]
    return table(rows, [label, "n", "share", ""])


def _bucket_label(b) -> str:
    b = int(b)
    return f"{b}-{2 * b - 1}" if b > 1 else "0-1"


def cmd_stats(args) -> int:
    """Totals and distributions of the filter's conversations, as text tables."""
    import pandas as pd

    f = filter_from_args(args)
    studio = _open(args)
    try:
        st = studio.store.stats(f)
    finally:
        studio.close()
    t = st["totals"].iloc[0]
    tokens = "not counted" if pd.isna(t["tokens"]) else f"{int(t['tokens']):,}"
    print(f"filter: {f.describe()}")
    print(f"conversations: {int(t['conversations']):,}   rounds: {int(t['rounds']):,}   "
          f"characters: {int(t['chars']):,}   tokens: {tokens}   edited: {int(t['edited']):,}   "
          f"flagged: {int(t['flagged']):,}")
    if not int(t["conversations"]):
        return 0
    print("\nconversations per source and origin")
    print(table(st["by_source"][["source", "origin", "n"]].values.tolist(), ["source", "origin", "n"], {"source": 50}))
    print("\nrounds per conversation")
    print(_bars(st["rounds"], "rounds", "rounds"))
    print("\ncharacters per conversation")
    print(_bars(st["chars"].assign(range=st["chars"]["bucket"].map(_bucket_label)), "characters", "range"))
    if len(st["tokens"]):
        print("\ntokens per conversation" + (" (counted ones only)" if pd.isna(t["tokens"]) else ""))
        print(_bars(st["tokens"].assign(range=st["tokens"]["bucket"].map(_bucket_label)), "tokens", "range"))
    else:
        print("\ntokens per conversation: not counted yet (wvstudio count-tokens)")
    if len(st["edits"]):
        print("\nedits per day")
        print(_bars(st["edits"].assign(day=st["edits"]["day"].astype(str)), "day", "day"))
    return 0


def cmd_count_tokens(args) -> int:
    """Count the tokens of conversations that have no count yet (for token filters and statistics)."""
    studio = _open(args)
    try:
        n = studio.count_tokens(args.model)
    finally:
        studio.close()
    print(f"counted tokens of {n} conversations with the {args.model or DEFAULT_MODEL_NAME} tokenizer")
    return 0


# ---------------------------------------------------------------------------------------------- models


def cmd_models(args) -> int:
    """``models list|add-hf|add-endpoint|remove|ping``."""
    studio = _open(args)
    reg = studio.registry
    try:
        if args.models_cmd == "list":
            rows = [[s.name + (" (default)" if s.builtin else ""), s.kind, s.where,
                     s.template if s.kind != "endpoint" else "(server's)", s.request_settings] for s in reg.list()]
            print(table(rows, ["name", "kind", "where", "template", "requests"], {"where": 70}))
        elif args.models_cmd == "add-hf":
            kind = "gguf" if args.path.lower().endswith(".gguf") else "hf"
            spec = reg.add(ModelSpec(name=args.name, kind=kind, path=args.path, template=args.template,
                                     description=args.description or ""))
            print(f"added {spec.kind} model '{spec.name}': {spec.where}")
        elif args.models_cmd == "add-endpoint":
            spec = reg.add_endpoint(args.name, args.base_url, args.model, args.api_key_env,
                                    description=args.description or "",
                                    timeout=getattr(args, "timeout", DEFAULT_ENDPOINT_TIMEOUT_S),
                                    concurrency=args.concurrency, max_retries=args.max_retries,
                                    price_in_per_m=args.price_in, price_out_per_m=args.price_out,
                                    replace=args.replace)
            print(f"added endpoint '{spec.name}': {spec.where}; {spec.request_settings}"
                  + (f" (key from ${spec.api_key_env})" if spec.api_key_env else ""))
        elif args.models_cmd == "remove":
            reg.remove(args.name)
            print(f"removed '{args.name}' (its files, if any, stay on disk)")
        elif args.models_cmd == "ping":
            print(reg.ping(args.name))
    finally:
        studio.close()
    return 0


# ---------------------------------------------------------------------------------------------- servers


def cmd_serve(args) -> int:
    """Start the web app (``studio.server.launch``); blocks until it is stopped."""
    try:
        from .server import launch
    except ImportError as e:
        raise CliError(f"the web app is not available: {e}") from e
    launch(_settings(args), host=args.host, port=args.port)
    return 0


def cmd_serve_api(args) -> int:
    """Serve only the OpenAI-compatible ``/v1`` API with uvicorn; blocks until Ctrl-C."""
    import uvicorn

    from .api import make_app

    studio = _open(args)
    try:
        host = args.host or studio.settings.host
        port = args.port or API_PORT
        print(f"OpenAI-compatible API on http://{host}:{port}/v1 (Ctrl-C to stop)")
        uvicorn.run(make_app(studio, host=host), host=host, port=port, log_level="info")
    finally:
        studio.close()
    return 0


# ---------------------------------------------------------------------------------------------- parser

EXPORT_FORMATS = ("sharegpt", "openai", "parquet", "hf")
"""``Studio.EXPORT_FORMATS`` (repeated so building the parser does not import the studio's services)."""


# ---------------------------------------------------------------------------------------------- training

TRAIN_CONFIG_FIELDS = ("base_model", "method", "filters", "hyperparams", "template", "num_processes", "backend",
                       "eval_fraction", "name")
"""Fields of a ``train --config`` file (``base_model`` is required; see ``RunManager.create_run``)."""


def load_train_config(path: str | Path) -> dict:
    """Read a ``train --config`` JSON file.

    Raises:
        CliError: the file is missing, not JSON, not an object, lacks ``base_model`` or has unknown fields (the
            message names the file and the field).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CliError(f"{path}: cannot read the config file ({e.strerror or e})") from e
    except json.JSONDecodeError as e:
        raise CliError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from e
    if not isinstance(data, dict):
        raise CliError(f"{path}: the config must be a JSON object with {', '.join(TRAIN_CONFIG_FIELDS)}")
    unknown = sorted(set(data) - set(DPO_CONFIG_FIELDS if data.get("method") in DPO_CLI_METHODS
                                      else TRAIN_CONFIG_FIELDS))
    if unknown:
        raise CliError(f"{path}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(TRAIN_CONFIG_FIELDS)})")
    if not data.get("base_model"):
        raise CliError(f"{path}: 'base_model' is required (a registry model name; see 'wvstudio models list')")
    for key in ("filters", "hyperparams"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise CliError(f"{path}: '{key}' must be a JSON object")
    return data


def _train_summary(studio, job_id: int):
    """What a training job left: the registered model, or where its run folder and log are."""

    def summary(p) -> int | None:
        run_id = studio.runs.run_of_job(job_id)
        s = studio.runs.status(run_id)
        if s["state"] == "finished" and s.get("registered_as"):
            print(f"registered as '{s['registered_as']}' (wvstudio models list)")
        elif s["state"] != "finished":
            print(f"run folder: {studio.runs.run_dir(run_id)} (log: train.log)")
        return None

    return summary


def cmd_train(args) -> int:
    """``train --config FILE.json [--dry-run]`` or ``train --resume RUN_ID``: create and start a run (a ``train``
    job), and wait for it with the one job watcher."""
    if not args.config and not args.resume:
        raise CliError("give --config FILE.json (a run's settings) or --resume RUN_ID")
    cfg = load_train_config(args.config) if args.config else None
    studio = _open(args, start_jobs=not args.dry_run)
    try:
        runs = studio.runs
        if args.resume:
            job_id = runs.job_id(args.resume)
            if job_id is None:
                raise CliError(f"run {args.resume} was never started; nothing to resume")
            return _watch(studio, _resume_job(studio, job_id))
        if cfg.get("method") in DPO_CLI_METHODS:  # preference tuning (studio.cli_preferences)
            run_id = dpo_train(studio, cfg, args.config, args.dry_run)
            if run_id is None:
                return 0
            runs.start(run_id)
            return _watch(studio, runs.job_id(run_id))
        if args.dry_run:
            cmd, config = runs.preview(cfg["base_model"], cfg.get("method", "lora"), cfg.get("filters"),
                                       cfg.get("hyperparams"), cfg.get("template", "vicuna_v1.1"),
                                       cfg.get("num_processes", 1), cfg.get("backend"))
            n = studio.store.count_conversations(**config.pop("filters"))
            print(cmd)
            print(json.dumps(config, indent=2))
            print(f"{n} conversations match the filter")
            return 0
        run_id = runs.create_run(**{k: v for k, v in cfg.items() if v is not None})
        s = runs.status(run_id)
        print(f"run {run_id}: {s['method']} on {s['base_model']}, {s['n_train']} train / {s['n_eval']} eval "
              f"conversations (snapshot {s['snapshot_sha256'][:12]})")
        print(f"command: {runs.command_str(run_id)}")
        try:
            ahead = runs.start(run_id)
        except ValueError as e:
            raise CliError(f"the run was created but not started: {e}") from e
        job_id = runs.job_id(run_id)
        print(f"job {job_id}: training run {run_id}" + (f", queued behind {ahead} training job(s)" if ahead else ""))
        return _watch(studio, job_id)
    finally:
        studio.close()


def cmd_runs(args) -> int:
    """A table of the training runs, newest first."""
    studio = _open(args)
    try:
        all_runs = studio.runs.list_runs()
    finally:
        studio.close()
    if not all_runs:
        print("no runs: start one with 'wvstudio train --config FILE.json'")
        return 0
    rows = [[r["run_id"], r.get("job_id") or "", r["state"], r["base_model"], r["method"],
             f"{r['step']}/{r['max_steps']}" if r.get("step") is not None else "",
             f"{r['loss']:.4f}" if r.get("loss") is not None else "",
             f"{r['eval_loss']:.4f}" if r.get("eval_loss") is not None else "",
             r.get("registered_as") or "", r.get("message") or ""] for r in all_runs]
    print(table(rows, ["run", "job", "state", "base", "method", "step", "loss", "eval loss", "registered as",
                       "message"], {"run": 48, "message": 60}))
    return 0


def cmd_merge(args) -> int:
    """Merge an adapter (registry name or run id) into its base and register the full checkpoint."""
    studio = _open(args)
    try:
        name = studio.runs.merge(args.name, args.out, name=args.new_name)
        print(f"merged into {studio.registry.get(name).path}; registered as '{name}'")
    finally:
        studio.close()
    return 0


def cmd_export_model(args) -> int:
    """Write a registry model to a folder (adapters merged) and optionally push it to the Hub."""
    studio = _open(args)
    try:
        res = studio.runs.export(args.name, args.out, push_to_hub=args.push_to_hub, merge=not args.no_merge)
    finally:
        studio.close()
    print(f"exported '{args.name}' to {res['path']}" + (f"; pushed to {res['url']}" if res["url"] else ""))
    return 0


def _add_job_commands(sub, common) -> None:
    """``jobs``, ``stop``, ``resume`` (every job kind) and the training commands ``train``, ``runs``, ``merge``,
    ``export-model``."""
    from .train import backends

    s = sub.add_parser("jobs", parents=[common], help="recent jobs of every kind; with an id, one job and its log")
    s.add_argument("job", type=int, nargs="?", metavar="JOB", help="show this job's details and kept log")
    s.add_argument("--limit", type=int, default=20)
    s.set_defaults(func=cmd_jobs)

    s = sub.add_parser("stop", parents=[common], help="stop a job (a training run saves a checkpoint first)")
    s.add_argument("job", type=int, metavar="JOB")
    s.add_argument("--force", action="store_true", help="kill a training run's process now (no checkpoint)")
    s.set_defaults(func=cmd_stop)

    s = sub.add_parser("resume", parents=[common], help="resume a stopped, failed or interrupted job of any kind")
    s.add_argument("job", type=int, metavar="JOB")
    s.set_defaults(func=cmd_resume)

    s = sub.add_parser("train", parents=[common], help="fine-tune a model (LoRA, QLoRA, full) and wait",
                       description="Fine-tune with the Vicuna v1.1 recipe. The config file is a JSON object "
                       f"with {', '.join(TRAIN_CONFIG_FIELDS)}; e.g. {{\"base_model\": \"SmolLM2-135M-Instruct\", "
                       "\"method\": \"lora\", \"filters\": {\"origin\": \"expanded\"}, \"hyperparams\": "
                       "{\"num_train_epochs\": 1}}. DPO: \"method\": \"dpo\" (LoRA) or \"dpo-full\", with "
                       "\"preference_set\": ID (wvstudio prefs) and optional \"dpo\": {\"beta\", \"loss_type\"}. "
                       "Distributed backends: " + ", ".join(backends()) + ". Ctrl-C "
                       "stops the run after saving a checkpoint; 'wvstudio resume JOB' continues it.")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", metavar="FILE.json", type=_path, help="the run's settings (see above)")
    g.add_argument("--resume", metavar="RUN_ID", help="continue a stopped or failed run from its last checkpoint")
    s.add_argument("--dry-run", action="store_true", help="print the command and config.json; create nothing")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("runs", parents=[common], help="list training runs")
    s.set_defaults(func=cmd_runs)

    s = sub.add_parser("merge", parents=[common], help="merge a LoRA adapter into its base model")
    s.add_argument("name", metavar="NAME_OR_RUN", help="an adapter's registry name, or a run id")
    s.add_argument("--out", metavar="DIR", type=_path, help="folder for the merged checkpoint (default: in the model folder)")
    s.add_argument("--name", dest="new_name", metavar="NAME", help="registry name (default: <adapter>-merged)")
    s.set_defaults(func=cmd_merge)

    s = sub.add_parser("export-model", parents=[common], help="write a model to a folder / the Hub")
    s.add_argument("name", metavar="NAME", help="registry model name")
    s.add_argument("--out", required=True, metavar="DIR", type=_path, help="folder to write (must be new or empty)")
    s.add_argument("--push-to-hub", metavar="REPO", help="also upload to this Hub repo (needs $HF_TOKEN)")
    s.add_argument("--no-merge", action="store_true", help="copy an adapter as it is instead of merging it")
    s.set_defaults(func=cmd_export_model)


def _evol_operations() -> list[str]:
    from .evol import OPERATIONS

    return list(OPERATIONS)



def build_parser() -> argparse.ArgumentParser:
    """The ``wvstudio`` argument parser (every subcommand takes ``--data-dir``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=argparse.SUPPRESS, metavar="DIR", type=_path,
                        help="data folder (default: $STUDIO_DATA_DIR or ./data)")

    p = argparse.ArgumentParser(prog="wvstudio", description="WizardVicuna Studio: seeds in, expanded multi-turn "
                                "conversations out; curate, fine-tune and judge chat models.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("import", parents=[common], help="import data files (seeds or conversations)")
    s.add_argument("files", nargs="+", metavar="FILE", type=_path_or_id)
    s.add_argument("--format", choices=FORMATS, help="skip detection and read the files as this format")
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("expand", parents=[common], help="expand seeds into multi-turn conversations")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--source", type=int, metavar="ID", help="expand seeds of this source")
    g.add_argument("--all", action="store_true", help="expand seeds of every source")
    g.add_argument("--resume", type=int, metavar="JOB_ID", help="resume a stopped, failed or interrupted job")
    s.add_argument("--n", type=int, help="how many not-yet-expanded seeds to expand")
    s.add_argument("--teacher", default=DEFAULT_MODEL_NAME, help="registry model that writes the conversations "
                   f"(default {DEFAULT_MODEL_NAME})")
    s.add_argument("--rounds", type=int, default=3, help="user/assistant rounds per conversation (default 3)")
    s.add_argument("--max-new-tokens", type=int, default=512, help="longest answer, tokens (default 512)")
    s.add_argument("--question-max-new-tokens", type=int, default=96,
                   help="longest follow-up question, tokens (default 96)")
    s.add_argument("--temperature", type=float, default=0.7, help="0 for greedy (default 0.7)")
    s.add_argument("--top-p", type=float, default=0.9)
    s.add_argument("--batch-size", type=int, default=5, help="seeds in flight with a local teacher, each advancing "
                   "on its own (default 5; an endpoint takes its entry's concurrency)")
    s.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    s.add_argument("--prompts", metavar="FILE.json", type=_path,
                   help="expansion prompts: a JSON object with system, followup, max_transcript_chars")
    s.set_defaults(func=cmd_expand)

    s = sub.add_parser("evolve", parents=[common], help="evolve seed instructions with Evol-Instruct (WizardLM)",
                       description="Evol-Instruct (WizardLM): an evolver model rewrites seed instructions in depth "
                       "(add constraints, deepen, concretize, increase reasoning) or in breadth (a new, rarer "
                       "instruction of the same domain); WizardLM's elimination rules drop failed evolutions. "
                       "Accepted ones become new seeds linked to their parent.")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--source", type=int, metavar="ID", help="evolve seeds of this source")
    g.add_argument("--all", action="store_true", help="evolve seeds of every source")
    g.add_argument("--seeds", type=_ids_arg, metavar="3,5,9-12", help="evolve these seed ids")
    g.add_argument("--resume", type=int, metavar="JOB_ID", help="resume a stopped, failed or interrupted job")
    s.add_argument("--n", type=int, help="how many seeds (the first ones of the source)")
    s.add_argument("--evolver", default=DEFAULT_MODEL_NAME, help="registry model that rewrites and answers "
                   f"(default {DEFAULT_MODEL_NAME})")
    s.add_argument("--operations", metavar="a,b", help="operations used, from: " + ", ".join(_evol_operations())
                   + " (default: all)")
    s.add_argument("--choice", choices=("round_robin", "random"), default="round_robin",
                   help="how each seed's operation is picked (default round_robin)")
    s.add_argument("--generations", type=int, default=1, help="evolutions in a row per seed, 1..10 (default 1)")
    s.add_argument("--max-new-tokens", type=int, default=256, help="longest evolved instruction, tokens (default 256)")
    s.add_argument("--response-max-new-tokens", type=int, default=512,
                   help="longest response to an evolved instruction, tokens (default 512)")
    s.add_argument("--no-respond", action="store_true", help="do not answer the evolved instructions")
    s.add_argument("--equality-check", action="store_true",
                   help="also ask the evolver whether the evolved instruction equals the original (WizardLM)")
    s.add_argument("--temperature", type=float, default=0.7, help="0 for greedy (default 0.7)")
    s.add_argument("--top-p", type=float, default=0.9)
    s.add_argument("--batch-size", type=int, default=5, help="seeds in flight with a local evolver (default 5; an "
                   "endpoint takes its entry's concurrency)")
    s.add_argument("--target", choices=("evolved", "parent"), default="evolved",
                   help="where new seeds go: a source 'evolved from <file>' (default) or the parent's source")
    s.add_argument("--seed", type=int, help="random seed for reproducible sampling and operation choice")
    s.set_defaults(func=cmd_evolve)

    s = sub.add_parser("export", parents=[common], help="export conversations to a file or a datasets folder")
    s.add_argument("--out", metavar="PATH", type=_path, help="file or folder to write (default: <data>/exports/conversations-<time>)")
    s.add_argument("--format", choices=EXPORT_FORMATS, default="sharegpt",
                   help="sharegpt JSON (WizardVicunaLM layout, default), openai messages JSONL, parquet, or hf "
                   "(a Hugging Face datasets folder with a README.md card)")
    s.add_argument("--push-to-hub", metavar="REPO", help="also push the hf folder to this Hub repo (needs $HF_TOKEN)")
    add_filter_options(s)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("models", parents=[common], help="the model registry")
    msub = s.add_subparsers(dest="models_cmd", required=True, metavar="ACTION")
    m = msub.add_parser("list", parents=[common], help="list the registry's models")
    m = msub.add_parser("add-hf", parents=[common], help="add a Hugging Face checkpoint (folder or hub id) "
                        "or a .gguf file")
    m.add_argument("name")
    m.add_argument("path", metavar="PATH_OR_HUB_ID", type=_path_or_id)
    m.add_argument("--template", choices=TEMPLATE_CHOICES, default="auto")
    m.add_argument("--description")
    m = msub.add_parser("add-endpoint", parents=[common], help="add an OpenAI-compatible server")
    m.add_argument("name")
    m.add_argument("--base-url", required=True, metavar="URL", help="e.g. http://127.0.0.1:8000/v1")
    m.add_argument("--model", required=True, help="the server's model name")
    m.add_argument("--api-key-env", metavar="VAR", help="name of the environment variable holding the key")
    m.add_argument("--timeout", type=float, default=DEFAULT_ENDPOINT_TIMEOUT_S, metavar="SECONDS",
                   help=f"how long a request waits for the server (default {DEFAULT_ENDPOINT_TIMEOUT_S:g})")
    m.add_argument("--concurrency", type=int, default=DEFAULT_ENDPOINT_CONCURRENCY, metavar="N",
                   help=f"requests in flight at once, 1-256 (default {DEFAULT_ENDPOINT_CONCURRENCY})")
    m.add_argument("--max-retries", type=int, default=DEFAULT_ENDPOINT_MAX_RETRIES, metavar="N",
                   help="retries of a request on a rate limit (Retry-After honoured), a timeout, a server error or "
                        f"a lost connection, with exponential backoff, 0-10 (default {DEFAULT_ENDPOINT_MAX_RETRIES})")
    m.add_argument("--price-in", type=float, default=0.0, metavar="USD",
                   help="price of 1M prompt (input) tokens, for cost estimates (default 0)")
    m.add_argument("--price-out", type=float, default=0.0, metavar="USD",
                   help="price of 1M completion (output) tokens, for cost estimates (default 0)")
    m.add_argument("--replace", action="store_true", help="overwrite an endpoint of that name (change its settings)")
    m.add_argument("--description")
    m = msub.add_parser("remove", parents=[common], help="remove a model (its files stay)")
    m.add_argument("name")
    m = msub.add_parser("ping", parents=[common], help="check a model loads or an endpoint answers")
    m.add_argument("name")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("sources", parents=[common], help="list imported sources and their ids")
    s.set_defaults(func=cmd_sources)

    for name in ("list", "search"):
        if name == "list":
            s = sub.add_parser("list", parents=[common], help="list conversations (filter, search, sort, page)")
        else:
            s = sub.add_parser("search", parents=[common], help="full-text search: list --search TEXT")
            s.add_argument("text", metavar="TEXT", help='every word must match; "quoted phrases" match as phrases')
        s.add_argument("--sort", choices=tuple(SORT_COLUMNS), help="sort column (default: relevance for a "
                       "search, else id)")
        s.add_argument("--desc", action="store_true", help="sort descending")
        s.add_argument("--limit", type=int, default=25, help="rows shown (default 25)")
        s.add_argument("--offset", type=int, default=0, help="rows skipped (paging)")
        add_filter_options(s, search=(name == "list"))
        s.set_defaults(func=cmd_list if name == "list" else cmd_search)

    s = sub.add_parser("show", parents=[common], help="show one conversation's messages")
    s.add_argument("id", type=int)
    s.add_argument("--json", action="store_true", help="print {id, version, messages} (what 'edit' reads)")
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("edit", parents=[common], help="replace a conversation's messages from a JSON file")
    s.add_argument("id", type=int)
    s.add_argument("file", metavar="FILE.json", type=_path, help="a list of {role, content}, or what 'show ID --json' prints "
                   "(its version guards against overwriting a newer save); - for standard input")
    s.add_argument("--version", type=int, help="the version the edit is based on (default: the file's, else "
                   "the current one)")
    s.add_argument("--note", default="edit", help="note stored with the revision")
    s.set_defaults(func=cmd_edit)

    s = sub.add_parser("history", parents=[common], help="a conversation's versions")
    s.add_argument("id", type=int)
    s.set_defaults(func=cmd_history)

    s = sub.add_parser("diff", parents=[common], help="unified diff of two versions of a conversation")
    s.add_argument("id", type=int)
    s.add_argument("a", type=int, metavar="A", help="older version")
    s.add_argument("b", type=int, metavar="B", help="newer version")
    s.add_argument("--context", type=int, default=2, help="context lines (default 2)")
    s.set_defaults(func=cmd_diff)

    s = sub.add_parser("restore-version", parents=[common], help="make an earlier version current again")
    s.add_argument("id", type=int)
    s.add_argument("version", type=int)
    s.set_defaults(func=cmd_restore_version)

    s = sub.add_parser("bulk", parents=[common], help="tag, untag, flag, unflag, delete or restore the filter's "
                       "conversations (one undoable operation)")
    s.add_argument("action", choices=BULK_ACTIONS)
    s.add_argument("--arg", metavar="TAG_OR_REASON", help="the tag (tag, untag) or the flag reason (flag)")
    s.add_argument("--all", action="store_true", help="act on every conversation when no filter option is given")
    add_filter_options(s)
    s.set_defaults(func=cmd_bulk)

    s = sub.add_parser("undo", parents=[common], help="undo a bulk operation")
    s.add_argument("op_id", type=int, metavar="OP_ID")
    s.set_defaults(func=cmd_undo)

    s = sub.add_parser("bulk-log", parents=[common], help="recent bulk operations")
    s.add_argument("--limit", type=int, default=20)
    s.set_defaults(func=cmd_bulk_log)

    s = sub.add_parser("quality", parents=[common], help="quality filters of the Vicuna/WizardVicuna pipelines")
    qsub = s.add_subparsers(dest="quality_cmd", required=True, metavar="ACTION")
    q = qsub.add_parser("list", parents=[common], help="the filters, explained, with their parameters")
    q.set_defaults(func=cmd_quality)
    q = qsub.add_parser("run", parents=[common], help="run a filter over the filter options' conversations")
    q.add_argument("name", metavar="NAME", help="a filter from 'quality list'")
    q.add_argument("--param", action="append", metavar="K=V", help="a filter parameter (repeatable)")
    q.add_argument("--model", metavar="NAME", help="tokenizer of this registry model, for filters counting tokens "
                   f"(default {DEFAULT_MODEL_NAME})")
    q.add_argument("--show", type=int, default=20, help="found ones listed (default 20)")
    m = q.add_mutually_exclusive_group()
    m.add_argument("--flag", action="store_true", help="flag the found ones (reason: the filter's title)")
    m.add_argument("--tag", metavar="TAG", help="tag the found ones")
    m.add_argument("--delete", action="store_true", help="delete the found ones")
    add_filter_options(q, tag=False)
    q.set_defaults(func=cmd_quality)

    s = sub.add_parser("split-long", parents=[common], help="split conversations over a token budget into "
                       "whole-round chunks (FastChat split_long_conversation)")
    s.add_argument("--max-tokens", type=int, required=True, metavar="N", help="the budget (training context)")
    s.add_argument("--model", metavar="NAME", help=f"whose tokenizer counts (default {DEFAULT_MODEL_NAME})")
    s.add_argument("--dry-run", action="store_true", help="only count what would be split")
    add_filter_options(s, tokens=False)
    s.set_defaults(func=cmd_split_long)

    s = sub.add_parser("stats", parents=[common], help="totals and distributions of the filter's conversations")
    add_filter_options(s)
    s.set_defaults(func=cmd_stats)

    s = sub.add_parser("count-tokens", parents=[common], help="count tokens of conversations not counted yet")
    s.add_argument("--model", metavar="NAME", help=f"whose tokenizer counts (default {DEFAULT_MODEL_NAME})")
    s.set_defaults(func=cmd_count_tokens)

    s = sub.add_parser("serve", parents=[common], help="start the web app")
    s.add_argument("--host", help="default $STUDIO_HOST or 127.0.0.1")
    s.add_argument("--port", type=int, help="default $STUDIO_PORT or 7860")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("serve-api", parents=[common], help="serve the OpenAI-compatible /v1 API only")
    s.add_argument("--host", help="default $STUDIO_HOST or 127.0.0.1")
    s.add_argument("--port", type=int, help=f"default {API_PORT}")
    s.set_defaults(func=cmd_serve_api)

    _add_job_commands(sub, common)
    add_arena_commands(sub, common)
    add_judge_commands(sub, common, _watch)
    add_preference_commands(sub, common)
    return p


def _run(args, *, forward_held: bool = False) -> int:
    """Run a parsed command with the one error scheme: 0 ok, 2 error (``error: ...`` on stderr), 130 Ctrl-C.

    Args:
        forward_held: when the database is held by another process, send the command to the running studio
            that holds it (``studio.remote``) and return its exit code; the lock is reported only when no
            studio answers.
    """
    try:
        return int(args.func(args) or 0)
    except DatabaseHeld as e:
        if forward_held and args.func.__name__ not in LOCAL_ONLY:
            from . import remote

            info = remote.find_server(_settings(args).data_dir)
            if info is not None:
                try:
                    return remote.forward(info, payload_of(args), sys.stdout, sys.stderr)
                except remote.ServerUnreachable as why:
                    e = DatabaseHeld(f"{e}\n({why})")
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (CliError, StoreError, RegistryError, FormatError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


LOCAL_ONLY = ("cmd_serve", "cmd_serve_api")
"""Commands never sent to a running studio (they start one)."""


def payload_of(args) -> dict:
    """A parsed command as JSON for ``studio.remote.forward``: its argument values (file arguments are already
    absolute, see ``_path``) and the name of its command function."""
    d = {k: v for k, v in vars(args).items() if k != "func"}
    d["__command__"] = args.func.__name__
    return d


def _commands(parser: argparse.ArgumentParser) -> dict:
    """Every command function the parser can dispatch to, by name."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                func = sub.get_default("func")
                if func is not None:
                    found[func.__name__] = func
                found.update(_commands(sub))
    return found


def run_payload(payload: dict, studio, interrupt: "threading.Event | None" = None) -> int:
    """Run a command sent by ``payload_of`` inside a running studio (``studio.server`` routes it here); what it
    prints is what it would print locally.

    Returns:
        The exit code; 2 for an unknown or local-only command.
    """
    # Path arguments (export --out, export-model --out, import FILE, ...) are used as given, as on the command
    # line, not confined to the data folder: the route that calls this (studio.remote) answers only loopback
    # clients holding the token of the 0600 control file, i.e. the machine's user who owns the data folder and
    # could run this command locally anyway. Page visitors never reach it; their export names stay in
    # <data>/exports (RunManager.export_folder).
    payload = dict(payload)
    name = payload.pop("__command__", None)
    func = _commands(build_parser()).get(name)
    if func is None or name in LOCAL_ONLY:
        print(f"error: '{name}' cannot be run inside the studio", file=sys.stderr)
        return 2
    args = argparse.Namespace(**payload, func=func)
    token, itoken = _ATTACHED.set(studio), _INTERRUPT.set(interrupt)
    try:
        return _run(args)
    finally:
        _ATTACHED.reset(token)
        _INTERRUPT.reset(itoken)


def main(argv: list[str] | None = None) -> int:
    """Run one ``wvstudio`` command. Returns the exit code (0 ok, 2 error, 130 interrupted).

    When the data folder's database is held by a running studio, the command runs inside that studio
    (``studio.remote``) and prints the same output; only when no studio answers is the lock reported.
    """
    return _run(build_parser().parse_args(argv), forward_held=True)


if __name__ == "__main__":
    sys.exit(main())
