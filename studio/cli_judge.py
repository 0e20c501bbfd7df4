"""``wvstudio judge ...``: LLM-as-judge runs from the command line (registered by ``studio.cli.build_parser``).

- ``judge run --questions FILE_OR_SOURCE [--limit N] --models A[,B...] --judge J [--mode single|table|pairwise]
  [--max-new-tokens N] [--judge-max-new-tokens N] [--baseline M] [--batch-size N] [--seed S]``: start a run and
  wait for it with the job progress bar (Ctrl-C stops it; ``wvstudio resume JOB`` finishes it), then print its
  table. ``FILE_OR_SOURCE``: a question file, ``mt_bench``, ``wizardlm`` or ``source:<id>``.
- ``judge table [RUN_ID] [--by category|difficulty] [--relative-to MODEL]``: a run's question x model table
  ending with the ``Average`` row (latest run by default); a pairwise run prints win, loss and tie rates.
  ``--by`` adds the per-category (MT-bench) / per-skill or difficulty (WizardLM) means, ``--relative-to R``
  WizardLM's "x% of R" per group.
- ``judge export [RUN_ID] --out FILE.md|FILE.csv``: the table in the WizardVicunaLM README layout (Markdown) or
  as CSV.
- ``judge runs``: recent runs.

The method is ``studio.judge``'s; like every command these open the data folder with ``cli_common._open``.
"""

from __future__ import annotations

import argparse

from .cli_common import CliError, _open, _path, table

MODES = ("single", "table", "pairwise")


def _models(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give one or more model names separated by commas")
    return names


def _questions(text: str) -> str:
    """A set key as is; anything else is a question file path, made absolute (see ``cli_common._path``)."""
    if text in ("mt_bench", "wizardlm") or text.startswith("source:"):
        return text
    return _path(text)


def _run_id(studio, given: int | None) -> int:
    if given is not None:
        studio.store.judge_run(given)  # StoreError for an unknown id
        return given
    rid = studio.store.latest_judge_run_id()
    if rid is None:
        raise CliError("no judge runs yet: start one with 'wvstudio judge run'")
    return rid


def _num(v) -> str:
    return "" if v is None else f"{v:.2f}"


def _print_results(studio, run_id: int, by: str | None = None, relative_to: str | None = None) -> None:
    from .judge import breakdown, pairwise_table, relative_scores, score_table, table_rows

    run = studio.store.judge_run(run_id)
    print(f"judge run {run_id}: {run['mode']}, judge {run['judge']}, {len(run['questions'])} questions of "
          f"{run['question_set']}")
    if run["mode"] == "pairwise":
        pt = pairwise_table(studio.store, run_id)
        rows = [[r.model, r.win, r.loss, r.tie, _num(r.win_rate), _num(r.loss_rate), _num(r.win_rate_adjusted)]
                for r in pt.rates]
        print(table(rows, ["model", "win", "loss", "tie", "win rate", "loss rate", "adjusted win rate"],
                    {"model": 40}))
        base = f" against {pt.baseline}" if pt.baseline else ""
        print(f"{len(pt.outcomes)} pairs judged in both orders{base}; {pt.errors} left out (unparsable verdict)")
        return
    t = score_table(studio.store, run_id)
    if by:
        groups = breakdown(t, by)
        print(table([[g, *[_num(v[m]) for m in t.models]] for g, v in groups.items()], [by, *t.models]))
        print()
    if relative_to:
        rel = relative_scores(t, relative_to, by or "category")
        print(table([[g, *[("" if v[m] is None else f"{v[m]:.1f}%") for m in t.models]] for g, v in rel.items()],
                    [f"% of {relative_to}", *t.models]))
        print()
    n_err = ", ".join(f"{m} {n}" for m, n in t.n_errors.items() if n)
    print(f"scale 1-{t.scale}; unparsable judgments left out: {t.errors}" + (f" ({n_err})" if n_err else ""))
    headers, rows = table_rows(t)
    print(table(rows, headers))


def cmd_judge_run(args, watch) -> int:
    """Start a judge run, wait for it (progress bar), print its table."""
    from .judge import JudgeConfig

    cfg = JudgeConfig(questions=args.questions, models=args.models, judge=args.judge, mode=args.mode,
                      limit=args.limit, baseline=args.baseline, max_new_tokens=args.max_new_tokens,
                      judge_max_new_tokens=args.judge_max_new_tokens, batch_size=args.batch_size, seed=args.seed)
    studio = _open(args, start_jobs=True)
    try:
        run_id, job_id = studio.judge(cfg)
        n = studio.jobs.progress(job_id).total
        print(f"judge run {run_id} (job {job_id}): {n} questions, {cfg.mode}, models {', '.join(cfg.models)}, "
              f"judge {cfg.judge}")
        rc = watch(studio, job_id)
        if studio.store.judgment_keys(run_id):
            _print_results(studio, run_id)
        return rc
    finally:
        studio.close()


def cmd_judge_table(args) -> int:
    """Print a run's table (latest run by default)."""
    studio = _open(args)
    try:
        _print_results(studio, _run_id(studio, args.run_id), args.by, args.relative_to)
    finally:
        studio.close()
    return 0


def cmd_judge_export(args) -> int:
    """Write a run's table to a .md or .csv file."""
    from pathlib import Path

    from .judge import export_table

    if not Path(args.out).parent.is_dir():
        raise CliError(f"{Path(args.out).parent}: no such folder")
    studio = _open(args)
    try:
        run_id = _run_id(studio, args.run_id)
        path = export_table(studio.store, run_id, args.out)
    finally:
        studio.close()
    print(f"wrote judge run {run_id}'s table to {path}")
    return 0


def cmd_judge_runs(args) -> int:
    """List recent judge runs."""
    studio = _open(args)
    try:
        runs = studio.store.judge_runs()
    finally:
        studio.close()
    if not runs:
        print("no judge runs yet")
        return 0
    rows = [[r["id"], r["job_id"], r["mode"], r["judge"], ", ".join(r["models"]), r["question_set"],
             r["n_questions"], r["created_at"]] for r in runs]
    print(table(rows, ["run", "job", "mode", "judge", "models", "questions", "n", "created"], {"models": 50}))
    return 0


def add_judge_commands(sub, common: argparse.ArgumentParser, watch) -> None:
    """Register ``judge run|table|export|runs`` on the ``wvstudio`` subparsers ``sub`` (``common``: the parent
    parser giving ``--data-dir``; ``watch(studio, job_id) -> exit code``: ``studio.cli``'s job progress bar)."""
    from .registry import DEFAULT_MODEL_NAME

    s = sub.add_parser("judge", parents=[common], help="LLM-as-judge: score models' answers, tables, export")
    jsub = s.add_subparsers(dest="judge_cmd", required=True, metavar="ACTION")

    a = jsub.add_parser("run", parents=[common], help="answer questions with each model, judge them, and wait")
    a.add_argument("--questions", required=True, type=_questions, metavar="FILE_OR_SOURCE",
                   help="a question file (MT-bench or WizardLM test-set JSON lines), mt_bench, wizardlm or source:<id>")
    a.add_argument("--limit", type=int, metavar="N", help="only the first N questions")
    a.add_argument("--models", required=True, type=_models, metavar="A[,B...]", help="registry models to evaluate")
    a.add_argument("--judge", required=True, metavar="J", help=f"registry model that judges (e.g. {DEFAULT_MODEL_NAME})")
    a.add_argument("--mode", choices=MODES, default="single",
                   help="single: 1-10 per answer (MT-bench); table: 1-100 for all answers at once (WizardVicunaLM); "
                        "pairwise: A/B verdicts in both orders (default single)")
    a.add_argument("--max-new-tokens", type=int, default=1024, metavar="N",
                   help="longest answer per turn, tokens (default 1024)")
    a.add_argument("--judge-max-new-tokens", type=int, default=2048, metavar="N",
                   help="longest judgment, tokens (default 2048)")
    a.add_argument("--baseline", metavar="M", help="pairwise: compare every model with this one (default: all pairs)")
    a.add_argument("--batch-size", type=int, default=8, metavar="N", help="questions handled together (default 8)")
    a.add_argument("--seed", type=int, help="random seed for reproducible answers")

    def run_and_watch(args) -> int:
        return cmd_judge_run(args, watch)

    run_and_watch.__name__ = "cmd_judge_run"  # the name studio.remote sends a command by
    a.set_defaults(func=run_and_watch)

    a = jsub.add_parser("table", parents=[common], help="a run's question x model table with its Average row")
    a.add_argument("run_id", nargs="?", type=int, metavar="RUN_ID", help="default: the latest run")
    a.add_argument("--by", choices=("category", "difficulty"), help="also the mean per category/skill or difficulty")
    a.add_argument("--relative-to", metavar="MODEL", help="also WizardLM's 'x%% of MODEL' per group")
    a.set_defaults(func=cmd_judge_table)

    a = jsub.add_parser("export", parents=[common], help="write a run's table as Markdown (.md) or CSV (.csv)")
    a.add_argument("run_id", nargs="?", type=int, metavar="RUN_ID", help="default: the latest run")
    a.add_argument("--out", required=True, type=_path, metavar="FILE", help="FILE.md or FILE.csv")
    a.set_defaults(func=cmd_judge_export)

    a = jsub.add_parser("runs", parents=[common], help="recent judge runs")
    a.set_defaults(func=cmd_judge_runs)
