"""``wvstudio arena ...``: the Arena's battles from the command line (registered by ``studio.cli.build_parser``).

- ``arena import FILE``: import a Chatbot Arena battle file (JSON lines; a JSON array, Parquet file or
  ``datasets`` folder too), listing its bad rows; rows imported before are not added again.
- ``arena export FILE``: every battle as Arena JSON lines (imported rows exactly as they were read).
- ``arena leaderboard [--anony-only] [--bootstrap N]``: rank, model, Elo, Bradley-Terry, its 95% interval and
  the number of battles, best first (``studio.arena.leaderboard``).
- ``arena pairs --out FILE [--format jsonl|datasets]``: the votes as TRL preference pairs (``--out`` ending in
  ``/`` writes a ``datasets`` folder), with counts of ties and both-bad ties left out.

Every command opens the data folder like the others (``cli_common._open``): while a running studio holds the
database, ``wvstudio`` sends the command to it and prints what it prints (``studio.remote``). That route is the
data folder owner's only (admin-equivalent, see ``studio.remote``). On the page the same actions need: viewer
for the leaderboard (and voting), editor to import battles, admin to export battles or preference pairs (they
take data out), as ``studio.access`` lists.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from .cli_common import MAX_BAD_ROWS_SHOWN, CliError, _open, _path, _path_or_id, table

PAIR_FORMATS = ("jsonl", "datasets")
"""``arena pairs --format``: JSON lines, or a ``datasets`` folder (``Dataset.save_to_disk``)."""

LEADERBOARD_HEADERS = ["rank", "model", "Elo", "Bradley-Terry", "95% interval", "battles"]


def _out_path(text: str) -> str:
    """An output argument made absolute (as ``_path``), keeping a final ``/`` that asks for a folder."""
    folder = text.endswith(("/", os.sep))
    return _path(text) + (os.sep if folder else "")


def _check_parent(path: str) -> None:
    parent = Path(path.rstrip(os.sep)).parent
    if not parent.is_dir():
        raise CliError(f"{parent}: no such folder")


def cmd_arena_import(args) -> int:
    """Import one battle file; prints what was added and lists bad rows (a file of only bad rows is an error
    and imports nothing)."""
    from .battles import read_battles

    studio = _open(args)  # first: while a running studio holds the database, it reads the file itself
    try:
        f = read_battles(args.file)
        n = studio.store.import_battles(f.rows, f"import:{f.name}")
    finally:
        studio.close()
    known = len(f.rows) - n
    parts = [f"{n} battle{'' if n == 1 else 's'} imported"]
    if known:
        parts.append(f"{known} already imported")
    if f.bad_rows:
        parts.append(f"{len(f.bad_rows)} bad row{'' if len(f.bad_rows) == 1 else 's'} skipped")
    print(f"{f.name}: {', '.join(parts)}")
    for b in f.bad_rows[:MAX_BAD_ROWS_SHOWN]:
        print(f"  {f.where(b.row)}: {b.reason}")
    if len(f.bad_rows) > MAX_BAD_ROWS_SHOWN:
        print(f"  ... {len(f.bad_rows) - MAX_BAD_ROWS_SHOWN} more")
    return 0


def cmd_arena_export(args) -> int:
    """Write every battle as Arena JSON lines, in the order they were stored (an imported file's rows in file
    order)."""
    from .battles import write_arena_jsonl

    _check_parent(args.file)
    studio = _open(args)
    try:
        rows = sorted(studio.store.battles(), key=lambda b: b["id"])
    finally:
        studio.close()
    n = write_arena_jsonl(rows, args.file)
    print(f"wrote {n} battle{'' if n == 1 else 's'} to {args.file}")
    return 0


def _num(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0f}"


def cmd_arena_leaderboard(args) -> int:
    """The leaderboard as a table, best first (ratings from ``studio.arena.leaderboard``)."""
    if args.bootstrap < 0:
        raise CliError(f"--bootstrap: expected a whole number >= 0, not {args.bootstrap}")
    from .arena import leaderboard

    studio = _open(args)
    try:
        stored = studio.store.battles(anony_only=args.anony_only, conversations=False)
    finally:
        studio.close()
    if not stored:
        print("no battles" + (" voted with hidden names" if args.anony_only else "")
              + ": import a battle file (wvstudio arena import FILE) or vote in the Arena tab")
        return 0
    battles = [{"model_a": b["model_a"], "model_b": b["model_b"], "winner": b["winner"], "anony": b["anony"] is True}
               for b in stored]
    rows = leaderboard(battles, anony_only=args.anony_only, bootstrap=args.bootstrap)
    body = []
    for r in rows:
        interval = ("" if not args.bootstrap or _num(r.bt_lo) == "" or _num(r.bt_hi) == ""
                    else f"{_num(r.bt_lo)} to {_num(r.bt_hi)}")
        body.append([r.rank, r.model, _num(r.elo), _num(r.bt), interval, r.battles])
    print(table(body, LEADERBOARD_HEADERS, {"model": 40}))
    what = "battles voted with hidden names" if args.anony_only else "battles"
    ci = f"; 95% interval of Bradley-Terry from {args.bootstrap} bootstrap rounds" if args.bootstrap else ""
    print(f"{len(battles)} {what}{ci}")
    return 0


def cmd_arena_pairs(args) -> int:
    """Write the votes as TRL preference pairs (JSON lines, or a ``datasets`` folder); prints how many pairs and
    how many battles were left out, and why."""
    from .battles import preference_pairs, save_pairs_dataset, write_pairs_jsonl

    folder = args.out.endswith(os.sep)
    fmt = args.format or ("datasets" if folder else "jsonl")
    if folder and fmt == "jsonl":
        raise CliError(f"--out {args.out}: a path ending in '/' is a datasets folder; give a file for --format jsonl")
    out = args.out.rstrip(os.sep) if fmt == "datasets" else args.out
    _check_parent(out)
    studio = _open(args)
    try:
        pairs, skipped = preference_pairs(studio.store.battles())
    finally:
        studio.close()
    n = save_pairs_dataset(pairs, out) if fmt == "datasets" else write_pairs_jsonl(pairs, out)
    print(f"wrote {n} preference pair{'' if n == 1 else 's'} to {out}" + (" (datasets folder)" if fmt == "datasets" else ""))
    t, bb, differ = skipped["tie"], skipped["tie (bothbad)"], skipped["user turns differ"]
    line = f"left out: {t} tie{'' if t == 1 else 's'}, {bb} both bad"
    if differ:
        line += f", {differ} whose two conversations have different user turns"
    print(line)
    return 0


def add_arena_commands(sub, common: argparse.ArgumentParser) -> None:
    """Register ``arena import|export|leaderboard|pairs`` on the ``wvstudio`` subparsers ``sub`` (``common``: the
    parent parser giving ``--data-dir``)."""
    s = sub.add_parser("arena", parents=[common], help="Arena battles: import, export, leaderboard, preference pairs")
    asub = s.add_subparsers(dest="arena_cmd", required=True, metavar="ACTION")

    a = asub.add_parser("import", parents=[common], help="import a Chatbot Arena battle file (JSON lines)")
    a.add_argument("file", metavar="FILE", type=_path_or_id)
    a.set_defaults(func=cmd_arena_import)

    a = asub.add_parser("export", parents=[common], help="write every battle as Arena JSON lines")
    a.add_argument("file", metavar="FILE", type=_path)
    a.set_defaults(func=cmd_arena_export)

    a = asub.add_parser("leaderboard", parents=[common], help="Elo and Bradley-Terry ratings, best first")
    a.add_argument("--anony-only", action="store_true", help="only battles voted with the model names hidden")
    a.add_argument("--bootstrap", type=int, default=100, metavar="N",
                   help="bootstrap rounds for the 95%% interval (default 100; 0: none)")
    a.set_defaults(func=cmd_arena_leaderboard)

    a = asub.add_parser("pairs", parents=[common], help="the votes as TRL preference pairs (prompt, chosen, "
                        "rejected), ties left out")
    a.add_argument("--out", required=True, metavar="FILE", type=_out_path,
                   help="a JSON lines file, or a folder ending in '/' for a datasets folder")
    a.add_argument("--format", choices=PAIR_FORMATS, help="jsonl (default) or datasets (Dataset.save_to_disk)")
    a.set_defaults(func=cmd_arena_pairs)
