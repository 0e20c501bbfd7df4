"""Background jobs and their items (``jobs``, ``job_items``), as ``studio.jobs.JobManager`` keeps them: status,
progress counts, a failure's error line and full log, and per-seed items so a stopped or killed job resumes
without duplicating or losing work (an item and its conversation are committed in one transaction)."""

from __future__ import annotations

import json

import pandas as pd

from .base import StoreError, _now

JOB_STATUSES = ("queued", "running", "stopping", "stopped", "done", "failed", "interrupted", "paused")
"""A job's statuses; the last five are final (``finished_at`` is set). ``paused``: the job lost what it works
with (an endpoint teacher failed after its retries); its reason is its ``error`` and it resumes where it stopped."""

FINAL_STATUSES = ("stopped", "done", "failed", "interrupted", "paused")


class JobsMixin:
    """Jobs and job items of the ``Store``."""

    def create_job(self, kind: str, params: dict, item_ids: list[int]) -> int:
        """A new job in status ``queued`` with one pending item per id in ``item_ids`` (seed ids for expansion
        and Evol-Instruct). ``item_ids`` may be empty, for job kinds whose progress is not items (training:
        see ``set_job_counts``). Returns the job id."""
        with self._tx() as con:
            job_id = self._new_id(con, "jobs")
            con.execute("INSERT INTO jobs (id, kind, status, params, total, created_at) VALUES "
                        "(?, ?, 'queued', ?::JSON, ?, ?)", [job_id, kind, json.dumps(params), len(item_ids), _now()])
            if item_ids:
                con.executemany("INSERT INTO job_items (job_id, seed_id) VALUES (?, ?)",
                                [(job_id, int(s)) for s in item_ids])
        return job_id

    def get_job(self, job_id: int) -> dict:
        """The job row as a dict (``params`` decoded; ``log`` the failure's full text or None). Raises
        StoreError if unknown."""
        with self._lock:
            cur = self._con.execute("SELECT * FROM jobs WHERE id = ?", [int(job_id)])
            row = cur.fetchone()
            if row is None:
                raise StoreError(f"job {job_id} does not exist")
            job = dict(zip([d[0] for d in cur.description], row))
        job["params"] = json.loads(job["params"]) if job["params"] else {}
        return job

    def list_jobs(self, kind: str | None = None, limit: int = 20) -> pd.DataFrame:
        """Recent jobs, newest first: ``id, kind, status, total, n_done, n_failed, created_at, finished_at,
        error``."""
        where, params = ("WHERE kind = ?", [kind]) if kind else ("", [])
        return self._df(f"SELECT id, kind, status, total, n_done, n_failed, created_at, finished_at, error "
                        f"FROM jobs {where} ORDER BY id DESC LIMIT ?", params + [limit])

    def set_job_status(self, job_id: int, status: str, error: str | None = None, log: str | None = None) -> None:
        """Set a job's status (one of ``JOB_STATUSES``).

        ``running`` sets ``started_at`` the first time and clears ``error``, ``log`` and ``finished_at`` (a
        resumed job); a final status sets ``finished_at``, ``error`` (one line for lists) and ``log`` (the full
        text a person reads to see why, e.g. a traceback). ``log`` given with another status is stored as well.

        Raises:
            ValueError: an unknown status.
        """
        if status not in JOB_STATUSES:
            raise ValueError(f"unknown job status '{status}' (one of {', '.join(JOB_STATUSES)})")
        now = _now()
        with self._tx() as con:
            if status == "running":
                con.execute("UPDATE jobs SET status = ?, started_at = coalesce(started_at, ?), error = NULL, "
                            "log = ?, finished_at = NULL WHERE id = ?", [status, now, log, int(job_id)])
            elif status in FINAL_STATUSES:
                con.execute("UPDATE jobs SET status = ?, finished_at = ?, error = ?, log = ? WHERE id = ?",
                            [status, now, error, log, int(job_id)])
            else:
                con.execute("UPDATE jobs SET status = ?, log = coalesce(?, log) WHERE id = ?",
                            [status, log, int(job_id)])

    def set_job_counts(self, job_id: int, *, total: int | None = None, done: int | None = None,
                       failed: int | None = None) -> None:
        """Set a job's progress counts directly, for job kinds whose progress is not items (e.g. a training
        run: steps done of total steps). Only the given counts change.

        Raises:
            StoreError: unknown job. ValueError: a count that is not a whole number >= 0.
        """
        sets, params = [], []
        for col, v in (("total", total), ("n_done", done), ("n_failed", failed)):
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"job count '{col}' must be a whole number >= 0, not {v!r}")
            sets.append(f"{col} = ?")
            params.append(v)
        with self._tx() as con:
            if con.execute("SELECT count(*) FROM jobs WHERE id = ?", [int(job_id)]).fetchone()[0] == 0:
                raise StoreError(f"job {job_id} does not exist")
            if sets:
                con.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", params + [int(job_id)])

    def mark_interrupted_jobs(self) -> list[int]:
        """Jobs left ``running``/``stopping``/``queued`` by a process that died become ``interrupted``
        (resumable). Called once at start-up; returns their ids."""
        ids = [r[0] for r in self._q("SELECT id FROM jobs WHERE status IN ('running', 'stopping', 'queued')")]
        for j in ids:
            self.set_job_status(j, "interrupted", "the studio stopped while this job ran; resume it")
        return ids

    def pending_items(self, job_id: int) -> list[int]:
        """Seed ids of the job's items not yet done (pending or failed), in order."""
        return [r[0] for r in self._q("SELECT seed_id FROM job_items WHERE job_id = ? AND status != 'done' "
                                      "ORDER BY rowid", [int(job_id)])]

    def job_item_seed_ids(self, job_id: int) -> list[int]:
        """Every item's seed id of a job (done or not), in the order the items were added."""
        return [r[0] for r in self._q("SELECT seed_id FROM job_items WHERE job_id = ? ORDER BY rowid",
                                      [int(job_id)])]

    def complete_item(self, job_id: int, seed_id: int, conversation: dict, *, source_id: int | None) -> int | None:
        """Atomically store a generated conversation and mark its job item done.

        The item's kept steps (``item_progress``) are dropped in the same transaction.
        If the item is already done (a resumed job racing an old one) nothing is written and None is
        returned, so a conversation is never stored twice. ``conversation`` is a dict as accepted by
        ``_insert_conversations`` (``messages``, ``teacher``, ``prompt_version``, ``gen_params``, token
        counts, ``tools``). Returns the new conversation id.
        """
        with self._tx() as con:
            row = con.execute("SELECT status FROM job_items WHERE job_id = ? AND seed_id = ?",
                              [int(job_id), int(seed_id)]).fetchone()
            if row is None or row[0] == "done":
                return None
            cid = self._insert_conversations(con, [dict(conversation, seed_id=int(seed_id))],
                                             source_id=source_id, origin="expanded", now=_now(),
                                             job_id=int(job_id))[0]
            con.execute("UPDATE job_items SET status = 'done', conversation_id = ?, error = NULL, detail = NULL "
                        "WHERE job_id = ? AND seed_id = ?", [cid, int(job_id), int(seed_id)])
            self._drop_item_progress(con, job_id, seed_id)
            self._refresh_job_counts(con, job_id)
        self._start_indexer()
        return cid

    def fail_item(self, job_id: int, seed_id: int, error: str, detail: str | None = None) -> None:
        """Mark a job item failed with its reason (it is retried on resume, from its first step: its kept
        steps, ``item_progress``, are dropped). ``detail``: what the item produced that was rejected (e.g. an
        eliminated evolution's text), shown next to the reason (``job_item_failures``)."""
        with self._tx() as con:
            con.execute("UPDATE job_items SET status = 'failed', error = ?, detail = ? "
                        "WHERE job_id = ? AND seed_id = ?",
                        [error[:2000], detail[:20000] if detail else None, int(job_id), int(seed_id)])
            self._drop_item_progress(con, job_id, seed_id)
            self._refresh_job_counts(con, job_id)

    def _refresh_job_counts(self, con, job_id: int) -> None:
        con.execute(
            "UPDATE jobs SET n_done = (SELECT count(*) FROM job_items WHERE job_id = ? AND status = 'done'), "
            "n_failed = (SELECT count(*) FROM job_items WHERE job_id = ? AND status = 'failed') WHERE id = ?",
            [int(job_id), int(job_id), int(job_id)])

    def job_usage(self, job_id: int) -> dict:
        """Token usage and estimated cost of the conversations a job stored: ``{"conversations": n,
        "prompt_tokens": n, "completion_tokens": n, "cost": x}``, the cost summed from each conversation's
        ``gen_params.usage.cost`` (tokens x the teacher's price per 1M tokens when it was generated; 0 without a
        price). Conversations deleted since count (their tokens were spent); work on seeds that failed or were cut by a
        pause does not (it was not stored)."""
        n, p, c, cost = self._q(
            "SELECT count(*), coalesce(sum(n_prompt_tokens), 0), coalesce(sum(n_completion_tokens), 0), "
            "coalesce(sum(TRY_CAST(json_extract_string(gen_params, '$.usage.cost') AS DOUBLE)), 0) "
            "FROM conversations WHERE job_id = ?", [int(job_id)])[0]
        return {"conversations": int(n), "prompt_tokens": int(p), "completion_tokens": int(c), "cost": float(cost)}

    def job_item_errors(self, job_id: int) -> list[tuple[int, str]]:
        """``[(seed_id, error)]`` of the job's failed items."""
        return self._q("SELECT seed_id, error FROM job_items WHERE job_id = ? AND status = 'failed' ORDER BY rowid",
                       [int(job_id)])

    def job_item_failures(self, job_id: int) -> list[tuple[int, str, str]]:
        """``[(seed_id, error, detail)]`` of the job's failed items, in job order; ``detail`` is what the item
        produced that was rejected (an eliminated evolution's instruction and response), "" when none."""
        return [(int(s), e or "", d or "") for s, e, d in self._q(
            "SELECT seed_id, error, detail FROM job_items WHERE job_id = ? AND status = 'failed' ORDER BY rowid",
            [int(job_id)])]

    # ------------------------------------------------------------------ finished steps of unfinished items
    def save_item_progress(self, job_id: int, progress: dict[int, tuple[int, dict]]) -> int:
        """Keep the finished steps of items not yet done, in one transaction: ``{seed_id: (steps_done, state)}``
        (``state``: any JSON-serialisable dict, e.g. an expansion's messages so far). Replaces each item's
        previous row; items already done, or not in the job, are skipped (a step that finished after
        its item was completed writes nothing). Returns how many rows were written.

        Raises:
            ValueError: ``steps_done`` below 0.
        """
        if not progress:
            return 0
        rows = []
        for sid, (steps, state) in progress.items():
            if int(steps) < 0:
                raise ValueError(f"steps done must be >= 0, not {steps!r} (job {job_id}, seed {sid})")
            rows.append((int(sid), int(steps), json.dumps(state)))
        now = _now()
        with self._tx() as con:
            live = {r[0] for r in con.execute(
                "SELECT seed_id FROM job_items WHERE job_id = ? AND status != 'done' "
                "AND seed_id = ANY(?::BIGINT[])", [int(job_id), [r[0] for r in rows]]).fetchall()}
            rows = [r for r in rows if r[0] in live]
            if rows:
                con.execute("DELETE FROM job_item_progress WHERE job_id = ? AND seed_id = ANY(?::BIGINT[])",
                            [int(job_id), [r[0] for r in rows]])
                con.executemany("INSERT INTO job_item_progress (job_id, seed_id, steps_done, state, updated_at) "
                                "VALUES (?, ?, ?, ?::JSON, ?)", [(int(job_id), s, n, st, now) for s, n, st in rows])
        return len(rows)

    def item_progress(self, job_id: int) -> dict[int, dict]:
        """The kept steps of a job's unfinished items: ``{seed_id: {"steps_done": n, "state": dict}}``."""
        return {int(s): {"steps_done": int(n), "state": json.loads(st)} for s, n, st in self._q(
            "SELECT seed_id, steps_done, state FROM job_item_progress WHERE job_id = ?", [int(job_id)])}

    def job_steps_kept(self, job_id: int) -> int:
        """Steps finished on a job's items not yet done (the sum of ``item_progress``'s ``steps_done``)."""
        return int(self._q("SELECT coalesce(sum(steps_done), 0) FROM job_item_progress WHERE job_id = ?",
                           [int(job_id)])[0][0])

    def _drop_item_progress(self, con, job_id: int, seed_id: int) -> None:
        con.execute("DELETE FROM job_item_progress WHERE job_id = ? AND seed_id = ?", [int(job_id), int(seed_id)])
