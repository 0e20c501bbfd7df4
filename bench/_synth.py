"""Realistic synthetic conversations at wizard_vicuna_70k scale, built from the texts in ``../shared/data``.

Rounds per conversation are drawn from 1 to 8 (more short conversations than long ones, as in ShareGPT-style
data); user turns are real instructions (Alpaca, WizardLM test set, MT-bench turns) and assistant turns are
real Alpaca answers, one to three of them joined, so turn lengths follow real chat data (short questions,
answers from a sentence to several paragraphs). Deterministic for a given seed.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

ROUND_WEIGHTS = [30, 22, 16, 11, 8, 6, 4, 3]  # rounds 1..8


def shared_data() -> Path:
    """``../shared/data`` beside the repository, or ``$STUDIO_SHARED_DATA``."""
    env = os.environ.get("STUDIO_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def _pools(data: Path) -> tuple[list[str], list[str]]:
    alpaca = json.loads((data / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    users = [(r["instruction"] + ("\n\n" + r["input"] if r.get("input") else "")).strip() for r in alpaca]
    answers = [r["output"].strip() for r in alpaca if r["output"].strip()]
    for line in (data / "wizardlm_testset.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            users.append(json.loads(line)["Instruction"].strip())
    for line in (data / "mt_bench_questions.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            users.extend(t.strip() for t in json.loads(line)["turns"])
    return users, answers


def conversations(n: int = 70_000, seed: int = 0, data: Path | None = None) -> list[dict]:
    """``n`` ShareGPT records ``{id, conversations: [{from, value}]}``, all different (an exact repeat is drawn
    again: the importer counts repeats as duplicates and skips them)."""
    rng = random.Random(seed)
    users, answers = _pools(data or shared_data())
    out = []
    seen: set[int] = set()
    while len(out) < n:
        i = len(out)
        rounds = rng.choices(range(1, 9), weights=ROUND_WEIGHTS)[0]
        turns = []
        for r in range(rounds):
            q = rng.choice(users)
            if r and rng.random() < 0.5:
                q = rng.choice(["Can you explain more about", "What about", "How does this relate to",
                                "Give an example of", "Why is that true for"]) + " " + q[:1].lower() + q[1:]
            a = "\n\n".join(rng.choice(answers) for _ in range(rng.choices([1, 2, 3], [55, 35, 10])[0]))
            turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        key = hash(tuple(t["value"] for t in turns))
        if key in seen:
            continue
        seen.add(key)
        out.append({"id": f"synth_{i}", "conversations": turns})
    return out


def write(path: str | Path, n: int = 70_000, seed: int = 0) -> Path:
    """Write ``n`` conversations as one ShareGPT JSON file; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(conversations(n, seed), ensure_ascii=False), encoding="utf-8")
    return path
