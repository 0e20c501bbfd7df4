"""Tests for studio/engine.py (one generation engine per loaded model) with the real default model: concurrent
requests share a batch and each gets exactly what a solo greedy HF ``generate`` gives, a request arriving
mid-batch joins at once, cancellation frees the row within one step, stop strings, ``max_new_tokens``, per-row
sampling, a failing request fails alone; and through the registry: chat, streams, a stopped job, Stop in a page.

Orderings are checked with the engine's state and step numbers (``Request.joined_step``/``finished_step``,
``Engine.joined_mid_batch``, ``Engine.wait_for``), never with sleeps."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from studio.config import Settings
from studio.core import Studio
from studio.engine import Engine
from studio.registry import DEFAULT_MODEL_NAME, GenParams

N = 12  # new tokens per reply: small, the CPU is slow


@pytest.fixture(scope="module")
def lm(default_model_dir):
    """(model, tokenizer) of the default checkpoint, float32, eval."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    return model, tok


@pytest.fixture(scope="module")
def prompts(lm, data_dir) -> list[list[int]]:
    """Token ids of four WizardLM test-set instructions of different lengths, with the chat template."""
    _, tok = lm
    rows = [json.loads(x) for x in (data_dir / "wizardlm_testset.jsonl").read_text().splitlines()[:4]]
    return [tok(tok.apply_chat_template([{"role": "user", "content": r["Instruction"]}], tokenize=False,
                                        add_generation_prompt=True), add_special_tokens=False)["input_ids"]
            for r in rows]


@pytest.fixture(scope="module")
def solo(lm, prompts) -> list[list[int]]:
    """Each prompt's greedy reply from HF ``generate`` alone (no batch, no padding), N new tokens."""
    import torch

    model, tok = lm
    out = []
    with torch.inference_mode():
        for ids in prompts:
            gen = model.generate(torch.tensor([ids]), max_new_tokens=N, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            out.append(gen[0, len(ids):].tolist())
    assert len({tuple(s) for s in out}) == len(out)  # four different answers
    return out


def drive_all(engine: Engine, reqs) -> None:
    """Wait for every request from its own thread (each waiter runs steps in turn, as callers do)."""
    with ThreadPoolExecutor(len(reqs)) as pool:
        list(pool.map(engine.wait, reqs))


def test_concurrent_requests_share_a_batch_and_match_solo_generate(lm, prompts, solo):
    model, tok = lm
    eng = Engine(model, tok)
    first = [eng.submit(ids, max_new_tokens=N) for ids in prompts[:3]]
    eng.wait(first[0], seen=3)  # runs steps until the first request has 3 tokens (the others with it)
    assert eng.rows == 3 and not any(r.done for r in first)
    assert {r.joined_step for r in first} == {1}  # one prefill for the three: they share the batch
    at = eng.steps
    late = eng.submit(prompts[3], max_new_tokens=N)
    drive_all(eng, first + [late])
    # the late one joined the running batch at the next step, while the first three still ran
    assert eng.joined_mid_batch == 1
    assert late.joined_step == at + 1
    assert all(late.joined_step < r.finished_step for r in first)
    for r, ref in zip(first + [late], solo):
        assert r.generated == ref  # token for token what a solo greedy generate gives
        assert r.finish_reason == ("stop" if ref[-1] == tok.eos_token_id else "length")
        assert r.text == tok.decode(ref, skip_special_tokens=True)
    assert eng.idle()


def test_cancel_frees_the_row_within_one_step(lm, prompts, solo):
    model, tok = lm
    eng = Engine(model, tok)
    long = eng.submit(prompts[0], max_new_tokens=400)
    other = eng.submit(prompts[1], max_new_tokens=N)
    t = threading.Thread(target=eng.wait, args=(long,))
    t.start()
    try:
        assert eng.wait_for(lambda: long.version >= 2, timeout=120)
        before = eng.steps
        eng.cancel(long)
        assert long.done and long.finish_reason == "cancelled"
        assert long.finished_step - before <= 1  # ended within one decoding step
        assert eng.wait_for(lambda: eng.rows == (0 if other.done else 1), timeout=1.0)
        assert len(long.generated) < 400
        eng.wait(other)  # the other request goes on, unaffected
        assert other.generated == solo[1]
        assert eng.wait_idle(1.0)
    finally:
        eng.cancel_all()
        t.join(60)
    assert not t.is_alive()
    # a request cancelled while still waiting is removed at once
    queued = eng.submit(prompts[2], max_new_tokens=N)
    eng.cancel(queued)
    assert queued.finish_reason == "cancelled" and eng.idle()


def test_stop_strings_and_max_new_tokens(lm, prompts, solo):
    model, tok = lm
    eng = Engine(model, tok)
    full = tok.decode(solo[0], skip_special_tokens=True)
    k = len(tok.decode(solo[0][:4], skip_special_tokens=True))
    stop = full[k:k + 4]
    assert stop.strip() and full.find(stop) == k
    stopped = eng.submit(prompts[0], max_new_tokens=N, stops=[stop, "never appears zq"])
    short = eng.submit(prompts[1], max_new_tokens=3)
    drive_all(eng, [stopped, short])
    assert stopped.finish_reason == "stop" and stopped.text == full[:k]
    assert len(stopped.generated) < N and stopped.generated == solo[0][:len(stopped.generated)]
    assert short.finish_reason == "length" and short.generated == solo[1][:3]
    with pytest.raises(ValueError, match="max_new_tokens"):
        eng.submit(prompts[0], max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        eng.submit(prompts[0], top_p=1.5)
    assert eng.idle()


def test_a_failing_request_fails_alone(lm, prompts, solo):
    model, tok = lm
    eng = Engine(model, tok)
    good = eng.submit(prompts[0], max_new_tokens=N)
    bad = eng.submit([len(tok) + 1000], max_new_tokens=N)  # a token id outside the vocabulary
    drive_all(eng, [good, bad])
    assert bad.finish_reason == "error" and "failed" in str(bad.error)
    assert good.finish_reason in ("stop", "length") and good.generated == solo[0]
    assert eng.idle()


def test_per_row_sampling_in_one_batch(lm, prompts, solo):
    model, tok = lm
    eng = Engine(model, tok)
    alone = eng.submit(prompts[2], max_new_tokens=8, temperature=0.9, top_p=0.9, seed=7)
    eng.wait(alone)
    greedy = eng.submit(prompts[0], max_new_tokens=N)
    sampled = eng.submit(prompts[2], max_new_tokens=8, temperature=0.9, top_p=0.9, seed=7)
    penalised = eng.submit(prompts[1], max_new_tokens=4, repetition_penalty=1.3)
    drive_all(eng, [greedy, sampled, penalised])
    assert greedy.generated == solo[0]  # a greedy row is unaffected by sampled rows beside it
    assert sampled.generated == alone.generated  # a seeded row draws from its own generator
    assert len(penalised.generated) == 4 or penalised.finish_reason == "stop"


# ------------------------------------------------------------------------------------------------ via the registry


@pytest.fixture(scope="module")
def reg(tmp_path_factory, default_model_dir):
    s = Studio(Settings(data_dir=tmp_path_factory.mktemp("engine") / "data"), start_jobs=False)
    yield s.registry
    s.close()


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


GREEDY = GenParams(max_new_tokens=N, temperature=0)


def test_registry_chat_stream_and_batch_agree(reg):
    msgs = [user("What is the capital of France?"), user("Name a primary color.")]
    batch = reg.chat_batch(DEFAULT_MODEL_NAME, msgs, GREEDY)
    assert [reg.chat(DEFAULT_MODEL_NAME, m, GREEDY).text for m in msgs] == [c.text for c in batch]
    assert "".join(reg.stream_chat(DEFAULT_MODEL_NAME, msgs[0], GREEDY)) == batch[0].text
    assert reg.engine(DEFAULT_MODEL_NAME).idle() and reg.streaming() == 0


def test_a_chat_streams_while_an_expansion_batch_runs_and_stop_frees_it(reg):
    eng = reg.engine(DEFAULT_MODEL_NAME)
    long = GenParams(max_new_tokens=300, temperature=0)
    stop_job = threading.Event()
    out: dict = {}

    def job():
        out["batch"] = reg.chat_batch(DEFAULT_MODEL_NAME, [user("Write a long story about a dragon."),
                                                           user("Explain photosynthesis in detail.")], long,
                                      should_stop=stop_job.is_set)

    t = threading.Thread(target=job)
    t.start()
    try:
        assert eng.wait_for(lambda: eng.rows == 2 and eng.steps >= 2, timeout=120)
        stream = reg.stream_chat(DEFAULT_MODEL_NAME, user("Write a long poem about the sea."), long)
        first = next(stream)  # the chat's first piece comes while the batch's rows are still running
        assert first and eng.joined_mid_batch >= 1 and reg.streaming() == 1
        assert "batch" not in out and eng.rows == 3
        (req,) = list(reg._streams)
        before = eng.steps
        stream.close()  # Stop in the page
        assert eng.wait_for(lambda: eng.rows == 2, timeout=1.0) and reg.streaming() == 0
        assert req.finish_reason == "cancelled" and req.finished_step - before <= 1  # within one step
        stop_job.set()  # a stopped job
        t.join(60)
        assert eng.wait_idle(1.0)
        assert [c.finish_reason for c in out["batch"]] == ["cancelled", "cancelled"]
        assert all(0 < c.completion_tokens < 300 for c in out["batch"])
    finally:
        stop_job.set()
        t.join(60)


def test_stream_should_stop_ends_it(reg):
    eng = reg.engine(DEFAULT_MODEL_NAME)
    gone = threading.Event()
    stream = reg.stream_chat(DEFAULT_MODEL_NAME, user("Write a long story about a dragon."),
                             GenParams(max_new_tokens=300, temperature=0), should_stop=gone.is_set)
    pieces = [next(stream)]
    gone.set()  # a /v1 client went away
    pieces.extend(stream)  # ends at once
    assert eng.wait_idle(1.0) and reg.streaming() == 0
    assert len("".join(pieces)) < 300 * 8


def test_v1_client_that_disconnects_frees_its_row(reg, tmp_path):
    """A ``/v1`` streaming client that goes away mid-answer: the route's ``should_stop`` ends the generation, the
    engine is idle within a second of the server noticing, and no stream stays registered."""
    import httpx
    import uvicorn

    from studio.api import make_app

    from studio.config import Settings
    from studio.core import Studio

    s = Studio(Settings(data_dir=tmp_path / "data", host="127.0.0.1", auth="", read_only=False, users_file=None,
                        oauth=False, api_keys_file=None, api_enabled=True, endpoint_key_envs=()), start_jobs=False)
    srv = None
    try:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        srv = uvicorn.Server(uvicorn.Config(make_app(s), host="127.0.0.1", port=port, log_level="warning"))
        t = threading.Thread(target=srv.run, daemon=True)
        t.start()
        eng = s.registry.engine(DEFAULT_MODEL_NAME)
        assert eng.wait_for(lambda: srv.started, timeout=30)  # woken by the timeout only; a deadline, not order
        body = {"model": DEFAULT_MODEL_NAME, "stream": True, "max_tokens": 300, "temperature": 0,
                "messages": [{"role": "user", "content": "Write a long story about a dragon."}]}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=300) as r:
            for line in r.iter_lines():
                if '"content":"' in line.replace(" ", "") and '"content":""' not in line.replace(" ", ""):
                    break  # the first real piece: now hang up
            assert eng.rows == 1
        # the server notices the closed connection at its next write; then the row goes within one step
        assert eng.wait_for(lambda: not eng._rows and not eng._waiting, timeout=60)
        assert s.registry.streaming() == 0 or eng.wait_for(lambda: s.registry.streaming() == 0, timeout=5)
        assert eng.steps < 300
    finally:
        if srv is not None:
            srv.should_exit = True
        s.close()


def test_a_next_round_reuses_the_kept_prefix_and_matches_a_full_prefill(lm, prompts):
    """A finished request's keys/values are kept; a prompt that continues it (its prompt, its reply, a new turn)
    prefills only the new tokens and gets token for token the reply of an engine without the prefix cache."""
    model, tok = lm
    first = prompts[1]
    cold = Engine(model, tok, prefix_cache_bytes=0)
    warm = Engine(model, tok)
    a = warm.submit(first, max_new_tokens=N)
    warm.wait(a)
    assert a.finish_reason == "length" and warm.reused_tokens == 0
    turn = tok("<|im_end|>\n<|im_start|>user\nAnd why is that so?<|im_end|>\n<|im_start|>assistant\n",
               add_special_tokens=False)["input_ids"]
    nxt = first + a.generated + turn
    b = warm.submit(nxt, max_new_tokens=N)
    warm.wait(b)
    ref = cold.submit(nxt, max_new_tokens=N)
    cold.wait(ref)
    # the kept sequence is the prompt and the reply but its last token (never run through the model)
    assert warm.reused_tokens == len(first) + N - 1
    assert warm.prefilled_tokens == len(first) + len(nxt) - (len(first) + N - 1)
    assert cold.reused_tokens == 0 and cold.prefilled_tokens == len(nxt)
    assert b.generated == ref.generated and b.text == ref.text
    # the same prompt again: all but its last token come from the cache (the second reply extends nothing new)
    c = warm.submit(nxt, max_new_tokens=N)
    warm.wait(c)
    assert c.generated == ref.generated
    assert warm.reused_tokens == len(first) + N - 1 + len(nxt) - 1
    assert warm.idle()


def test_the_prefix_cache_keeps_to_its_budget_and_skips_short_or_unrelated_prompts(lm, prompts):
    model, tok = lm
    eng = Engine(model, tok)
    a = eng.submit(prompts[0], max_new_tokens=N)
    eng.wait(a)
    per_token = eng._prefixes[next(iter(eng._prefixes))].nbytes // (len(prompts[0]) + N - 1)
    # room for either kept sequence, not for both
    eng.prefix_cache_bytes = per_token * (max(len(prompts[0]), len(prompts[2])) + N)
    assert len(eng._prefixes) == 1
    b = eng.submit(prompts[2], max_new_tokens=N)  # an unrelated prompt: nothing reused
    eng.wait(b)
    assert eng.reused_tokens == 0
    assert len(eng._prefixes) == 1  # the budget holds one of them: the oldest was dropped
    assert sum(p.nbytes for p in eng._prefixes.values()) <= eng.prefix_cache_bytes
    kept = next(iter(eng._prefixes.values()))
    assert list(kept.tokens) == prompts[2] + b.generated[:-1]
    # a cancelled request keeps nothing
    c = eng.submit(prompts[3], max_new_tokens=N)
    eng.wait(c, seen=2)
    eng.cancel(c)
    assert c.finish_reason == "cancelled"
    assert [list(p.tokens) for p in eng._prefixes.values()] == [list(kept.tokens)]


def test_fp16_weights_serve_the_engine_only_and_stay_close_to_float32(lm, prompts, solo):
    """``pack_fp16``: the engine's forwards use float16 copies of the linear weights, every other caller (any
    thread) still gets the model's own float32 result bit for bit; logits stay within 0.1 of float32 and greedy
    replies match; ``cpu_weights="fp32"`` uses the float32 weights; bad settings are refused."""
    import copy

    import torch

    from studio import engine as E

    model, tok = lm
    ids = torch.tensor([prompts[2]])
    plain = copy.deepcopy(model)  # a copy made before packing: never packed
    eng = Engine(model, tok)  # packs (or finds the model packed by an earlier engine of this module)
    assert E.pack_fp16(model) == 0  # idempotent: nothing more to pack
    packed = [m for m in model.modules() if m in E._PACKS]
    assert len(packed) == 30 * 7 + 1  # every projection of the 30 layers and the LM head
    assert eng._fp16 and all(m.weight.dtype == torch.float32 for m in packed)
    with torch.inference_mode():
        ref = plain(input_ids=ids).logits
        other = model(input_ids=ids).logits  # not the engine: float32
        E._PACKED.on = True
        try:
            half = model(input_ids=ids).logits
            copied = copy.deepcopy(model)(input_ids=ids).logits  # a copy's modules have no packed weight
            elsewhere = {}  # another thread while this one runs on the packed weights: float32

            def run():
                with torch.inference_mode():
                    elsewhere["logits"] = model(input_ids=ids).logits

            t = threading.Thread(target=run)
            t.start()
            t.join()
        finally:
            E._PACKED.on = False
    assert torch.equal(other, ref) and torch.equal(copied, ref) and torch.equal(elsewhere["logits"], ref)
    diff = (half - ref).abs().max().item()
    assert 0 < diff < 0.1
    assert torch.equal(half.argmax(-1), ref.argmax(-1))
    r = eng.submit(prompts[0], max_new_tokens=N)
    eng.wait(r)
    assert r.generated == solo[0]
    # a weight changed in place after packing: its stale copy is no longer used
    head = model.lm_head
    with torch.no_grad():
        head.weight.mul_(1.0)
    try:
        with torch.inference_mode():
            E._PACKED.on = True
            try:
                stale = model(input_ids=ids).logits
            finally:
                E._PACKED.on = False
        assert not torch.equal(stale, half)  # the head ran on its float32 weight again
        assert (stale - ref).abs().max().item() < 0.1
    finally:
        E._PACKS.pop(head, None)
        E.pack_fp16(model)  # packed again for the tests after this one
    exact = Engine(model, tok, cpu_weights="fp32", prefix_cache_bytes=0)
    assert not exact._fp16 and exact.packed_bytes == 0
    with pytest.raises(ValueError, match="cpu_weights"):
        Engine(model, tok, cpu_weights="int4")


def test_growing_layer_writes_in_place_and_copies_once_replaced():
    """``_GrowingLayer``: decoding updates land in spare columns of one buffer (no copy per step) and equal
    ``DynamicLayer``'s concatenation; after the engine replaces its keys (row selection) the next update copies
    into a new buffer and goes on correctly."""
    import torch
    from transformers.cache_utils import DynamicLayer

    from studio.engine import GROW_TOKENS, _growing_layer_class

    g, ref = DynamicLayer(), DynamicLayer()
    k0, v0 = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)
    g.update(k0, v0)
    ref.update(k0, v0)
    g.__class__ = _growing_layer_class()
    bufs = set()
    for _ in range(GROW_TOKENS + 3):  # crosses one growth
        k, v = torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4)
        before = g._kbuf
        gk, gv = g.update(k, v)
        rk, rv = ref.update(k, v)
        assert torch.equal(gk, rk) and torch.equal(gv, rv)
        assert gk.data_ptr() == g._kbuf.data_ptr() and gv.data_ptr() == g._vbuf.data_ptr()  # views of the buffers
        if g._kbuf is not before:  # a new buffer (the first, or a growth)
            bufs.add(id(g._kbuf))
    assert len(bufs) == 2  # one buffer written in place, then one growth
    assert g.get_seq_length() == 5 + GROW_TOKENS + 3
    keep = torch.tensor([0, 2])
    g.batch_select_indices(keep)
    ref.batch_select_indices(keep)
    assert g._kbuf is None  # the old buffers are released at once
    k, v = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    gk, gv = g.update(k, v)
    rk, rv = ref.update(k, v)
    assert torch.equal(gk, rk) and g._kbuf.shape[0] == 2
    # columns trimmed off the front (the engine's padding trim): a view at an offset, copied at the next update
    g.keys, g.values = g.keys[:, :, 2:], g.values[:, :, 2:]
    ref.keys, ref.values = ref.keys[:, :, 2:], ref.values[:, :, 2:]
    k, v = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    gk, gv = g.update(k, v)
    rk, rv = ref.update(k, v)
    assert torch.equal(gk, rk) and torch.equal(gv, rv) and gk.data_ptr() == g._kbuf.data_ptr()
    k, v = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    gk, gv = g.update(k, v)
    rk, rv = ref.update(k, v)
    assert torch.equal(gk, rk) and torch.equal(gv, rv) and g._kbuf.shape[0] == 2


def test_one_thread_limits_the_calling_worker_thread_only():
    """``_one_thread``: inside the block a worker thread runs on one OpenMP thread, restored after; the main
    thread and other threads are left alone."""
    import torch

    from studio.engine import _one_thread, _thread_fns

    fns = dict(_thread_fns())
    if "omp" not in fns:
        pytest.skip("torch here has no GNU OpenMP")
    omp = fns["omp"]
    seen = {}

    def worker():
        torch.get_num_threads()
        seen["before"] = omp.omp_get_max_threads()
        with _one_thread(True):
            seen["inside"] = omp.omp_get_max_threads()
            with _one_thread(False):
                seen["off"] = omp.omp_get_max_threads()
        seen["after"] = omp.omp_get_max_threads()

    main_before = omp.omp_get_max_threads()
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    with _one_thread(True):  # the main thread keeps its threads
        assert omp.omp_get_max_threads() == main_before
    assert seen["inside"] == seen["off"] == 1
    assert seen["before"] == seen["after"] == torch.get_num_threads()
