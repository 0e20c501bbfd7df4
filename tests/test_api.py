"""The OpenAI-compatible /v1 API on a real uvicorn server on loopback, driven by the real ``openai`` client,
and used as the teacher of another studio's expansion (no mocks).

One server (a studio on its own data folder, with the embedded default model) serves the whole module.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import openai
import pytest
from openai import OpenAI

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


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_dir):
    """``make_app(studio)`` under uvicorn in a background thread; yields ``(studio, base_url)``."""
    import uvicorn

    from studio.api import make_app

    studio = Studio(Settings(data_dir=tmp_path_factory.mktemp("api-server")), start_jobs=False)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(make_app(studio), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True, name="test-api-server")
    t.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert t.is_alive() and time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.05)
    yield studio, f"http://127.0.0.1:{port}/v1"
    srv.should_exit = True
    t.join(timeout=30)
    assert not t.is_alive(), "the API server did not shut down"
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
        p = s2.jobs.wait(job, timeout=240)
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
        p = s2.jobs.wait(job, timeout=120)
        assert p.status == "failed"
        assert url in p.message and "cannot reach" in p.message
        assert s2.store.count_conversations(origin="expanded") == 0
        assert len(s2.store.pending_items(job)) == 3  # nothing lost: resumable once the server is up
    finally:
        s2.close()
