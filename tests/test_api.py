"""The OpenAI-compatible /v1 API on a real uvicorn server on loopback, driven by the real ``openai`` client,
and used as the teacher of another studio's expansion (no mocks).

One server (a studio on its own data folder, with the embedded default model) serves the whole module.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from studio import access
from studio.access import ConfigError
from studio.config import Settings
from studio.core import Studio
from studio.expand import ExpandConfig
from studio.registry import DEFAULT_MODEL_NAME, GenParams, RegistryError

pytestmark = pytest.mark.slow

SHORT = 16  # tokens per reply: this machine has 2 CPU cores


def free_port() -> int:
    """A TCP port nothing listens on (bound once by the OS, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app, host: str = "127.0.0.1") -> Iterator[str]:
    """``app`` under a real uvicorn server (on loopback unless ``host`` says otherwise) in a background
    thread; yields its ``/v1`` base URL."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True, name="test-api-server")
    t.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert t.is_alive() and time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.05)
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        srv.should_exit = True
        t.join(timeout=30)
        assert not t.is_alive(), "the API server did not shut down"


def access_settings(path, **kw) -> Settings:
    """Settings with every access setting given (none read from the shell)."""
    base = dict(data_dir=path, host="127.0.0.1", auth="", read_only=False, users_file=None, oauth=False,
                api_keys_file=None, api_enabled=True, endpoint_key_envs=())
    base.update(kw)
    return Settings(**base)


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_dir):
    """``make_app(studio)`` on loopback with no login and no key (open); yields ``(studio, base_url)``."""
    from studio.api import make_app

    studio = Studio(access_settings(tmp_path_factory.mktemp("api-server")), start_jobs=False)
    try:
        with serving(make_app(studio)) as url:
            yield studio, url
    finally:
        studio.close()


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory, default_model_dir):
    """A studio with a login (``STUDIO_AUTH``) and one API key; yields ``(base_url, key)``."""
    from studio.api import make_app

    root = tmp_path_factory.mktemp("api-locked")
    key = access.add_api_key(root / "keys.json", "tests")
    studio = Studio(access_settings(root / "data", auth="admin:pw", api_keys_file=root / "keys.json"),
                    start_jobs=False)
    try:
        with serving(make_app(studio)) as url:
            yield url, key
    finally:
        studio.close()


@pytest.fixture(scope="module")
def client(server) -> OpenAI:
    return OpenAI(base_url=server[1], api_key="x", max_retries=0, timeout=120)


def test_models_list_contains_default(client):
    ids = [m.id for m in client.models.list()]
    assert DEFAULT_MODEL_NAME in ids
    assert client.models.retrieve(DEFAULT_MODEL_NAME).id == DEFAULT_MODEL_NAME


def test_chat_completion_returns_text_and_usage(client):
    r = client.chat.completions.create(
        model=DEFAULT_MODEL_NAME, messages=[{"role": "user", "content": "Name a primary colour."}],
        max_tokens=SHORT, temperature=0, seed=1)
    assert r.object == "chat.completion"
    assert r.model == DEFAULT_MODEL_NAME
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0
    assert 0 < r.usage.completion_tokens <= SHORT
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_chunks_join_to_text(client):
    stream = client.chat.completions.create(
        model=DEFAULT_MODEL_NAME,
        messages=[{"role": "system", "content": "You are brief."},
                  {"role": "user", "content": "Say hello."}],
        max_tokens=SHORT, temperature=0, stream=True)
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip()
    assert len([c for c in chunks if c.choices[0].delta.content]) >= 2  # really streamed, piece by piece


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404
    assert e.value.body["code"] == "model_not_found"
    assert "no-such-model" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


@pytest.mark.parametrize("messages, words", [
    ([], "empty"),
    ([{"role": "assistant", "content": "hi"}], "must end with a user message"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "alternate"),
    ([{"role": "user", "content": "   "}], "empty text"),
    ([{"role": "wizard", "content": "hi"}, {"role": "user", "content": "x"}], "unknown role"),
])
def test_invalid_messages_are_400(client, messages, words):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=messages, max_tokens=SHORT)
    assert words in e.value.body["message"]
    assert e.value.body["type"] == "invalid_request_error"


def test_bad_fields_are_400_with_openai_error_body(server):
    url = server[1] + "/chat/completions"
    r = httpx.post(url, json={"model": DEFAULT_MODEL_NAME, "messages": [{"role": "user", "content": "x"}],
                              "temperature": 9})
    assert r.status_code == 400
    assert "temperature" in r.json()["error"]["message"]
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def _seeded_studio(path, data_dir) -> Studio:
    s = Studio(Settings(data_dir=path))
    res = s.import_file(data_dir / "wizardlm_testset.jsonl")
    assert res.n_seeds == 218
    return s


def test_studio_api_as_expansion_teacher(server, tmp_path, data_dir):
    """A second studio registers the first one's /v1 as an endpoint and expands seeds with it."""
    _, base_url = server
    s2 = _seeded_studio(tmp_path / "client", data_dir)
    try:
        spec = s2.registry.add_endpoint("studio-api", base_url, DEFAULT_MODEL_NAME)
        assert "reachable" in s2.registry.ping("studio-api")
        cfg = ExpandConfig(teacher=spec.name, rounds=2, question_max_new_tokens=SHORT, batch_size=3,
                           answer=GenParams(max_new_tokens=24, temperature=0.7, seed=3), source_id=1)
        job = s2.expand(cfg, n=3)
        p = s2.jobs.wait(job, timeout=900)
        assert p.status == "done", p.line()
        df, total = s2.store.list_conversations(origin="expanded")
        assert total + p.failed == 3 and total >= 2, p.line()
        assert set(df["teacher"]) == {"studio-api"}
        for cid in df["id"]:
            conv = s2.store.get_conversation(int(cid))
            assert [m["role"] for m in conv["messages"]] == ["user", "assistant"] * 2
            assert conv["teacher"] == "studio-api"
            assert conv["n_completion_tokens"] > 0
    finally:
        s2.close()


def test_closed_port_endpoint_fails_with_its_url(tmp_path, data_dir):
    s2 = _seeded_studio(tmp_path / "client", data_dir)
    try:
        url = f"http://127.0.0.1:{free_port()}/v1"
        s2.registry.add_endpoint("nobody-home", url, "whatever")
        with pytest.raises(RegistryError) as e:
            s2.registry.chat("nobody-home", [{"role": "user", "content": "hi"}], GenParams(max_new_tokens=8))
        assert url in str(e.value) and "cannot reach" in str(e.value)

        cfg = ExpandConfig(teacher="nobody-home", rounds=2, answer=GenParams(max_new_tokens=8), source_id=1)
        job = s2.expand(cfg, n=3)
        p = s2.jobs.wait(job, timeout=900)
        assert p.status == "paused"  # an endpoint that fails pauses its job (resumable), with the reason
        assert url in p.message and "cannot reach" in p.message
        assert s2.store.count_conversations(origin="expanded") == 0
        assert len(s2.store.pending_items(job)) == 3  # nothing lost: resumable once the server is up
    finally:
        s2.close()


# ---------------------------------------------------------------------------------------------- API keys


def test_locked_api_refuses_requests_without_a_valid_key(locked_server):
    url, key = locked_server
    wrong = OpenAI(base_url=url, api_key="wvs-not-a-key", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.models.list()
    assert e.value.status_code == 401
    assert e.value.body["code"] == "invalid_api_key" and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=[{"role": "user", "content": "hi"}],
                                      max_tokens=SHORT)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.retrieve(DEFAULT_MODEL_NAME)
    # no header at all: the message says what to send
    r = httpx.get(url + "/models")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "invalid_api_key" and "Authorization: Bearer" in r.json()["error"]["message"]
    r = httpx.get(url + "/models", headers={"Authorization": f"Basic {key}"})
    assert r.status_code == 401


def test_locked_api_answers_with_the_key(locked_server):
    url, key = locked_server
    client = OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)
    assert DEFAULT_MODEL_NAME in [m.id for m in client.models.list()]
    r = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=[{"role": "user", "content": "Hi."}],
                                       max_tokens=SHORT, temperature=0)
    assert r.choices[0].message.content.strip()
    chunks = list(client.chat.completions.create(model=DEFAULT_MODEL_NAME, stream=True, max_tokens=SHORT,
                                                 messages=[{"role": "user", "content": "Hi."}], temperature=0))
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_api_refuses_to_start_without_keys_when_it_needs_them(tmp_path):
    from studio.api import make_app, make_router

    s = Studio(access_settings(tmp_path / "a", auth="admin:pw", api_keys_file=tmp_path / "keys.json"),
               start_jobs=False)
    try:
        with pytest.raises(ConfigError, match="needs API keys because a login is configured.*add-key"):
            make_app(s)
        with pytest.raises(ConfigError, match="needs API keys"):
            make_router(s)
    finally:
        s.close()
    s = Studio(access_settings(tmp_path / "b"), start_jobs=False)
    try:
        make_app(s)  # loopback, no login: open, as before
        with pytest.raises(ConfigError, match="listens on 0.0.0.0, beyond this machine"):
            make_app(s, host="0.0.0.0")
    finally:
        s.close()


def test_web_app_refuses_to_start_without_keys_when_login_is_configured(tmp_path):
    from studio.server import create_server

    s = Studio(access_settings(tmp_path / "w", auth="admin:pw"), start_jobs=False)
    try:
        with pytest.raises(ConfigError, match="STUDIO_API_KEYS_FILE"):
            create_server(studio=s)
    finally:
        s.close()


def test_api_turned_off_answers_403(tmp_path):
    from studio.api import make_app

    s = Studio(access_settings(tmp_path / "off", host="0.0.0.0", api_enabled=False), start_jobs=False)
    try:
        with serving(make_app(s)) as url:
            r = httpx.get(url + "/models")
            assert r.status_code == 403 and r.json()["error"]["code"] == "api_disabled"
            r = httpx.post(url + "/chat/completions", json={})
            assert r.status_code == 403
    finally:
        s.close()


def _lan_address() -> str | None:
    """This machine's address on its network (no packet is sent), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))
            ip = sock.getsockname()[0]
        except OSError:
            return None
    return None if access.is_loopback(ip) else ip


def test_open_api_still_asks_a_key_of_other_machines(tmp_path):
    """Settings say loopback, but the server was started on a network address (a command line that forgot
    to tell ``make_app`` its host): a caller from the network still gets 401, not the models."""
    from studio.api import make_app

    ip = _lan_address()
    if ip is None:
        pytest.skip("this machine has no network address besides loopback")
    s = Studio(access_settings(tmp_path / "lan"), start_jobs=False)
    try:
        app = make_app(s)  # open: the settings say 127.0.0.1
        with serving(app, host=ip) as url:
            r = httpx.get(url + "/models")
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    finally:
        s.close()
