"""The one job list and job controls, shared by the tabs that start background jobs (Expand, Train).

``JobPanel`` lays out Stop and Resume buttons, a job id, the job's progress bar and line, the kept log of a failed
job (its traceback), and optionally the list of recent jobs of every kind (expansion, evolution, training). Its
handlers go through ``studio.jobs`` only, so stopping or resuming works the same for every kind (a training run
stops after saving a checkpoint and resumes from it).
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ..runs import TRAIN_JOB
from .common import guarded, progress_html, require_role

JOB_COLUMNS = ["id", "kind", "status", "progress", "on", "tokens / cost", "message"]


def jobs_frame(studio, limit: int = 12) -> pd.DataFrame:
    """The recent jobs of every kind, newest first (``JOB_COLUMNS``): progress is ``done/total unit`` (a
    training job: ``step 12/40``), ``on`` what the job works on (a run id), ``tokens / cost`` the prompt and
    completion tokens and estimated cost of what it generated (``Progress.usage``; "" for none)."""
    rows = [[p.job_id, p.kind, p.status, p.counts() + ("" if p.unit == "step" else f" {p.unit}"), p.title,
             p.usage().lstrip(", "), p.message[:120]] for p in studio.jobs.recent(limit=limit)]
    if not rows:
        return pd.DataFrame({"": ["No jobs yet."]})
    return pd.DataFrame(rows, columns=JOB_COLUMNS)


class JobPanel:
    """Stop / Resume, job id, progress and kept log of one job, and optionally the one job list.

    Args:
        studio: the ``Studio``.
        prefix: element ids are ``<prefix>-stop``, ``-resume``, ``-job``, ``-progress``, ``-job-log`` and
            ``-jobs`` (the list).
        table: show the list of recent jobs of every kind here (clicking a row picks that job); or place it
            later with ``add_table``.
        empty: the progress line when no job is picked.
        job_label: the job id field's label; ``job_visible=False`` hides the field (a tab that picks the job
            itself, e.g. from a run).
    """

    def __init__(self, studio, prefix: str, *, table: bool = True, empty: str = "No job selected.",
                 job_label: str = "Job id (click a job in the list to follow it)", job_visible: bool = True,
                 stop_label: str = "Stop", resume_label: str = "Resume"):
        self.studio = studio
        self.empty = empty
        with gr.Row():
            self.stop_btn = gr.Button(stop_label, variant="stop", elem_id=f"{prefix}-stop")
            self.resume_btn = gr.Button(resume_label, elem_id=f"{prefix}-resume")
        self.job = gr.Number(value=0, precision=0, minimum=0, label=job_label, elem_id=f"{prefix}-job",
                             interactive=True, visible=job_visible)
        self.progress = gr.HTML(progress_html(0, empty), elem_id=f"{prefix}-progress")
        self.log = gr.Textbox("", lines=8, max_lines=20, interactive=False, visible=False, buttons=["copy"],
                              label="Log kept with the failed job (its traceback)", elem_id=f"{prefix}-job-log")
        self.prefix = prefix
        self.table = None
        if table:
            self.add_table()

    def add_table(self) -> gr.Dataframe:
        """Lay out the job list here (when the panel was made with ``table=False`` to place it further down)."""
        self.table = gr.Dataframe(jobs_frame(self.studio), interactive=False, elem_id=f"{self.prefix}-jobs",
                                  max_height=260, label="Jobs of every kind: expansion, evolution, training (click "
                                                        "one to follow it)")
        return self.table

    @property
    def outputs(self) -> list:
        """The components ``view`` updates."""
        return [self.job, self.progress, self.log] + ([self.table] if self.table is not None else [])

    def view(self, job_id) -> dict:
        """``{component: value}`` for job ``job_id`` (0/None: none): its progress bar and line, its kept log
        (shown only when there is one), and the job list."""
        out: dict = {}
        if job_id:
            p = self.studio.jobs.progress(int(job_id))
            out[self.progress] = progress_html(p.fraction, p.line(), p.outcome)
            out[self.log] = gr.update(value=p.log, visible=bool(p.log))
        else:
            out[self.progress] = progress_html(0, self.empty)
            out[self.log] = gr.update(value="", visible=False)
        if self.table is not None:
            out[self.table] = jobs_frame(self.studio)
        return out

    def wire(self, poll, poll_inputs: list, outputs: list, on_pick=None) -> None:
        """Wire Stop, Resume and the job list: Stop and Resume act on the job in the id field, then return
        ``poll(*poll_inputs)`` (a dict over ``outputs``); a click in the list puts that job's id in the field,
        then ``on_pick`` (an event listener's ``then`` target: ``(fn, inputs, outputs)``) runs if given."""
        studio = self.studio

        def require_for_kind(jid: int, verb: str) -> None:
            # the job list shows every kind, so the role follows the job picked, not the tab: a training run
            # (train) needs an admin, an expansion or evolution an editor (the declared role)
            if studio.store.get_job(jid)["kind"] == TRAIN_JOB:
                require_role("admin", f"{verb} a training run")

        @guarded(studio, "editor", "Stopping a job")
        def stop(jid, *args):
            if not jid:
                raise ValueError("no job to stop: pick one in the job list")
            require_for_kind(int(jid), "Stopping")
            studio.jobs.stop(int(jid))
            return poll(*args)

        @guarded(studio, "editor", "Resuming a job")
        def resume(jid, *args):
            if not jid:
                raise ValueError("no job to resume: pick one in the job list")
            require_for_kind(int(jid), "Resuming")
            studio.jobs.resume(int(jid))
            return poll(*args)

        @guarded(studio, "viewer", "Following a job")
        def pick(evt: gr.SelectData):
            try:
                return int(evt.row_value[0])
            except (TypeError, ValueError, IndexError):
                return gr.update()

        self.stop_btn.click(stop, [self.job, *poll_inputs], outputs)
        self.resume_btn.click(resume, [self.job, *poll_inputs], outputs)
        if self.table is not None:
            ev = self.table.select(pick, None, [self.job])
            if on_pick is not None:
                ev.then(*on_pick, show_progress="hidden")
