"""Issue 29: benchmarks/scaleout.py's --tiny-smoke mode (CPU actors, tiny models): it runs the sweep and the
search phases at G = 1 and 2 through the Ray executor, and its results file names the card, the count and the
commit and holds efficiency = throughput(G) / (G × throughput(1)) computed from its own throughputs."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.xdist_group("ray")  # with -n: with the other Ray tests, one Ray instance at a time


def test_the_scaleout_benchmark_smoke_writes_throughput_and_efficiency_per_g(tiny_dirs, tmp_path, monkeypatch,
                                                                             capsys):
    ray = pytest.importorskip("ray")
    pytest.importorskip("optuna")
    # one timed image and one timed trial per actor (the smoke's default is 2): every phase, G and number the file
    # holds is still computed and checked, from fewer jobs. The script's main() runs in this process (its command
    # line parsed as from the shell): no second import of torch, transformers and diffusers
    spec = importlib.util.spec_from_file_location("scaleout_under_test", ROOT / "benchmarks" / "scaleout.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts benchmarks/ first
    environ, modules = dict(os.environ), set(sys.modules)
    try:
        spec.loader.exec_module(bench)
        assert not ray.is_initialized()  # the script starts (and ends) its own local instance
        rc = bench.main(["--tiny-smoke", "--commit", "abc1234", "--images-per-gpu", "1", "--trials-per-gpu", "1",
                         "--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "work")])
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(environ)  # the script sets PYTHONPATH and data folders for its Ray workers
        for name in ("gpu_bench", "search_gpu"):  # the benchmarks it imports by their bare names
            if name not in modules:
                sys.modules.pop(name, None)
    assert rc == 0, capsys.readouterr().out[-5000:]
    (path,) = (tmp_path / "out").glob("*.json")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_2xcpu_scaleout_abc1234\.json", path.name), path.name
    result = json.loads(path.read_text())
    assert (result["card"], result["gs"], result["commit"], result["errors"]) == ("cpu", [1, 2], "abc1234", {})
    assert result["meets_target"] is None  # CPU actors on shared cores: no claim about the target
    settings = result["settings"]
    assert (settings["images_per_gpu"], settings["trials_per_gpu"]) == (1, 1)
    assert settings["actors"] == "2 started once; each G runs on the first G of them, the rest idle"
    for g in (1, 2):
        row = result["by_g"][str(g)]
        assert len(row["actors"]) == g
        images, search = row["images"], row["search"]
        assert images["images"] == settings["images_per_gpu"] * g and images["failed"] == 0
        assert sum(images["per_actor"]) == images["images"]
        assert search["trials"] == settings["trials_per_gpu"] * g and search["images"] == search["trials"]
        assert search["trials_per_hour"] == pytest.approx(search["trials"] / search["seconds"] * 3600, rel=1e-3)
        assert images["images_per_hour"] == pytest.approx(images["images"] / images["seconds"] * 3600, rel=1e-3)
    for key, effs in result["efficiency"].items():  # efficiency(G) = thr(G) / (G × thr(1)), from the file's numbers
        phase, metric = key.split(".")
        thr = {g: result["by_g"][g][phase][metric] for g in ("1", "2")}
        assert effs["1"] == pytest.approx(1.0)
        assert effs["2"] == pytest.approx(thr["2"] / (2 * thr["1"]), rel=1e-3)
