"""Benchmark: local generation through the studio's engine (``studio/engine.py``) against bare HF ``generate``.

Four parts, each with its baseline measured in the same run, on the default model (SmolLM2-135M-Instruct) and
the WizardLM test set (``../shared/data/wizardlm_testset.jsonl``):

- ``expand``: the studio's expansion (the Expand tab's job, ``Studio.expand``: pipelined seeds, every request
  through the engine) of N seeds x R rounds with a local teacher; completion tokens per second of wall time,
  against the same expansion run one request at a time with bare HF ``generate`` (``BareTeacher``: every round,
  follow-up questions included, rendered and cut as the registry does) on the first ``--baseline-n`` of the seeds
  (a rate, so a few seeds suffice).
- ``batch``: N single-turn chats submitted at once to the engine (``Registry.chat_batch``) against one padded
  HF ``generate`` of the same N prompts (the library's batch) and HF ``generate`` one prompt at a time.
- ``chat``: one prompt, greedy: time to first token and tokens per second of (1) bare ``model.generate`` with a
  ``TextIteratorStreamer``, (2) ``Registry.stream_chat``, (3) the page's streaming function
  (``studio.ui.arena.stream_sides``, what the Arena tab runs; the Chat tab's handler iterates
  ``Registry.stream_chat`` itself), (4) ``/v1/chat/completions`` with ``stream: true`` under a real uvicorn
  server; overhead = path time / bare time - 1 (median of ``--repeats``).
- ``load``: C concurrent ``/v1`` streaming clients (threads, ``httpx``) against the same C requests served one at
  a time: all complete, p50/p95 latency per request, total completion tokens per second.

Usage::

    python bench/bench_engine.py                    # all four parts, full sizes (long on 2 CPU cores)
    python bench/bench_engine.py --quick            # small sizes: minutes
    python bench/bench_engine.py --parts chat load --json out.json

Figures on a machine shared with other jobs swing with their load; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def shared_data() -> Path:
    env = os.environ.get("STUDIO_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def seeds(n: int) -> list[dict]:
    """The first ``n`` WizardLM test-set instructions as expansion seeds."""
    rows = [json.loads(x) for x in (shared_data() / "wizardlm_testset.jsonl").read_text().splitlines() if x.strip()]
    return [{"instruction": r["Instruction"], "input": ""} for r in rows[:n]]


def make_studio(tmp: Path):
    from studio.config import Settings
    from studio.core import Studio

    return Studio(Settings(data_dir=tmp / "data", host="127.0.0.1", auth="", read_only=False, users_file=None,
                           oauth=False, api_keys_file=None, api_enabled=True, endpoint_key_envs=()))


def bare_generate(lm, ids: list[int], max_new_tokens: int, streamer=None) -> int:
    """HF ``generate`` on one prompt, greedy; returns the completion tokens (up to and with EOS)."""
    import torch

    with torch.inference_mode():
        out = lm.model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id, streamer=streamer)
    new = out[0, len(ids):].tolist()
    eos = lm.tokenizer.eos_token_id
    return new.index(eos) + 1 if eos in new else len(new)


# ---------------------------------------------------------------------------------------------- expand


class BareTeacher:
    """A stand-in registry for ``studio.expand.expand_seed`` whose every request is one bare HF ``generate``, one
    at a time (WizardLM's ``Evol_Instruct`` calls its teacher so): the prompt rendered as the registry renders it,
    sampling as the request asks, the reply cut at the template's stop strings as the registry cuts it. Gives the
    sequential baseline of a whole expansion (follow-up questions, long later rounds), not only round 1."""

    def __init__(self, reg, name: str):
        self.reg, self.name = reg, name
        self.lm, self.spec = reg.load(name), reg.get(name)
        self.stops = reg._stops(self.spec, self.lm.tokenizer)
        self.tokens = 0

    def get(self, name):
        return self.reg.get(name)

    def chat(self, name, messages, params, should_stop=None):
        import torch

        from studio.registry import Completion

        tok = self.lm.tokenizer
        ids = tok(self.reg._render(self.spec, tok, messages), add_special_tokens=False)["input_ids"]
        sample = bool(params.temperature and params.temperature > 0)
        kw = dict(do_sample=True, temperature=params.temperature, top_p=params.top_p) if sample else dict(do_sample=False)
        with torch.inference_mode():
            out = self.lm.model.generate(torch.tensor([ids]), max_new_tokens=params.max_new_tokens,
                                         pad_token_id=tok.pad_token_id, **kw)
        new = out[0, len(ids):].tolist()
        if tok.eos_token_id in new:
            new = new[:new.index(tok.eos_token_id) + 1]
        self.tokens += len(new)
        text, cut = self.reg._cut(tok.decode(new, skip_special_tokens=True), self.stops)
        return Completion(text=text, prompt_tokens=len(ids), completion_tokens=len(new),
                          finish_reason="stop" if cut or len(new) < params.max_new_tokens else "length")




def part_expand(studio, sizes: list[int], rounds: int, max_new: int, baseline_n: int) -> list[dict]:
    from studio.expand import ExpandConfig, expand_seed
    from studio.registry import DEFAULT_MODEL_NAME, GenParams

    reg = studio.registry
    lm = reg.load(DEFAULT_MODEL_NAME)
    src = studio.import_file(shared_data() / "wizardlm_testset.jsonl").source_id
    results = []
    for n in sizes:
        # the Expand tab's job (pipelined: n seeds in flight, each advancing on its own; every request through
        # the engine), on seeds not expanded yet; tokens from the conversations the job stored
        cfg = ExpandConfig(teacher=DEFAULT_MODEL_NAME, rounds=rounds, source_id=src,
                           answer=GenParams(max_new_tokens=max_new, temperature=0), batch_size=n)
        ss_ids = studio.store.pick_seeds(src, n)
        eng = lm.engine
        steps0, gen0, pre0, reu0 = eng.steps, eng.generated_tokens, eng.prefilled_tokens, eng.reused_tokens
        t = time.perf_counter()
        job = studio.expand(cfg, seed_ids=ss_ids)
        p = studio.jobs.wait(job, timeout=24 * 3600, poll=0.1)
        took = time.perf_counter() - t
        usage = studio.store.job_usage(job)
        # every token the engine generated for the job (seeds that failed on their content included, as the
        # baseline counts every request's tokens); the stored conversations' own count is printed too
        toks, ok = eng.generated_tokens - gen0, usage["conversations"]
        prefilled, reused = eng.prefilled_tokens - pre0, eng.reused_tokens - reu0
        ours = toks / took
        print(f"expand: {n} seeds x {rounds} rounds: {toks} completion tokens in {took:.1f} s = {ours:.1f} tok/s "
              f"({ok}/{n} conversations stored with {usage['completion_tokens']} tokens, job {p.status}); prompt "
              f"tokens prefilled {prefilled}, taken from the prefix cache {reused} "
              f"({reused / max(1, prefilled + reused):.0%})", flush=True)
        got = studio.store.get_seeds(ss_ids)
        ss = [got[i] for i in ss_ids]
        # baseline: the same expansion (every round, follow-up questions included) of the first k seeds, one
        # request at a time, bare HF generate; a rate, so k seeds suffice
        k = min(baseline_n, n)
        bare = BareTeacher(reg, DEFAULT_MODEL_NAME)
        t = time.perf_counter()
        for sd in ss[:k]:
            expand_seed(bare, cfg, sd)
        btook = time.perf_counter() - t
        btoks = bare.tokens
        base = btoks / btook
        print(f"expand: baseline HF generate one request at a time, the same {rounds}-round expansion of {k} of the "
              f"{n} seeds: {btoks} tokens in {btook:.1f} s = {base:.1f} tok/s; ratio x{ours / base:.2f}", flush=True)
        results.append(dict(seeds=n, rounds=rounds, max_new_tokens=max_new, tokens=toks, seconds=took,
                            tok_s=ours, conversations=ok, engine_steps=eng.steps - steps0,
                            prefilled_tokens=prefilled, reused_tokens=reused,
                            baseline_seeds=k, baseline_tok_s=base, ratio=ours / base))
    return results


# ---------------------------------------------------------------------------------------------- batch


def padded_generate(lm, prompts: list[list[int]], max_new_tokens: int) -> int:
    """One left-padded HF ``generate`` over all ``prompts`` at once, greedy (the library's own batch: every row
    waits for the longest); returns the completion tokens of all rows (each up to and with its EOS)."""
    import torch

    width = max(len(p) for p in prompts)
    pad = lm.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = lm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=pad)
    eos = lm.tokenizer.eos_token_id
    total = 0
    for row in out[:, width:].tolist():
        total += row.index(eos) + 1 if eos in row else len(row)
    return total


def part_batch(studio, sizes: list[int], max_new: int, baseline_n: int) -> list[dict]:
    """N single-turn chats submitted at once to the engine (``Registry.chat_batch``) against the same N prompts in
    one padded HF ``generate`` and against HF ``generate`` one prompt at a time: completion tokens per second.
    Says how close the engine's scheduling comes to the library's own batch on the same work, apart from the
    expansion's rounds and follow-up questions."""
    from studio.registry import DEFAULT_MODEL_NAME, GenParams

    reg = studio.registry
    lm = reg.load(DEFAULT_MODEL_NAME)
    spec = reg.get(DEFAULT_MODEL_NAME)
    results = []
    for n in sizes:
        lm.engine._prefixes.clear()  # the sizes share their first prompts: no reuse across them
        convs = [[{"role": "user", "content": s["instruction"]}] for s in seeds(n)]
        ids = [lm.tokenizer(reg._render(spec, lm.tokenizer, c), add_special_tokens=False)["input_ids"] for c in convs]
        t = time.perf_counter()
        outs = reg.chat_batch(DEFAULT_MODEL_NAME, convs, GenParams(max_new_tokens=max_new, temperature=0),
                              batch_size=n, concurrency=n)
        took = time.perf_counter() - t
        etoks = sum(o.completion_tokens for o in outs)
        t = time.perf_counter()
        ptoks = padded_generate(lm, ids, max_new)
        ptook = time.perf_counter() - t
        k = min(baseline_n, n)
        t = time.perf_counter()
        stoks = sum(bare_generate(lm, x, max_new) for x in ids[:k])
        stook = time.perf_counter() - t
        r = dict(n=n, max_new_tokens=max_new, engine_tok_s=etoks / took, padded_tok_s=ptoks / ptook,
                 sequential_tok_s=stoks / stook, sequential_prompts=k)
        r["engine_vs_padded"] = r["engine_tok_s"] / r["padded_tok_s"]
        r["engine_vs_sequential"] = r["engine_tok_s"] / r["sequential_tok_s"]
        print(f"batch: {n} chats at once: engine {etoks} tokens in {took:.1f} s = {r['engine_tok_s']:.1f} tok/s; "
              f"one padded generate {ptoks} tokens in {ptook:.1f} s = {r['padded_tok_s']:.1f} tok/s; one at a time "
              f"({k} prompts) {r['sequential_tok_s']:.1f} tok/s; engine x{r['engine_vs_padded']:.2f} of padded, "
              f"x{r['engine_vs_sequential']:.2f} of one at a time", flush=True)
        results.append(r)
    return results


# ---------------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(studio):
    """The studio's ``/v1`` app under a real uvicorn server in a thread; yields its base URL."""
    import uvicorn

    from studio.api import make_app

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(make_app(studio), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    while not srv.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        srv.should_exit = True
        t.join(30)


def v1_stream(url: str, model: str, prompt: str, max_new: int) -> tuple[float, float, int]:
    """One streamed ``/v1`` chat; returns (seconds to the first content piece, total seconds, pieces)."""
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "max_tokens": max_new, "temperature": 0}
    t = time.perf_counter()
    first = None
    pieces = 0
    with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            if d.get("choices") and d["choices"][0]["delta"].get("content"):
                pieces += 1
                if first is None:
                    first = time.perf_counter() - t
    return first if first is not None else float("nan"), time.perf_counter() - t, pieces


# ---------------------------------------------------------------------------------------------- chat


def part_chat(studio, max_new: int, repeats: int) -> dict:
    from transformers import TextIteratorStreamer

    from studio.registry import DEFAULT_MODEL_NAME, GenParams
    from studio.ui.arena import Side, stream_sides

    reg = studio.registry
    lm = reg.load(DEFAULT_MODEL_NAME)
    spec = reg.get(DEFAULT_MODEL_NAME)
    prompt = seeds(1)[0]["instruction"]
    msgs = [{"role": "user", "content": prompt}]
    ids = lm.tokenizer(reg._render(spec, lm.tokenizer, msgs), add_special_tokens=False)["input_ids"]
    params = GenParams(max_new_tokens=max_new, temperature=0)
    eng = lm.engine
    # the same prompt runs again and again: with the prefix cache on, every run after the first would take all but
    # its last prompt token from it, which measures the cache, not the path's overhead
    eng.prefix_cache_bytes = 0
    eng._prefixes.clear()

    def bare():
        streamer = TextIteratorStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True)
        t = time.perf_counter()
        th = threading.Thread(target=bare_generate, args=(lm, ids, max_new, streamer))
        th.start()
        first = None
        for piece in streamer:
            if piece and first is None:
                first = time.perf_counter() - t
        th.join()
        return first, time.perf_counter() - t

    def registry_stream():
        t = time.perf_counter()
        first = None
        for piece in reg.stream_chat(DEFAULT_MODEL_NAME, msgs, params):
            if piece and first is None:
                first = time.perf_counter() - t
        return first, time.perf_counter() - t

    def page():
        t = time.perf_counter()
        first = None
        for texts, _finished, _errors in stream_sides(reg, [Side(DEFAULT_MODEL_NAME)], [msgs], params,
                                                       threading.Event()):
            if texts[0] and first is None:
                first = time.perf_counter() - t
        return first, time.perf_counter() - t

    ntoks = bare_generate(lm, ids, max_new)  # warm-up, and the completion tokens of every path (greedy)
    with serving(studio) as url:
        paths = {"bare model.generate": bare, "Registry.stream_chat": registry_stream,
                 "page (arena stream_sides)": page,
                 "/v1 stream": lambda: v1_stream(url, DEFAULT_MODEL_NAME, prompt, max_new)[:2]}
        runs: dict[str, list] = {k: [] for k in paths}
        for _ in range(repeats):  # interleaved, so load changes hit every path alike
            for k, f in paths.items():
                runs[k].append(f())
                assert eng.idle()
    out = {}
    b_first = statistics.median(r[0] for r in runs["bare model.generate"])
    b_total = statistics.median(r[1] for r in runs["bare model.generate"])
    for k, rs in runs.items():
        first = statistics.median(r[0] for r in rs)
        total = statistics.median(r[1] for r in rs)
        out[k] = dict(ttft_s=first, total_s=total, tok_s=ntoks / total, ttft_overhead=first / b_first - 1,
                      total_overhead=total / b_total - 1)
        print(f"chat: {k:28s} first token {first * 1000:7.0f} ms  {ntoks / total:6.1f} tok/s  overhead: first "
              f"{(first / b_first - 1) * 100:+.1f} %, total {(total / b_total - 1) * 100:+.1f} %", flush=True)
    return dict(tokens=ntoks, repeats=repeats, paths=out)


# ---------------------------------------------------------------------------------------------- load


def part_load(studio, clients: int, max_new: int) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from studio.registry import DEFAULT_MODEL_NAME

    prompts = [s["instruction"] for s in seeds(clients)]
    res = {}
    eng = studio.registry.load(DEFAULT_MODEL_NAME).engine
    eng.prefix_cache_bytes = 0  # both modes run the same prompts: the second would reuse the first's prefixes
    eng._prefixes.clear()
    with serving(studio) as url:
        for mode in ("one at a time", "concurrent"):
            t = time.perf_counter()
            if mode == "concurrent":
                with ThreadPoolExecutor(clients) as pool:
                    outs = list(pool.map(lambda p: v1_stream(url, DEFAULT_MODEL_NAME, p, max_new), prompts))
            else:
                outs = [v1_stream(url, DEFAULT_MODEL_NAME, p, max_new) for p in prompts]
            took = time.perf_counter() - t
            lat = sorted(o[1] for o in outs)
            done = sum(o[2] > 0 for o in outs)
            # completion tokens: the registry's own count for the same greedy prompts
            res[mode] = dict(seconds=took, completed=done, p50_s=statistics.median(lat),
                             p95_s=lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))],
                             ttft_p50_s=statistics.median(o[0] for o in outs))
    toks = sum(c.completion_tokens for c in studio.registry.chat_batch(
        DEFAULT_MODEL_NAME, [[{"role": "user", "content": p}] for p in prompts],
        __import__("studio.registry", fromlist=["GenParams"]).GenParams(max_new_tokens=max_new, temperature=0)))
    for mode, r in res.items():
        r["tok_s"] = toks / r["seconds"]
        print(f"load: {clients} /v1 streams {mode:13s}: {r['completed']}/{clients} complete, {toks} tokens in "
              f"{r['seconds']:.1f} s = {r['tok_s']:.1f} tok/s; latency p50 {r['p50_s']:.1f} s, p95 {r['p95_s']:.1f} s; "
              f"first token p50 {r['ttft_p50_s']:.1f} s", flush=True)
    ratio = res["concurrent"]["tok_s"] / res["one at a time"]["tok_s"]
    print(f"load: concurrent / one at a time: x{ratio:.2f} total tok/s", flush=True)
    return dict(clients=clients, max_new_tokens=max_new, tokens=toks, ratio=ratio, **res)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["batch", "expand", "chat", "load"],
                    choices=["batch", "expand", "chat", "load"])
    ap.add_argument("--quick", action="store_true", help="small sizes (minutes): 8 seeds x 1 round, 32 tokens")
    ap.add_argument("--seeds", nargs="+", type=int, default=None, help="expand: seed counts (default 8 32)")
    ap.add_argument("--rounds", type=int, default=None, help="expand: rounds (default 3)")
    ap.add_argument("--max-new", type=int, default=None, help="new tokens per reply (default 128)")
    ap.add_argument("--baseline-n", type=int, default=None, help="seeds (expand) and prompts (batch) timed one at a time for the baseline (default 2)")
    ap.add_argument("--clients", type=int, default=None, help="load: concurrent clients (default 20)")
    ap.add_argument("--repeats", type=int, default=None, help="chat: runs per path (default 5)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = ap.parse_args(argv)
    q = a.quick
    sizes = a.seeds or ([8] if q else [8, 32])
    rounds = a.rounds or (1 if q else 3)
    max_new = a.max_new or (32 if q else 128)
    baseline_n = a.baseline_n or (1 if q else 2)
    clients = a.clients or (4 if q else 20)
    repeats = a.repeats or (2 if q else 5)
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    out: dict = {"quick": q}
    with tempfile.TemporaryDirectory() as tmp:
        studio = make_studio(Path(tmp))
        try:
            if "batch" in a.parts:
                out["batch"] = part_batch(studio, sizes, max_new, baseline_n)
            if "expand" in a.parts:
                out["expand"] = part_expand(studio, sizes, rounds, max_new, baseline_n)
            if "chat" in a.parts:
                out["chat"] = part_chat(studio, max_new, repeats)
            if "load" in a.parts:
                out["load"] = part_load(studio, clients, max_new)
        finally:
            studio.close()
    out["load_average_after"] = os.getloadavg()
    import resource

    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak resident memory of this process: {out['peak_rss_gib']:.2f} GiB", flush=True)
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
