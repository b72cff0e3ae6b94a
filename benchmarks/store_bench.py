#!/usr/bin/env python3
"""The run store at scale: how long paging, counting and claiming take with 100 000 runs (CPU, any machine).

The test suite asserts that these queries read an index (tests/test_store.py, on SQLite's query plans); this
measures what that buys. Median of --repeat calls each, in milliseconds, as JSON on stdout (or --out FILE).

    PYTHONPATH=src .venv/bin/python benchmarks/store_bench.py [--runs 100000] [--repeat 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        os.environ["VLBENCH_DATA_DIR"] = data
        from vlbench.store import Store

        store = Store()
        recipe = {"width": 64, "height": 64, "steps": 2, "seed": 0}
        items = [dict(prompt=f"prompt number {i}", images=["ref.png"], recipe=dict(recipe, seed=i % 97),
                      name=f"n{i}", experiment="big") for i in range(args.runs)]
        start = time.perf_counter()
        store.enqueue_many(items)
        results = {"runs": args.runs, "enqueue_many_s": round(time.perf_counter() - start, 3)}
        store._conn().execute("UPDATE runs SET status = 'done', finished_at = created_at + id WHERE id % 10 != 0")

        def timed(name, call):
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            results[name] = round(statistics.median(times) * 1000, 2)

        for kwargs in [{}, {"status": "done"}, {"sort": "seed"}, {"sort": "name"}, {"sort": "finished_at"},
                       {"status": ("done", "failed", "cancelled")}, {"offset": args.runs // 2}]:
            timed(f"history_ms {json.dumps(kwargs)}", lambda: store.history(limit=100, **kwargs))
        for kwargs in [{}, {"status": "done"}, {"text": "number 4242"}]:
            timed(f"count_ms {json.dumps(kwargs)}", lambda: store.count(**kwargs))
        timed("counts_by_status_ms", store.counts_by_status)
        timed("claim_next_ms", store.claim_next)
        store.close()
    text = json.dumps(results, indent=1)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
