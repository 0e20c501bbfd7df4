"""Tests for studio/registry.py with the real embedded default model (SmolLM2-135M-Instruct): loading and the
cache, greedy chat, streaming, batched generation, the Vicuna v1.1 template, broken checkpoints and bad specs."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from studio.config import Settings
from studio.core import Studio
from studio.registry import DEFAULT_MODEL_NAME, GenParams, ModelSpec, RegistryError, find_default_gguf

GREEDY = GenParams(max_new_tokens=24, temperature=0)
PROMPTS = ["What is the capital of France?", "Name a primary color.", "What is 2 plus 2?"]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def reg_studio(tmp_path_factory, default_model_dir):
    """One Studio for the module, so the default model is loaded once."""
    s = Studio(Settings(data_dir=tmp_path_factory.mktemp("registry") / "data"), start_jobs=False)
    yield s
    s.close()


@pytest.fixture(scope="module")
def vicuna(reg_studio, default_model_dir) -> str:
    """The default checkpoint folder registered a second time, rendered with Vicuna v1.1."""
    reg_studio.registry.add(ModelSpec(name="smol-vicuna", kind="hf", path=str(default_model_dir),
                                      template="vicuna_v1.1"))
    return "smol-vicuna"


# ------------------------------------------------------------------------------------------------ default model


@pytest.mark.slow
def test_default_entry_and_greedy_answer(reg_studio, default_model_dir):
    reg = reg_studio.registry
    assert reg.names()[0] == DEFAULT_MODEL_NAME
    spec = reg.get(DEFAULT_MODEL_NAME)
    assert spec.builtin and spec.kind == "hf" and spec.template == "chat_template"
    assert Path(spec.path) == Path(default_model_dir)
    assert "loaded" in reg.ping(DEFAULT_MODEL_NAME)
    c = reg.chat(DEFAULT_MODEL_NAME, user("What is the capital of France?"), GREEDY)
    assert "Paris" in c.text
    assert c.finish_reason == "stop"
    assert 20 < c.prompt_tokens < 60
    assert 1 <= c.completion_tokens < 24
    # the tokenizer's own chat template is used
    prompt = reg.render(DEFAULT_MODEL_NAME, user("What is the capital of France?"))
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_length_limit_reports_length(reg_studio):
    c = reg_studio.registry.chat(DEFAULT_MODEL_NAME, user("Write a long story about a dragon."),
                                 GenParams(max_new_tokens=5, temperature=0))
    assert c.finish_reason == "length"
    assert c.completion_tokens == 5
    assert c.text


@pytest.mark.slow
def test_stream_joins_to_chat_text(reg_studio):
    reg = reg_studio.registry
    pieces = list(reg.stream_chat(DEFAULT_MODEL_NAME, user(PROMPTS[1]), GREEDY))
    assert len(pieces) > 5
    assert all(isinstance(p, str) and p for p in pieces)
    c = reg.chat(DEFAULT_MODEL_NAME, user(PROMPTS[1]), GREEDY)
    assert c.finish_reason == "length"  # the whole 24-token budget is streamed
    assert "".join(pieces) == c.text


@pytest.mark.slow
def test_batched_greedy_equals_single(reg_studio):
    """Left-padded batched generation gives the same greedy completions (text and token counts) as one
    prompt at a time; the prompts have different lengths, so padding is exercised."""
    reg = reg_studio.registry
    singles = [reg.chat(DEFAULT_MODEL_NAME, user(p), GREEDY) for p in PROMPTS]
    assert len({s.prompt_tokens for s in singles}) > 1
    batch = reg.chat_batch(DEFAULT_MODEL_NAME, [user(p) for p in PROMPTS], GREEDY)
    assert len(batch) == 3
    assert [b.text for b in batch] == [s.text for s in singles]
    assert batch == singles
    assert "Paris" in batch[0].text and "4" in batch[2].text
    assert reg.chat_batch(DEFAULT_MODEL_NAME, [], GREEDY) == []


@pytest.mark.slow
def test_seeded_sampling_is_reproducible(reg_studio):
    reg = reg_studio.registry
    p = GenParams(max_new_tokens=12, temperature=0.9, seed=123)
    a = reg.chat(DEFAULT_MODEL_NAME, user("Tell me about cats."), p)
    b = reg.chat(DEFAULT_MODEL_NAME, user("Tell me about cats."), p)
    assert a == b and a.text


@pytest.mark.slow
def test_second_load_hits_cache(reg_studio):
    reg = reg_studio.registry
    first = reg.load(DEFAULT_MODEL_NAME)
    t = time.perf_counter()
    second = reg.load(DEFAULT_MODEL_NAME)
    assert time.perf_counter() - t < 0.2  # a load from disk takes seconds
    assert second is first
    assert DEFAULT_MODEL_NAME in reg.loaded_names()
    # 135M float32 parameters, plus the engine's float16 copies of the linear weights (counted for the cache budget)
    assert 400 * 2**20 < first.nbytes - first.engine.packed_bytes < 700 * 2**20
    assert 200 * 2**20 < first.engine.packed_bytes < first.nbytes / 2


# ------------------------------------------------------------------------------------------------ vicuna template

FEW_SHOT = [
    [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Apple."},
     {"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Red."},
     {"role": "user", "content": "Name an animal."}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "What is 3+3?"}, {"role": "assistant", "content": "6"},
     {"role": "user", "content": "What is the capital of France?"}],
]


def _raw_continuation(reg, name: str, messages: list[dict], max_new_tokens: int = 16,
                      prompt: str | None = None) -> str:
    """What the model writes after the rendered prompt (or ``prompt``) with no stop strings at all, special
    tokens included."""
    lm = reg.load(name)
    enc = lm.tokenizer(prompt or reg.render(name, messages), return_tensors="pt", add_special_tokens=False)
    out = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=lm.tokenizer.pad_token_id)
    return lm.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=False)


@pytest.mark.slow
def test_vicuna_entry_renders_user_assistant(reg_studio, vicuna):
    reg = reg_studio.registry
    prompt = reg.render(vicuna, user("What is the capital of France?"))
    assert prompt == ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                      "helpful, detailed, and polite answers to the user's questions. "
                      "USER: What is the capital of France? ASSISTANT:")
    prompt = reg.render(vicuna, FEW_SHOT[0])
    # the default tokenizer's EOS closes each earlier answer, in place of FastChat's "</s>" (no token of it)
    assert "USER: Name a fruit. ASSISTANT: Apple.<|im_end|>USER: Name a color." in prompt
    assert prompt.endswith("USER: Name an animal. ASSISTANT:")
    assert "<|im_start|>" not in prompt and "</s>" not in prompt


@pytest.mark.slow
def test_vicuna_answers_stop_at_eos(reg_studio, vicuna):
    """Few-shot prompts whose earlier answers end in the EOS token ``<|im_end|>`` make the model end its answer
    with EOS, where generation stops (no stop string needed); chat, batch and stream agree."""
    reg = reg_studio.registry
    singles = []
    for msgs in FEW_SHOT:
        raw = _raw_continuation(reg, vicuna, msgs, max_new_tokens=32)
        assert raw.endswith("<|im_end|>") and raw.count("<|im_end|>") == 1 and "USER:" not in raw
        c = reg.chat(vicuna, msgs, GenParams(max_new_tokens=32, temperature=0))
        assert c.text == raw[: -len("<|im_end|>")].strip()
        assert c.finish_reason == "stop" and c.completion_tokens < 32
        singles.append(c)
    assert singles[0].text == "Elephant."
    batch = reg.chat_batch(vicuna, FEW_SHOT, GenParams(max_new_tokens=32, temperature=0))
    assert [b.text for b in batch] == [s.text for s in singles]
    streamed = "".join(reg.stream_chat(vicuna, FEW_SHOT[0], GenParams(max_new_tokens=32, temperature=0)))
    assert streamed == "Elephant."


@pytest.mark.slow
def test_vicuna_stop_strings_still_cut_fastchat_text(reg_studio, vicuna):
    """The stop-string fallback covers both separators: a model that writes FastChat's ``</s>`` as text (as the
    default model does after FastChat's literal prompt) and runs on into ``USER:`` is cut before ``</s>``."""
    from studio.templates import render

    reg = reg_studio.registry
    tok = reg.load(vicuna).tokenizer
    stops = reg._stops(reg.get(vicuna), tok)
    assert stops == ["<|im_end|>", "</s>", "USER:"]
    raw = _raw_continuation(reg, vicuna, FEW_SHOT[0], prompt=render(FEW_SHOT[0]))  # FastChat's text, "</s>"
    assert "</s>" in raw and "USER:" in raw.split("</s>", 1)[1]
    assert reg._cut(raw, stops) == (raw.split("</s>", 1)[0], True)


@pytest.mark.slow
def test_vicuna_batch_token_counts_equal_single(reg_studio, vicuna):
    reg = reg_studio.registry
    params = GenParams(max_new_tokens=32, temperature=0)
    singles = [reg.chat(vicuna, m, params) for m in FEW_SHOT]
    assert singles[0].completion_tokens != singles[1].completion_tokens  # so the shorter row gets padded
    batch = reg.chat_batch(vicuna, FEW_SHOT, params)
    assert [b.completion_tokens for b in batch] == [s.completion_tokens for s in singles]


@pytest.mark.slow
def test_vicuna_stream_joins_to_chat_text(reg_studio, vicuna):
    reg = reg_studio.registry
    msgs = user("What is the capital of France?")
    streamed = "".join(reg.stream_chat(vicuna, msgs, GREEDY))
    assert streamed == reg.chat(vicuna, msgs, GREEDY).text


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.slow
def test_broken_checkpoint_names_the_folder_and_registry_keeps_working(reg_studio, tmp_path):
    reg = reg_studio.registry
    broken = tmp_path / "broken-ckpt"
    broken.mkdir()
    (broken / "config.json").write_text("{ this is not json ]]", encoding="utf-8")
    reg.add(ModelSpec(name="broken", kind="hf", path=str(broken)))
    for _ in range(2):  # a failed load is not cached
        with pytest.raises(RegistryError) as e:
            reg.load("broken")
        assert str(broken) in str(e.value) and "'broken'" in str(e.value)
    with pytest.raises(RegistryError, match=str(broken)):
        reg.chat("broken", user("hi"), GREEDY)
    assert "broken" not in reg.loaded_names()
    c = reg.chat(DEFAULT_MODEL_NAME, user("What is the capital of France?"), GREEDY)
    assert "Paris" in c.text
    reg.remove("broken")
    assert "broken" not in reg.names()


def test_bad_specs_raise_registry_error(studio, default_model_dir, tmp_path):
    reg = studio.registry
    before = reg.names()
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    (tmp_path / "model.bin").write_bytes(b"x")
    cases = [
        (lambda: reg.add_endpoint("no-url", "", "gpt-x"), "base URL"),
        (lambda: reg.add(ModelSpec(name="no-url2", kind="endpoint", model="m")), "base URL"),
        (lambda: reg.add_endpoint("no-scheme", "localhost:8000/v1", "m"), "http://"),
        (lambda: reg.add_endpoint("no-model", "http://localhost:8000/v1", ""), "model name"),
        (lambda: reg.add(ModelSpec(name="tpl", kind="hf", path=str(default_model_dir), template="chatml")),
         "unknown template 'chatml'"),
        (lambda: reg.add(ModelSpec(name="missing", kind="hf", path="/no/such/checkpoint")),
         "/no/such/checkpoint is not a checkpoint folder"),
        (lambda: reg.add(ModelSpec(name="nocfg", kind="hf", path=str(empty))), "no config.json"),
        (lambda: reg.add(ModelSpec(name="neither", kind="hf", path="no_such_folder")), "neither an existing folder"),
        (lambda: reg.add(ModelSpec(name="nopath", kind="hf")), "needs a path"),
        (lambda: reg.add(ModelSpec(name="gg", kind="gguf", path=str(tmp_path / "model.bin"))), "not a .gguf file"),
        (lambda: reg.add(ModelSpec(name="kind", kind="onnx", path="x")), "unknown kind 'onnx'"),
        (lambda: reg.add(ModelSpec(name="  ", kind="hf", path=str(default_model_dir))), "needs a name"),
        (lambda: reg.add(ModelSpec(name=DEFAULT_MODEL_NAME, kind="hf", path=str(default_model_dir))),
         "exists already"),
        (lambda: reg.add(ModelSpec(name=DEFAULT_MODEL_NAME, kind="hf", path=str(default_model_dir)), replace=True),
         "cannot be replaced"),
        (lambda: reg.get("nope"), f"no model named 'nope'.*{DEFAULT_MODEL_NAME}"),
    ]
    for make, match in cases:
        with pytest.raises(RegistryError, match=match):
            make()
    assert reg.names() == before


def test_endpoint_entry_has_no_local_weights(studio):
    studio.registry.add_endpoint("remote", "http://127.0.0.1:9/v1", "gpt-x")
    with pytest.raises(RegistryError, match="is an endpoint"):
        studio.registry.load("remote")


@pytest.mark.parametrize("value", [
    "sk-proj-4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c",
    "sk-ant-api03-AbCdEf",
    "Bearer abc123",
    "abc.def.ghi",
])
def test_add_endpoint_refuses_a_key_instead_of_a_variable_name(studio, value):
    with pytest.raises(RegistryError, match="not an environment variable name"):
        studio.registry.add_endpoint("remote", "http://localhost:8000/v1", "m", api_key_env=value)
    assert studio.registry.names() == [DEFAULT_MODEL_NAME]
    assert all(value not in json.dumps(s) for _, _, s in studio.store.list_models())


@pytest.mark.parametrize("value", [
    "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",  # a Hugging Face token
    "gsk_8hZk2NqR4vT6wY8aB0cD2eF4gH6iJ8kL0mN2",  # a Groq key
    "4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c",  # a bare hex key (an env var name can't start with a digit)
])
def test_add_endpoint_refuses_underscore_style_keys(studio, value):
    with pytest.raises(RegistryError, match="not an environment variable name"):
        studio.registry.add_endpoint("remote", "http://localhost:8000/v1", "m", api_key_env=value)


def test_add_endpoint_accepts_allowed_variable_names(tmp_path):
    s = Studio(Settings(data_dir=tmp_path / "data", endpoint_key_envs="OPENAI_API_KEY,HF_TOKEN"), start_jobs=False)
    try:
        spec = s.registry.add_endpoint("openai", "https://api.openai.com/v1/", "gpt-4o-mini",
                                       api_key_env="OPENAI_API_KEY")
        assert spec.api_key_env == "OPENAI_API_KEY" and spec.base_url == "https://api.openai.com/v1"
        assert s.registry.get("openai").api_key_env == "OPENAI_API_KEY"
        # HF_TOKEN is a legitimate variable name (an 'hf_' start is no reason to refuse it)
        assert s.registry.add_endpoint("hf", "https://router.huggingface.co/v1", "m", "HF_TOKEN").api_key_env
    finally:
        s.close()


# ------------------------------------------------------------------------------------------------ secrets


class _Recorder(BaseHTTPRequestHandler):
    """A tiny OpenAI-compatible server that records the Authorization header of every request."""

    seen: list = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, body: dict) -> None:
        type(self).seen.append((self.command, self.path, self.headers.get("Authorization")))
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._answer({"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "t"}]})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                   "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@pytest.fixture
def listener():
    """A real HTTP server on loopback; yields ``(base_url, seen)`` with ``seen`` the recorded
    ``(method, path, Authorization)`` of every request."""
    seen: list = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", seen
    srv.shutdown()
    srv.server_close()
    t.join(timeout=10)


SECRET = "sk-test-0123456789abcdefSECRET"


def test_visitor_cannot_send_a_server_secret_to_their_url(tmp_path, listener, monkeypatch):
    """Default settings: an endpoint naming OPENAI_API_KEY (set in the server's environment) and pointing at
    a URL of the visitor's choice is refused when added and when used; the secret never leaves."""
    url, seen = listener
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("STUDIO_ENDPOINT_KEY_ENVS", raising=False)
    s = Studio(Settings(data_dir=tmp_path / "data"), start_jobs=False)
    try:
        reg = s.registry
        assert s.settings.endpoint_key_envs == ()
        with pytest.raises(RegistryError) as e:
            reg.add_endpoint("exfil", url, "m", api_key_env="OPENAI_API_KEY")
        assert "OPENAI_API_KEY is not allowed as an endpoint key" in str(e.value)
        assert "STUDIO_ENDPOINT_KEY_ENVS=OPENAI_API_KEY" in str(e.value)
        assert "exfil" not in reg.names()
        with pytest.raises(RegistryError, match="not allowed"):
            reg.add(ModelSpec(name="exfil2", kind="endpoint", base_url=url, model="m", api_key_env="OPENAI_API_KEY"))
        # an entry saved before the allow-list existed is refused when used
        s.store.upsert_model("old", "endpoint", asdict(ModelSpec(name="old", kind="endpoint", base_url=url,
                                                                 model="m", api_key_env="OPENAI_API_KEY")))
        for use in (lambda: reg.ping("old"), lambda: reg.chat("old", user("hi"), GREEDY),
                    lambda: list(reg.stream_chat("old", user("hi"), GREEDY)),
                    lambda: reg.chat_batch("old", [user("hi")], GREEDY)):
            with pytest.raises(RegistryError, match="OPENAI_API_KEY is not allowed"):
                use()
        assert seen == []
        # an endpoint with no key still works, and sends no secret
        reg.add_endpoint("open", url, "m")
        assert "reachable" in reg.ping("open") and reg.chat("open", user("hi"), GREEDY).text == "hi"
        assert seen and all(auth != f"Bearer {SECRET}" for _, _, auth in seen)
    finally:
        s.close()


def test_allowed_hf_token_is_sent(tmp_path, listener, monkeypatch):
    """An admin who allows HF_TOKEN gets it sent to the endpoint; other variables stay refused."""
    url, seen = listener
    monkeypatch.setenv("HF_TOKEN", "hf_AllowedTokenForTheTest0123")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    s = Studio(Settings(data_dir=tmp_path / "data", endpoint_key_envs=("HF_TOKEN",)), start_jobs=False)
    try:
        s.registry.add_endpoint("hf-router", url, "m", api_key_env="HF_TOKEN")
        assert "reachable" in s.registry.ping("hf-router")
        # the check lists the models, then runs one short chat: both carry the key
        assert seen[-2:] == [("GET", "/v1/models", "Bearer hf_AllowedTokenForTheTest0123"),
                             ("POST", "/v1/chat/completions", "Bearer hf_AllowedTokenForTheTest0123")]
        with pytest.raises(RegistryError, match="allowed: HF_TOKEN.*STUDIO_ENDPOINT_KEY_ENVS=HF_TOKEN,OPENAI_API_KEY"):
            s.registry.add_endpoint("exfil", url, "m", api_key_env="OPENAI_API_KEY")
        assert all(SECRET not in (auth or "") for _, _, auth in seen)
    finally:
        s.close()


# ------------------------------------------------------------------------------------------------ names and paths


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("bad", ["..", "."])
def test_dot_names_never_touch_the_data_folder(tmp_path, data_dir, bad):
    """An entry named '..' (or '.') with a GGUF path: converting it used to write '<model folder>/..' (the
    data folder) and rmtree it. It is refused when added and when used; the data folder stays intact."""
    gguf = find_default_gguf()
    root = tmp_path / "data"
    s = Studio(Settings(data_dir=root, model_dir=root / "models"), start_jobs=False)
    try:
        shutil.copy(data_dir / "wizardlm_testset.jsonl", root / "seeds.jsonl")
        assert s.import_file(root / "seeds.jsonl").n_seeds == 218
        before = _tree(root)
        with pytest.raises(RegistryError, match=f"model name '{re.escape(bad)}' is not allowed"):
            s.registry.add(ModelSpec(name=bad, kind="gguf", path=str(gguf)))
        # as if saved by an older version: refused at use, nothing written
        s.store.upsert_model(bad, "gguf", asdict(ModelSpec(name=bad, kind="gguf", path=str(gguf))))
        for use in (lambda: s.registry.ping(bad), lambda: s.registry.load(bad),
                    lambda: s.registry.checkpoint_path(s.registry.get(bad))):
            with pytest.raises(RegistryError, match=f"model name '{re.escape(bad)}' is not allowed.*nothing was "
                                                    "written"):
                use()
        after = _tree(root)
        files = {k: v for k, v in before.items() if not k.startswith("studio.duckdb")}
        assert files and {k: v for k, v in after.items() if not k.startswith("studio.duckdb")} == files
        assert (root / "studio.duckdb").exists()
        assert len(s.store.source_choices()) == 1  # the import is still there
        assert not (root / "models").exists() or not any((root / "models").iterdir())
        # a good name converts into its own folder inside the model folder
        good = ModelSpec(name="smol-gguf", kind="gguf", path=str(gguf))
        assert s.registry.conversion_dir(good) == (root / "models" / "smol-gguf").resolve()
    finally:
        s.close()


@pytest.mark.parametrize("bad", ["a/b", "../x", ".hidden", "with space", "x" * 65, "tab\tname"])
def test_unsafe_entry_names_are_refused(studio, default_model_dir, bad):
    with pytest.raises(RegistryError, match="model name '.*' is not allowed: use 1-64 letters"):
        studio.registry.add(ModelSpec(name=bad, kind="hf", path=str(default_model_dir)))
    with pytest.raises(RegistryError, match="is not allowed"):
        studio.registry.add_endpoint(bad, "http://127.0.0.1:9/v1", "m")
    assert studio.registry.names() == [DEFAULT_MODEL_NAME]
