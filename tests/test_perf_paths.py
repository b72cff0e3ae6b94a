"""Issue 7's fast paths on the tiny models (CPU, no timing asserted): placement policies, --compile,
the runner's background PNG writer, and the GPU benchmark's --tiny-smoke.

On a CPU device `--offload cpu|sequential` are accepted and change nothing (every weight already lives
in host memory); the tests force the policy's code path on CPU to check it leaves images unchanged.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vlbench.engine import models as models_mod
from vlbench.engine.engine import Engine, Reference
from vlbench.engine.models import Models
from vlbench.modelspec import ModelSpec
from vlbench.recipe import Recipe
from vlbench.errors import UserError
from vlbench.experiments.results import ResultsLog
from vlbench.experiments.runner import run_experiment
from vlbench.experiments.spec import load_type

PROMPT = "a red square"
SMALL = {"steps": 2, "width": 64, "height": 64}
BOTH = Recipe(alpha=0.5, tokens="full", **SMALL)  # Qwen3-4B and Qwen3-VL both run
ROOT = Path(__file__).parents[1]


def _spec(tiny_dirs, **kw) -> ModelSpec:
    return ModelSpec(zimage=str(tiny_dirs.zimage), vl=str(tiny_dirs.vl), device="cpu", dtype="fp32", **kw)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- placement policies
@pytest.mark.parametrize("policy", ["cpu", "sequential"])
def test_offload_on_a_cpu_device_changes_nothing(tiny_dirs, engine, ref_image, policy):
    spec = _spec(tiny_dirs, offload=policy)
    assert spec.resolved_offload() == "none"  # documented: nothing to offload to
    models = Models(spec)
    assert models.offload == "none"
    ref = Reference.open(ref_image)
    got = Engine(models).run(BOTH, PROMPT, [ref])
    want = engine.run(BOTH, PROMPT, [ref])
    assert np.array_equal(np.asarray(got.image), np.asarray(want.image))
    assert models.moves == []


@pytest.mark.parametrize("policy", ["cpu", "sequential"])
def test_offload_code_path_moves_the_idle_encoder_and_keeps_images(tiny_dirs, engine, ref_image, policy):
    """Forced on CPU: the encoders take turns (VL, then Qwen3-4B, then neither for the DiT); same images."""
    models = Models(_spec(tiny_dirs))
    models.offload = policy
    eng = Engine(models)
    ref = Reference.open(ref_image)
    first = eng.run(BOTH, PROMPT, [ref])
    assert models.moves and [m[:2] for m in models.moves] == [("vl", "host"), ("text_encoder", "host")]
    second = eng.run(BOTH.replace(seed=1), PROMPT, [ref])  # conditioning cached: no encoder runs, no moves
    assert len(models.moves) == 2
    want = engine.run(BOTH, PROMPT, [ref])
    assert np.array_equal(np.asarray(first.image), np.asarray(want.image))
    assert second.image.size == want.image.size
    models.vl  # the VL comes back when it is needed, and Qwen3-4B leaves
    assert [m[:2] for m in models.moves[2:]] == [("vl", "device")]
    models.text_pipe
    assert [m[:2] for m in models.moves[3:]] == [("vl", "host"), ("text_encoder", "device")]
    other = "a blue circle"  # both encoders run again after their round trips: still the same numbers
    got = eng.run(BOTH, other, [ref])
    assert np.array_equal(np.asarray(got.image), np.asarray(engine.run(BOTH, other, [ref]).image))
    assert models._where == {"vl": "host", "text_encoder": "host"}


def test_unknown_offload_and_compile_with_sequential_are_one_line_errors(tiny_dirs):
    from vlbench.cli.common import flag_name

    with pytest.raises(UserError) as exc:
        _spec(tiny_dirs, offload="disk")
    assert exc.value.render(flag_name).startswith("--offload disk: unknown")
    with pytest.raises(UserError) as exc:
        _spec(tiny_dirs, offload="sequential", compile=True)
    assert exc.value.render(flag_name).startswith("--compile: cannot be combined with offload sequential")
    assert "\n" not in str(exc.value)


def test_cli_takes_offload_and_compile_flags(tiny_dirs, tmp_path, ref_image, capsys):
    from vlbench.cli import build_parser, main
    from vlbench.cli.common import model_spec

    args = build_parser().parse_args(["generate", "--tiny", "--offload", "cpu", "--compile", "--prompt", PROMPT,
                                      "--out", str(tmp_path / "a.png")])
    spec = model_spec(args)
    assert (spec.offload, spec.compile) == ("cpu", True)
    args = build_parser().parse_args(["generate", "--tiny", "--offload", "disk", "--prompt", PROMPT, "--out", "x.png"])
    with pytest.raises(UserError, match="offload disk: unknown policy"):
        model_spec(args)
    out_none, out_seq = tmp_path / "none.png", tmp_path / "seq.png"
    common = ["generate", "--tiny", "--device", "cpu", "--dtype", "fp32", "--image", str(ref_image),
              "--prompt", PROMPT, "--alpha", "0.5", "--width", "64", "--height", "64", "--steps", "2"]
    assert main([*common, "--out", str(out_none)]) == 0
    assert main([*common, "--offload", "sequential", "--out", str(out_seq)]) == 0
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(out_none)), np.asarray(Image.open(out_seq)))


# ---------------------------------------------------------------- --compile
def test_compile_keeps_images_and_stops_recompiling_after_two_caption_lengths(tiny_dirs, monkeypatch):
    """dynamo's `eager` backend: the same graphs and guards as inductor, without code generation."""
    import torch._dynamo

    from vlbench.engine.generate import generate

    monkeypatch.setattr(models_mod.loading, "COMPILE_OPTIONS", {**models_mod.COMPILE_OPTIONS, "backend": "eager"})
    torch._dynamo.reset()
    compiled = Models(_spec(tiny_dirs, compile=True))
    eager = Models(_spec(tiny_dirs))
    try:
        assert compiled.pipe is not None and compiled.compiled
        budget, width = compiled.caption_budget, compiled.caption_width
        g = torch.Generator().manual_seed(0)
        new_graphs = []
        for length in (32, 77, 200, 150, 64):  # mixed lengths, as a sweep has (tiny budget: 224)
            emb = torch.randn(length, width, generator=g)
            before = models_mod.compiled_graphs()
            a = generate(compiled.pipe, emb, seed=0, budget=budget, output_type="pt", **SMALL, guidance=0.0)
            new_graphs.append(models_mod.compiled_graphs() - before)
            b = generate(eager.pipe, emb, seed=0, budget=budget, output_type="pt", **SMALL, guidance=0.0)
            assert torch.equal(a, b)
        assert new_graphs[0] > 0 and sum(new_graphs[2:]) == 0, new_graphs
    finally:
        compiled.uncompile_dit()
    assert not compiled.compiled


# ---------------------------------------------------------------- the runner's background PNG writer
def _experiment():
    experiment = load_type("token_sweep")
    return experiment, experiment.recipes(overrides=SMALL)


def test_pngs_are_written_off_the_runner_thread_and_every_row_finds_its_png(engine, tmp_path, ref_image, monkeypatch):
    import vlbench.pngs as gen  # write_run_png (the runner's one PNG writer) calls pngs.write_png
    from vlbench.pngs import read_png_metadata

    experiment, recipes = _experiment()
    out = tmp_path / "out"
    threads, real_save, real_append = [], gen.write_png, ResultsLog.append

    def slow_save(path, data):
        threads.append(threading.current_thread().name)
        time.sleep(0.05)  # a slow disk: the row must still wait for the file
        return real_save(path, data)

    def checked_append(self, row):
        if row["status"] == "done":
            assert (out / row["image"]).is_file(), "a row was appended before its PNG was on disk"
        return real_append(self, row)

    monkeypatch.setattr(gen, "write_png", slow_save)
    monkeypatch.setattr(ResultsLog, "append", checked_append)
    summary = run_experiment(Engine(engine.models), experiment, recipes, [Reference.open(ref_image)], [PROMPT], out)
    assert summary.done == len(recipes) and summary.failed == 0
    assert threads and all(name.startswith("vlbench-png") for name in threads)
    rows = _rows(out)
    assert [r["name"] for r in rows] == [r.name for r in recipes]  # job order kept
    for row in rows:
        meta = read_png_metadata(out / row["image"])
        assert meta["key"] == row["key"]


def test_background_writer_gives_the_same_images_as_a_direct_save(engine, tmp_path, ref_image):
    from PIL import Image

    experiment, recipes = _experiment()
    ref = Reference.open(ref_image)
    out = tmp_path / "out"
    run_experiment(Engine(engine.models), experiment, recipes[:2], [ref], [PROMPT], out)
    for row, named in zip(_rows(out), recipes[:2]):
        want = engine.run(named.recipe, PROMPT, [ref]).image
        assert np.array_equal(np.asarray(Image.open(out / row["image"])), np.asarray(want))


def test_ctrl_c_in_a_generation_keeps_the_previous_job_and_resumes(engine, tmp_path, ref_image):
    """Interrupted while job 3 generates: job 2's PNG (in flight) is finished and its row kept."""
    experiment, recipes = _experiment()
    refs, out = [Reference.open(ref_image)], tmp_path / "out"
    eng = Engine(engine.models)
    calls = {"n": 0}
    real_run = eng.run

    def run(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_run(*a, **k)

    eng.run = run
    with pytest.raises(KeyboardInterrupt):
        run_experiment(eng, experiment, recipes, refs, [PROMPT], out)
    rows = _rows(out)
    assert len(rows) == 2 and all((out / r["image"]).is_file() for r in rows)
    assert not list((out / "images").glob(".*.tmp"))
    summary = run_experiment(Engine(engine.models), experiment, recipes, refs, [PROMPT], out)
    assert (summary.skipped, summary.done) == (2, len(recipes) - 2)
    rows = _rows(out)
    assert len({r["key"] for r in rows}) == len(rows) == len(recipes)


def test_a_failed_png_write_leaves_no_row_for_it(engine, tmp_path, ref_image, monkeypatch):
    import vlbench.pngs as gen  # write_run_png (the runner's one PNG writer) calls pngs.write_png

    experiment, recipes = _experiment()
    refs, out = [Reference.open(ref_image)], tmp_path / "out"
    real_save, count = gen.write_png, {"n": 0}

    def failing_save(path, data):
        count["n"] += 1
        if count["n"] == 2:
            raise OSError(28, "No space left on device")
        return real_save(path, data)

    monkeypatch.setattr(gen, "write_png", failing_save)
    with pytest.raises(OSError, match="No space left"):
        run_experiment(Engine(engine.models), experiment, recipes, refs, [PROMPT], out)
    rows = _rows(out)
    assert len(rows) == 1 and (out / rows[0]["image"]).is_file()
    monkeypatch.setattr(gen, "write_png", real_save)
    summary = run_experiment(Engine(engine.models), experiment, recipes, refs, [PROMPT], out)
    assert (summary.skipped, summary.done) == (1, len(recipes) - 1)


def test_run_info_records_placement(engine, tmp_path, ref_image):
    experiment, recipes = _experiment()
    out = tmp_path / "out"
    run_experiment(Engine(engine.models), experiment, recipes[:1], [Reference.open(ref_image)], [PROMPT], out)
    models = json.loads((out / "run.json").read_text())["models"]
    assert (models["offload"], models["compile"]) == ("none", False)


# ---------------------------------------------------------------- the GPU benchmark's smoke
def test_gpu_bench_tiny_smoke_runs(tiny_dirs, tmp_path):  # tiny_dirs: VLBENCH_CACHE_DIR's tiny models, built once
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--tiny-smoke", "--out", str(out),
                           "--workdir", str(tmp_path / "work"), "--sections", "compile,offload,sweep",
                           "--compile-variants", "dynamic"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_bench.json").read_text())
    assert result["errors"] == {}
    assert result["compile"]["dynamic"]["graphs_after_first_two_lengths"] == 0
    assert result["sweep"]["done"] == result["sweep"]["jobs"] > 0
