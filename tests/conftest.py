"""Shared fixtures: the reference data folder, a studio on a fresh DuckDB file, and the real default model.

The default model's checkpoint is converted from its GGUF once per machine into ``.cache/models`` at the
repository root (``STUDIO_MODEL_DIR``), so every test after the first loads it in about a second.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Under pytest-xdist (``make test`` runs 2 workers) each worker gets its share of the cores for torch and its
# training subprocesses, so two workers do not fight over the same cores with 2 threads each.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    os.environ.setdefault("MKL_NUM_THREADS", str(_share))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A suite started in the background by a non-interactive shell (``make test &`` in a script) inherits SIGINT
# ignored (POSIX: asynchronous lists ignore SIGINT without job control), and so would every studio process the
# Ctrl-C tests start, which then never see their Ctrl-C: give this process Python's own handler back (a handler,
# unlike an ignored signal, is reset to the default in the children it starts).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# transformers resolves its top-level names lazily on first access; a first access from two threads at once (a
# fixture, and a studio thread loading a model) failed once with "cannot import name 'AutoTokenizer' from
# 'transformers'": resolve the names the studio and the fixtures use here, in the main thread, before any thread
# starts (after the thread settings above, which torch reads when it loads).
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig,  # noqa: E402,F401
                          LlamaForCausalLM)
os.environ.setdefault("STUDIO_MODEL_DIR", str(ROOT / ".cache" / "models"))


def shared_data() -> Path:
    """``../shared/data`` beside the repository, or ``$STUDIO_SHARED_DATA``."""
    env = os.environ.get("STUDIO_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The reference data folder (read-only)."""
    d = shared_data()
    assert (d / "wizardlm_testset.jsonl").exists(), f"reference data not found in {d}"
    return d


@pytest.fixture
def settings(tmp_path):
    """Settings rooted at a fresh temporary data folder (the model folder is the shared cache)."""
    from studio.config import Settings

    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def studio(settings):
    """A Studio (store + registry + jobs) on a fresh DuckDB file."""
    from studio.core import Studio

    s = Studio(settings)
    yield s
    s.close()


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The converted default checkpoint folder (converted on first use)."""
    from studio.registry import DEFAULT_MODEL_NAME, convert_gguf, find_default_gguf

    return convert_gguf(find_default_gguf(), Path(os.environ["STUDIO_MODEL_DIR"]) / DEFAULT_MODEL_NAME)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir) -> Path:
    """A random-weight 2-layer Llama with the default model's tokenizer (~1.6 M parameters), for fast tests of
    training code."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out
