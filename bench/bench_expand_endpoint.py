"""Benchmark: conversations per minute of the studio's expansion with an endpoint teacher, 16 requests in flight,
against one request at a time (as WizardLM's ``Evol_Instruct`` calls ChatGPT: a plain loop, one request after
another).

What it measures: a loopback OpenAI-compatible server (``http.server.ThreadingHTTPServer`` on 127.0.0.1) that
answers every chat request after a random 200-500 ms (drawn from ``random.Random(--seed)`` in arrival order, so
both sides see the same distribution: mean 350 ms), with a short answer and ``usage``. Each conversation is 3
rounds (the Expand tab's default): round 1's answer, then twice a follow-up question and its answer, 5 requests.
The seeds are the WizardLM test set's instructions (``../shared/data/wizardlm_testset.jsonl``).

- ``sequential`` (the baseline): the same 5 requests per conversation with the ``openai`` client, one at a time,
  in a loop (WizardLM ``Evol_Instruct/openai_access.py`` style), nothing stored;
- ``studio x1``: the studio's expansion job (``Studio.expand``: the pipelined runner, the store writes of every
  finished step and conversation) on an endpoint entry with ``concurrency=1``, for reference;
- ``studio x16``: the same job on an entry with ``concurrency=16`` (the default): 16 seeds in flight, each
  advancing on its own.

Reported per configuration: conversations, requests, seconds, conversations per minute, requests per second, and
the ratio of conversations per minute against ``sequential`` measured in the same run (target: at least 10x).
At 16 in flight and 350 ms per request the ceiling is 16 x 60 / (5 x 0.35) = 549 conversations per minute,
x16 the sequential 34.

Usage::

    python bench/bench_expand_endpoint.py            # 64 seeds at 16 in flight; 12 sequential, 12 studio x1
    python bench/bench_expand_endpoint.py --quick    # 32 at 16 in flight; 4 sequential, 4 studio x1 (~25 s)
    python bench/bench_expand_endpoint.py --seeds 128 --sequential 16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROUNDS = 3
REQUESTS_PER_CONVERSATION = 2 * ROUNDS - 1


def shared_data() -> Path:
    env = os.environ.get("STUDIO_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


class SlowTeacher:
    """A loopback OpenAI-compatible server answering each chat request after ``lo``-``hi`` seconds (seeded)."""

    def __init__(self, lo: float = 0.2, hi: float = 0.5, seed: int = 0):
        self.rng = random.Random(seed)
        self.lo, self.hi = lo, hi
        self.lock = threading.Lock()
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with teacher.lock:
                    teacher.requests += 1
                    n = teacher.requests
                    delay = teacher.rng.uniform(teacher.lo, teacher.hi)
                    teacher.in_flight += 1
                    teacher.max_in_flight = max(teacher.max_in_flight, teacher.in_flight)
                time.sleep(delay)
                prompt = json.dumps(body.get("messages"))
                text = (f"What about aspect number {n} of this topic?" if "curious user" in prompt else
                        f"Here is a detailed answer, number {n}, covering the main points step by step.")
                data = json.dumps({"id": f"c{n}", "object": "chat.completion", "created": 0, "model": body["model"],
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                "finish_reason": "stop"}],
                                   "usage": {"prompt_tokens": 50, "completion_tokens": 20,
                                             "total_tokens": 70}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                with teacher.lock:
                    teacher.in_flight -= 1

        self._srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._srv.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._srv.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._srv.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._srv.shutdown()
        self._srv.server_close()


def sequential(url: str, instructions: list[str]) -> tuple[int, int]:
    """WizardLM's way: one request at a time with the ``openai`` client, 5 per 3-round conversation. Returns
    (conversations, requests)."""
    from openai import OpenAI

    from studio.expand import ExpansionPrompts, clean_question, transcript

    client = OpenAI(base_url=url, api_key="not-needed", max_retries=0)
    prompts = ExpansionPrompts()
    requests = 0
    for instr in instructions:
        msgs = [{"role": "user", "content": instr}]
        for rnd in range(1, ROUNDS + 1):
            if rnd > 1:
                q = client.chat.completions.create(model="m", max_tokens=96, messages=[{"role": "user", "content":
                    prompts.followup.format(topic=instr, transcript=transcript(msgs, 800))}])
                msgs.append({"role": "user", "content": clean_question(q.choices[0].message.content)})
                requests += 1
            a = client.chat.completions.create(model="m", max_tokens=256,
                                               messages=[{"role": "system", "content": prompts.system}] + msgs)
            msgs.append({"role": "assistant", "content": a.choices[0].message.content})
            requests += 1
    return len(instructions), requests


def studio_run(studio, source_id: int, seed_ids: list[int], name: str) -> tuple[int, int]:
    """The studio's expansion job over ``seed_ids`` on entry ``name``; returns (conversations, failed)."""
    from studio.expand import ExpandConfig
    from studio.registry import GenParams

    cfg = ExpandConfig(teacher=name, rounds=ROUNDS, source_id=source_id, answer=GenParams(max_new_tokens=256))
    job = studio.expand(cfg, seed_ids=seed_ids)
    p = studio.jobs.wait(job, timeout=3600, poll=0.05)
    if p.status != "done":
        raise SystemExit(f"the expansion on {name} ended {p.status}: {p.line()}")
    return p.done, p.failed


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=64, help="conversations expanded at 16 in flight (default 64)")
    ap.add_argument("--sequential", type=int, default=12, help="conversations one request at a time (default 12)")
    ap.add_argument("--in-flight", type=int, default=16, help="the studio entry's concurrency (default 16)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the server's delays")
    ap.add_argument("--quick", action="store_true", help="32 seeds in flight, 4 sequential (about 25 s)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.sequential = 32, 4

    from studio.config import Settings
    from studio.core import Studio

    rows = [json.loads(line) for line in (shared_data() / "wizardlm_testset.jsonl").read_text().splitlines() if line]
    n_total = args.seeds + 2 * args.sequential
    if len(rows) < n_total:
        raise SystemExit(f"the WizardLM test set has {len(rows)} instructions; asked for {n_total}")
    teacher = SlowTeacher(seed=args.seed)
    results = []
    print(f"loopback teacher {teacher.url}: each answer after 200-500 ms (seed {args.seed}); {ROUNDS} rounds = "
          f"{REQUESTS_PER_CONVERSATION} requests per conversation")
    print(f"{'configuration':<14} {'convs':>6} {'requests':>9} {'seconds':>8} {'conv/min':>9} {'req/s':>7} "
          f"{'in flight':>9} {'ratio':>7}")

    def report(name: str, convs: int, requests: int, secs: float, peak: int) -> None:
        rate = convs / secs * 60
        base = results[0]["conv_per_min"] if results else rate
        results.append({"configuration": name, "conversations": convs, "requests": requests, "seconds": secs,
                        "conv_per_min": rate, "requests_per_s": requests / secs, "max_in_flight": peak,
                        "ratio": rate / base})
        print(f"{name:<14} {convs:>6} {requests:>9} {secs:>8.1f} {rate:>9.1f} {requests / secs:>7.1f} {peak:>9} "
              f"{rate / base:>6.1f}x", flush=True)

    try:
        instr = [r["Instruction"] if "Instruction" in r else r.get("instruction", "") for r in rows]
        t0, r0 = time.perf_counter(), teacher.requests
        convs, reqs = sequential(teacher.url, instr[:args.sequential])
        report("sequential", convs, reqs, time.perf_counter() - t0, teacher.max_in_flight)
        with tempfile.TemporaryDirectory() as tmp:
            studio = Studio(Settings(data_dir=Path(tmp) / "data"))
            try:
                src = studio.import_file(shared_data() / "wizardlm_testset.jsonl").source_id
                ids = studio.store.pick_seeds(src, n_total)
                for name, conc, chosen in (("studio x1", 1, ids[args.seeds:args.seeds + args.sequential]),
                                           (f"studio x{args.in_flight}", args.in_flight, ids[:args.seeds])):
                    studio.registry.add_endpoint(name.replace(" ", "-"), teacher.url, "m", concurrency=conc,
                                                 max_retries=0)
                    teacher.max_in_flight = 0
                    t0, r0 = time.perf_counter(), teacher.requests
                    done, failed = studio_run(studio, src, chosen, name.replace(" ", "-"))
                    report(name, done, teacher.requests - r0, time.perf_counter() - t0, teacher.max_in_flight)
            finally:
                studio.close()
    finally:
        teacher.close()
    best = results[-1]
    print(f"\nstudio at {args.in_flight} in flight: {best['conv_per_min']:.0f} conversations/min, "
          f"x{best['ratio']:.1f} the sequential baseline (target x10); machine: {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    out = {"results": results, "seeds": args.seeds, "sequential": args.sequential, "rounds": ROUNDS}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
