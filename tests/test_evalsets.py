"""Evaluation sets: shipped prompts, procedural references made by code, and users' own folders, usable as
`vlbench run --experiment X --eval-set NAME_OR_DIR`."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image
from vlbench.errors import UserError


def test_the_prompt_set_spans_subjects_styles_and_compositions():
    from vlbench.evalsets import GROUPS, prompt_groups

    groups = prompt_groups()
    assert list(groups) == list(GROUPS) and all(len(v) == 12 for v in groups.values())
    every = [p for v in groups.values() for p in v]
    assert len(set(every)) == 36 and all(10 < len(p) < 120 and p == p.strip() for p in every)


def test_named_sets_take_every_group_and_the_first_references(tmp_path):
    from vlbench.evalsets import load_eval_set, prompt_groups
    from vlbench.evalsets.references import REFERENCES

    groups = prompt_groups()
    quick = load_eval_set("quick", root=tmp_path)
    assert quick.prompts == [groups["subjects"][0], groups["styles"][0], groups["compositions"][0]]
    assert [p.stem for p in quick.references] == list(REFERENCES)[:2] and quick.seeds == (0, 1, 2, 3)
    default = load_eval_set("default", root=tmp_path)
    assert len(default.prompts) == 12 and len(default.references) == 6
    full = load_eval_set("full", root=tmp_path)
    assert len(full.prompts) == 36 and len(full.references) == 12 == len(REFERENCES)


def test_procedural_references_are_deterministic_and_distinct(tmp_path):
    from PIL import Image

    from vlbench.evalsets import ensure_references
    from vlbench.evalsets.references import REFERENCES, render

    arrays = {name: render(name) for name in REFERENCES}
    for name, img in arrays.items():
        assert img.shape == (512, 512, 3) and img.dtype == np.uint8
        assert np.array_equal(img, render(name)), name
        assert len(np.unique(img.reshape(-1, 3), axis=0)) >= 2 and img.std() > 10, f"{name} is flat"
    digests = {hashlib.sha256(a.tobytes()).hexdigest() for a in arrays.values()}
    assert len(digests) == len(REFERENCES)
    a = ensure_references(["marble", "voronoi-glass"], tmp_path / "a")
    b = ensure_references(["marble", "voronoi-glass"], tmp_path / "b")
    for pa, pb in zip(a, b):
        assert pa.read_bytes() == pb.read_bytes()
        assert np.array_equal(np.asarray(Image.open(pa).convert("RGB")), arrays[pa.stem])
    stamp = a[0].stat().st_mtime_ns
    assert ensure_references(["marble"], tmp_path / "a")[0].stat().st_mtime_ns == stamp  # rendered once, then reused


def test_a_fresh_process_renders_the_same_pixels_without_torch(tmp_path):
    code = ("import sys, hashlib; from vlbench.evalsets.references import render; "
            "print(hashlib.sha256(render('clouds').tobytes()).hexdigest()); "
            "from vlbench.evalsets import load_eval_set; load_eval_set('quick', root=sys.argv[1]); "
            "assert 'torch' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    from vlbench.evalsets.references import render

    assert done.stdout.strip() == hashlib.sha256(render("clouds").tobytes()).hexdigest()


def test_a_users_folder_is_a_set(tmp_path):
    from vlbench.evalsets import load_eval_set

    folder = tmp_path / "mine"
    make_image(folder / "b.png")
    make_image(folder / "a.jpg")
    (folder / "notes.md").write_text("not an image")
    (folder / "prompts.txt").write_text("# my prompts\na fox\n\n  a lighthouse  \n")
    es = load_eval_set(str(folder))
    assert [p.name for p in es.references] == ["a.jpg", "b.png"] and es.prompts == ["a fox", "a lighthouse"]
    (folder / "prompts.txt").unlink()
    assert load_eval_set(str(folder)).prompts == []


def test_bad_eval_sets_are_one_line(tmp_path):
    from vlbench.cli.common import flag_name
    from vlbench.evalsets import load_eval_set

    with pytest.raises(UserError) as err:
        load_eval_set("nonesuch")
    assert err.value.render(flag_name).startswith("--eval-set nonesuch: no such set or folder; name one of quick")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no images"):
        load_eval_set(str(tmp_path / "empty"))
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(UserError, match="is a file"):
        load_eval_set(str(tmp_path / "f.png"))


def _run(argv: list[str]) -> int:
    from vlbench.cli import main

    return main(argv)


def test_run_with_an_eval_set_uses_its_references_prompts_and_four_seeds(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "out"
    examples = Path(__file__).parents[1] / "examples" / "experiments" / "my_layer_pair.toml"
    assert _run(["run", "--experiment", str(examples), "--quick", "--eval-set", "quick", "--output-dir", str(out),
                 "--tiny", "--device", "cpu", "--steps", "2", "--width", "64", "--height", "64", "--limit", "0",
                 "--no-diagnostics"]) == 0
    err = capsys.readouterr().err
    assert "2 references × 3 prompts × 4 seeds" in err
    params = json.loads((out / "run.json").read_text())["invocations"][-1]["parameters"]
    assert params["eval_set"] == "quick" and params["seeds"] == [0, 1, 2, 3] and len(params["prompts"]) == 3


def test_run_with_a_folder_and_its_prompts(tiny_dirs, tmp_path, capsys):
    folder = tmp_path / "refs"
    make_image(folder / "r.png")
    (folder / "prompts.txt").write_text("a red square\n")
    out = tmp_path / "out"
    examples = Path(__file__).parents[1] / "examples" / "experiments" / "my_layer_pair.toml"
    assert _run(["run", "--experiment", str(examples), "--quick", "--eval-set", str(folder), "--seeds", "0,1",
                 "--output-dir", str(out), "--tiny", "--device", "cpu", "--steps", "2", "--width", "64", "--height",
                 "64", "--no-diagnostics"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["prompt"] for r in rows} == {"a red square"} and {r["seed"] for r in rows} == {0, 1}
    (folder / "prompts.txt").unlink()
    capsys.readouterr()
    assert _run(["run", "--experiment", str(examples), "--eval-set", str(folder), "--output-dir", str(out),
                 "--tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlbench: error: --eval-set ") and ": has no prompts.txt and no --prompt was given; add prompts.txt" in err


# ---- the photographs ----
def test_the_photos_set_ships_real_photographs_with_their_licence_and_source():
    """At least six photographs, each with a source and a redistributable licence recorded in photos.toml,
    varied in aspect (square, landscape, portrait) and small enough for the repository."""
    from PIL import Image

    from vlbench.evalsets import PHOTOS_FILE, load_eval_set, photos, prompt_groups

    entries = photos()
    es = load_eval_set("photos")
    assert es.name == "photos" and es.references == [e["path"] for e in entries] and len(entries) >= 6
    assert es.prompts == [p for g in ("subjects", "styles", "compositions") for p in prompt_groups()[g][:4]]
    shapes = set()
    for e in entries:
        assert e["source"] and any(word in e["licence"] for word in ("public domain", "CC0")), e
        with Image.open(e["path"]) as im:
            assert im.mode == "RGB" and max(im.size) <= 512
            w, h = im.size
            shapes.add("square" if abs(w - h) <= 0.15 * max(w, h) else "landscape" if w > h else "portrait")
    assert shapes == {"square", "landscape", "portrait"}
    total = sum(e["path"].stat().st_size for e in entries)
    assert total < 1.5e6 and len({e["path"].read_bytes() for e in entries}) == len(entries)
    assert "photos:" in "\n".join(__import__("vlbench.evalsets", fromlist=["describe"]).describe())
    assert PHOTOS_FILE.is_file()


def test_run_with_the_photos_set_on_the_tiny_models(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "out"
    examples = Path(__file__).parents[1] / "examples" / "experiments" / "my_layer_pair.toml"
    assert _run(["run", "--experiment", str(examples), "--quick", "--eval-set", "photos", "--output-dir", str(out),
                 "--tiny", "--device", "cpu", "--steps", "2", "--width", "64", "--height", "64", "--seeds", "0",
                 "--limit", "2", "--no-diagnostics", "--no-store"]) == 0
    err = capsys.readouterr().err
    assert "7 references × 12 prompts × 1 seeds" in err or "7 references × 12 prompts × 1 seed" in err
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    done = [r for r in rows if r["status"] == "done"]
    assert len(done) == 2 and all((out / r["image"]).is_file() for r in done)
    from vlbench.evalsets import photos

    shas = {hashlib.sha256(e["path"].read_bytes()).hexdigest() for e in photos()}
    assert {ref["sha256"] for r in done for ref in r["references"]} <= shas


def test_calibrate_reads_the_photographs_by_default(tiny_dirs, tmp_path):
    """`vlbench calibrate` without --references takes its image-token statistics on the photos set."""
    from safetensors import safe_open

    from vlbench.cli import main
    from vlbench.evalsets import photos

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red fox\na small boat\n")
    out = tmp_path / "stats.safetensors"
    assert main(["calibrate", "--tiny", "--device", "cpu", "--prompts-file", str(prompts), "--out", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        meta = json.loads(f.metadata()["vlbench"])
    assert meta["references"] == [hashlib.sha256(e["path"].read_bytes()).hexdigest() for e in photos()]
