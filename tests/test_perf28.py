"""benchmarks/perf28.py (issue 28's GPU benchmark) runs every section on the tiny models on the CPU (--tiny-smoke),
and its results name the card, the commit and the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_perf28_tiny_smoke_runs_every_section(tiny_dirs, tmp_path):  # tiny_dirs: its VLBENCH_CACHE_DIR, built once
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "VLBENCH_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "perf28.py"), "--tiny-smoke", "--reps", "1",
                           "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "work"), "--commit", "abc123"],
                          capture_output=True, text=True, timeout=2400, env=env)
    result = json.loads((tmp_path / "out" / "perf28.json").read_text())
    assert proc.returncode == 0 and not result["errors"], (proc.stdout[-3000:], result["errors"])
    assert result["card"] == "cpu" and result["commit"] == "abc123" and "perf28.py" in result["command"]
    plain = result["plain"]
    for label in ("eager", "compiled_vlbench", "compiled_diffusers_way"):
        for n in (32, 150):
            assert plain[label][f"seconds_{n}"]["vlbench"]["n"] == 1
            assert plain[label][f"pixels_{n}_vs_plain"]["identical"]  # fp32, the same graphs: no tax, no drift
    fast = result["fast"]
    assert fast["sweep_summary"]["lengths"] == 5 and fast["sweep_summary"]["buckets_used"] == 5
    assert fast["sweep_summary"]["graphs_in_sweep"] <= 1 + 2 * 5
    assert fast["settings"]["attention"] == "sdpa"  # the one mask-taking kernel on the CPU
    assert fast["settings"]["quantize"] == "none" and fast["profile"]["top_ms"]  # no fp8 on the CPU
    assert result["batch"]["batched_vs_batch1_pixels"]["max_abs"] <= 2
    sweep = result["sweep"]
    assert sweep["default"]["images"] == sweep["fast_batch"]["images"] == 20
    assert result["cold"]["rc"] == 0 and result["cold"]["timings"]["generation"] > 0
    assert result["cold"]["plain_diffusers_cold"]["rc"] == 0  # the same cold work, transformers + diffusers direct
    assert result["cold"]["plain_diffusers_cold"]["timings"]["generation"] > 0
