"""``wvstudio prefs ...`` and ``wvstudio train`` with method ``dpo``: preference sets and DPO runs from the command
line (registered by ``studio.cli.build_parser``).

- ``prefs build --name NAME [--no-votes] [--no-thumbs] [--judge-run ID ...]``: a preference set from Arena votes,
  Chat thumbs and pairwise judge runs; prints the pairs made and what was left out (ties, both-bad, ...).
- ``prefs import FILE [--name NAME]``: a TRL-format (or UltraFeedback binarized) file as a new set.
- ``prefs list``: the sets, newest first, with their counts and hashes.
- ``prefs show ID [--limit N]``: a set's pairs and its counts per source and per model.
- ``prefs edit ID INDEX swap|drop|restore``: edit one pair (the set's hash follows).
- ``train --config FILE.json`` with ``"method": "dpo"`` (LoRA) or ``"dpo-full"``, ``"base_model"`` the checkpoint
  to tune (any registry entry with local weights, adapters included) and ``"preference_set"`` its id; optional
  ``"hyperparams"``, ``"dpo"`` (``beta``, ``loss_type``) and ``"name"`` (``studio.dpo.create_dpo_run``).
"""

from __future__ import annotations

import argparse
import json

from .cli_common import CliError, _open, _path, table

DPO_CLI_METHODS = {"dpo": "lora", "dpo-full": "full"}
"""``train --config`` methods that make a DPO run -> how it trains (``studio.dpo.DPO_METHODS``)."""

DPO_CONFIG_FIELDS = ("base_model", "method", "preference_set", "hyperparams", "dpo", "name")
"""Fields of a DPO ``train --config`` file."""


def _short(text: str, n: int = 50) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n - 1] + "…"


def cmd_prefs_build(args) -> int:
    """Build a set; prints its id, pairs and the counts left out."""
    from .preferences import PreferenceError, build_set

    studio = _open(args)
    try:
        try:
            set_id, skipped = build_set(studio.store, args.name, votes=not args.no_votes, thumbs=not args.no_thumbs,
                                        judge_runs=args.judge_run or [])
        except PreferenceError as e:
            raise CliError(str(e)) from None
        s = studio.store.preference_set(set_id)
    finally:
        studio.close()
    print(f"preference set {set_id} '{s['name']}': {s['n_pairs']} pairs (sha256 {s['sha256'][:12]})")
    left = [f"{k} {v}" for k, v in skipped.items() if v]
    print("left out: " + (", ".join(left) if left else "nothing"))
    return 0


def cmd_prefs_import(args) -> int:
    """Import a preference file as a set."""
    from .preferences import PreferenceError, import_set

    studio = _open(args)
    try:
        try:
            set_id = import_set(studio.store, args.file, args.name)
        except PreferenceError as e:
            raise CliError(str(e)) from None
        s = studio.store.preference_set(set_id)
    finally:
        studio.close()
    print(f"preference set {set_id} '{s['name']}': {s['n_pairs']} pairs imported (sha256 {s['sha256'][:12]})")
    return 0


def cmd_prefs_list(args) -> int:
    """A table of the sets."""
    studio = _open(args)
    try:
        sets = studio.store.preference_sets()
    finally:
        studio.close()
    if not sets:
        print("no preference sets: build one with 'wvstudio prefs build --name NAME'")
        return 0
    print(table([[s["id"], s["name"], s["n_kept"], s["n_pairs"] - s["n_kept"], s["sha256"][:12], s["created_at"]]
                 for s in sets], ["set", "name", "pairs", "dropped", "sha256", "created"], {"name": 40}))
    return 0


def cmd_prefs_show(args) -> int:
    """A set's pairs and counts."""
    from .preferences import counts
    from .store import StoreError

    studio = _open(args)
    try:
        try:
            s = studio.store.preference_set(args.set_id)
            pairs = studio.store.preference_pairs(args.set_id)
        except StoreError as e:
            raise CliError(str(e)) from None
    finally:
        studio.close()
    c = counts(pairs)
    print(f"preference set {s['id']} '{s['name']}': {c['total']} kept of {len(pairs)} (sha256 {s['sha256'][:12]})")
    print("by source: " + ", ".join(f"{k} {v}" for k, v in c["by_source"].items()))
    if c["by_model"]:
        print(table([[m, v["chosen"], v["rejected"]] for m, v in c["by_model"].items()],
                    ["model", "chosen", "rejected"]))
    rows = [[p["idx"], "dropped" if p["dropped"] else "", p["source"], _short(p["prompt"][-1]["content"]),
             _short(p["chosen"], 40), _short(p["rejected"], 40)] for p in pairs[:args.limit]]
    print(table(rows, ["#", "", "source", "prompt", "chosen", "rejected"]))
    return 0


def cmd_prefs_edit(args) -> int:
    """Swap, drop or restore one pair."""
    from .store import StoreError

    studio = _open(args)
    try:
        try:
            s = studio.store.edit_preference_pair(args.set_id, args.index, args.action)
        except StoreError as e:
            raise CliError(str(e)) from None
    finally:
        studio.close()
    print(f"pair {args.index}: {args.action} done; set {s['id']} keeps {s['n_kept']} pairs (sha256 {s['sha256'][:12]})")
    return 0


def dpo_train(studio, cfg: dict, path: str, dry_run: bool) -> str | None:
    """``train --config`` for a DPO config (``method`` ``dpo`` or ``dpo-full``): print the preview (dry run: None)
    or create and start the run and return its id.

    Raises:
        CliError: an unknown field, no ``preference_set``, or a setting the run refuses (named).
    """
    from .dpo import create_dpo_run, preview_dpo

    unknown = sorted(set(cfg) - set(DPO_CONFIG_FIELDS))
    if unknown:
        raise CliError(f"{path}: unknown field(s) {', '.join(unknown)} for a DPO run (allowed: "
                       f"{', '.join(DPO_CONFIG_FIELDS)})")
    if cfg.get("preference_set") is None:
        raise CliError(f"{path}: 'preference_set' is required for a DPO run (see 'wvstudio prefs list')")
    for key in ("hyperparams", "dpo"):
        if cfg.get(key) is not None and not isinstance(cfg[key], dict):
            raise CliError(f"{path}: '{key}' must be a JSON object")
    method = DPO_CLI_METHODS[cfg["method"]]
    try:
        if dry_run:
            cmd, config = preview_dpo(studio, cfg["preference_set"], cfg["base_model"], method, cfg.get("hyperparams"),
                                      cfg.get("dpo"))
            print(cmd)
            print(json.dumps(config, indent=2))
            return None
        run_id = create_dpo_run(studio, cfg["preference_set"], cfg["base_model"], method, cfg.get("hyperparams"),
                                cfg.get("dpo"), cfg.get("name"))
    except ValueError as e:
        raise CliError(str(e)) from None
    c = studio.runs.config(run_id)
    print(f"run {run_id}: DPO ({method}) of {c['parent']} on preference set {c['preference_set']['id']} "
          f"({studio.runs.status(run_id)['n_train']} pairs, snapshot {c['snapshot_sha256'][:12]})")
    return run_id


def add_preference_commands(sub, common: argparse.ArgumentParser) -> None:
    """Register ``prefs build|import|list|show|edit`` on the ``wvstudio`` subparsers ``sub``."""
    s = sub.add_parser("prefs", parents=[common], help="preference sets for DPO: build, import, list, show, edit")
    psub = s.add_subparsers(dest="prefs_cmd", required=True, metavar="ACTION")

    a = psub.add_parser("build", parents=[common], help="a set from Arena votes, Chat thumbs and judge runs")
    a.add_argument("--name", required=True)
    a.add_argument("--no-votes", action="store_true", help="leave Arena votes out")
    a.add_argument("--no-thumbs", action="store_true", help="leave Chat thumbs out")
    a.add_argument("--judge-run", type=int, action="append", metavar="ID", help="a pairwise judge run (repeatable)")
    a.set_defaults(func=cmd_prefs_build)

    a = psub.add_parser("import", parents=[common], help="a TRL prompt/chosen/rejected file as a set")
    a.add_argument("file", metavar="FILE", type=_path)
    a.add_argument("--name", help="the set's name (default: the file's name)")
    a.set_defaults(func=cmd_prefs_import)

    a = psub.add_parser("list", parents=[common], help="the preference sets")
    a.set_defaults(func=cmd_prefs_list)

    a = psub.add_parser("show", parents=[common], help="a set's pairs and counts per source and model")
    a.add_argument("set_id", type=int, metavar="ID")
    a.add_argument("--limit", type=int, default=20)
    a.set_defaults(func=cmd_prefs_show)

    a = psub.add_parser("edit", parents=[common], help="swap, drop or restore one pair")
    a.add_argument("set_id", type=int, metavar="ID")
    a.add_argument("index", type=int, metavar="INDEX")
    a.add_argument("action", choices=("swap", "drop", "restore"))
    a.set_defaults(func=cmd_prefs_edit)
