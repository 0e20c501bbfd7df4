"""Judge tab: LLM-as-judge runs (``studio.judge``) from the page: pick a question set, the models to compare and a
judge, start a background run (progress, stop and resume through the shared ``JobPanel``), then read the
question x model score table with its average row (the WizardVicunaLM README's layout), per-category or
per-difficulty breakdowns, scores relative to a reference model (WizardLM's "x% of R"), pairwise win rates, a bar
and a radar plot, every judgment's full text next to the answers, and export the table as Markdown or CSV.

Answers and judgments are model output and question files are user data: all of it is shown as text
(``common.md_text`` / ``md_table`` / ``md_block``)."""

from __future__ import annotations

import time

import gradio as gr
import pandas as pd

from .. import judge as J
from ..questions import set_choices
from .common import downloadable, guarded, md_block, md_table, md_text, model_choices
from .jobs import JobPanel

MODES = [("Single answer grading, 1-10 (MT-bench)", "single"),
         ("All answers in one prompt, 1-100 (WizardVicunaLM table)", "table"),
         ("Pairwise, both orders (MT-bench)", "pairwise")]


def _run_choices(store) -> list[tuple[str, int]]:
    return [(f"#{r['id']} · {r['mode']} · judge {r['judge']} · {r['question_set']} ({r['n_questions']} questions)",
             int(r["id"])) for r in store.judge_runs()]


def radar_plot(groups: dict[str, dict[str, float | None]], models: list[str], title: str):
    """A matplotlib radar (polar) Figure: one closed line per model over the groups (categories or skills); with
    fewer than three groups (a radar needs three axes) grouped bars instead; None with no group."""
    names = [g for g in groups if g != "all"]
    if not names:
        return None
    import math

    from matplotlib.figure import Figure

    if len(names) < 3:
        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.add_subplot()
        width = 0.8 / max(1, len(models))
        for k, m in enumerate(models):
            ax.bar([i + k * width for i in range(len(names))], [groups[g].get(m) or 0.0 for g in names], width,
                   label=m)
        ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(names))], names)
        ax.set_title(title)
        ax.legend(fontsize=8)
        return fig

    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.add_subplot(projection="polar")
    angles = [2 * math.pi * i / len(names) for i in range(len(names))] + [0.0]
    for m in models:
        vals = [groups[g].get(m) or 0.0 for g in names]
        ax.plot(angles, vals + vals[:1], label=m)
        ax.fill(angles, vals + vals[:1], alpha=0.1)
    ax.set_xticks(angles[:-1], names)
    ax.set_title(title)
    ax.legend(loc="upper right", bbox_to_anchor=(1.35, 1.1), fontsize=8)
    return fig


def build(studio) -> dict:
    """Lay out the Judge tab and wire its events. Returns ``{"refresh", "inputs", "outputs"}`` for tab select."""
    store = studio.store
    names = model_choices(studio)
    with gr.Row():
        with gr.Column(scale=2):
            qset = gr.Dropdown(set_choices(store), value="mt_bench", label="Question set", elem_id="judge-qset")
            limit = gr.Number(10, precision=0, minimum=0, label="Questions (0 = all of the set)",
                              elem_id="judge-limit")
            models = gr.Dropdown(names, value=names[:1], multiselect=True, label="Models to judge",
                                 elem_id="judge-models")
            judge_model = gr.Dropdown(names, value=names[0] if names else None, label="Judge (a GPT-4-class "
                                      "endpoint in real use)", elem_id="judge-judge")
            mode = gr.Radio(MODES, value="single", label="Mode", elem_id="judge-mode")
            baseline = gr.Dropdown([""] + names, value="", label="Pairwise baseline (empty = all pairs)",
                                   elem_id="judge-baseline")
            with gr.Row():
                max_new = gr.Number(256, precision=0, minimum=1, label="Answer max new tokens",
                                    elem_id="judge-max-new")
                judge_max = gr.Number(512, precision=0, minimum=1, label="Judge max new tokens",
                                      elem_id="judge-judge-max")
            start_btn = gr.Button("Start judging", variant="primary", elem_id="judge-start")
        with gr.Column(scale=3):
            panel = JobPanel(studio, "judge", table=False, empty="No judging run yet.", job_label="Judge job id")
            timer = gr.Timer(1.5, active=True)
            # what the results show while a job runs: redrawn only when it changes (see ``poll``)
            shown = gr.State(None)
    gr.Markdown("### Results")
    with gr.Row():
        run = gr.Dropdown(_run_choices(store), value=None, label="Run", scale=3, elem_id="judge-run")
        by = gr.Radio([("Category / skill", "category"), ("Difficulty", "difficulty")], value="category",
                      label="Break down by", scale=2, elem_id="judge-by")
        reference = gr.Dropdown([], value=None, label="Relative to (x% of)", scale=2, elem_id="judge-reference")
        show = gr.Button("🔄 Show", scale=1, elem_id="judge-show")
    summary = gr.Markdown("", elem_id="judge-summary")
    table = gr.Dataframe(pd.DataFrame(), datatype="markdown", interactive=False, elem_id="judge-table",
                         label="Scores: a row per question, a column per model, the average last")
    with gr.Row():
        # the y axis starts at 0: with an automatic axis, equal averages collapse it to one value and no bar shows
        bars = gr.BarPlot(None, x="model", y="score", title="Average score per model", elem_id="judge-bars",
                          height=280, y_lim=[0, None])
        radar = gr.Plot(show_label=False, elem_id="judge-radar")
    groups = gr.Dataframe(pd.DataFrame(), datatype="markdown", interactive=False, elem_id="judge-groups",
                          label="Breakdown (mean score per group) and relative score (% of the reference)")
    with gr.Accordion("Read the answers and judgments", open=False, elem_id="judge-read"):
        question = gr.Dropdown([], value=None, label="Question", elem_id="judge-question")
        reading = gr.Markdown("", elem_id="judge-reading")
    with gr.Row():
        export_md = gr.Button("Export Markdown", elem_id="judge-export-md")
        export_csv = gr.Button("Export CSV", elem_id="judge-export-csv")
        download = gr.File(label="Download", interactive=False, elem_id="judge-download")

    # ------------------------------------------------------------------------------------------ handlers
    @guarded(studio, "editor", "Judging")
    def start(v):
        chosen = list(dict.fromkeys(v[models] or []))
        if not chosen:
            raise ValueError("choose at least one model to judge")
        if not v[judge_model]:
            raise ValueError("choose a judge model")
        cfg = J.JudgeConfig(questions=v[qset] or "mt_bench", models=chosen, judge=v[judge_model], mode=v[mode],
                            limit=int(v[limit] or 0) or None, baseline=(v[baseline] or None) if v[mode] ==
                            "pairwise" else None, max_new_tokens=int(v[max_new] or 256),
                            judge_max_new_tokens=int(v[judge_max] or 512))
        run_id, job_id = studio.judge(cfg)
        return {panel.job: job_id, run: gr.update(choices=_run_choices(store), value=run_id), **panel.view(job_id)}

    def results(run_id, by_v, reference_v) -> dict:
        empty = {summary: "", table: pd.DataFrame(), bars: None, radar: None, groups: pd.DataFrame(),
                 question: gr.update(choices=[], value=None), reference: gr.update(choices=[], value=None)}
        if not run_id:
            return {**empty, summary: "No run chosen: start one above, or pick a run."}
        r = store.judge_run(int(run_id))
        qids = [(f"Q{q['question_id']}: {q['turns'][0][:80]}", str(q["question_id"])) for q in r["questions"]]
        out = {**empty, question: gr.update(choices=qids)}
        if r["mode"] == "pairwise":
            pt = J.pairwise_table(store, int(run_id))
            df = pd.DataFrame([{"model": w.model, "win": w.win, "loss": w.loss, "tie": w.tie,
                                "win rate": f"{w.win_rate:.0%}", "loss rate": f"{w.loss_rate:.0%}",
                                "adjusted win rate": f"{w.win_rate_adjusted:.0%}"} for w in pt.rates])
            vs = f" against {md_text(pt.baseline)}" if pt.baseline else " (all pairs)"
            out.update({table: md_table(df), summary: f"Pairwise{vs}, judged by {md_text(pt.judge)}: "
                        f"{len(pt.outcomes)} games agreed in both orders or tied; {pt.errors} left out (a judgment "
                        f"could not be read).",
                        bars: pd.DataFrame([{"model": w.model, "score": round(w.win_rate_adjusted * 100, 1)}
                                            for w in pt.rates]) if pt.rates else None})
            return out
        t = J.score_table(store, int(run_id))
        headers, rows = J.table_rows(t)
        out[table] = md_table(pd.DataFrame(rows, columns=headers))
        errs = ", ".join(f"{md_text(m)}: {n}" for m, n in t.n_errors.items() if n) or "none"
        out[summary] = (f"Run #{t.run_id} ({md_text(t.mode)}), judged by {md_text(t.judge)} on a 1-{t.scale} "
                        f"scale: {sum(t.n_scored.values())} scores; judgments that could not be read (left out of "
                        f"the averages): {errs}.")
        out[bars] = pd.DataFrame([{"model": m, "score": round(a, 2)} for m, a in t.average.items() if a is not None])
        grp = J.breakdown(t, by=by_v or "category")
        out[radar] = radar_plot(grp, t.models, f"Mean score per {by_v or 'category'}")
        ref = reference_v if reference_v in t.models else (t.models[0] if t.models else None)
        out[reference] = gr.update(choices=t.models, value=ref)
        rel = J.relative_scores(t, ref, by=by_v or "category") if ref else {}
        recs = []
        for g, vals in grp.items():
            rec = {by_v or "category": g}
            for m in t.models:
                rec[m] = "" if vals.get(m) is None else f"{vals[m]:.2f}"
                pct = rel.get(g, {}).get(m)
                rec[f"{m} (% of {ref})"] = "" if pct is None else f"{pct:.1f}%"
            recs.append(rec)
        out[groups] = md_table(pd.DataFrame(recs))
        return out

    @guarded(studio, "viewer", "Reading judge results")
    def show_results(v):
        return results(v[run], v[by], v[reference])

    @guarded(studio, "viewer", "Reading judgments")
    def read_question(v):
        if not v[run] or not v[question]:
            return {reading: ""}
        r = store.judge_run(int(v[run]))
        q = next((q for q in r["questions"] if str(q["question_id"]) == str(v[question])), None)
        if q is None:
            return {reading: ""}
        parts = [f"**Question {md_text(q['question_id'])}** ({md_text(q.get('category') or '')})"]
        for i, turn in enumerate(q["turns"], 1):
            parts.append(f"*Turn {i}:* {md_text(turn, inline=False)}")
        cfg = J.JudgeConfig.from_params(r["params"]) if r.get("params") else None
        question_obj = J.question_from_dict(q)
        for m in r["models"]:
            answer = (store.get_answer(m, r["question_set"], str(q["question_id"]),
                                       J.answer_params(question_obj, cfg.max_new_tokens, cfg.seed).as_dict())
                      if cfg else None)
            if answer:
                parts.append(f"**{md_text(m)}**\n\n" + "\n\n".join(md_block(a) for a in answer))
        for j in store.judgments(int(v[run])):
            if str(j.get("question_id")) != str(v[question]):
                continue
            who = j.get("model") or j.get("jkey") or ""
            got = j.get("score") if j.get("score") is not None else (j.get("winner") or j.get("error") or "")
            parts.append(f"**Judgment** · turn {md_text(j.get('turn'))} · {md_text(who)} · {md_text(got)}\n\n"
                         + md_block(j.get("judgment") or j.get("error") or ""))
        return {reading: "\n\n".join(parts)}

    def _export(run_id, suffix: str):
        if not run_id:
            raise ValueError("pick a run to export")
        studio.settings.export_dir.mkdir(parents=True, exist_ok=True)
        out = studio.settings.export_dir / f"judge-run-{int(run_id)}-{time.strftime('%Y%m%d-%H%M%S')}{suffix}"
        J.export_table(store, int(run_id), out)
        return {download: downloadable(out), summary: f"Exported run #{int(run_id)} to `{out.name}`."}

    @guarded(studio, "viewer", "Following a judging run")
    def poll(v):
        """The job's progress every tick; the results (score table, breakdown, bars, the matplotlib radar) only
        when a judgment was stored since the last redraw or the view changed: redrawn at every 1.5 s tick, they
        took the CPU from the judging job itself."""
        out = panel.view(v[panel.job])
        jid = v[panel.job]
        if jid and v[run]:
            p = studio.jobs.progress(int(jid))
            if p.status in ("running", "queued", "stopping"):
                key = (int(v[run]), len(store.judgment_keys(int(v[run]))), v[by], v[reference])
                if key != v[shown]:
                    out.update(results(v[run], v[by], v[reference]))
                    out[shown] = key
        return out

    @guarded(studio, "viewer", "Browsing judge runs")
    def refresh(v):
        names_now = model_choices(studio)
        keep = [m for m in (v[models] or []) if m in names_now] or names_now[:1]
        return {qset: gr.update(choices=set_choices(store)), models: gr.update(choices=names_now, value=keep),
                judge_model: gr.update(choices=names_now, value=v[judge_model] if v[judge_model] in names_now
                                       else (names_now[0] if names_now else None)),
                baseline: gr.update(choices=[""] + names_now), run: gr.update(choices=_run_choices(store))}

    settings = {qset, limit, models, judge_model, mode, baseline, max_new, judge_max}
    result_inputs = {run, by, reference}
    result_outputs = [summary, table, bars, radar, groups, question, reference]
    start_btn.click(start, settings, [panel.job, run, *panel.outputs])
    panel.wire(lambda jid: panel.view(jid), [panel.job], panel.outputs)
    timer.tick(poll, {panel.job, shown, *result_inputs}, [*panel.outputs, *result_outputs, shown],
               show_progress="hidden")
    show.click(show_results, result_inputs, result_outputs)
    run.change(show_results, result_inputs, result_outputs)
    by.change(show_results, result_inputs, result_outputs)
    question.change(read_question, {run, question}, [reading])
    export_md.click(guarded(studio, "admin", "Exporting a judge table")(lambda v: _export(v[run], ".md")), {run},
                    [download, summary])
    export_csv.click(guarded(studio, "admin", "Exporting a judge table as CSV")(lambda v: _export(v[run], ".csv")),
                     {run}, [download, summary])
    return {"refresh": refresh, "inputs": {models, judge_model}, "outputs": [qset, models, judge_model, baseline, run]}
