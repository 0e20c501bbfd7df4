"""Benchmark: trained tokens per second and peak memory of the training program, against FastChat's padding.

What it measures: the real training program (``python -m training.train --run-dir ...``, one subprocess per
configuration, so peak memory is per configuration) fine-tuning the default model (SmolLM2-135M-Instruct, from
its converted checkpoint) with LoRA and full fine-tuning, on multi-round conversations built from
``../shared/data``, each configuration for a fixed number of optimizer steps:

- ``fastchat``: FastChat's way (``fastchat/train/train.py``): every sample padded to ``max_length``
  (``padding="max_length"``, the baseline);
- ``longest``: ours, each batch padded to its longest member, batches drawn at random (the same samples in the
  same order as the baseline: same seed, same sampler), so the ratio is a pure time ratio on identical tokens;
- ``packed``: ours, padding-free (the batch concatenated, position ids restarting per sequence), also the same
  samples and order.

``group_by_length`` (the default of a run) is not timed: over a handful of steps it would train on different
(longest-first) samples; it only removes more padding than ``longest``, so ``longest`` is the conservative
figure.

Reported per configuration: label tokens/s (tokens that carry loss), non-pad tokens/s, label tokens per CPU-second
of the training process (steadier than wall time on a shared machine), seconds per step, the share of computed
positions that are real tokens (non-pad share), and peak memory (CUDA:
``torch.cuda.max_memory_allocated``; CPU: the process's peak resident set size, model loading included). Rates are
over steps 2..N (step 1 warms up). Ratios are ours / fastchat in the same run. ``--json FILE`` also writes the
results as JSON.

Usage::

    python bench/bench_train.py          # LoRA and full, max length 2048, 3 steps x batch 2, all three batchings
    python bench/bench_train.py --max-length 2048 512 --steps 6 --paddings fastchat packed --json out.json

About 30 minutes on 2 shared CPU cores (the FastChat baseline at 2048 is most of it); minutes on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PADDING = {"fastchat": "max_length", "longest": "longest", "packed": "packed"}


def shared_data() -> Path:
    env = os.environ.get("STUDIO_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def default_model_dir() -> Path:
    """The converted default checkpoint (converted from the embedded GGUF on first use)."""
    from studio.registry import DEFAULT_MODEL_NAME, convert_gguf, find_default_gguf

    model_dir = Path(os.environ.get("STUDIO_MODEL_DIR", ROOT / ".cache" / "models")) / DEFAULT_MODEL_NAME
    if (model_dir / "config.json").exists():
        return model_dir
    return convert_gguf(find_default_gguf(), model_dir)


def build_conversations(n: int, seed: int = 0) -> list[dict]:
    """Multi-round conversations shaped like WizardVicuna's expanded ones, from the reference data.

    1 to 5 rounds, uniformly (mean 3: the studio's expansion default is 3 rounds; ShareGPT, Vicuna's data, has
    3.5 turns on average). Round 1 asks a WizardLM test-set or Alpaca instruction; later rounds ask MT-bench
    second-turn follow-ups or further instructions. Each answer is one or two real Alpaca answers (of more than 200
    characters) joined, about 350 tokens on average, as ChatGPT's answers in ShareGPT (348 tokens per response,
    LMSYS-Chat-1M paper, Table 1).
    """
    d = shared_data()
    rng = random.Random(seed)
    alpaca = json.loads((d / "alpaca_en_demo.json").read_text())
    wizard = [json.loads(x)["Instruction"] for x in (d / "wizardlm_testset.jsonl").read_text().splitlines()]
    mt = [json.loads(x)["turns"] for x in (d / "mt_bench_questions.jsonl").read_text().splitlines()]
    answers = [r["output"] for r in alpaca if len(r["output"]) > 200]
    convs = []
    for i in range(n):
        msgs = []
        for k in range(rng.randint(1, 5)):
            if k == 0:
                user = rng.choice(wizard) if rng.random() < 0.5 else rng.choice(alpaca)["instruction"]
            else:
                user = rng.choice(mt)[1] if rng.random() < 0.5 else rng.choice(alpaca)["instruction"]
            answer = "\n\n".join(rng.sample(answers, rng.randint(1, 2)))
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        convs.append({"id": f"bench-{i}", "messages": msgs})
    return convs


def length_stats(convs: list[dict], model_dir: Path, max_length: int) -> dict:
    from transformers import AutoTokenizer

    from training.data import build_dataset

    tok = AutoTokenizer.from_pretrained(model_dir)
    samples, stats = build_dataset([(c["id"], c["messages"]) for c in convs], tok, "chat_template", max_length)
    lengths = sorted(s["length"] for s in samples)
    return {"n": len(lengths), "mean": statistics.mean(lengths), "median": statistics.median(lengths),
            "p90": lengths[int(0.9 * (len(lengths) - 1))], "max": lengths[-1],
            "label_share": stats.label_tokens / max(stats.tokens, 1), "cut_at_round": stats.cut_at_round,
            "cut_inside_round": stats.cut_inside_round}


def run_one(work: Path, convs: list[dict], model_dir: Path, method: str, padding: str, max_length: int,
            steps: int, batch: int) -> dict:
    run = work / f"{method}-{padding}-{max_length}"
    run.mkdir(parents=True)
    (run / "snapshot.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    (run / "config.json").write_text(json.dumps({
        "run_id": run.name, "base_model": "SmolLM2-135M-Instruct", "base_model_path": str(model_dir),
        "method": method, "template": "chat_template", "train_file": "snapshot.jsonl", "eval_file": None,
        "snapshot_sha256": "", "output_dir": "output",
        "hyperparams": {"max_steps": steps, "per_device_train_batch_size": batch, "global_batch_size": batch,
                        "max_length": max_length, "padding": PADDING[padding], "logging_steps": 1,
                        "save_steps": 10 ** 6, "learning_rate": 2e-5 if method == "full" else 2e-4}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    t = time.time()
    with open(run / "train.log", "w") as log:
        rc = subprocess.run([sys.executable, "-m", "training.train", "--run-dir", str(run)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT).returncode
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    if rc != 0 or events[-1]["type"] != "end":
        raise SystemExit(f"{run.name} failed (exit {rc}):\n" + (run / "train.log").read_text()[-3000:])
    prog = [e for e in events if e["type"] == "progress"]
    a, b = prog[0], prog[-1]  # rates over steps 2..N
    dt = b["elapsed_s"] - a["elapsed_s"]
    cpu = b["cpu_time_s"] - a["cpu_time_s"]
    return {"method": method, "padding": padding, "max_length": max_length,
            "tokens_per_s": (b["num_tokens"] - a["num_tokens"]) / dt,
            "label_tokens_per_s": (b["num_label_tokens"] - a["num_label_tokens"]) / dt,
            "label_tokens_per_cpu_s": (b["num_label_tokens"] - a["num_label_tokens"]) / cpu,
            "s_per_step": dt / (len(prog) - 1), "peak_mem_gib": events[-1]["peak_memory_bytes"] / 2 ** 30,
            "label_tokens": b["num_label_tokens"] - a["num_label_tokens"], "wall_s": time.time() - t,
            "fill": (b["num_tokens"] - a["num_tokens"]) / max(b["num_input_tokens"] - a["num_input_tokens"], 1),
            "final_loss": events[-1]["final_loss"]}


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    try:
        import os as _os

        cpus = len(_os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cpus = os.cpu_count()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model or platform.processor()} ({cpus} cores), torch {torch.__version__} {torch.get_num_threads()} threads"


def fmt_row(r: dict) -> str:
    return (f"| {r['method']:<4} | {r['max_length']:>5} | {r['padding']:<8} | {r['label_tokens_per_s']:>9.1f} | "
            f"{r['tokens_per_s']:>9.1f} | {r['label_tokens_per_cpu_s']:>9.1f} | {r['s_per_step']:>7.1f} | "
            f"{r['fill']:>5.0%} | {r['peak_mem_gib']:>6.2f} |")


HEADER = ("| method | max_length | padding | label tok/s | non-pad tok/s | label tok/CPU-s | s/step | non-pad share "
          "| peak mem GiB |\n|---|---:|---|---:|---:|---:|---:|---:|---:|")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    p.add_argument("--paddings", nargs="+", default=["fastchat", "longest", "packed"], choices=list(PADDING))
    p.add_argument("--max-length", nargs="+", type=int, default=[2048])
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per configuration (>= 2)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--conversations", type=int, default=200)
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args(argv)
    if "fastchat" not in a.paddings:
        a.paddings = ["fastchat"] + a.paddings
    steps = max(2, a.steps)
    model_dir = default_model_dir()
    convs = build_conversations(a.conversations)
    print(f"machine: {machine()}")
    print(f"model: {model_dir.name}; {len(convs)} conversations; {steps} steps x batch {a.batch_size} per config",
          flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for L in a.max_length:
            st = length_stats(convs, model_dir, L)
            print(f"max_length {L}: sample length mean {st['mean']:.0f}, median {st['median']:.0f}, p90 {st['p90']}, "
                  f"max {st['max']} tokens; {st['label_share']:.0%} of tokens carry loss; "
                  f"{st['cut_at_round']} cut at a round, {st['cut_inside_round']} inside one", flush=True)
            for method in a.methods:
                for padding in a.paddings:
                    r = run_one(Path(tmp), convs, model_dir, method, padding, L, steps, a.batch_size)
                    results.append(r)
                    print(fmt_row(r) + f"  ({r['wall_s']:.0f} s wall)", flush=True)
    print()
    print(HEADER)
    for r in results:
        print(fmt_row(r))
    print()
    print("Ratios, ours / FastChat's (every sample padded to max_length), same samples, same run:")
    for L in a.max_length:
        for method in a.methods:
            base = next(r for r in results if (r["method"], r["max_length"], r["padding"]) == (method, L, "fastchat"))
            for r in results:
                if (r["method"], r["max_length"]) == (method, L) and r["padding"] != "fastchat":
                    assert r["label_tokens"] == base["label_tokens"], "runs trained on different tokens"
                    print(f"  {method} max_length {L} {r['padding']}: label tokens/s x"
                          f"{r['label_tokens_per_s'] / base['label_tokens_per_s']:.2f} "
                          f"(per CPU-second x{r['label_tokens_per_cpu_s'] / base['label_tokens_per_cpu_s']:.2f}), "
                          f"peak memory x{r['peak_mem_gib'] / base['peak_mem_gib']:.2f}")
    if a.json:
        a.json.write_text(json.dumps({"machine": machine(), "steps": steps, "batch_size": a.batch_size,
                                      "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
