"""The studio's services in one object, shared by the page, the API and the command line.

``Studio(settings)`` opens the store, the model registry and the job queue, and offers the few actions
that join them (import a file, export a filter, start an expansion). The UI and the CLI call these and the
three services; they never run SQL or load a model themselves.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from . import formats
from .config import Settings
from .expand import JOB_KIND as EXPAND_JOB, ExpandConfig, run_expand_job, start_expansion
from .jobs import JobManager
from .registry import Registry
from .store import ImportResult, Store


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
        self.jobs.register(EXPAND_JOB, run_expand_job, self.registry)

    def close(self) -> None:
        """Close the database."""
        self.store.close()

    # ------------------------------------------------------------------ import / export
    def import_file(self, path: str | Path, format: str | None = None, keep_copy: bool = False) -> ImportResult:
        """Parse a file (format detected unless given) and add its good rows in one transaction.

        Args:
            keep_copy: copy the file into the data folder's ``uploads/`` first (uploads from the page live in
                a temporary folder that disappears).

        Returns:
            ImportResult: counts and the bad rows with their row numbers and reasons.

        Raises:
            formats.FormatError: the file as a whole can't be read; nothing is written.
        """
        path = Path(path)
        parsed = formats.read_file(path, max_message_chars=self.settings.max_message_chars, format=format)
        if keep_copy:
            dest = self.settings.upload_dir / f"{parsed.sha256[:12]}-{path.name}"
            if not dest.exists():
                shutil.copyfile(path, dest)
            parsed.path = str(dest)
        return self.store.import_parsed(parsed)

    def export(self, path: str | Path | None = None, *, fmt: str = "sharegpt", **filters) -> tuple[Path, int]:
        """Write the conversations matching ``filters`` (as ``Store.iter_conversations``) to a file.

        Args:
            path: where to write; default ``<data>/exports/conversations-<time>.json`` (``.jsonl`` for
                ``fmt="openai"``).
            fmt: ``sharegpt`` (the WizardVicunaLM ``wizard_vicuna_70k`` layout: a JSON list of
                ``{id, conversations: [{from: human|gpt, value}]}``) or ``openai`` (messages JSONL).

        Returns:
            (path written, number of conversations).
        """
        if fmt not in ("sharegpt", "openai"):
            raise ValueError(f"unknown export format '{fmt}' (sharegpt, openai)")
        if path is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = self.settings.export_dir / f"conversations-{stamp}.{'json' if fmt == 'sharegpt' else 'jsonl'}"
        path = Path(path)
        items = self.store.iter_conversations(**filters)
        n = formats.write_sharegpt(path, items) if fmt == "sharegpt" else formats.write_openai_jsonl(path, items)
        return path, n

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
