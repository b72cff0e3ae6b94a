"""Issue 25.14: results leave the tool — `vlbench export` (CSV, JSON Lines, Parquet) of a run folder or of the
history, `vlbench generate --from IMAGE.png` (the recorded recipe, seed, prompt and references, pixel for pixel),
and shell completion."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_image
from vlbench.cli import main
from vlbench.pngs import read_png_metadata
from vlbench.store import Store

SMALL = ["--width", "64", "--height", "48", "--steps", "2"]


@pytest.fixture(scope="module")
def run_folder(tiny_dirs, tmp_path_factory):
    """A scored two-config run folder on the tiny models (its runs also in that test's history)."""
    root = tmp_path_factory.mktemp("export")
    ref = make_image(root / "ref.png")
    out = root / "run"
    os.environ["VLBENCH_DATA_DIR"] = str(root / "data")
    try:
        assert main(["run", "--experiment", str(Path(__file__).parents[1] / "examples" / "experiments" /
                                                "my_layer_pair.toml"), "--quick", "--image", str(ref), "--prompt",
                     "a red fox", "--output-dir", str(out), "--tiny", "--no-diagnostics", *SMALL]) == 0
        assert main(["score", str(out), "--tiny", "--metrics", "siglip,dino", "--no-store"]) == 0
    finally:
        del os.environ["VLBENCH_DATA_DIR"]
    return out


def test_export_a_run_folder_as_csv_and_jsonl(run_folder, tmp_path, capsys):
    from vlbench.experiments.results import ResultsLog, latest_by_key
    from vlbench.metrics.score import load_scores

    assert main(["export", str(run_folder)]) == 0  # CSV on stdout
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    results = latest_by_key(ResultsLog(run_folder / "results.jsonl").read()[0])
    scores = load_scores(run_folder)
    assert len(rows) == len(results) > 1
    for row in rows:
        src = results[row["key"]]
        assert row["prompt"] == "a red fox" and int(row["seed"]) == src["seed"] and row["name"] == src["name"]
        assert int(row["recipe.layer"]) == src["recipe"]["layer"] and int(row["recipe.width"]) == 64
        assert Path(row["image"]).is_file() and Path(row["image"]).resolve() == (run_folder / src["image"]).resolve()
        assert float(row["metric.siglip"]) == pytest.approx(scores[row["key"]]["metrics"]["siglip"], rel=1e-6)
    out = tmp_path / "run.jsonl"
    assert main(["export", str(run_folder), "--out", str(out)]) == 0  # the format from the suffix
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["key"] for r in lines} == {r["key"] for r in rows}
    assert all(isinstance(r["metric.dino"], float) for r in lines)


def test_export_the_history(run_folder, tmp_path, capsys):
    with Store() as store:
        ids = [store.enqueue(f"prompt {i}", [], {"width": 64, "height": 64, "steps": 2, "seed": i}) for i in range(3)]
    assert main(["export", "--history", "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == ids and [r["prompt"] for r in rows] == ["prompt 0", "prompt 1", "prompt 2"]
    assert all(r["status"] == "pending" and r["recipe.width"] == 64 for r in rows)


def test_export_parquet_without_pyarrow_is_one_line(run_folder, tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    assert main(["export", str(run_folder), "--out", str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vlbench: error: --format parquet: needs pyarrow, which is not installed; pip install "
                   "'vlbench[parquet]' (or pyarrow), or use --format csv or jsonl"]
    assert not (tmp_path / "x.parquet").exists()


def test_export_parquet_round_trips(run_folder, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    assert main(["export", str(run_folder), "--out", str(tmp_path / "x.parquet")]) == 0
    assert main(["export", str(run_folder), "--format", "jsonl"]) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert pq.read_table(tmp_path / "x.parquet").to_pylist() == expected


@pytest.mark.parametrize("argv, message", [
    (["export"], "give a run folder or --history"),
    (["export", "nowhere"], "dir nowhere: no such folder"),
    (["export", "--history", "--format", "xlsx"], "--format xlsx: unknown format"),
])
def test_export_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_generate_from_a_png_regenerates_it_pixel_for_pixel(tiny_dirs, tmp_path):
    ref = make_image(tmp_path / "ref.png", size=(80, 64))
    first = tmp_path / "first.png"
    assert main(["generate", "--image", str(ref), "--prompt", "a lighthouse", "--seed", "7", "--alpha", "0.5",
                 "--tiny", *SMALL, "--out", str(first)]) == 0
    again = tmp_path / "again.png"
    assert main(["generate", "--from", str(first), "--tiny", "--out", str(again)]) == 0
    a, b = np.asarray(Image.open(first)), np.asarray(Image.open(again))
    assert a.shape == b.shape == (48, 64, 3) and np.array_equal(a, b)
    meta_a, meta_b = read_png_metadata(first), read_png_metadata(again)
    for field in ("prompt", "recipe", "seed", "references"):
        assert meta_a[field] == meta_b[field], field
    other = tmp_path / "other.png"  # a flag overrides the recorded field
    assert main(["generate", "--from", str(first), "--seed", "8", "--tiny", "--out", str(other)]) == 0
    assert read_png_metadata(other)["recipe"]["seed"] == 8
    assert not np.array_equal(a, np.asarray(Image.open(other)))


def test_generate_from_refuses_a_png_without_a_record_or_a_changed_reference(tiny_dirs, tmp_path, capsys):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (32, 32)).save(plain)
    assert main(["generate", "--from", str(plain), "--tiny", "--out", str(tmp_path / "o.png")]) == 2
    assert "holds no vlbench run record" in capsys.readouterr().err
    ref = make_image(tmp_path / "ref.png")
    first = tmp_path / "first.png"
    assert main(["generate", "--image", str(ref), "--prompt", "a fox", "--tiny", *SMALL, "--out", str(first)]) == 0
    make_image(ref, color=(0, 0, 255))  # the reference changed since
    capsys.readouterr()
    assert main(["generate", "--from", str(first), "--tiny", "--out", str(tmp_path / "o.png")]) == 2
    assert "not the picture" in capsys.readouterr().err


def _complete(script: str, words: list[str]) -> list[str]:
    """What bash offers after `words` (the last one being typed), with the script loaded."""
    cword = len(words) - 1
    array = " ".join(f"'{w}'" for w in words)
    code = f'{script}\nCOMP_WORDS=({array}); COMP_CWORD={cword}; _vlbench; printf "%s\\n" "${{COMPREPLY[@]}}"'
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", code], capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_offers_commands_flags_and_values(capsys):
    from vlbench.cli import COMMANDS

    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert set(_complete(script, ["vlbench", ""])) == {"--debug", *COMMANDS}
    assert _complete(script, ["vlbench", "exp"]) == ["experiments", "export"]
    assert _complete(script, ["vlbench", "export", "--fo"]) == ["--format"]
    assert _complete(script, ["vlbench", "export", "--format", ""]) == ["csv", "jsonl", "parquet"]
    assert "vl_only_vs_qwen3" in _complete(script, ["vlbench", "run", "--experiment", "vl_o"])
    assert "--alpha-policy" in _complete(script, ["vlbench", "generate", "--alpha"])
    assert main(["completion", "zsh"]) == 0
    assert "bashcompinit" in capsys.readouterr().out


def test_json_on_the_commands_that_print_tables(tiny_dirs, tmp_path, capsys):
    """`--json` on experiments, inspect and diagnose (stats had it): the same numbers, machine-readable on stdout."""
    assert main(["experiments", "--json"]) == 0
    types = json.loads(capsys.readouterr().out)
    from vlbench.experiments.spec import builtin_names

    assert sorted(t["name"] for t in types) == sorted(builtin_names())
    first = next(t for t in types if t["name"] == "vl_only_vs_qwen3")
    assert [c["name"] for c in first["configs"]][:2] == ["qwen3_4b", "blend_0.3"] and first["error"] is None
    ref = make_image(tmp_path / "ref.png")
    cond = tmp_path / "cond.safetensors"
    assert main(["embed", "--image", str(ref), "--prompt", "a fox", "--tokens", "text", "--tiny", "--out",
                 str(cond)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(cond), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    from safetensors.torch import load_file

    x = load_file(str(cond))["prompt_embeds"].float()
    assert summary["tokens"] == x.shape[0] and summary["width"] == x.shape[1]
    every = next(g for g in summary["groups"] if g["rows"] == "all")
    assert every["count"] == x.shape[0] and every["max"] == pytest.approx(float(x.max()), rel=1e-6)
    assert main(["diagnose", "--image", str(ref), "--prompt", "a fox", "--layers", "-1,-2", "--tiny",
                 "--json"]) == 0
    diag = json.loads(capsys.readouterr().out)
    assert diag["prompt"] == "a fox" and diag.get("layers")
