"""Endpoints (issue 11): an OpenAI-compatible loopback server that fails on purpose, and what the studio does.

``Teacher`` below is a real HTTP server on 127.0.0.1 (``http.server.ThreadingHTTPServer``, as ``listener`` in
``tests/test_registry.py``) answering ``/v1/models`` and ``/v1/chat/completions`` (plain and streamed, with
``usage``), and failing as told: 429 with ``Retry-After``, 500, a hang, a connection closed before an answer, a
stream cut in the middle, a refused key (401), an unknown model (404). The tests check:

- retries are the ``openai`` client's (``ModelSpec.max_retries``): 429 waits the server's ``Retry-After`` (the gap
  between the two requests the server saw), 500 and a dropped connection are retried after a backoff, a hang ends
  with a clear error after ``(max_retries + 1) x timeout``, a cut stream ends with a clear error;
- the per-entry concurrency and the studio-wide cap: the most requests the server saw at once equals the setting;
- usage and cost of an expansion of 2 seeds, per conversation (``gen_params.usage``) and per job;
- a job whose endpoint fails halfway (each way above) pauses with the reason, and resumes where it stopped: every
  conversation finished before is kept, none is stored twice, none is lost;
- the Models tab's "Check it works" through the real page handler: a wrong URL, a wrong key, an unknown model.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from studio.config import Settings
from studio.core import Studio
from studio.expand import ExpandConfig
from studio.registry import GenParams, ModelSpec, RegistryError

USER = [{"role": "user", "content": "Hi"}]
SHORT = GenParams(max_new_tokens=8, temperature=0.0)


class Teacher:
    """A scripted OpenAI-compatible server on loopback.

    Attributes:
        url: base URL (``.../v1``).
        plan: actions for the next chat requests, one each, then ``ok``: ``ok``, ``("429", retry_after)``,
            ``500``, ``hang`` (never answers until the server closes), ``gate`` (answers once ``gate`` is set),
            ``drop`` (closes the connection without an
            answer), ``cut`` (a streamed answer: one piece, then the connection closes mid-body), ``length`` (an
            answer whose finish reason is ``length``: cut at the token limit).
        down: when set, every chat request fails this way (until set back to None); ``fail_after``: requests
            answered before ``down`` takes effect.
        key: the key the server wants (``Authorization: Bearer``), None for any.
        models: the model names it serves.
        arrivals: ``time.monotonic()`` of each chat request; ``max_in_flight``: most chat requests at once;
            ``hold``: while set, each chat request waits until ``hold`` are in flight at once (or all ``expect``
            have arrived), so the largest count the caller allows is reached.
    """

    def __init__(self):
        self.plan: list = []
        self.down = None
        self.fail_after: int | None = None
        self.key: str | None = None
        self.models = ["m"]
        self.arrivals: list[float] = []
        self.answered = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.hold = 0
        self.expect = 0
        self.cond = threading.Condition()
        self.release = threading.Event()
        self.gate = threading.Event()
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _json(self, status: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if teacher.key and self.headers.get("Authorization") != f"Bearer {teacher.key}":
                    self._json(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                               "code": "invalid_api_key"}})
                    return False
                return True

            def do_GET(self):  # noqa: N802
                if self.path != "/v1/models":
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                if self._authorised():
                    self._json(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "t"} for m in teacher.models]})

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path != "/v1/chat/completions":
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                if not self._authorised():
                    return
                if body.get("model") not in teacher.models:
                    return self._json(404, {"error": {"message": f"The model '{body.get('model')}' does not exist",
                                                      "type": "invalid_request_error", "code": "model_not_found"}})
                with teacher.cond:
                    teacher.arrivals.append(time.monotonic())
                    n = len(teacher.arrivals)
                    failing = teacher.down is not None and (teacher.fail_after is None
                                                            or teacher.answered >= teacher.fail_after)
                    if failing:
                        action = teacher.down
                    else:
                        action = teacher.plan.pop(0) if teacher.plan else "ok"
                    teacher.in_flight += 1
                    teacher.max_in_flight = max(teacher.max_in_flight, teacher.in_flight)
                    teacher.cond.notify_all()
                    if teacher.hold:
                        teacher.cond.wait_for(lambda: teacher.in_flight >= teacher.hold
                                              or len(teacher.arrivals) >= teacher.expect, timeout=30)
                try:
                    self._act(action, body, n)
                finally:
                    with teacher.cond:
                        teacher.in_flight -= 1

            def _act(self, action, body: dict, n: int) -> None:
                if isinstance(action, tuple) and action[0] == "429":
                    return self._json(429, {"error": {"message": "Rate limit reached", "type": "requests"}},
                                      {"Retry-After": action[1]})
                if action == "500":
                    return self._json(500, {"error": {"message": "upstream exploded", "type": "server_error"}})
                if action == "hang":
                    teacher.release.wait(60)
                    return self._drop()
                if action == "drop":
                    return self._drop()
                if action == "gate":  # answers once the test opens the gate
                    teacher.gate.wait(60)
                prompt = json.dumps(body.get("messages"))
                text = f"What about part {n}?" if "curious user" in prompt else f"Answer {n}."
                if body.get("stream"):
                    return self._stream(text, cut=action == "cut")
                with teacher.cond:
                    teacher.answered += 1
                self._json(200, {"id": f"c{n}", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": "length" if action == "length" else "stop"}],
                                 "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

            def _stream(self, text: str, cut: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                pieces = ["Hel", text] if cut else ["Hel", "lo ", text]
                for i, p in enumerate(pieces):
                    event = {"id": "s", "object": "chat.completion.chunk", "created": 0, "model": "m",
                             "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
                    data = f"data: {json.dumps(event)}\n\n".encode()
                    if cut and i == 1:  # half a chunk, then the connection closes
                        self.wfile.write(f"{len(data):x}\r\n".encode() + data[:10])
                        self.wfile.flush()
                        return self._drop()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                done = b"data: [DONE]\n\n"
                self.wfile.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        self._srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._srv.daemon_threads = True
        self.port = self._srv.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True, name="teacher")
        self._thread.start()

    def gaps(self) -> list[float]:
        """Seconds between consecutive chat requests."""
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:])]

    def close(self) -> None:
        self.release.set()
        self.gate.set()
        self._srv.shutdown()
        self._srv.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def teacher():
    t = Teacher()
    yield t
    t.close()


def _settings(tmp_path, **kw) -> Settings:
    return Settings(data_dir=tmp_path / "data", host="127.0.0.1", auth="", read_only=False, users_file=None,
                    oauth=False, api_keys_file=None, endpoint_key_envs=("WV_TEST_KEY",), **kw)


@pytest.fixture
def studio(tmp_path):
    s = Studio(_settings(tmp_path))
    yield s
    s.close()


# ---------------------------------------------------------------------------------------------- settings


def test_endpoint_settings_load_old_entries_validate_and_come_from_the_cli(tmp_path, teacher, capsys):
    s = Studio(_settings(tmp_path), start_jobs=False)
    try:
        reg = s.registry
        spec = reg.add_endpoint("ep", teacher.url, "m")
        assert (spec.concurrency, spec.max_retries, spec.price_in_per_m, spec.price_out_per_m) == (16, 2, 0.0, 0.0)
        old = {k: v for k, v in spec.__dict__.items()
               if k not in ("concurrency", "max_retries", "price_in_per_m", "price_out_per_m")}
        s.store.upsert_model("old", "endpoint", dict(old, name="old"))  # saved before these settings existed
        assert (reg.get("old").concurrency, reg.get("old").max_retries, reg.get("old").cost(10**6, 10**6)) == (16, 2, 0)
        for kw, words in ((dict(concurrency=0), "concurrency must be a whole number from 1 to 256, not 0"),
                          (dict(concurrency=2.5), "concurrency must be a whole number from 1 to 256, not 2.5"),
                          (dict(max_retries=11), "max_retries must be a whole number from 0 to 10, not 11"),
                          (dict(max_retries=True), "max_retries must be a whole number"),
                          (dict(price_in_per_m=-1), "price_in_per_m (price of 1M tokens) must be a number from 0"),
                          (dict(price_out_per_m="3"), "price_out_per_m (price of 1M tokens) must be a number")):
            with pytest.raises(RegistryError, match=re.escape(f"model 'bad': {words}")):
                reg.add_endpoint("bad", teacher.url, "m", **kw)
        assert "bad" not in reg.names()
        spec = reg.add_endpoint("ep", teacher.url, "m", concurrency=4, max_retries=0, price_in_per_m=0.15,
                                price_out_per_m=0.6, replace=True)
        assert reg.get("ep").concurrency == 4 and spec.cost(2_000_000, 1_000_000) == pytest.approx(0.9)
    finally:
        s.close()
    with pytest.raises(ValueError, match="STUDIO_ENDPOINT_CONCURRENCY '0' is not a whole number of requests"):
        _settings(tmp_path, endpoint_concurrency=0)
    from studio.cli import main

    args = ["models", "add-endpoint", "cli-ep", "--base-url", teacher.url, "--model", "m", "--concurrency", "3",
            "--max-retries", "5", "--price-in", "1.5", "--price-out", "6", "--data-dir", str(tmp_path / "data")]
    assert main(args) == 0
    assert main(["models", "list", "--data-dir", str(tmp_path / "data")]) == 0
    assert "timeout 300 s, 3 at once, 5 retries, $1.5/$6 per 1M tokens in/out" in capsys.readouterr().out
    assert main(args[:-2] + ["--concurrency", "0", "--data-dir", str(tmp_path / "data")]) != 0  # a clear error
    s = Studio(_settings(tmp_path), start_jobs=False)
    try:
        e = s.registry.get("cli-ep")
        assert (e.concurrency, e.max_retries, e.price_in_per_m, e.price_out_per_m) == (3, 5, 1.5, 6.0)
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------- retries


def test_429_waits_the_servers_retry_after(studio, teacher):
    reg = studio.registry
    reg.add_endpoint("ep", teacher.url, "m", max_retries=2)
    teacher.plan = [("429", "1.5")]
    assert reg.chat("ep", USER, SHORT).text == "Answer 2."
    # the client's own backoff for a first retry is 0.375-0.5 s: 1.5 s is the server's Retry-After
    assert len(teacher.arrivals) == 2 and teacher.gaps()[0] >= 1.5
    # a Retry-After over the client's 120 s limit is not waited for: one request, a clear error
    teacher.arrivals.clear()
    teacher.plan = [("429", "600")]
    with pytest.raises(RegistryError, match=r"endpoint 'ep' \(m @ .*\): rate limited \(429\) \(with up to 2 retries\)"):
        reg.chat("ep", USER, SHORT)
    assert len(teacher.arrivals) == 1


def test_server_errors_and_dropped_connections_are_retried_with_backoff(studio, teacher):
    reg = studio.registry
    reg.add_endpoint("ep", teacher.url, "m", max_retries=2)
    teacher.plan = ["500", "drop"]
    c = reg.chat("ep", USER, SHORT)
    assert c.text == "Answer 3." and (c.prompt_tokens, c.completion_tokens) == (10, 5)
    g = teacher.gaps()
    # exponential backoff with 0-25 % jitter: 0.5 s then 1 s, each less up to a quarter
    assert len(teacher.arrivals) == 3 and g[0] >= 0.375 and g[1] >= 0.75
    teacher.arrivals.clear()
    teacher.plan = ["500"] * 3
    with pytest.raises(RegistryError, match=r"the server answered 500 \(with up to 2 retries\): upstream exploded"):
        reg.chat("ep", USER, SHORT)
    assert len(teacher.arrivals) == 3
    reg.add_endpoint("once", teacher.url, "m", max_retries=0)
    teacher.arrivals.clear()
    teacher.plan = ["drop"]
    with pytest.raises(RegistryError, match=r"endpoint 'once' .*: the connection to .* broke before an answer"):
        reg.chat("once", USER, SHORT)
    assert len(teacher.arrivals) == 1


def test_a_hang_ends_after_the_timeout_and_its_retries(studio, teacher):
    reg = studio.registry
    reg.add_endpoint("ep", teacher.url, "m", timeout=0.5, max_retries=1)
    teacher.plan = ["hang", "hang"]
    t = time.monotonic()
    with pytest.raises(RegistryError, match=r"endpoint 'ep' \(m @ .*\): no answer from .* within 0.5 s \(the "
                                            r"entry's timeout\) \(with up to 1 retry\); the server is overloaded "
                                            r"or hangs"):
        reg.chat("ep", USER, SHORT)
    assert time.monotonic() - t >= 2 * 0.5 + 0.375 and len(teacher.arrivals) == 2


def test_a_stream_cut_mid_answer_ends_with_a_clear_error(studio, teacher):
    reg = studio.registry
    reg.add_endpoint("ep", teacher.url, "m")
    assert "".join(reg.stream_chat("ep", USER, SHORT)) == "Hello Answer 1."
    teacher.plan = ["cut"]
    pieces = []
    with pytest.raises(RegistryError, match=r"endpoint 'ep' .*: the connection to .* broke before the answer was "
                                            r"complete"):
        for p in reg.stream_chat("ep", USER, SHORT):
            pieces.append(p)
    assert pieces == ["Hel"] and len(teacher.arrivals) == 2  # a stream that began is not sent again


# ---------------------------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("entry, studio_wide, expected", [(3, 64, 3), (16, 2, 2)])
def test_concurrency_cap_is_what_the_server_sees(tmp_path, teacher, entry, studio_wide, expected):
    s = Studio(_settings(tmp_path, endpoint_concurrency=studio_wide), start_jobs=False)
    try:
        s.registry.add_endpoint("ep", teacher.url, "m", concurrency=entry)
        # each request waits until as many as the cap are in flight (or all 10 have come): the cap is reached,
        # and a cap that let more through would show more
        teacher.hold, teacher.expect = expected, 10
        outs = s.registry.chat_batch("ep", [[{"role": "user", "content": f"Q{i}"}] for i in range(10)], SHORT,
                                     concurrency=None)
        assert len(outs) == 10 and all(o.text.startswith("Answer") for o in outs)
        assert teacher.max_in_flight == expected
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------- jobs


def _seeds(studio, tmp_path, n: int) -> int:
    f = tmp_path / "seeds.jsonl"
    f.write_text("".join(json.dumps({"instruction": f"Explain topic number {i} in detail."}) + "\n"
                         for i in range(n)), encoding="utf-8")
    return studio.import_file(f).source_id


def test_usage_and_cost_of_an_expansion(studio, teacher, tmp_path):
    studio.registry.add_endpoint("paid", teacher.url, "m", price_in_per_m=2.0, price_out_per_m=8.0)
    src = _seeds(studio, tmp_path, 2)
    job = studio.expand(ExpandConfig(teacher="paid", rounds=2, batch_size=2, source_id=src,
                                     answer=GenParams(max_new_tokens=16)), n=2)
    p = studio.jobs.wait(job, timeout=120)
    assert p.status == "done" and p.done == 2, p.line()
    # per seed: round 1 answer, round 2 follow-up question and answer: 3 requests of 10 + 5 tokens
    for cid in studio.store.conversation_ids(job_id=job):
        conv = studio.store.get_conversation(cid)
        assert (conv["n_prompt_tokens"], conv["n_completion_tokens"]) == (30, 15)
        assert conv["gen_params"]["usage"] == {"prompt_tokens": 30, "completion_tokens": 15, "price_in_per_m": 2.0,
                                               "price_out_per_m": 8.0, "cost": pytest.approx(180e-6)}
    assert studio.store.job_usage(job) == {"conversations": 2, "prompt_tokens": 60, "completion_tokens": 30,
                                           "cost": pytest.approx(360e-6)}
    p = studio.jobs.progress(job)  # shown per job, also once it is finished
    assert p.metrics["cost"] == pytest.approx(360e-6)
    assert "2/2 done, 60 prompt + 30 completion tokens, ~$0.0004" in p.line()
    from studio.ui.jobs import jobs_frame

    row = jobs_frame(studio).iloc[0]  # the job list of the Expand and Jobs panels
    assert (row["id"], row["tokens / cost"]) == (job, "60 prompt + 30 completion tokens, ~$0.0004")


def test_each_conversation_is_stored_as_soon_as_it_is_finished(studio, teacher, tmp_path):
    """An endpoint teacher expands each seed on its own: one slow answer holds up only its own conversation."""
    studio.registry.add_endpoint("ep", teacher.url, "m", concurrency=2)
    src = _seeds(studio, tmp_path, 4)
    teacher.plan = ["gate"]  # the first request waits for the test
    job = studio.expand(ExpandConfig(teacher="ep", rounds=1, batch_size=4, source_id=src), n=4)
    deadline = time.monotonic() + 60
    while studio.store.get_job(job)["n_done"] < 3:  # the three others are stored meanwhile
        assert time.monotonic() < deadline, studio.jobs.progress(job).line()
        time.sleep(0.05)
    assert studio.store.get_job(job)["status"] == "running" and teacher.in_flight == 1
    assert len(studio.store.pending_items(job)) == 1
    teacher.gate.set()
    p = studio.jobs.wait(job, timeout=60)
    assert p.status == "done" and p.done == 4 and len(studio.store.conversation_ids(job_id=job)) == 4


@pytest.mark.parametrize("failure, reason", [
    (("429", "0.2"), r"rate limited \(429\) \(with up to 1 retry\)"),
    ("500", r"the server answered 500 \(with up to 1 retry\)"),
    ("hang", r"no answer from .* within 0.5 s"),
    ("drop", r"the connection to .* broke before an answer"),
])
def test_a_job_that_loses_its_endpoint_pauses_and_resumes_where_it_stopped(studio, teacher, tmp_path, failure,
                                                                             reason):
    studio.registry.add_endpoint("flaky", teacher.url, "m", timeout=0.5, max_retries=1)
    src = _seeds(studio, tmp_path, 4)
    teacher.down, teacher.fail_after = failure, 2  # two seeds answered (1 request each), then the endpoint is lost
    job = studio.expand(ExpandConfig(teacher="flaky", rounds=1, batch_size=1, source_id=src), n=4)
    p = studio.jobs.wait(job, timeout=120)
    assert p.status == "paused" and (p.done, p.failed, p.total) == (2, 0, 4), p.line()
    assert re.search(r"^endpoint 'flaky' \(m @ .*\): " + reason, p.message), p.message
    assert p.message.endswith("2 seeds left; resume when the endpoint answers again")
    store = studio.store
    kept = {store.get_conversation(c)["seed_id"]: c for c in store.conversation_ids(job_id=job)}
    assert len(kept) == 2 and len(store.pending_items(job)) == 2
    assert not set(kept) & set(store.pending_items(job))

    teacher.down = None
    teacher.release.set()  # let go of hung requests (their connections close; the client gave up on them)
    studio.jobs.resume(job)
    p = studio.jobs.wait(job, timeout=120)
    assert p.status == "done" and (p.done, p.failed) == (4, 0), p.line()
    ids = store.conversation_ids(job_id=job)
    seeds = [store.get_conversation(c)["seed_id"] for c in ids]
    assert len(ids) == 4 and sorted(seeds) == sorted(store.job_item_seed_ids(job))  # none lost, none twice
    assert all(kept[s] in ids for s in kept)  # the ones finished before the pause are the same rows
    assert not store.pending_items(job)


# ---------------------------------------------------------------------------------------------- Models tab


def test_models_tab_check_says_what_is_wrong(tmp_path, teacher, monkeypatch):
    from studio import access
    from studio.ui.app import build_app
    from test_roles import call, find

    users = tmp_path / "users.json"
    access.add_user(users, "alice", "admin", "alice-password-1")
    s = Studio(Settings(data_dir=tmp_path / "data", host="127.0.0.1", auth="", read_only=False, users_file=users,
                        oauth=False, oauth_role="viewer", api_keys_file=None, endpoint_key_envs=("WV_TEST_KEY",)))
    try:
        demo = build_app(s)
        add, check = find(demo, "Adding an endpoint"), find(demo, "Checking a model")

        def out_of(pred: dict) -> str:  # the result box's Markdown as the page shows it (escapes undone)
            md = next(v for k, v in pred.items() if getattr(k, "elem_id", None) == "models-out")
            return re.sub(r"\\(.)", r"\1", md)

        def checked(name: str) -> str:
            return out_of(call(demo, check, "alice", [name]))

        teacher.key = "sk-right"
        monkeypatch.setenv("WV_TEST_KEY", "sk-right")
        said = out_of(call(demo, add, "alice", ["good", teacher.url, "m", "WV_TEST_KEY", 30, 4, 1, 0.15, 0.6]))
        assert "Added endpoint" in said and "timeout 30 s, 4 at once, 1 retry" in said
        assert s.registry.get("good").concurrency == 4 and s.registry.get("good").price_out_per_m == 0.6
        said = checked("good")
        assert said.startswith("✅") and "reachable and works" in said and "Answer" in said, said

        call(demo, add, "alice", ["wrong-port", "http://127.0.0.1:9/v1", "m", "WV_TEST_KEY", 30, 4, 1, 0, 0])
        said = checked("wrong-port")
        assert said.startswith("❌") and "cannot reach http://127.0.0.1:9/v1" in said and "host and port" in said
        call(demo, add, "alice", ["no-v1", teacher.url[:-3], "m", "WV_TEST_KEY", 30, 4, 1, 0, 0])
        said = checked("no-v1")
        assert said.startswith("❌") and "was not found (404): the base URL is probably wrong" in said, said

        monkeypatch.setenv("WV_TEST_KEY", "sk-wrong")
        said = checked("good")
        assert said.startswith("❌") and "the key in WV_TEST_KEY was refused (401)" in said, said
        monkeypatch.setenv("WV_TEST_KEY", "sk-right")

        call(demo, add, "alice", ["ghost", teacher.url, "gpt-9", "WV_TEST_KEY", 30, 4, 1, 0, 0])
        said = checked("ghost")
        assert said.startswith("❌") and "does not serve the model 'gpt-9'" in said and "it serves: m" in said
        s.registry.add_endpoint("hidden", teacher.url, "also", "WV_TEST_KEY")
        teacher.models = []  # lists none: the chat decides
        said = checked("hidden")
        assert said.startswith("❌") and "does not know the model 'also' (404" in said, said

        import gradio as gr

        with pytest.raises(gr.Error, match="Requests at once: 2.5 is not a whole number"):
            call(demo, add, "alice", ["bad", teacher.url, "m", "", 30, 2.5, 1, 0, 0])
        with pytest.raises(gr.Error, match="max_retries must be a whole number from 0 to 10, not 11"):
            call(demo, add, "alice", ["bad", teacher.url, "m", "", 30, 4, 11, 0, 0])
        assert "bad" not in s.registry.names()
    finally:
        s.close()


def test_an_evolution_that_loses_its_endpoint_pauses(studio, teacher, tmp_path):
    from studio.evol import EvolConfig

    studio.registry.add_endpoint("evolver", teacher.url, "m", max_retries=0)
    src = _seeds(studio, tmp_path, 3)
    teacher.down = "500"
    job = studio.evolve(EvolConfig(evolver="evolver", batch_size=3), n=3, source_id=src)
    p = studio.jobs.wait(job, timeout=60)
    assert p.status == "paused" and (p.done, p.failed) == (0, 0), p.line()
    assert p.message.startswith("endpoint 'evolver' (m @ ") and "the server answered 500" in p.message, p.message
    assert len(studio.store.pending_items(job)) == 3
