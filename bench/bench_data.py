"""Curation at wizard_vicuna_70k scale: the Data tab's operations on 70,000 conversations.

Builds 70,000 realistic conversations (rounds 1-8, turns from ../shared/data, see ``_synth.py``), writes them
as one ShareGPT JSON file, and measures in one run, through the same calls the page makes:

- import of the 70k file (parse, validate, one DuckDB transaction, full-text index);
- first page, a filtered and sorted page, a full-text search with highlighted snippets
  (median and p95 over repeated calls);
- a single edit (save with a revision), a bulk tag of 10,000 conversations (and its undo);
- export of everything to ShareGPT JSON.

Baseline, measured in the same run: the naive preview that re-reads the JSON file for each page (as
LLaMA-Factory's dataset preview does) and scans it for a search. Targets on a 2-core machine: import under
15 s, any page or search under 300 ms, a save under 100 ms.

Usage: python bench/bench_data.py [N]   (default 70000)
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _synth  # noqa: E402

from studio import formats  # noqa: E402
from studio.store import ConvFilter, Store  # noqa: E402

REPEATS = 15


def timed(fn, repeats=REPEATS):
    """(median, p95, last result) in milliseconds."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    return statistics.median(times), p95, out


def main(n: int = 70_000) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="wv-bench-"))
    src = tmp / "wizard_vicuna_synth.json"
    t = time.perf_counter()
    _synth.write(src, n)
    print(f"built {n} conversations ({src.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t:.1f} s",
          flush=True)

    rows = []

    def report(name, ours_ms, base_ms=None, target=None, p95=None):
        ratio = f"{base_ms / ours_ms:.0f}x" if base_ms else ""
        rows.append((name, ours_ms, p95, base_ms, ratio, target))
        p = f" (p95 {p95:.0f} ms)" if p95 is not None else ""
        b = f" | naive {base_ms:.0f} ms, {ratio} faster" if base_ms else ""
        print(f"{name}: {ours_ms:.0f} ms{p}{b}", flush=True)

    # import
    store = Store(tmp / "bench.duckdb")
    t = time.perf_counter()
    parsed = formats.read_file(src)
    t_parse = time.perf_counter() - t
    res = store.import_parsed(parsed)
    t_import = time.perf_counter() - t
    assert res.n_conversations == n, res.summary()
    print(f"  (parse+validate {t_parse:.1f} s, store+index {t_import - t_parse:.1f} s)")
    report("import 70k ShareGPT file", t_import * 1000, target="< 15 s")
    med, p95, total = timed(lambda: store.list_conversations(query="photosynthesis", limit=25)[1], 3)
    report(f"search while the index builds ({total} match, DuckDB scan)", med, None, "", p95)
    t = time.perf_counter()
    assert store.wait_for_index(600)
    report("full-text index caught up (background, after import)", (time.perf_counter() - t) * 1000)

    # naive baseline: re-read the JSON for a page, scan it for a search
    def naive_page(offset=0, size=25):
        data = json.loads(src.read_text(encoding="utf-8"))
        return data[offset:offset + size]

    def naive_search(word="photosynthesis", size=25):
        data = json.loads(src.read_text(encoding="utf-8"))
        hits = [r for r in data if any(word in m["value"].lower() for m in r["conversations"])]
        return hits[:size]

    base_page, _, _ = timed(naive_page, 3)
    base_search, _, _ = timed(naive_search, 3)

    med, p95, _ = timed(lambda: store.list_conversations(limit=25, offset=0))
    report("first page (25 rows)", med, base_page, "< 300 ms", p95)
    f = ConvFilter(min_rounds=3, max_rounds=6, status="all")
    med, p95, (df, total) = timed(lambda: store.list_conversations(f, limit=25, offset=500, sort="chars",
                                                                      descending=True))
    report(f"filtered + sorted page (3-6 rounds, by length, {total} match)", med, base_page, "< 300 ms", p95)

    def search():
        df, total = store.list_conversations(query="photosynthesis", limit=25)
        store.search_snippets("photosynthesis", [int(i) for i in df["id"]])
        return total
    med, p95, total = timed(search)
    report(f"full-text search with snippets ({total} match)", med, base_search, "< 300 ms", p95)

    med, p95, _ = timed(lambda: store.list_conversations(ConvFilter(query="explain", min_rounds=4), limit=25,
                                                         offset=100))
    report("search + filter, page 5", med, base_search, "< 300 ms", p95)

    # single edit
    ids = store.conversation_ids(ConvFilter())
    conv_ids = ids[1000:1000 + REPEATS]
    versions = {}

    def edit_one(it=iter(conv_ids)):
        cid = next(it)
        c = store.get_conversation(cid)
        msgs = c["messages"]
        msgs[-1]["content"] += " (edited)"
        versions[cid] = store.save_messages(cid, msgs, expected_version=c["version"])
    med, p95, _ = timed(edit_one)
    report("open + save one edit (with revision)", med, None, "< 100 ms", p95)

    # bulk tag of 10,000 + undo
    t = time.perf_counter()
    op, k = store.bulk("tag", ids[:10_000], "bench")
    report(f"bulk tag of {k} conversations", (time.perf_counter() - t) * 1000)
    t = time.perf_counter()
    store.undo_bulk(op)
    report("undo of that bulk tag", (time.perf_counter() - t) * 1000)

    # export
    out = tmp / "export.json"
    t = time.perf_counter()
    m = formats.write_sharegpt(out, store.iter_conversations(ConvFilter()))
    report(f"export {m} conversations to ShareGPT JSON", (time.perf_counter() - t) * 1000)

    print("\n| operation | ours (median) | p95 | naive re-read | ratio | target |")
    print("|---|---|---|---|---|---|")
    for name, ours, p95, base, ratio, target in rows:
        fmt = (lambda v: f"{v / 1000:.1f} s" if v >= 1000 else f"{v:.0f} ms")
        print(f"| {name} | {fmt(ours)} | {fmt(p95) if p95 is not None else ''} | "
              f"{fmt(base) if base else ''} | {ratio} | {target or ''} |")
    store.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 70_000)
