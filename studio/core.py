"""The studio's services in one object, shared by the page, the API and the command line.

``Studio(settings)`` opens the store, the model registry and the job queue, and offers the few actions
that join them (import a file, export a filter, start an expansion). The UI and the CLI call these and the
three services; they never run SQL or load a model themselves.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from . import formats
from .config import Settings
from .paths import safe_child
from .evol import JOB_KIND as EVOL_JOB, EvolConfig, run_evol_job, start_evolution, step_figures as evol_step_figures
from .expand import JOB_KIND as EXPAND_JOB, ExpandConfig, run_expand_job, start_expansion
from .expand import step_figures as expand_step_figures
from .jobs import JobManager
from .judge import JOB_KIND as JUDGE_JOB, JudgeConfig, run_judge_job, start_run as start_judge_run
from .registry import Registry
from .store import ConvFilter, ImportResult, Store


UPLOAD_NAME_MAX_CHARS = 255
"""Longest upload name accepted, in characters (the usual file system limit for one name)."""

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def check_upload_name(name: object) -> str:
    """Return an upload's original file name if it is a plain file name, else raise.

    The name is what the visitor's browser sent (Gradio's ``FileData.orig_name``); it is shown in messages
    and, made safe by :func:`stored_upload_name`, ends the kept copy's name. It must be a non-empty string of
    at most :data:`UPLOAD_NAME_MAX_CHARS` characters with no folder part (``/`` or ``\\``), not ``.`` or
    ``..``, and no control characters. Spaces and letters of any script are fine.

    Raises:
        formats.FormatError: ``"<name>: not allowed as an upload name (<why>)"`` (the name cut to 80
            characters, control characters escaped).
    """
    if not isinstance(name, str):
        raise formats.FormatError(type(name).__name__, "not allowed as an upload name (not a string)")
    shown = repr(name)[1:-1][:80] or "''"
    why = None
    if not name.strip():
        why = "empty"
    elif len(name) > UPLOAD_NAME_MAX_CHARS:
        why = f"longer than {UPLOAD_NAME_MAX_CHARS} characters"
    elif "/" in name or "\\" in name:
        why = "it has a folder part; give the file's own name"
    elif name.strip() in (".", ".."):
        why = "not a file name"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        why = "it has control characters"
    if why:
        raise formats.FormatError(shown, f"not allowed as an upload name ({why})")
    return name


def stored_upload_name(sha256: str, name: str) -> str:
    """The name of an upload's kept copy in ``uploads/``: ``<sha256[:12]>-<name>``, where every character of
    ``name`` other than letters, digits, ``.``, ``_`` and ``-`` becomes ``_`` and the stem is cut so the whole
    is at most 64 characters (``studio.paths.NAME_RE``); the ending (up to 12 characters) is kept.

    Example: ``stored_upload_name("ab12...", "My data (1).json") == "ab12cd34ef56-My_data__1_.json"``.
    """
    stem, suffix = os.path.splitext(name)
    suffix = _UNSAFE_NAME_CHARS.sub("_", suffix)[:12]
    stem = _UNSAFE_NAME_CHARS.sub("_", stem) or "upload"
    room = 64 - 13 - len(suffix)
    return f"{sha256[:12]}-{stem[:room]}{suffix}"


class Studio:
    """Store + registry + jobs for one data folder.

    Args:
        settings: where the data lives (``Settings()`` reads ``STUDIO_*`` from the environment).
        start_jobs: run the background job worker (False for one-shot CLI commands that don't need it).

    Raises:
        store.StoreError: the database can't be opened (e.g. another process holds it).
    """

    def __init__(self, settings: Settings | None = None, *, start_jobs: bool = True):
        self.settings = (settings or Settings()).ensure_dirs()
        self.store = Store(self.settings.db_path)
        self.registry = Registry(self.store, self.settings)
        self.jobs = JobManager(self.store, workers=1 if start_jobs else 0)
        self.jobs.register(EXPAND_JOB, run_expand_job, self.registry, unit="conv", check_resume=self._check_teacher,
                           figures=lambda job: {**self.store.job_usage(job["id"]),
                                                **expand_step_figures(self.store, job)})
        self.jobs.register(EVOL_JOB, run_evol_job, self.registry, unit="seed", check_resume=self._check_evolver,
                           figures=lambda job: evol_step_figures(self.store, job))
        self.jobs.register(JUDGE_JOB, run_judge_job, self.registry, unit="question", check_resume=self._check_judge,
                           title=lambda job: f"judge run {job['params'].get('run_id')} by {job['params'].get('judge')}")
        from .train import RunManager

        self.runs = RunManager(self)
        """The training runs (``studio.train.RunManager``): run-specific actions (create, preview, command,
        curve, log, merge, export); their start, stop and resume go through ``jobs`` (kind ``train``, lane
        ``train``). Creating it registers that kind, which re-attaches to runs a previous studio left going."""

    def _check_teacher(self, job: dict) -> None:
        """An expansion resumes only while its teacher is in the registry (RegistryError names it)."""
        self.registry.get(ExpandConfig.from_params(job["params"]).teacher)

    def _check_evolver(self, job: dict) -> None:
        """An evolution resumes only while its evolver is in the registry."""
        self.registry.get(EvolConfig.from_params(job["params"]).evolver)

    def _check_judge(self, job: dict) -> None:
        """A judge run resumes only while its judge and every model of it are in the registry."""
        cfg = JudgeConfig.from_params(self.store.judge_run(job["params"]["run_id"])["params"])
        for name in [*cfg.answering_models(), cfg.judge]:
            self.registry.get(name)

    def close(self) -> None:
        """Stop the job workers (a running expansion stops after its current batch and can be resumed) and close
        the database. Training runs are processes of their own and go on; the next studio re-attaches."""
        self.jobs.shutdown()
        self.registry.close()
        self.store.close()

    # ------------------------------------------------------------------ import / export
    def import_file(self, path: str | Path, format: str | None = None, keep_copy: bool = False, *,
                    display_name: str | None = None) -> ImportResult:
        """Parse a file, ``datasets`` folder or hub dataset (format detected unless given) and add its good
        rows in one transaction. For a visitor's upload use :meth:`import_upload`.

        Args:
            path: a JSON / JSON lines / ``.txt`` / ``.parquet`` file, a folder written by ``save_to_disk``, or a
                Hugging Face hub dataset id ``owner/name`` (used when no such path exists); see
                ``formats.read_file``.
            format: one of ``formats.FORMATS`` to skip detection.
            keep_copy: after a successful parse, copy the file (or the whole folder) into the data folder's
                ``uploads/`` as ``stored_upload_name(sha256, name)`` (uploads from the page live in a temporary
                folder that disappears); the copy is removed again when nothing was added (a duplicate) or the
                import fails. A hub dataset is not copied (``datasets`` keeps it in its own cache).
            display_name: the name messages give the file (``formats.read_file``); default the path as given.

        Returns:
            ImportResult: counts and the bad rows with their row numbers and reasons.

        Raises:
            formats.FormatError: the file as a whole can't be read, or every row is bad
                (``formats.require_records``; ``e.bad_rows`` has them all); nothing is written or kept.
        """
        parsed = formats.read_file(path, max_message_chars=self.settings.max_message_chars, format=format,
                                   display_name=display_name)
        return self._import_parsed(parsed, Path(path), keep_copy and parsed.kind != "hub")

    def import_upload(self, path: str | Path, original_name: str, format: str | None = None) -> ImportResult:
        """Import a file a visitor uploaded from the page, and keep a copy of it in ``uploads/``.

        Steps, each refusing with a FormatError that names the file by ``original_name`` (never the server's
        temporary path or folder): the name is checked (:func:`check_upload_name`: a plain file name, no
        folder part); ``path`` must be a regular file (never a folder, never a hub id); its size must be at
        most ``settings.max_upload_mb`` (``STUDIO_MAX_UPLOAD_MB``, checked with ``stat`` before any byte is
        read); it is parsed (``formats.read_file``, streamed for JSON lines and text; a JSON array file is
        parsed whole, which the size limit bounds); a file whose every row is bad is refused
        (``formats.require_records``). Only then is the copy written, to ``uploads/<stored_upload_name>``
        through ``studio.paths.safe_child``, and the rows added in one transaction. A duplicate (the same
        bytes imported before) adds nothing and keeps no new copy. ``.txt`` / ``.parquet`` is decided by
        ``original_name``'s ending.

        Args:
            path: where the upload lies on the server (Gradio's temporary file).
            original_name: the file's name on the visitor's machine (Gradio's ``FileData.orig_name``; with
                ``type="filepath"`` the base name of ``path``, which Gradio keeps equal to it).
            format: one of ``formats.FORMATS`` to skip detection.

        Returns:
            ImportResult; its ``name`` is ``original_name``.

        Raises:
            formats.FormatError: the name is not allowed, the file is missing, not a regular file, over the
                size limit, can't be read as a whole, or every row is bad (``e.bad_rows``); nothing is written
                or kept. ``e.path`` is ``original_name``.
        """
        name = check_upload_name(original_name)
        p = Path(path)
        if not p.exists():
            raise formats.FormatError(name, "the upload is not on the server (file not found); upload it again")
        if not p.is_file():
            raise formats.FormatError(name, "not a regular file")
        parsed = formats.read_file(p, max_message_chars=self.settings.max_message_chars, format=format,
                                   display_name=name, max_bytes=self.settings.max_upload_bytes)
        return self._import_parsed(parsed, p, True)

    def _import_parsed(self, parsed: formats.ParsedFile, src: Path, keep_copy: bool) -> ImportResult:
        """Check there is something to import, keep the copy (when asked), add the rows; a copy made here is
        removed again when the import adds nothing or fails."""
        formats.require_records(parsed)
        created: Path | None = None
        if keep_copy:
            dest, made = self._keep_copy(src, parsed)
            created = dest if made else None
            parsed.path = str(dest)
        try:
            res = self.store.import_parsed(parsed)
        except BaseException:
            if created is not None:
                _remove(created)
            raise
        if res.duplicate and created is not None:
            _remove(created)
        return res

    def _keep_copy(self, src: Path, parsed: formats.ParsedFile) -> tuple[Path, bool]:
        """Copy ``src`` (a file or folder) to ``uploads/<stored_upload_name>``; returns (its path, whether this
        call made it). The copy goes to a unique hidden name beside it first, then is renamed into place, so
        a failed copy never looks like a kept one."""
        folder = self.settings.upload_dir
        folder.mkdir(parents=True, exist_ok=True)
        dest = safe_child(folder, stored_upload_name(parsed.sha256, parsed.name), "upload name")
        if dest.exists():
            return dest, False
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder))
        try:
            partial = tmp / "copy"
            if src.is_dir():
                shutil.copytree(src, partial)
            else:
                shutil.copyfile(src, partial)
            try:
                os.rename(partial, dest)
            except OSError:
                if dest.exists():  # another import of the same content got there first
                    return dest, False
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest, True

    EXPORT_FORMATS = ("sharegpt", "openai", "parquet", "hf")
    """``sharegpt`` JSON, ``openai`` messages JSONL, ``parquet``, ``hf`` (a ``datasets`` folder + card)."""

    def export(self, path: str | Path | None = None, *, fmt: str = "sharegpt", filter: ConvFilter | None = None,
               push_to_hub: str | None = None, **filters) -> tuple[Path, int]:
        """Write the conversations of a filter (a ``ConvFilter`` or its fields as keywords) to a file or folder.

        Args:
            path: where to write; default ``<data>/exports/conversations-<time>.<ext>`` (a folder for ``hf``).
            fmt: ``sharegpt`` (the WizardVicunaLM ``wizard_vicuna_70k`` layout: a JSON list of
                ``{id, conversations: [{from: human|gpt, value}]}``), ``openai`` (``{"messages": [...]}`` JSON
                lines), ``parquet`` (columns ``id, conversations`` in the ShareGPT layout), or ``hf`` (a Hugging
                Face ``datasets`` folder from ``save_to_disk`` with a ``README.md`` dataset card listing sources,
                teachers, counts and the filter).
            push_to_hub: a hub repo id (``user/name``) to push the ``hf`` dataset to; needs ``HF_TOKEN``.

        Returns:
            (path written, number of conversations).

        Raises:
            ValueError: unknown format, or push without ``HF_TOKEN``.
        """
        if fmt not in self.EXPORT_FORMATS:
            raise ValueError(f"unknown export format '{fmt}' (one of {', '.join(self.EXPORT_FORMATS)})")
        f = filter or ConvFilter(**filters)
        if path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            ext = {"sharegpt": ".json", "openai": ".jsonl", "parquet": ".parquet", "hf": ""}[fmt]
            path = self.settings.export_dir / f"conversations-{stamp}{ext}"
        path = Path(path)
        items = self.store.iter_conversations(f, with_tools=True)  # tool schemas leave with their conversations
        if fmt == "sharegpt":
            return path, formats.write_sharegpt(path, items)
        if fmt == "openai":
            return path, formats.write_openai_jsonl(path, items)
        import datasets

        rows = [formats.sharegpt_record(cid, msgs, tools) for cid, msgs, tools in items]
        ds = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict({"id": [], "conversations": []})
        if fmt == "parquet":
            tmp = path.with_name(path.name + ".tmp")
            ds.to_parquet(str(tmp))
            tmp.replace(path)
            return path, len(rows)
        if push_to_hub and not os.environ.get("HF_TOKEN"):
            raise ValueError("set HF_TOKEN to push to the Hugging Face Hub")
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        ds.save_to_disk(str(tmp))
        (tmp / "README.md").write_text(self.dataset_card(f, len(rows), path.name), encoding="utf-8")
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
        if push_to_hub:
            ds.push_to_hub(push_to_hub, token=os.environ["HF_TOKEN"])
            from huggingface_hub import HfApi

            HfApi(token=os.environ["HF_TOKEN"]).upload_file(path_or_fileobj=str(path / "README.md"),
                                                            path_in_repo="README.md", repo_id=push_to_hub,
                                                            repo_type="dataset")
        return path, len(rows)

    def dataset_card(self, f: ConvFilter, n: int, name: str) -> str:
        """A Hugging Face dataset card (README.md) for an export: sources, teachers, counts, filter."""
        st = self.store.stats(f)
        by_source = st["by_source"]
        teachers = self.store.teachers()
        lines = [
            "---", "language: [en]", "task_categories: [text-generation]", "tags: [conversational, sharegpt, "
            "wizard-vicuna]", "---", "", f"# {name}", "",
            f"{n} multi-turn conversations in the ShareGPT layout of WizardVicunaLM's `wizard_vicuna_70k` "
            "(`id`, `conversations: [{from: human|gpt, value}]`), exported by WizardVicuna Studio.", "",
            f"- Filter: {f.describe()}",
            f"- Rounds: {int(st['totals']['rounds'].iloc[0])}; characters: {int(st['totals']['chars'].iloc[0])}",
            f"- Teacher models: {', '.join(teachers) if teachers else 'none (imported data only)'}", "",
            "| source | origin | conversations |", "|---|---|---|",
        ]
        lines += [f"| {r.source} | {r.origin} | {r.n} |" for r in by_source.itertuples()]
        return "\n".join(lines) + "\n"

    def count_tokens_async(self, model: str | None = None) -> None:
        """Start ``count_tokens`` on a background thread unless one runs already (the page calls this after an
        import, so token filters work without waiting)."""
        import threading

        if getattr(self, "_counting", None) and self._counting.is_alive():
            return

        def run():
            try:
                self.count_tokens(model)
            except Exception as e:  # noqa: BLE001 - counting is best effort; the filters say when counts lack
                print(f"token counting stopped: {e}", flush=True)

        self._counting = threading.Thread(target=run, daemon=True, name="count-tokens")
        self._counting.start()

    def count_tokens(self, model: str | None = None, batch: int = 5000, recount: bool = False) -> int:
        """Fill in token counts (for length filters and statistics) with a registry model's tokenizer.

        Args:
            recount: forget the existing counts first (e.g. to count with another model's tokenizer).

        Returns:
            Conversations counted. Runs until none is left; safe to call from a background thread.
        """
        from .registry import DEFAULT_MODEL_NAME

        tok = self.registry.load(model or DEFAULT_MODEL_NAME).tokenizer
        if recount:
            self.store.clear_token_counts()
        done = 0
        while True:
            rows = self.store.conversations_without_tokens(batch)
            if not rows:
                return done
            texts = ["\n".join(t) for _, t in rows]
            lengths = [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]
            self.store.set_token_counts({cid: n for (cid, _), n in zip(rows, lengths)})
            done += len(rows)

    def count_tokens_of(self, ids: list[int], model: str | None = None) -> int:
        """Count the tokens of the conversations ``ids`` now (as ``count_tokens`` does after an import: message
        texts joined by newlines, the default model's tokenizer unless ``model``), e.g. after a save, which
        clears a conversation's count. Returns how many were counted (a missing id is skipped).

        Raises:
            RegistryError: ``model`` is not in the registry or cannot be loaded.
        """
        from .registry import DEFAULT_MODEL_NAME
        from .store.base import StoreError

        rows = []
        for cid in ids:
            try:
                rows.append((int(cid), [m["content"] for m in self.store.get_conversation(int(cid))["messages"]]))
            except StoreError:
                continue
        if not rows:
            return 0
        tok = self.registry.load(model or DEFAULT_MODEL_NAME).tokenizer
        lengths = [len(x) for x in tok(["\n".join(t) for _, t in rows], add_special_tokens=False)["input_ids"]]
        self.store.set_token_counts({cid: n for (cid, _), n in zip(rows, lengths)})
        return len(rows)

    # ------------------------------------------------------------------ expansion
    def expand(self, cfg: ExpandConfig, *, seed_ids: list[int] | None = None, n: int | None = None,
               unexpanded_only: bool = True) -> int:
        """Queue an expansion job: ``seed_ids``, or the first ``n`` seeds of ``cfg.source_id``.

        Returns:
            The job id (watch it with ``jobs.progress``).

        Raises:
            ValueError: bad settings or no seeds to expand.
        """
        if seed_ids is None:
            seed_ids = self.store.pick_seeds(cfg.source_id, int(n or 0), unexpanded_only=unexpanded_only)
        if not seed_ids:
            raise ValueError("no seeds to expand: import instructions first, or every seed of this source "
                             "has been expanded already")
        self.registry.get(cfg.teacher)  # unknown teacher: RegistryError now, not in the job
        return start_expansion(self.jobs, self.store, cfg, seed_ids)

    def judge(self, cfg: JudgeConfig) -> tuple[int, int]:
        """Start an LLM-as-judge run (``studio.judge``): its models and judge must be in the registry.

        Returns:
            ``(run_id, job_id)``; follow the job with ``jobs.progress``, read results with
            ``studio.judge.score_table`` / ``pairwise_table``.

        Raises:
            RegistryError: an unknown model or judge. ValueError: bad settings.
            studio.questions.QuestionError: a bad question set or file.
        """
        cfg.validate()
        for name in [*cfg.answering_models(), cfg.judge]:
            self.registry.get(name)
        return start_judge_run(self.jobs, self.store, cfg)

    def evolve(self, cfg: EvolConfig, *, seed_ids: list[int] | None = None, n: int | None = None,
               source_id: int | None = None) -> int:
        """Queue an Evol-Instruct job: ``seed_ids``, or the first ``n`` seeds of ``source_id``.

        Returns:
            The job id.

        Raises:
            ValueError: bad settings or no seeds; RegistryError: unknown evolver.
        """
        if seed_ids is None:
            seed_ids = self.store.pick_seeds(source_id, int(n or 0), unexpanded_only=False)
        if not seed_ids:
            raise ValueError("no seeds to evolve: import instructions first")
        self.registry.get(cfg.evolver)
        return start_evolution(self.jobs, cfg, seed_ids)


def _remove(path: Path) -> None:
    """Remove a kept copy (file or folder) made by an import that then added nothing."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
