"""The Arena tab's leaderboard: Elo and Bradley-Terry ratings of the stored votes, with bootstrap 95% intervals,
ranks from the intervals, battles per pair and the win-rate matrix as a heat map (``studio.arena`` computes;
this module shows). Model names are untrusted text: table cells go through ``common.md_table``, plots are images.
"""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import pandas as pd

from .. import arena, battles as battle_files
from ..formats import FormatError
from .common import downloadable, guarded, md_code, md_table, md_text

PLOT_MODELS = 25
"""The plots show the best this many models (FastChat ``elo_analysis.py``: ``limit_show_number = 25``, "to make plots
smaller"): the heat map grows with the square of the models, and an imported file may name hundreds."""

PLOT_LABEL_CHARS = 40
"""Model names longer than this are cut (with "…") in the plots: drawing a 200,000-character name took minutes."""


def _label(name: str) -> str:
    return name if len(name) <= PLOT_LABEL_CHARS else name[:PLOT_LABEL_CHARS - 1] + "…"


COLUMNS = ["rank", "model", "Bradley-Terry", "95% interval", "Elo (online)", "battles", "wins", "ties", "losses"]


def table(rows: list[arena.LeaderboardRow]) -> pd.DataFrame:
    """The leaderboard as a table, best first (``COLUMNS``; ratings rounded to whole Elo points)."""
    return pd.DataFrame([{
        "rank": r.rank, "model": r.model, "Bradley-Terry": round(r.bt), "95% interval":
        f"{round(r.bt_lo)} to {round(r.bt_hi)} (+{round(r.bt_hi - r.bt)}/-{round(r.bt - r.bt_lo)})",
        "Elo (online)": round(r.elo), "battles": r.battles, "wins": r.wins, "ties": r.ties, "losses": r.losses,
    } for r in rows], columns=COLUMNS)


def ratings_plot(rows: list[arena.LeaderboardRow]):
    """A matplotlib Figure: each model's Bradley-Terry rating with its 95% interval (best at the top), or None
    when there is nothing to plot."""
    if not rows:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 0.5 * len(rows) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    ys = list(range(len(rows)))[::-1]
    ax.errorbar([r.bt for r in rows], ys, xerr=[[r.bt - r.bt_lo for r in rows], [r.bt_hi - r.bt for r in rows]],
                fmt="o", capsize=4)
    ax.set_yticks(ys, [_label(r.model) for r in rows], parse_math=False)  # a name is text, never mathtext ("$")
    ax.set_xlabel("Bradley-Terry rating (Elo scale) with bootstrap 95% interval")
    ax.set_title("Ratings with 95% intervals")
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.grid(axis="x", alpha=0.3)
    return fig


def winrate_plot(battles):
    """A matplotlib Figure: the win-rate matrix (P(row beats column), ties count half) as a heat map with each
    cell's value, or None with fewer than two models."""
    models, matrix = arena.win_rate_matrix(battles)
    if len(models) < 2:
        return None
    import numpy as np
    from matplotlib.figure import Figure

    vals = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    fig = Figure(figsize=(1.1 * len(models) + 3, 0.9 * len(models) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(vals, cmap="RdBu", vmin=0, vmax=1)
    labels = [_label(m) for m in models]
    ax.set_xticks(range(len(models)), labels, rotation=30, ha="right", parse_math=False)
    ax.set_yticks(range(len(models)), labels, parse_math=False)
    ax.set_xlabel("model B")
    ax.set_ylabel("model A")
    for i in range(len(models)):
        for j in range(len(models)):
            if not np.isnan(vals[i, j]):
                ax.text(j, i, f"{vals[i, j]:.2f}", ha="center", va="center", fontsize=9)
    fig.colorbar(im, ax=ax, label="fraction of battles A won")
    ax.set_title("Win rate of model A over model B (ties count half)")
    return fig


def pairs_table(battles) -> pd.DataFrame:
    """Battles per pair of models, most first: ``model A, model B, battles``."""
    counts = arena.pair_counts(battles)
    return pd.DataFrame([{"model A": a, "model B": b, "battles": n}
                         for (a, b), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))],
                        columns=["model A", "model B", "battles"])


def build(studio) -> dict:
    """Lay out the leaderboard and wire its refresh. Returns ``{"refresh", "inputs", "outputs"}`` (run when the
    leaderboard is opened)."""
    with gr.Row():
        anony_only = gr.Checkbox(False, label="Anonymous battles only", elem_id="board-anony")
        rounds = gr.Slider(0, 1000, value=100, step=10, label="Bootstrap rounds (for the 95% intervals)",
                           elem_id="board-rounds")
        refresh_btn = gr.Button("🔄 Refresh", elem_id="board-refresh")
    summary = gr.Markdown("", elem_id="board-summary")
    board = gr.Dataframe(pd.DataFrame(columns=COLUMNS), datatype="markdown", interactive=False,
                         elem_id="board-table", label="Leaderboard (best first)")
    with gr.Row():
        p_ratings = gr.Plot(label="Ratings with 95% intervals", show_label=False, elem_id="board-ratings")
        p_wins = gr.Plot(label="Win rate of model A over model B", show_label=False, elem_id="board-winrate")
    pairs = gr.Dataframe(pd.DataFrame(columns=["model A", "model B", "battles"]), datatype="markdown",
                         interactive=False, elem_id="board-pairs", label="Battles per pair")
    gr.Markdown(
        "Ratings as Chatbot Arena computes them (FastChat `rating_systems.py`): **online Elo** over the votes in "
        "order (K = 4, scale 400, base 10, initial 1000, a tie half a win) and **Bradley-Terry** maximum "
        "likelihood over all votes at once (order does not matter), with 95% intervals from bootstrap "
        "resampling of the votes. A model's rank is 1 + the number of models whose interval lies wholly above "
        "its own.", elem_id="board-about")

    with gr.Accordion("Import and export votes", open=False, elem_id="board-files"):
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Chatbot Arena battle file (.jsonl, .json or .parquet)",
                                 file_types=[".jsonl", ".json", ".parquet"], elem_id="board-upload", height=120)
                import_btn = gr.Button("Import battles", elem_id="board-import")
            with gr.Column():
                export_btn = gr.Button("Export battles (Arena JSONL)", elem_id="board-export")
                pairs_btn = gr.Button("Export preference pairs (TRL JSONL, for DPO)", elem_id="board-pairs-export")
                download = gr.File(label="Download", interactive=False, elem_id="board-download")
        files_out = gr.Markdown("", elem_id="board-files-result")

    @guarded(studio, "editor", "Importing battles")
    def do_import(v):
        fl = v[upload]
        if not fl:
            raise ValueError("choose a battle file to import first")
        path = fl if isinstance(fl, str) else fl.name
        name = getattr(fl, "orig_name", None) or Path(path).name
        try:
            found = battle_files.read_battles(path, display_name=name, max_bytes=studio.settings.max_upload_bytes,
                                              max_message_chars=studio.settings.max_message_chars)
        except FormatError as e:
            return {files_out: f"❌ {md_text(e)}"}
        added = studio.store.import_battles(found.rows, origin=f"import:{found.name}")
        bad = (f" {len(found.bad_rows)} bad {found.unit}s left out, e.g. {found.unit} {found.bad_rows[0].row}: {md_text(found.bad_rows[0].reason)}."
               if found.bad_rows else "")
        return {files_out: f"✅ {md_text(found.name)}: {added} new battles imported "
                           f"({len(found.rows) - added} already here).{bad}"}

    def _out(stem: str) -> Path:
        studio.settings.export_dir.mkdir(parents=True, exist_ok=True)
        return studio.settings.export_dir / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"

    @guarded(studio, "admin", "Exporting battles")
    def do_export(v):
        out = _out("arena-battles")
        n = battle_files.write_arena_jsonl(studio.store.battles(), out)
        return {download: downloadable(out) if n else None,
                files_out: f"Exported {n} battles to {md_code(out.name)}." if n else "No battles to export yet."}

    @guarded(studio, "admin", "Exporting preference pairs")
    def do_pairs(v):
        pairs, skipped = battle_files.preference_pairs(studio.store.battles())
        left = ", ".join(f"{n} {md_text(k)}" for k, n in skipped.items() if n) or "none"
        if not pairs:
            return {download: None, files_out: f"No preference pairs: no vote with a winner yet (left out: {left})."}
        out = _out("arena-pairs")
        n = battle_files.write_pairs_jsonl(pairs, out)
        return {download: downloadable(out), files_out: f"Exported {n} preference pairs to {md_code(out.name)} "
                                               f"(left out: {left})."}

    import_btn.click(do_import, {upload}, [files_out])
    export_btn.click(do_export, set(), [download, files_out])
    pairs_btn.click(do_pairs, set(), [download, files_out])

    @guarded(studio, "viewer", "Reading the leaderboard")
    def refresh(v):
        battles = studio.store.battles(anony_only=bool(v[anony_only]), conversations=False)
        rows = arena.leaderboard(battles, anony_only=bool(v[anony_only]), bootstrap=int(v[rounds]))
        n = len(battles)
        text = (f"{n:,} vote{'s' if n != 1 else ''}" + (" (anonymous battles only)" if v[anony_only] else "")
                + f" between {len(rows)} models." if n else
                "No votes yet: compare models in the Battle or Side by side panel and vote.")
        top = {r.model for r in rows[:PLOT_MODELS]}
        if len(rows) > PLOT_MODELS:
            text += f" The plots show the best {PLOT_MODELS}."
        shown = table(rows)
        if not int(v[rounds]):  # no resampling: the rating is no interval (and the ranks follow the ratings)
            shown["95% interval"] = "none (0 bootstrap rounds)"
        return {board: md_table(shown), summary: text, p_ratings: ratings_plot(rows[:PLOT_MODELS]),
                p_wins: winrate_plot([b for b in battles if b["model_a"] in top and b["model_b"] in top]),
                pairs: md_table(pairs_table(battles))}

    inputs = {anony_only, rounds}
    outputs = [board, summary, p_ratings, p_wins, pairs]
    refresh_btn.click(refresh, inputs, outputs)
    anony_only.change(refresh, inputs, outputs)
    return {"refresh": refresh, "inputs": inputs, "outputs": outputs}
