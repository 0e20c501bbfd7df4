"""LLM-as-judge: model answers, judge runs and judgments (``answers``, ``judge_runs``, ``judgments``; schema
migration 6). The method (prompts, parsers, tables) is ``studio.judge``; this module only keeps its rows.

- An *answer* is one model's answers to one question, one string per user turn, under one set of generation
  parameters. It is keyed by ``(model, question_set, question_id, params)`` (``params``: canonical JSON, sorted
  keys, temperature included), so a later run asking the same model the same question with the same
  parameters reuses it instead of generating it again (``add_answer`` keeps the first one stored).
- A *judge run* is one evaluation: mode, judge model, candidate models, the questions asked (kept whole, so a
  resumed run asks the same ones even if their file changed), limit, baseline, and the job that runs it.
- A *judgment* is one verdict of the judge. Its key ``(run_id, question_id, turn, jkey)`` is unique, so a
  resumed run never judges anything twice; ``add_judgment`` returns False for a key already stored.
"""

from __future__ import annotations

import json

from .base import StoreError, _now

RUN_COLUMNS = ("id", "job_id", "mode", "judge", "models", "question_set", "questions", "limit", "baseline",
               "params", "created_at")
"""The keys of a judge run as ``judge_run`` returns it (``models``, ``questions``, ``params`` parsed)."""

JUDGMENT_COLUMNS = ("id", "run_id", "question_id", "turn", "jkey", "model", "models", "model_a", "model_b",
                    "order", "score", "scores", "winner", "prompt_name", "judgment", "error", "created_at")
"""The keys of a judgment as ``judgments`` returns it (``models``, ``scores`` parsed)."""

JUDGMENT_KEYS = ("question_id", "turn", "jkey", "model", "models", "model_a", "model_b", "order", "score",
                 "scores", "winner", "prompt_name", "judgment", "error")
"""The keys ``add_judgment`` accepts (``question_id``, ``turn``, ``jkey``, ``prompt_name`` required)."""


def canonical_params(params: dict) -> str:
    """Generation parameters as the canonical JSON string answers are keyed by (sorted keys, no spaces)."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def _q(name: str) -> str:
    return f'"{name}"' if name in ("limit", "order") else name


class JudgeMixin:
    """Answers, judge runs and judgments of the ``Store``."""

    # ------------------------------------------------------------------------------------------ answers

    def get_answer(self, model: str, question_set: str, question_id: str, params: dict) -> list[str] | None:
        """The stored answers (one string per turn) of ``model`` to a question under ``params``, or None."""
        row = self._q("SELECT turns FROM answers WHERE model = ? AND question_set = ? AND question_id = ? AND "
                      "params = ?", [model, question_set, str(question_id), canonical_params(params)])
        return json.loads(row[0][0]) if row else None

    def add_answer(self, model: str, question_set: str, question_id: str, params: dict, turns: list[str]) -> list[str]:
        """Keep ``model``'s answers (``turns``: one non-empty list of strings) to a question under ``params``.
        When answers under the same key are stored already they are kept and returned instead (never two
        answers per key).

        Returns:
            The stored turns (``turns``, or the earlier ones).

        Raises:
            StoreError: ``turns`` is not a non-empty list of strings.
        """
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise StoreError("answer refused: turns must be a non-empty list of strings")
        key = [model, question_set, str(question_id), canonical_params(params)]
        with self._tx() as con:
            row = con.execute("SELECT turns FROM answers WHERE model = ? AND question_set = ? AND question_id = ? "
                              "AND params = ?", key).fetchone()
            if row:
                return json.loads(row[0])
            con.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?::JSON, ?, ?)",
                        [self._new_id(con, "answers"), *key[:3], json.dumps(turns, ensure_ascii=False), key[3],
                         _now()])
        return turns

    def answer_count(self) -> int:
        """How many answers are stored (all models, sets and parameters)."""
        return int(self._q("SELECT count(*) FROM answers")[0][0])

    # ------------------------------------------------------------------------------------------ runs

    def add_judge_run(self, *, mode: str, judge: str, models: list[str], question_set: str, questions: list[dict],
                      limit: int | None = None, baseline: str | None = None, params: dict | None = None,
                      job_id: int | None = None) -> int:
        """A new judge run; returns its id. ``questions``: the questions asked, as JSON-able dicts, in order.

        Raises:
            StoreError: an unknown mode, no models, or no questions.
        """
        if mode not in ("single", "table", "pairwise"):
            raise StoreError(f"judge run refused: unknown mode {mode!r} (single, table or pairwise)")
        if not models or not questions:
            raise StoreError("judge run refused: it needs at least one model and one question")
        with self._tx() as con:
            run_id = self._new_id(con, "judge_runs")
            con.execute('INSERT INTO judge_runs (id, job_id, mode, judge, models, question_set, questions, "limit", '
                        "baseline, params, created_at) VALUES (?, ?, ?, ?, ?::JSON, ?, ?::JSON, ?, ?, ?::JSON, ?)",
                        [run_id, job_id, mode, judge, json.dumps(models), question_set,
                         json.dumps(questions, ensure_ascii=False), limit, baseline, json.dumps(params or {}), _now()])
        return run_id

    def set_judge_run_job(self, run_id: int, job_id: int) -> None:
        """Record the job that runs a judge run."""
        with self._tx() as con:
            con.execute("UPDATE judge_runs SET job_id = ? WHERE id = ?", [int(job_id), int(run_id)])

    def judge_run(self, run_id: int) -> dict:
        """One run: ``RUN_COLUMNS`` as a dict. Raises StoreError for an unknown id."""
        rows = self._q(f"SELECT {', '.join(_q(c) for c in RUN_COLUMNS)} FROM judge_runs WHERE id = ?", [int(run_id)])
        if not rows:
            raise StoreError(f"judge run {run_id} does not exist")
        d = dict(zip(RUN_COLUMNS, rows[0]))
        for c in ("models", "questions", "params"):
            d[c] = json.loads(d[c]) if d[c] is not None else None
        return d

    def judge_runs(self, limit: int = 50) -> list[dict]:
        """Recent runs, newest first: ``id, job_id, mode, judge, models, question_set, limit, baseline,
        created_at, n_questions`` (without the questions themselves)."""
        rows = self._q('SELECT id, job_id, mode, judge, models, question_set, "limit", baseline, created_at, '
                       "json_array_length(questions) FROM judge_runs ORDER BY id DESC LIMIT ?", [int(limit)])
        cols = ("id", "job_id", "mode", "judge", "models", "question_set", "limit", "baseline", "created_at",
                "n_questions")
        out = [dict(zip(cols, r)) for r in rows]
        for d in out:
            d["models"] = json.loads(d["models"])
        return out

    def latest_judge_run_id(self) -> int | None:
        """The newest run's id, or None when there is none."""
        row = self._q("SELECT max(id) FROM judge_runs")
        return row[0][0] if row and row[0][0] is not None else None

    # ------------------------------------------------------------------------------------------ judgments

    def add_judgment(self, run_id: int, j: dict) -> bool:
        """Store one judgment of a run unless its key ``(question_id, turn, jkey)`` is stored already.

        Args:
            j: ``JUDGMENT_KEYS``: ``question_id``, ``turn`` (1-based), ``jkey``, ``prompt_name`` and the mode's
                fields (single: ``model``, ``score``; table: ``models`` (the order shown), ``scores`` (a dict
                model -> score); pairwise: ``model_a``, ``model_b``, ``order`` (``AB`` | ``BA``), ``winner``),
                ``judgment`` (the judge's full text) and ``error`` (why it could not be read; no score then).

        Returns:
            True when stored, False when that judgment was there already (nothing written).

        Raises:
            StoreError: an unknown key or a required one missing.
        """
        unknown = sorted(set(j) - set(JUDGMENT_KEYS))
        missing = [k for k in ("question_id", "turn", "jkey", "prompt_name") if j.get(k) in (None, "")]
        if unknown or missing:
            raise StoreError(f"judgment refused: unknown fields {unknown}" if unknown else
                             f"judgment refused: missing {', '.join(missing)}")
        vals = [str(j["question_id"]), int(j["turn"]), j["jkey"], j.get("model"),
                None if j.get("models") is None else json.dumps(j["models"]), j.get("model_a"), j.get("model_b"),
                j.get("order"), None if j.get("score") is None else float(j["score"]),
                None if j.get("scores") is None else json.dumps(j["scores"]), j.get("winner"), j["prompt_name"],
                j.get("judgment"), j.get("error")]
        with self._tx() as con:
            if con.execute("SELECT 1 FROM judgments WHERE run_id = ? AND question_id = ? AND turn = ? AND jkey = ?",
                           [int(run_id), vals[0], vals[1], vals[2]]).fetchone():
                return False
            con.execute('INSERT INTO judgments (id, run_id, question_id, turn, jkey, model, models, model_a, model_b, '
                        '"order", score, scores, winner, prompt_name, judgment, error, created_at) VALUES '
                        "(?, ?, ?, ?, ?, ?, ?::JSON, ?, ?, ?, ?, ?::JSON, ?, ?, ?, ?, ?)",
                        [self._new_id(con, "judgments"), int(run_id), *vals, _now()])
        return True

    def judgment_keys(self, run_id: int) -> set[tuple[str, int, str]]:
        """``{(question_id, turn, jkey)}`` of the run's stored judgments."""
        return {(r[0], int(r[1]), r[2]) for r in
                self._q("SELECT question_id, turn, jkey FROM judgments WHERE run_id = ?", [int(run_id)])}

    def judgments(self, run_id: int) -> list[dict]:
        """The run's judgments in the order they were stored: ``JUDGMENT_COLUMNS`` dicts."""
        rows = self._q(f"SELECT {', '.join(_q(c) for c in JUDGMENT_COLUMNS)} FROM judgments WHERE run_id = ? "
                       "ORDER BY id", [int(run_id)])
        out = []
        for r in rows:
            d = dict(zip(JUDGMENT_COLUMNS, r))
            for c in ("models", "scores"):
                d[c] = json.loads(d[c]) if d[c] is not None else None
            out.append(d)
        return out

    def complete_judge_item(self, job_id: int, item: int) -> bool:
        """Mark a judge job's item (a question's position in its run) done and refresh the job's counts; False
        when it was done already."""
        with self._tx() as con:
            row = con.execute("SELECT status FROM job_items WHERE job_id = ? AND seed_id = ?",
                              [int(job_id), int(item)]).fetchone()
            if row is None or row[0] == "done":
                return False
            con.execute("UPDATE job_items SET status = 'done', error = NULL WHERE job_id = ? AND seed_id = ?",
                        [int(job_id), int(item)])
            self._refresh_job_counts(con, job_id)
        return True
