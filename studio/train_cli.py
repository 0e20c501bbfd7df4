"""Training from the command line: the Train tab's actions as ``wvstudio`` commands.

- ``train --config FILE.json``: create a run (fields as ``RunManager.create_run``: ``base_model`` (required),
  ``method``, ``filters``, ``hyperparams``, ``template``, ``num_processes``, ``backend``, ``eval_fraction``,
  ``name``), start it and wait with a progress bar. Ctrl-C stops it cleanly (a checkpoint is saved; resume
  later); a second Ctrl-C kills it at once. ``--dry-run`` prints the command and config without creating
  anything. ``train --resume RUN_ID`` continues a stopped or failed run.
- ``runs``: the runs of the data folder, newest first.
- ``merge NAME_OR_RUN [--out DIR] [--name NAME]``: merge a LoRA adapter into its base; registers the result.
- ``export-model NAME --out DIR [--push-to-hub REPO] [--no-merge]``: write a model to a folder (adapters merged),
  and upload it with ``$HF_TOKEN``. (``export`` is the conversations export.)

``add_commands(subparsers)`` adds them to the ``wvstudio`` parser. Each handler is called as
``handler(args, studio)`` and returns the exit code: 0 success, 2 a user error (printed as ``error: ...``),
130 interrupted; called as ``handler(args)`` it opens the studio of ``--data-dir`` itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .registry import RegistryError
from .store import StoreError
from .train import RunError, RunManager, backends, fmt_duration

CONFIG_FIELDS = ("base_model", "method", "filters", "hyperparams", "template", "num_processes", "backend",
                 "eval_fraction", "name")
"""Fields of a ``train --config`` file (``base_model`` is required)."""

USER_ERRORS = (RunError, RegistryError, StoreError, ValueError, OSError)


def _runs(studio) -> RunManager:
    runs = getattr(studio, "runs", None)
    return runs if isinstance(runs, RunManager) else RunManager(studio, autostart=False)


def _studio_handler(fn):
    """Let a handler take ``(args, studio)``, or ``(args)`` and open the studio of ``--data-dir`` itself; user
    errors become ``error: ...`` on stderr and exit code 2."""

    def handler(args, studio=None) -> int:
        own = None
        try:
            if studio is None:
                from .config import Settings
                from .core import Studio

                data_dir = getattr(args, "data_dir", None)
                own = studio = Studio(Settings(data_dir=Path(data_dir)) if data_dir else Settings(), start_jobs=False)
            return int(fn(args, studio) or 0)
        except USER_ERRORS as e:
            print(f"error: {str(e).strip(chr(39) + chr(34))}", file=sys.stderr)
            return 2
        finally:
            if own is not None:
                own.close()

    handler.__name__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler


def load_train_config(path: str | Path) -> dict:
    """Read a ``train --config`` JSON file.

    Raises:
        RunError: the file is missing, not JSON, not an object, lacks ``base_model`` or has unknown fields (the
            message names the file and the field).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RunError(f"{path}: cannot read the config file ({e.strerror or e})") from e
    except json.JSONDecodeError as e:
        raise RunError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from e
    if not isinstance(data, dict):
        raise RunError(f"{path}: the config must be a JSON object with {', '.join(CONFIG_FIELDS)}")
    unknown = sorted(set(data) - set(CONFIG_FIELDS))
    if unknown:
        raise RunError(f"{path}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(CONFIG_FIELDS)})")
    if not data.get("base_model"):
        raise RunError(f"{path}: 'base_model' is required (a registry model name; see 'wvstudio models list')")
    for key, typ in (("filters", dict), ("hyperparams", dict)):
        if data.get(key) is not None and not isinstance(data[key], typ):
            raise RunError(f"{path}: '{key}' must be a JSON object")
    return data


def watch(runs: RunManager, run_id: str, *, poll: float = 0.5, out=None) -> int:
    """Show a run's progress until it is no longer queued or running. Ctrl-C stops it cleanly (checkpoint
    saved), a second Ctrl-C kills it. Returns the exit code: 0 finished (or stopped by someone else), 130 stopped
    here, 2 failed."""
    from tqdm import tqdm

    out = out or sys.stderr
    # the rate and ETA shown are the training program's (tqdm's would count model loading and earlier attempts)
    bar = tqdm(total=None, unit="step", desc=run_id[:40], dynamic_ncols=True, file=out,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}]{postfix}")
    stops = 0
    s = runs.status(run_id)
    try:
        while True:
            try:
                s = runs.status(run_id)
                if s.get("max_steps") and bar.total != s["max_steps"]:
                    bar.total = s["max_steps"]
                if s.get("step") is not None:
                    bar.n = s["step"]
                post = [s["state"] if s.get("step") is not None else (s.get("message") or s["state"])]
                if s.get("loss") is not None:
                    post.append(f"loss {s['loss']:.4f}")
                if s.get("eval_loss") is not None:
                    post.append(f"eval {s['eval_loss']:.4f}")
                if s.get("tokens_per_second"):
                    post.append(f"{s['tokens_per_second']:,.0f} tok/s")
                if s.get("eta_s") is not None:
                    post.append(f"ETA {fmt_duration(s['eta_s'])}")
                bar.set_postfix_str(" · ".join(post), refresh=False)
                bar.refresh()
                if s["state"] not in ("queued", "running", "stopping"):
                    break
                time.sleep(poll)
            except KeyboardInterrupt:
                stops += 1
                if stops == 1:
                    bar.write("stopping: saving a checkpoint (Ctrl-C again to kill it now)...")
                    try:
                        runs.stop(run_id)
                    except RunError:
                        pass
                else:
                    bar.write("killing the run; it resumes from its last saved checkpoint")
                    try:
                        runs.stop(run_id, force=True)
                    except RunError:
                        pass
    finally:
        bar.close()
    print(RunManager.line(s))
    resume = f"wvstudio train --resume {run_id} --data-dir {runs.studio.settings.data_dir}"
    if s["state"] == "finished":
        if s.get("registered_as"):
            print(f"registered as '{s['registered_as']}' (wvstudio models list)")
        return 0
    if s["state"] == "failed":
        print(f"error: run {run_id} {s['message'] or 'failed'}\nlog: {runs.run_dir(run_id) / 'train.log'}\n"
              f"resume with: {resume}", file=sys.stderr)
        return 2
    print(f"resume with: {resume}")
    return 130 if stops else 0


def _table(rows: list[list[str]], headers: list[str], widths: dict[str, int]) -> str:
    cells = [[(c if len(c) <= widths.get(h, 10**6) else c[: widths[h] - 1] + "…") for h, c in zip(headers, r)]
             for r in rows]
    size = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(size[i]) for i, h in enumerate(headers)).rstrip(), "  ".join("-" * n for n in size)]
    return "\n".join(lines + ["  ".join(c.ljust(size[i]) for i, c in enumerate(r)).rstrip() for r in cells])


@_studio_handler
def cmd_train(args, studio) -> int:
    """``train --config FILE.json [--dry-run]`` or ``train --resume RUN_ID``: run training and wait."""
    runs = _runs(studio)
    if args.resume:
        runs.resume(args.resume)
        print(f"resuming run {args.resume}: {runs.command_str(args.resume, resume=True)}")
        return watch(runs, args.resume)
    if not args.config:
        raise RunError("give --config FILE.json (a run's settings) or --resume RUN_ID")
    cfg = load_train_config(args.config)
    if args.dry_run:
        cmd, config = runs.preview(cfg["base_model"], cfg.get("method", "lora"), cfg.get("filters"),
                                   cfg.get("hyperparams"), cfg.get("template", "vicuna_v1.1"),
                                   cfg.get("num_processes", 1), cfg.get("backend"))
        n = studio.store.count_conversations(**{k: v for k, v in config.pop("filters").items()})
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
        pos = runs.start(run_id)
    except RunError as e:
        print(f"the run was created but not started: {e}", file=sys.stderr)
        return 2
    if pos:
        print(f"queued behind {pos} run(s)")
    return watch(runs, run_id)


@_studio_handler
def cmd_runs(args, studio) -> int:
    """A table of the runs, newest first."""
    all_runs = _runs(studio).list_runs()
    if not all_runs:
        print("no runs: start one with 'wvstudio train --config FILE.json'")
        return 0
    rows = [[r["run_id"], r["state"], r["base_model"], r["method"],
             f"{r['step']}/{r['max_steps']}" if r.get("step") is not None else "",
             f"{r['loss']:.4f}" if r.get("loss") is not None else "",
             f"{r['eval_loss']:.4f}" if r.get("eval_loss") is not None else "",
             r.get("registered_as") or "", r.get("message") or ""] for r in all_runs]
    print(_table(rows, ["run", "state", "base", "method", "step", "loss", "eval loss", "registered as", "message"],
                 {"run": 48, "message": 60}))
    return 0


@_studio_handler
def cmd_merge(args, studio) -> int:
    """Merge an adapter (registry name or run id) into its base and register the full checkpoint."""
    name = _runs(studio).merge(args.name, args.out, name=args.new_name)
    spec = studio.registry.get(name)
    print(f"merged into {spec.path}; registered as '{name}'")
    return 0


@_studio_handler
def cmd_export_model(args, studio) -> int:
    """Write a registry model to a folder (adapters merged) and optionally push it to the Hub."""
    res = _runs(studio).export(args.name, args.out, push_to_hub=args.push_to_hub, merge=not args.no_merge)
    print(f"exported '{args.name}' to {res['path']}" + (f"; pushed to {res['url']}" if res["url"] else ""))
    return 0


def add_commands(subparsers) -> None:
    """Add ``train``, ``runs``, ``merge`` and ``export-model`` to an argparse subparsers object (each takes
    ``--data-dir``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=argparse.SUPPRESS, metavar="DIR",
                        help="data folder (default: $STUDIO_DATA_DIR or ./data)")

    s = subparsers.add_parser("train", parents=[common], help="fine-tune a model (LoRA, QLoRA, full) and wait",
                              description="Fine-tune with the Vicuna v1.1 recipe. The config file is a JSON object "
                              f"with {', '.join(CONFIG_FIELDS)}; e.g. {{\"base_model\": \"SmolLM2-135M-Instruct\", "
                              "\"method\": \"lora\", \"filters\": {\"origin\": \"expanded\"}, \"hyperparams\": "
                              "{\"num_train_epochs\": 1}}. Distributed backends: " + ", ".join(backends()) + ".")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", metavar="FILE.json", help="the run's settings (see above)")
    g.add_argument("--resume", metavar="RUN_ID", help="continue a stopped or failed run from its last checkpoint")
    s.add_argument("--dry-run", action="store_true", help="print the command and config.json; create nothing")
    s.set_defaults(func=cmd_train)

    s = subparsers.add_parser("runs", parents=[common], help="list training runs")
    s.set_defaults(func=cmd_runs)

    s = subparsers.add_parser("merge", parents=[common], help="merge a LoRA adapter into its base model")
    s.add_argument("name", metavar="NAME_OR_RUN", help="an adapter's registry name, or a run id")
    s.add_argument("--out", metavar="DIR", help="folder for the merged checkpoint (default: in the model folder)")
    s.add_argument("--name", dest="new_name", metavar="NAME", help="registry name (default: <adapter>-merged)")
    s.set_defaults(func=cmd_merge)

    s = subparsers.add_parser("export-model", parents=[common], help="write a model to a folder / the Hub")
    s.add_argument("name", metavar="NAME", help="registry model name")
    s.add_argument("--out", required=True, metavar="DIR", help="folder to write (must be new or empty)")
    s.add_argument("--push-to-hub", metavar="REPO", help="also upload to this Hub repo (needs $HF_TOKEN)")
    s.add_argument("--no-merge", action="store_true", help="copy an adapter as it is instead of merging it")
    s.set_defaults(func=cmd_export_model)
