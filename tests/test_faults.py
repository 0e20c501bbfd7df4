"""Faults (issue 8): the studio killed with SIGKILL in the middle of its work, models that will not load, and
endpoints that hang.

Part 1 kills a real studio process at a named point and opens a new studio on the same data folder:

- during an import of a large file (20,000 synthetic ShareGPT conversations, ``bench/_synth.py``) sent by the
  command line to the running server (``python app.py``, ``studio.remote``): the import is all or nothing (cut
  before its commit: nothing, and the file imports again; killed right after it, while the full-text indexer
  works: all of it, indexed at the next start);
- during an expansion job with the default model: the job is ``interrupted``, the item whose transaction was cut
  is still pending, and resume finishes without duplicates;
- during an edit (a save with a revision), before and after its commit: the conversation is the old version or
  the new one, with its revisions, and the full-text index follows;
- during a training run (the tiny random-weight Llama of ``test_train_runs.py``): the run's process goes on and
  the next studio re-attaches; when the process dies too, the job is ``interrupted`` and resumes.

The studio process is a small driver (``DRIVER`` below, written to a temporary file) that runs the real code and,
at the point to test, prints a ``FAULT ...`` line and waits there: the test reads that line and sends SIGKILL, so
every kill lands at a known point without sleeps. After each restart ``check_whole`` checks every conversation
has its messages, its counts match them, edited ones have all their revisions, and job items match their
conversations; ``check_index`` checks the full-text index is in step with the messages.

Part 2 serves the whole studio (``studio.server.create_server``) with entries whose checkpoint is broken (a
``config.json`` that is not JSON; no weights) and an endpoint on a loopback server that accepts connections and
never answers: each request ends with a clear error naming the model and the reason, ``/v1/models`` and the page
answer meanwhile, and a chat on the hanging endpoint ends after its timeout (``ModelSpec.timeout``; these entries
allow no retries, ``ModelSpec.max_retries=0``: retried hangs are in ``tests/test_endpoints.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from browser_util import free_port, serve
from studio.config import Settings
from studio.core import Studio
from studio.expand import ExpandConfig
from studio.registry import DEFAULT_ENDPOINT_TIMEOUT_S, DEFAULT_MODEL_NAME, GenParams, ModelSpec, RegistryError
from studio.runs import pid_alive

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import _synth  # noqa: E402  (bench/_synth.py: realistic synthetic ShareGPT conversations)

DRIVER = r'''
"""A studio process for tests/test_faults.py: does one piece of work with the real code and, at the point under
test, prints a "FAULT ..." line and waits there until the test kills it. Settings come from STUDIO_* variables.

    python driver.py server APP_PY           python app.py; an import of >= 1000 conversations waits inside its
                                             transaction, after every row was written, before the commit
    python driver.py import FILE             an import; waits after its commit (the full-text indexer goes on)
    python driver.py expand CFG_JSON N       an expansion of N seeds; waits inside the transaction that stores
                                             the second finished conversation with its job item
    python driver.py edit POINT ID VERSION MESSAGES_JSON
                                             a save; POINT "uncommitted" waits inside its transaction after the
                                             messages were replaced, "committed" after the commit, before the
                                             full-text index has the new text
    python driver.py train HYPERPARAMS_JSON  a full fine-tune of the registry entry "tiny"; waits once its job
                                             row counts a step
"""
import json, os, runpy, sys, threading, time
from pathlib import Path


def say(line):
    os.write(1, (line + "\n").encode())  # the process's stdout itself (the CLI route captures sys.stdout per thread)


def hold():
    threading.Event().wait()


from studio.store import Store

mode, args = sys.argv[1], sys.argv[2:]
insert = Store._insert_conversations

if mode == "server":
    def held_import(self, con, items, **kw):
        ids = insert(self, con, items, **kw)
        if kw.get("origin") == "imported" and len(items) >= 1000:
            say(f"FAULT import in its transaction: {len(ids)} conversations written, not committed")
            hold()
        return ids

    Store._insert_conversations = held_import
    sys.argv = [args[0]]
    runpy.run_path(args[0], run_name="__main__")

elif mode == "import":
    from studio.core import Studio

    res = Studio(start_jobs=False).import_file(args[0])
    say(f"FAULT import committed: {res.n_conversations} conversations in source {res.source_id}")
    hold()

elif mode == "expand":
    from studio.core import Studio
    from studio.expand import ExpandConfig

    stored = []

    def held_item(self, con, items, **kw):
        ids = insert(self, con, items, **kw)
        if kw.get("origin") == "expanded":
            stored.append(ids)
            if len(stored) == 2:
                say(f"FAULT expansion item in its transaction: seed {items[0]['seed_id']}")
                hold()
        return ids

    Store._insert_conversations = held_item
    studio = Studio()
    job = studio.expand(ExpandConfig.from_params(json.loads(args[0])), n=int(args[1]))
    say(f"job {job}")
    p = studio.jobs.wait(job)
    say(f"FAULT-MISSED: the job ended first: {p.line()}")

elif mode == "edit":
    point, conv_id, version, path = args
    from studio.core import Studio

    studio = Studio(start_jobs=False)
    store = studio.store
    assert store.wait_for_index()
    if point == "uncommitted":
        execute = store._con.execute

        def held_execute(sql, params=None):
            result = execute(sql, params)
            if sql.startswith("UPDATE conversations SET version"):
                say("FAULT edit in its transaction: messages replaced, not committed")
                hold()
            return result

        store._con.execute = held_execute
    else:
        def held_reindex(*a, **kw):
            say("FAULT edit committed: the full-text index still has the old text")
            hold()

        store.search.replace_conversation = held_reindex
    store.save_messages(int(conv_id), json.loads(Path(path).read_text()), expected_version=int(version))
    say("FAULT-MISSED: the save ended")

elif mode == "train":
    from studio.core import Studio

    studio = Studio()
    run_id = studio.runs.create_run("tiny", "full", {}, json.loads(args[0]))
    studio.runs.start(run_id)
    while True:  # the driver may poll: the test waits for its line, not for time
        s = studio.runs.status(run_id)
        if s["state"] == "running" and (studio.store.get_job(s["job_id"])["n_done"] or 0) >= 1:
            say(f"FAULT training: run {run_id} job {s['job_id']} pid {s['pid']} step {s['step']}")
            hold()
        if s["state"] not in ("queued", "running"):
            say(f"FAULT-MISSED: the run is {s['state']}: " + studio.runs.log_tail(run_id).replace("\n", " | "))
            sys.exit(1)
        time.sleep(0.2)
'''


# ---------------------------------------------------------------------------------------------- helpers


class Driver:
    """One driver process (``DRIVER``), its stdout and stderr read line by line on a thread."""

    def __init__(self, script: Path, args: list[str], env: dict):
        self.proc = subprocess.Popen([sys.executable, str(script), *args], cwd=str(ROOT), env=env, text=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self._ended = False
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True, name="fault-driver-output").start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def output(self, n: int = 80) -> str:
        with self._cond:
            return "\n".join(self.lines[-n:])

    def wait_line(self, prefix: str, timeout: float = 300.0) -> str:
        """The first line starting with ``prefix`` (waits for it). Fails with the driver's output if the driver
        ends or prints ``FAULT-MISSED`` first, or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                    if line.startswith("FAULT-MISSED"):
                        raise AssertionError(f"{line}\n{self.output()}")
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    raise AssertionError(f"no '{prefix}' line (driver {'ended' if self._ended else 'still runs'}, "
                                         f"exit code {self.proc.poll()}):\n{self.output()}")
                self._cond.wait(left)

    def kill9(self) -> None:
        """SIGKILL, as a crash or the OOM killer would; waits until the process is gone."""
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=60) == -signal.SIGKILL


@pytest.fixture
def driver(tmp_path):
    """``driver(settings, *args, port=None)`` starts a ``Driver`` on the settings' data folder; processes still
    running at the end are killed."""
    script = tmp_path / "fault_driver.py"
    script.write_text(DRIVER, encoding="utf-8")
    started: list[Driver] = []

    def start(settings: Settings, *args: str, port: int | None = None) -> Driver:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIO_") and k not in (
            "OAUTH_CLIENT_ID", "SPACE_ID")}
        env.update(PYTHONPATH=os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get(
            "PYTHONPATH") else [])), PYTHONUNBUFFERED="1", GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
                   STUDIO_DATA_DIR=str(settings.data_dir), STUDIO_MODEL_DIR=str(settings.model_dir),
                   STUDIO_HOST="127.0.0.1", STUDIO_PORT=str(port or free_port()))
        d = Driver(script, [str(a) for a in args], env)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=60)


def local_settings(data_dir: Path) -> Settings:
    """Settings for a studio on loopback with no login, whatever the shell's ``STUDIO_*`` variables say (the model
    folder is the shared cache)."""
    return Settings(data_dir=data_dir, host="127.0.0.1", auth="", read_only=False, users_file=None, oauth=False,
                    api_keys_file=None, api_enabled=True, endpoint_key_envs=(),
                    model_dir=Path(os.environ["STUDIO_MODEL_DIR"]))


@pytest.fixture
def settings(tmp_path) -> Settings:
    return local_settings(tmp_path / "data")


@contextlib.contextmanager
def opened(settings: Settings, start_jobs: bool = True):
    """A studio on the data folder, closed at the end of the block."""
    s = Studio(settings, start_jobs=start_jobs)
    try:
        yield s
    finally:
        s.close()


def wait_for(pred, timeout: float = 180.0, what: str = "condition") -> None:
    """Poll ``pred`` until it holds (an observable state: a row, a process gone), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(0.05)


def check_whole(store) -> int:
    """Assert nothing is half-written: every conversation has messages numbered 0..n-1 and its ``n_turns`` /
    ``n_rounds`` match them, no message lacks its conversation, an edited conversation (version v > 1) has its
    revisions 1..v with the last equal to its messages, and every expansion item marked done points to one
    conversation of its seed (no seed twice in a job). Returns the number of conversations."""
    q = store._q
    assert q("SELECT count(*) FROM messages m WHERE NOT EXISTS "
             "(SELECT 1 FROM conversations c WHERE c.id = m.conversation_id)")[0][0] == 0, "orphan messages"
    bad = q("SELECT c.id, c.n_turns, c.n_rounds, count(m.idx), max(m.idx) FROM conversations c "
            "LEFT JOIN messages m ON m.conversation_id = c.id GROUP BY c.id, c.n_turns, c.n_rounds "
            "HAVING count(m.idx) = 0 OR max(m.idx) <> count(m.idx) - 1 "
            "OR c.n_turns <> count(m.idx) FILTER (WHERE m.role <> 'system') "
            "OR c.n_rounds <> count(m.idx) FILTER (WHERE m.role = 'assistant') LIMIT 5")
    assert not bad, f"conversations whose messages do not match (id, n_turns, n_rounds, messages, max idx): {bad}"
    bad = q("SELECT c.id, c.version, count(r.version), max(r.version) FROM conversations c "
            "JOIN revisions r ON r.conversation_id = c.id GROUP BY c.id, c.version "
            "HAVING count(r.version) <> c.version OR max(r.version) <> c.version LIMIT 5")
    assert not bad, f"edited conversations without all their revisions (id, version, revisions, last): {bad}"
    assert q("SELECT count(*) FROM conversations WHERE version > 1 AND id NOT IN "
             "(SELECT conversation_id FROM revisions)")[0][0] == 0, "an edit without revisions"
    for cid, in q("SELECT DISTINCT conversation_id FROM revisions"):
        conv = store.get_conversation(cid)
        assert store.get_revision(cid, conv["version"]) == conv["messages"], f"conversation {cid}: last revision"
    bad = q("SELECT ji.job_id, ji.seed_id, ji.conversation_id FROM job_items ji JOIN jobs j ON j.id = ji.job_id "
            "LEFT JOIN conversations c ON c.id = ji.conversation_id WHERE j.kind = 'expand' AND ji.status = 'done' "
            "AND (c.id IS NULL OR c.seed_id <> ji.seed_id OR c.job_id <> ji.job_id)")
    assert not bad, f"expansion items marked done without their conversation: {bad}"
    bad = q("SELECT job_id, seed_id, count(*) FROM conversations WHERE origin = 'expanded' "
            "GROUP BY job_id, seed_id HAVING count(*) > 1")
    assert not bad, f"seeds expanded twice by one job: {bad}"
    assert q("SELECT count(*) FROM conversations c JOIN job_items ji ON ji.job_id = c.job_id AND "
             "ji.seed_id = c.seed_id WHERE c.origin = 'expanded' AND ji.status <> 'done'")[0][0] == 0, \
        "a stored expansion whose item is not done"
    return q("SELECT count(*) FROM conversations")[0][0]


def check_index(store) -> None:
    """Assert the full-text index catches up and is then in step with the messages (nothing to rebuild)."""
    assert store.wait_for_index(timeout=120), "the full-text index did not catch up"
    assert store.ensure_search_index() is False, "the full-text index was out of step with the messages"
    assert store.search.count_rows() == store._q("SELECT count(*) FROM messages")[0][0]


def _sharegpt(convs: list[list[tuple[str, str]]]) -> list[dict]:
    return [{"id": f"c{i}", "conversations": [{"from": "human" if r == "user" else "gpt", "value": t} for r, t in c]}
            for i, c in enumerate(convs)]


# ---------------------------------------------------------------------------------------------- 1a import


@pytest.mark.slow  # loads the default model
def test_server_killed_during_a_large_import_keeps_all_or_nothing(tmp_path, settings, driver):
    small = tmp_path / "small.json"
    small.write_text(json.dumps(_synth.conversations(40, seed=7)), encoding="utf-8")
    big = _synth.write(tmp_path / "big.json", 20_000, seed=8)
    with opened(settings, start_jobs=False) as st:
        assert st.import_file(small).n_conversations == 40
        check_index(st.store)
        before = st.store.conversation_ids()
        word = re.findall(r"[A-Za-z]{6,}", st.store.get_conversation(before[-1])["messages"][-1]["content"])[-1]

    port = free_port()
    server = driver(settings, "server", ROOT / "app.py", port=port)
    server.wait_line("WizardVicuna Studio on")
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert server.proc.poll() is None, f"the server ended:\n{server.output()}"
        try:
            return httpx.get(url + "/v1/models", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(answers, what="the server answering")
    # the command line finds the database held and sends the import to the server (studio.remote)
    env = dict(os.environ, PYTHONPATH=str(ROOT), STUDIO_MODEL_DIR=str(settings.model_dir))
    cli = subprocess.Popen([sys.executable, "-m", "studio.cli", "import", str(big), "--data-dir",
                            str(settings.data_dir)], cwd=str(ROOT), env=env, text=True, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        server.wait_line("FAULT import in its transaction: 20000 conversations written")
        server.kill9()
        out, err = cli.communicate(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 2 and "closed the connection before the command ended" in err, (out, err)

    from studio import remote

    assert remote.control_path(settings.data_dir).exists()  # left by the killed server ...
    assert remote.find_server(settings.data_dir) is None    # ... and seen as stale: its process is gone

    with opened(settings, start_jobs=False) as st:
        assert list(st.store.list_sources()["name"]) == ["small.json"]  # nothing of the cut import
        assert st.store.conversation_ids() == before
        assert check_whole(st.store) == 40
        check_index(st.store)
        assert before[-1] in st.store.search.match_ids(word)

    # the cut import left no trace that refuses it: the same file imports whole. A studio killed right after
    # that commit (its full-text indexer at work) keeps all of it.
    d = driver(settings, "import", big)
    source_id = int(d.wait_line("FAULT import committed").split()[-1])
    d.kill9()
    with opened(settings, start_jobs=False) as st:
        assert check_whole(st.store) == 20_040
        assert st.store.count_conversations(source_id=source_id) == 20_000
        check_index(st.store)
        last = st.store.get_conversation(st.store.conversation_ids(source_id=source_id)[-1])
        assert last["external_id"] == "synth_19999" and last["n_turns"] == len(last["messages"])
        phrase = " ".join(re.findall(r"\w+", last["messages"][-1]["content"])[-4:])
        assert last["id"] in st.store.search.match_ids(f'"{phrase}"')
        assert st.import_file(big).duplicate


# ---------------------------------------------------------------------------------------------- 1b expansion


@pytest.mark.slow  # loads the default model
def test_studio_killed_during_an_expansion_job_resumes_without_duplicates(settings, data_dir, driver,
                                                                          default_model_dir):
    with opened(settings, start_jobs=False) as st:
        src = st.import_file(data_dir / "wizardlm_testset.jsonl").source_id
    cfg = ExpandConfig(teacher=DEFAULT_MODEL_NAME, rounds=1, batch_size=1, source_id=src,
                       answer=GenParams(max_new_tokens=8, temperature=0.7, seed=3))
    d = driver(settings, "expand", json.dumps(cfg.to_params()), 3)
    job = int(d.wait_line("job ").split()[1])
    cut_seed = int(d.wait_line("FAULT expansion item in its transaction").split()[-1])
    d.kill9()

    with opened(settings) as st:
        store = st.store
        p = st.jobs.progress(job)
        assert (p.status, p.done, p.total) == ("interrupted", 1, 3) and "resume" in p.message
        assert cut_seed in store.pending_items(job)  # its conversation and its "done" were one transaction
        [kept] = store.conversation_ids(origin="expanded")
        assert store.get_conversation(kept)["seed_id"] != cut_seed
        check_whole(store)

        st.jobs.resume(job)
        p = st.jobs.wait(job, timeout=600)
        assert p.status == "done" and p.done + p.failed == 3 and not store.pending_items(job), p.line()
        ids = store.conversation_ids(job_id=job)
        assert len(ids) == p.done
        seeds = [store.get_conversation(c)["seed_id"] for c in ids]
        assert len(set(seeds)) == len(seeds) and (p.failed or cut_seed in seeds)
        for c in ids:
            conv = store.get_conversation(c)
            assert (conv["n_turns"], conv["n_rounds"]) == (2, 1) and conv["teacher"] == DEFAULT_MODEL_NAME
        check_whole(store)
        check_index(store)


# ---------------------------------------------------------------------------------------------- 1c edit


@pytest.mark.parametrize("point", ["uncommitted", "committed"])
def test_studio_killed_during_a_save_keeps_the_old_or_the_new_version(tmp_path, settings, driver, point):
    convs = [[("user", f"Question {i} about rivers?"), ("assistant", f"Answer {i} about rivers.")] for i in range(5)]
    path = tmp_path / "small.json"
    path.write_text(json.dumps(_sharegpt(convs)), encoding="utf-8")
    v2 = [{"role": "user", "content": "What do herons eat?"},
          {"role": "assistant", "content": "Herons eat fish and frogs."}]
    # as many messages as before: only the versions the index counts tell it missed this edit
    v3 = [{"role": "user", "content": "What do kingfishers eat?"},
          {"role": "assistant", "content": "Kingfishers eat small fish."}]
    with opened(settings, start_jobs=False) as st:
        st.import_file(path)
        cid = st.store.conversation_ids()[2]
        assert st.store.save_messages(cid, v2, expected_version=1) == 2
        check_index(st.store)
    new = tmp_path / "v3.json"
    new.write_text(json.dumps(v3), encoding="utf-8")

    d = driver(settings, "edit", point, cid, 2, new)
    d.wait_line("FAULT edit")
    d.kill9()

    with opened(settings, start_jobs=False) as st:
        store = st.store
        conv = store.get_conversation(cid)
        expected, version = (v2, 2) if point == "uncommitted" else (v3, 3)
        assert (conv["messages"], conv["version"], conv["n_turns"]) == (expected, version, len(expected))
        assert list(store.list_revisions(cid)["version"]) == list(range(version, 0, -1))
        assert store.get_revision(cid, 2) == v2
        assert store.get_revision(cid, 1)[0]["content"] == "Question 2 about rivers?"
        assert check_whole(store) == 5
        check_index(store)
        new_found, old_found = ([], [cid]) if point == "uncommitted" else ([cid], [])
        assert (store.search.match_ids("kingfishers"), store.search.match_ids("herons")) == (new_found, old_found)
        assert (store.conversation_ids(query="kingfishers"), store.conversation_ids(query="herons")) == (
            new_found, old_found)
        # the editor goes on from what is stored
        assert store.save_messages(cid, v3 + [{"role": "user", "content": "Why?"},
                                              {"role": "assistant", "content": "Because."}],
                                   expected_version=version) == version + 1
        check_whole(store)


# ---------------------------------------------------------------------------------------------- 1d training


LONG = {"max_steps": 100_000, "global_batch_size": 1, "per_device_train_batch_size": 1, "max_length": 64,
        "learning_rate": 1e-2, "logging_steps": 1, "eval_steps": 50, "save_steps": 10_000}
"""A run that goes on until stopped."""


@pytest.mark.slow  # loads the default model
def test_studio_killed_during_training_reattaches_then_interrupts_and_resumes(settings, driver, tiny_model_dir):
    with opened(settings, start_jobs=False) as st:
        st.registry.add(ModelSpec(name="tiny", kind="hf", path=str(tiny_model_dir)))
        for i in range(12):
            st.store.add_conversation([{"role": "user", "content": f"What is {i} plus 1?"},
                                       {"role": "assistant", "content": f"{i} plus 1 is {i + 1}."}],
                                      origin="imported")
    d = driver(settings, "train", json.dumps(LONG))
    line = d.wait_line("FAULT training")
    fields = dict(zip(line.split()[2::2], line.split()[3::2]))
    run_id, job, pid = fields["run"], int(fields["job"]), int(fields["pid"])
    run_dir = (settings.data_dir / "runs" / run_id).resolve()
    d.kill9()
    try:
        assert pid_alive(pid, run_dir)  # its own session: the run goes on without the studio
        with opened(settings) as second:  # re-attaches and follows it
            assert second.store.get_job(job)["status"] == "running" and job in second.jobs.active()
            s = second.runs.status(run_id)
            assert (s["state"], s["pid"], s["job_id"]) == ("running", pid, job)
            done = second.store.get_job(job)["n_done"]
            wait_for(lambda: second.store.get_job(job)["n_done"] > done, what="steps of the re-attached run")
            check_whole(second.store)
        os.killpg(pid, signal.SIGKILL)  # now its process dies too, while no studio follows it
        wait_for(lambda: not pid_alive(pid), what="the run's process to end")

        with opened(settings) as third:
            p = third.jobs.progress(job)
            assert p.status == "interrupted" and job not in third.jobs.active(), p.line()
            s = third.runs.status(run_id)
            assert s["state"] == "interrupted" and s["pid"] is None
            assert third.runs.resume(run_id) == 0
            wait_for(lambda: third.runs.status(run_id)["attempts"] == 2 and third.runs.status(run_id)["pid"],
                     what="the resumed run's process")
            pid = third.runs.status(run_id)["pid"]
            assert third.store.get_job(job)["status"] == "running" and len(third.runs.list_runs()) == 1
            assert third.runs.stop(run_id, force=True) == "stopping"
            s = third.runs.wait(run_id, timeout=120)
            assert s["state"] == "stopped" and s["pid"] is None, third.runs.log_tail(run_id)
            assert third.store.get_job(job)["status"] == "stopped"
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------- 2 models


class SilentServer:
    """A loopback HTTP server that accepts connections and never answers (``stall=False``), or answers a
    streamed chat with its headers and one piece, then goes silent (``stall=True``). ``accepted`` counts the
    connections; ``first`` is set at the first."""

    PIECE = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}]}

    def __init__(self, stall: bool = False):
        self.stall = stall
        self.accepted = 0
        self.first = threading.Event()
        self._conns: list[socket.socket] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        self._thread = threading.Thread(target=self._serve, daemon=True, name="silent-server")
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            self.accepted += 1
            self.first.set()
            if self.stall:
                data = b""
                while b"\r\n\r\n" not in data:
                    more = conn.recv(65536)
                    if not more:
                        break
                    data += more
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"
                             + f"data: {json.dumps(self.PIECE)}\n\n".encode())

    def close(self) -> None:
        self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() (close alone does not)
        self._sock.close()
        for c in self._conns:
            c.close()
        self._thread.join(timeout=10)


@pytest.fixture
def silent():
    servers: list[SilentServer] = []

    def make(stall: bool = False) -> SilentServer:
        servers.append(SilentServer(stall))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_endpoint_timeout_is_an_entry_setting(settings):
    with opened(settings, start_jobs=False) as st:
        reg = st.registry
        spec = reg.add_endpoint("ep", "http://127.0.0.1:9/v1", "m")
        assert spec.timeout == DEFAULT_ENDPOINT_TIMEOUT_S == 300.0
        for bad in (0, -1, 3601, "5", True):
            with pytest.raises(RegistryError, match=r"model 'ep2': timeout must be a number of seconds"):
                reg.add_endpoint("ep2", "http://127.0.0.1:9/v1", "m", timeout=bad)
        # an entry saved before the setting existed reads with the default
        old = {k: v for k, v in reg.get("ep").__dict__.items() if k != "timeout"}
        st.store.upsert_model("old", "endpoint", dict(old, name="old"))
        assert reg.get("old").timeout == 300.0
    from studio.cli import main

    assert main(["models", "add-endpoint", "ep3", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                 "--timeout", "2.5", "--data-dir", str(settings.data_dir)]) == 0
    with opened(settings, start_jobs=False) as st:
        assert st.registry.get("ep3").timeout == 2.5 and st.registry.get("ep").timeout == 300.0


@pytest.mark.slow  # loads the default model
def test_broken_models_and_a_hanging_endpoint_leave_the_served_studio_working(tmp_path, settings, silent,
                                                                             default_model_dir):
    from studio.server import create_server

    bad_config = tmp_path / "bad-config"
    bad_config.mkdir()
    (bad_config / "config.json").write_text('{"model_type": "llama", "hidden_size": ', encoding="utf-8")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    for f in default_model_dir.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            (no_weights / f.name).write_bytes(f.read_bytes())
    hang, stall = silent(), silent(stall=True)

    app, studio = create_server(settings)
    try:
        reg = studio.registry
        reg.add(ModelSpec(name="bad-config", kind="hf", path=str(bad_config)))
        reg.add(ModelSpec(name="no-weights", kind="hf", path=str(no_weights)))
        reg.add_endpoint("hangs", hang.url, "m", timeout=4.0, max_retries=0)  # retried hangs: tests/test_endpoints.py
        with serve(app) as url, httpx.Client(base_url=url, timeout=120) as http:
            chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
            for name, stream, reason in (("bad-config", False, f"{bad_config / 'config.json'}' is not a valid JSON"),
                                         ("bad-config", True, "is not a valid JSON file"),
                                         ("no-weights", False, f"no file named model.safetensors, or "
                                                               f"pytorch_model.bin, found in directory {no_weights}")):
                # a stream is refused before it starts: a status and an error body, not a broken stream
                r = http.post("/v1/chat/completions", json=dict(chat, model=name, stream=stream))
                err = r.json()["error"]
                assert (r.status_code, err["type"], err["code"]) == (500, "server_error", "model_error"), r.text
                assert err["message"].startswith(f"model '{name}' ("), err
                assert "could not be loaded" in err["message"] and reason in err["message"], err

            # a chat on the hanging endpoint waits for its timeout; the server answers others meanwhile
            result: dict = {}

            def ask() -> None:
                t = time.monotonic()
                result["response"] = http.post("/v1/chat/completions", json=dict(chat, model="hangs"))
                result["elapsed"] = time.monotonic() - t

            asking = threading.Thread(target=ask)
            asking.start()
            assert hang.first.wait(60), "the studio never called the endpoint"
            models = http.get("/v1/models")
            page = http.get("/")
            assert "response" not in result, "the chat ended before its timeout"
            assert models.status_code == 200 and {"bad-config", "no-weights", "hangs"} <= {
                m["id"] for m in models.json()["data"]}
            assert page.status_code == 200 and "<html" in page.text.lower()
            asking.join(timeout=120)
            r, elapsed = result["response"], result["elapsed"]
            err = r.json()["error"]
            assert (r.status_code, err["type"]) == (502, "upstream_error"), r.text
            assert err["message"].startswith(f"endpoint 'hangs' (m @ {hang.url}): no answer from {hang.url} within "
                                             "4 s"), err
            assert 3.9 <= elapsed < 4 + 20 and hang.accepted == 1  # one try: the entry allows no retries

            # the studio still works: the default model answers through the same server
            r = http.post("/v1/chat/completions", json=dict(chat, model=DEFAULT_MODEL_NAME, temperature=0))
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text

        # the registry's own interface: a short timeout ends a chat, and a stream that stalls, soon after it
        reg.add_endpoint("hangs-fast", hang.url, "m", timeout=1.0, max_retries=0)
        t = time.monotonic()
        with pytest.raises(RegistryError, match=re.escape(f"endpoint 'hangs-fast' (m @ {hang.url}): no answer from "
                                                          f"{hang.url} within 1 s (the entry's timeout)")):
            reg.chat("hangs-fast", [{"role": "user", "content": "Hi"}], GenParams(max_new_tokens=4))
        assert 0.9 <= time.monotonic() - t < 1 + 10 and hang.accepted == 2

        reg.add_endpoint("stalls", stall.url, "m", timeout=1.0, max_retries=0)
        pieces = []
        t = time.monotonic()
        with pytest.raises(RegistryError, match=r"endpoint 'stalls' .*no answer from .* within 1 s"):
            for piece in reg.stream_chat("stalls", [{"role": "user", "content": "Hi"}], GenParams(max_new_tokens=4)):
                pieces.append(piece)
        assert pieces == ["Hel"] and 0.9 <= time.monotonic() - t < 1 + 10 and stall.accepted == 1
    finally:
        studio.close()
