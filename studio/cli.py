"""The command line, ``wvstudio``: every tab's main action is also a command.

Commands (each takes ``--data-dir``, default ``$STUDIO_DATA_DIR`` or ``./data``):

- ``import FILE [FILE...] [--format F]``: import data files, listing their bad rows.
- ``expand (--source ID | --all) --n N [--teacher NAME] ...``: expand seeds into conversations and wait,
  with a progress bar; Ctrl-C stops the job cleanly. ``expand --resume JOB_ID`` finishes a stopped job.
- ``export [--out PATH] [--format sharegpt|openai] [--source ID] [--status S] [--origin O]``.
- ``models list | add-hf | add-endpoint | remove | ping``: the model registry.
- ``sources``: imported files and their ids. ``list``, ``show ID``: conversations. ``jobs``: recent jobs.
- ``serve``: the web app. ``serve-api``: only the OpenAI-compatible ``/v1`` API.

Exit codes: 0 success; 2 an error (bad file, unknown model, database locked by a running web app, bad value),
printed as ``error: <message>`` on stderr without a traceback; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import Settings
from .formats import FORMATS, FormatError
from .registry import DEFAULT_MODEL_NAME, TEMPLATE_CHOICES, GenParams, ModelSpec, RegistryError
from .store import StoreError

MAX_BAD_ROWS_SHOWN = 20
"""Bad rows listed per imported file; the rest are counted."""

API_PORT = 8000
"""Default port of ``serve-api`` (the web app keeps ``Settings.port``, 7860)."""


class CliError(Exception):
    """A user-facing failure of a command; printed as ``error: <message>``, exit code 2."""


# ---------------------------------------------------------------------------------------------- helpers


def _settings(args) -> Settings:
    data_dir = getattr(args, "data_dir", None)
    return Settings(data_dir=Path(data_dir)) if data_dir else Settings()


def _open(args, *, start_jobs: bool = False):
    """A Studio on the command's data folder; a locked database gets a hint about the web app."""
    from .core import Studio

    settings = _settings(args)
    try:
        return Studio(settings, start_jobs=start_jobs)
    except StoreError as e:
        raise CliError(f"{e}\n(is the web app or another wvstudio command using {settings.data_dir}? stop it, "
                       "or give another --data-dir)") from e


def _cell(v, width: int | None = None) -> str:
    import pandas as pd

    if v is None or (not isinstance(v, (list, dict, tuple)) and pd.isna(v)):  # None / NaN / NA
        s = ""
    elif hasattr(v, "strftime"):
        s = v.strftime("%Y-%m-%d %H:%M:%S")
    else:
        s = " ".join(str(v).split())
    if width and len(s) > width:
        s = s[: width - 1] + "…"
    return s


def table(rows: list[list], headers: list[str], widths: dict[str, int] | None = None) -> str:
    """Plain-text table with a header line; ``widths`` caps some columns (characters)."""
    widths = widths or {}
    cells = [[_cell(v, widths.get(h)) for h, v in zip(headers, r)] for r in rows]
    size = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(size[i]) for i, h in enumerate(headers)).rstrip(),
             "  ".join("-" * size[i] for i in range(len(headers)))]
    lines += ["  ".join(c.ljust(size[i]) for i, c in enumerate(r)).rstrip() for r in cells]
    return "\n".join(lines)


def _df_table(df, columns: list[str], widths: dict[str, int] | None = None) -> str:
    return table(df[columns].astype(object).values.tolist(), columns, widths)


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


def _watch(studio, job_id: int, data_dir: Path) -> int:
    """Show a job's progress until it finishes; Ctrl-C stops it cleanly. Returns the exit code."""
    from tqdm import tqdm

    jobs = studio.jobs
    p = jobs.progress(job_id)
    resume = f"wvstudio expand --resume {job_id} --data-dir {data_dir}"
    bar = tqdm(total=p.total, unit="conv", desc=f"job {job_id}", dynamic_ncols=True, file=sys.stderr)
    stopping = False
    try:
        while True:
            try:
                p = jobs.progress(job_id)
                bar.n = p.done + p.failed
                bar.set_postfix_str(p.message[:80], refresh=False)
                bar.refresh()
                if p.finished and job_id not in jobs.active():
                    break
                time.sleep(0.3)
            except KeyboardInterrupt:
                if stopping:  # second Ctrl-C: leave now; the job is marked interrupted on next start
                    bar.close()
                    print(f"\nleft without waiting; resume with: {resume}", file=sys.stderr)
                    return 130
                stopping = True
                bar.write("stopping after the current batch (Ctrl-C again to leave at once)...",
                          file=sys.stderr)
                jobs.stop(job_id)
    finally:
        bar.close()
    print(p.line())
    if p.status == "stopped":
        print(f"resume with: {resume}")
        return 130 if stopping else 0
    if p.status == "failed":
        print(f"error: job {job_id} failed: {p.message}\nresume with: {resume}", file=sys.stderr)
        return 2
    return 0


def cmd_expand(args) -> int:
    """Queue an expansion (or resume one) and wait for it, showing progress."""
    from .expand import JOB_KIND, ExpandConfig, ExpansionPrompts

    studio = _open(args, start_jobs=True)
    try:
        if args.resume is not None:
            job = studio.store.get_job(args.resume)
            if job["kind"] != JOB_KIND:
                raise CliError(f"job {args.resume} is a '{job['kind']}' job, not an expansion")
            studio.registry.get(ExpandConfig.from_params(job["params"]).teacher)
            studio.jobs.resume(args.resume)
            job_id = args.resume
            print(f"resuming job {job_id}: {len(studio.store.pending_items(job_id))} seeds left")
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
        return _watch(studio, job_id, studio.settings.data_dir)
    finally:
        studio.close()


# ---------------------------------------------------------------------------------------------- export, list


def cmd_export(args) -> int:
    """Write the matching conversations to a file; prints the path and the count."""
    studio = _open(args)
    try:
        path, n = studio.export(args.out, fmt=args.format, source_id=args.source, status=args.status,
                                origin=args.origin)
    finally:
        studio.close()
    print(f"wrote {n} conversations to {path}")
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


def cmd_list(args) -> int:
    """A table of conversations (id, source, origin, turns, status, teacher, title)."""
    studio = _open(args)
    try:
        df, total = studio.store.list_conversations(source_id=args.source, status=args.status,
                                                    origin=args.origin, limit=args.limit)
    finally:
        studio.close()
    if total == 0:
        print("no conversations")
        return 0
    print(_df_table(df, ["id", "source", "origin", "turns", "status", "teacher", "title"],
                    {"source": 28, "teacher": 24, "title": 60}))
    print(f"{len(df)} of {total} conversations")
    return 0


def cmd_show(args) -> int:
    """One conversation's details and messages."""
    studio = _open(args)
    try:
        conv = studio.store.get_conversation(args.id)
    finally:
        studio.close()
    head = f"conversation {conv['id']} ({conv['origin']}, {conv['status']}, version {conv['version']}"
    if conv.get("source"):
        head += f", from {conv['source']}"
    if conv.get("teacher"):
        head += f", teacher {conv['teacher']}"
    print(head + ")")
    if conv.get("deleted_at") is not None:
        print("(deleted)")
    for i, m in enumerate(conv["messages"], 1):
        print(f"\n[{i}] {m['role']}:\n{m['content']}")
    return 0


def cmd_jobs(args) -> int:
    """Recent jobs, newest first."""
    studio = _open(args)
    try:
        df = studio.store.list_jobs(limit=args.limit)
    finally:
        studio.close()
    if df.empty:
        print("no jobs")
        return 0
    print(_df_table(df, ["id", "kind", "status", "total", "n_done", "n_failed", "created_at", "error"],
                    {"error": 60}))
    return 0


# ---------------------------------------------------------------------------------------------- models


def cmd_models(args) -> int:
    """``models list|add-hf|add-endpoint|remove|ping``."""
    studio = _open(args)
    reg = studio.registry
    try:
        if args.models_cmd == "list":
            rows = [[s.name + (" (default)" if s.builtin else ""), s.kind, s.where,
                     s.template if s.kind != "endpoint" else "(server's)"] for s in reg.list()]
            print(table(rows, ["name", "kind", "where", "template"], {"where": 70}))
        elif args.models_cmd == "add-hf":
            kind = "gguf" if args.path.lower().endswith(".gguf") else "hf"
            spec = reg.add(ModelSpec(name=args.name, kind=kind, path=args.path, template=args.template,
                                     description=args.description or ""))
            print(f"added {spec.kind} model '{spec.name}': {spec.where}")
        elif args.models_cmd == "add-endpoint":
            spec = reg.add_endpoint(args.name, args.base_url, args.model, args.api_key_env,
                                    description=args.description or "")
            print(f"added endpoint '{spec.name}': {spec.where}"
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
    """Start the web app (``studio.ui.app.launch``); blocks until it is stopped."""
    try:
        from .ui.app import launch
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
        uvicorn.run(make_app(studio), host=host, port=port, log_level="info")
    finally:
        studio.close()
    return 0


# ---------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``wvstudio`` argument parser (every subcommand takes ``--data-dir``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=argparse.SUPPRESS, metavar="DIR",
                        help="data folder (default: $STUDIO_DATA_DIR or ./data)")

    p = argparse.ArgumentParser(prog="wvstudio", description="WizardVicuna Studio: seeds in, expanded multi-turn "
                                "conversations out; curate, fine-tune and judge chat models.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("import", parents=[common], help="import data files (seeds or conversations)")
    s.add_argument("files", nargs="+", metavar="FILE")
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
    s.add_argument("--batch-size", type=int, default=5, help="seeds expanded together (default 5)")
    s.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    s.add_argument("--prompts", metavar="FILE.json",
                   help="expansion prompts: a JSON object with system, followup, max_transcript_chars")
    s.set_defaults(func=cmd_expand)

    s = sub.add_parser("export", parents=[common], help="export conversations to a file")
    s.add_argument("--out", metavar="PATH", help="file to write (default: <data>/exports/conversations-<time>)")
    s.add_argument("--format", choices=("sharegpt", "openai"), default="sharegpt")
    s.add_argument("--source", type=int, metavar="ID")
    s.add_argument("--status", choices=("all", "new", "edited", "deleted"))
    s.add_argument("--origin", choices=("all", "imported", "expanded"))
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("models", parents=[common], help="the model registry")
    msub = s.add_subparsers(dest="models_cmd", required=True, metavar="ACTION")
    m = msub.add_parser("list", parents=[common], help="list the registry's models")
    m = msub.add_parser("add-hf", parents=[common], help="add a Hugging Face checkpoint (folder or hub id) "
                        "or a .gguf file")
    m.add_argument("name")
    m.add_argument("path", metavar="PATH_OR_HUB_ID")
    m.add_argument("--template", choices=TEMPLATE_CHOICES, default="auto")
    m.add_argument("--description")
    m = msub.add_parser("add-endpoint", parents=[common], help="add an OpenAI-compatible server")
    m.add_argument("name")
    m.add_argument("--base-url", required=True, metavar="URL", help="e.g. http://127.0.0.1:8000/v1")
    m.add_argument("--model", required=True, help="the server's model name")
    m.add_argument("--api-key-env", metavar="VAR", help="name of the environment variable holding the key")
    m.add_argument("--description")
    m = msub.add_parser("remove", parents=[common], help="remove a model (its files stay)")
    m.add_argument("name")
    m = msub.add_parser("ping", parents=[common], help="check a model loads or an endpoint answers")
    m.add_argument("name")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("sources", parents=[common], help="list imported sources and their ids")
    s.set_defaults(func=cmd_sources)

    s = sub.add_parser("list", parents=[common], help="list conversations")
    s.add_argument("--source", type=int, metavar="ID")
    s.add_argument("--status", choices=("all", "new", "edited", "deleted"))
    s.add_argument("--origin", choices=("all", "imported", "expanded"))
    s.add_argument("--limit", type=int, default=25)
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("show", parents=[common], help="show one conversation's messages")
    s.add_argument("id", type=int)
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("jobs", parents=[common], help="recent jobs")
    s.add_argument("--limit", type=int, default=20)
    s.set_defaults(func=cmd_jobs)

    s = sub.add_parser("serve", parents=[common], help="start the web app")
    s.add_argument("--host", help="default $STUDIO_HOST or 127.0.0.1")
    s.add_argument("--port", type=int, help="default $STUDIO_PORT or 7860")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("serve-api", parents=[common], help="serve the OpenAI-compatible /v1 API only")
    s.add_argument("--host", help="default $STUDIO_HOST or 127.0.0.1")
    s.add_argument("--port", type=int, help=f"default {API_PORT}")
    s.set_defaults(func=cmd_serve_api)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one ``wvstudio`` command. Returns the exit code (0 ok, 2 error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CliError, StoreError, RegistryError, FormatError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
