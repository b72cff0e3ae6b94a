#!/usr/bin/env python3
"""Issue 29: which Optuna storage holds under concurrent writers: SQLite (RDBStorage) or JournalStorage with a
file backend. CPU only, no model.

W writer processes (spawned, each with its own storage object, as W search processes or W hosts on a shared
folder would have) share one study; each runs T trials of what `vlbench search` does per trial: ask under a
fresh seeded NSGA-II sampler, suggest 3 parameters, set a ~1 KB user attribute (the trial's account), set a
constraint, tell 2 values; `--work-ms` of sleep stands for the trial's images (0: storage alone, the worst case).

Per (backend, W): wall seconds (from the common start, after imports, to the last tell), trials stored, trials/s,
the errors the writers raised (count and the first one), whether the stored trial numbers are exactly 0..W*T-1
(nothing lost, nothing doubled) and the read time of the whole study at the end (what trials.jsonl and
optuna-dashboard read).

    PYTHONPATH=src python3 benchmarks/study_storage.py --writers 1,2,4,8 --trials 40 --out /tmp/ss
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path


def storage_for(kind: str, path: Path):
    if kind == "sqlite":
        return f"sqlite:///{path / 'study.db'}"
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(path / "study.log")))


def writer(kind: str, path: str, index: int, trials: int, work_ms: float, queue, barrier) -> None:
    errors, done, start = [], 0, None
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        study = optuna.load_study(study_name="s", storage=storage_for(kind, Path(path)))
        barrier.wait()  # every writer imported and connected: they start together
        start = time.time()
        for k in range(trials):
            try:
                study.sampler = optuna.samplers.NSGAIISampler(seed=index * 100_003 + k, population_size=10)
                trial = study.ask()
                x = trial.suggest_float("alpha", 0.0, 1.0)
                y = trial.suggest_int("layer", -12, -2)
                z = trial.suggest_categorical("policy", ["attend", "split"])
                if work_ms:
                    time.sleep(work_ms / 1000)
                trial.set_user_attr("vlbench", {"folder": f"trials/t{trial.number:04d}", "params": [x, y, z],
                                                "pad": "x" * 900})
                trial.set_constraint("alpha <= 0.5", x - 0.5)  # as the search records a constraint
                study.tell(trial, [x + y, -x])
                done += 1
            except Exception as exc:  # noqa: BLE001 — counted, the writer goes on
                errors.append(f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}")
    except Exception:  # noqa: BLE001
        errors.append(traceback.format_exc(limit=2).splitlines()[-1])
    queue.put({"index": index, "done": done, "errors": errors, "start": start, "end": time.time()})


def measure(kind: str, writers: int, trials: int, work_ms: float) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        optuna.create_study(study_name="s", storage=storage_for(kind, Path(tmp)), directions=["minimize"] * 2)
        ctx = mp.get_context("spawn")
        queue, barrier = ctx.Queue(), ctx.Barrier(writers)
        procs = [ctx.Process(target=writer, args=(kind, tmp, i, trials, work_ms, queue, barrier))
                 for i in range(writers)]
        for p in procs:
            p.start()
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
        starts = [r["start"] for r in results if r["start"] is not None]
        wall = max(r["end"] for r in results) - min(starts) if starts else float("nan")
        t0 = time.perf_counter()
        stored = optuna.load_study(study_name="s", storage=storage_for(kind, Path(tmp))).get_trials(deepcopy=False)
        read_s = time.perf_counter() - t0
        errors = [e for r in results for e in r["errors"]]
        numbers = sorted(t.number for t in stored)
        complete = sum(t.state.name == "COMPLETE" for t in stored)
        return {"backend": kind, "writers": writers, "trials_each": trials, "work_ms": work_ms,
                "wall_s": round(wall, 3), "stored": len(stored), "complete": complete,
                "trials_per_s": round(complete / wall, 2), "errors": len(errors),
                "first_error": errors[0] if errors else None,
                "numbers_exact": numbers == list(range(len(stored))) and len(stored) == writers * trials,
                "read_all_s": round(read_s, 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writers", default="1,2,4,8", help="comma list of W")
    p.add_argument("--trials", type=int, default=40, help="T: trials per writer")
    p.add_argument("--work-ms", type=float, default=0.0, help="sleep per trial standing for its images")
    p.add_argument("--backends", default="sqlite,journal")
    p.add_argument("--out", default=os.environ.get("OUT") or "/tmp/study_storage")
    args = p.parse_args()
    import optuna
    import sqlalchemy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    rows = []
    for kind in args.backends.split(","):
        for w in [int(x) for x in args.writers.split(",")]:
            row = measure(kind, w, args.trials, args.work_ms)
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {"benchmark": "study_storage", "commit": commit, "host": platform.node(), "cpus": os.cpu_count(),
              "python": platform.python_version(), "optuna": optuna.__version__, "sqlalchemy": sqlalchemy.__version__,
              "rows": rows}
    (out / "study_storage.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
