"""--batch N (issue 28): jobs of one shape share a DiT call; each image equals its batch-1 image within a stated
tolerance (same seed, whatever batch it lands in); records say batched and the batch size; rows stay one per image;
resume works.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlbench.cli import main
from vlbench.engine.batching import Item, batch_key, run_batch
from vlbench.recipe import Recipe

# Largest |difference| of a batched image's 8-bit pixels from the batch-1 image of the same job (tiny models, fp32
# on the CPU). Measured: 0 for most images, 1 of 255 at a few pixels (mean 8e-5) when a batch mixes caption
# lengths: the DiT masks the shorter captions' padding and reduces in another order.
MAX_PIXEL_DIFF = 2
MEAN_PIXEL_DIFF = 0.01
SMALL = dict(width=64, height=64, steps=2)


def pixels(image):
    return np.asarray(image).astype(int)


def close(a, b) -> bool:
    d = np.abs(pixels(a) - pixels(b))
    return d.max() <= MAX_PIXEL_DIFF and d.mean() <= MEAN_PIXEL_DIFF


@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_each_batched_image_is_its_batch_1_image(engine, refs, guidance):
    jobs = [(0, "full", "a red fox"), (1, "image", "a red fox"),
            (2, "full", "a much longer prompt about a lighthouse on a rocky coast at dusk"), (0, "full", "a red fox")]
    items = [Item(Recipe(seed=s, tokens=t, guidance=guidance, **SMALL), p, refs) for s, t, p in jobs]
    results = run_batch(engine, items)
    lengths = {int(r.conditioning.embeds.shape[0]) for r in results}
    assert len(lengths) == 3  # the batch mixes caption lengths
    for position, (item, result) in enumerate(zip(items, results)):
        assert result.batch == {"size": 4, "position": position}
        assert result.timings["batch_generation"] == pytest.approx(4 * result.timings["generation"])
        alone = engine.run(item.recipe, item.prompt, item.refs).image
        assert close(result.image, alone)
    assert pixels(results[0].image).tolist() == pixels(results[3].image).tolist()  # same job, same batch
    assert not close(results[0].image, results[1].image)  # different seeds stay different


def test_batch_keys_split_what_one_call_cannot_share():
    base = Recipe(**SMALL)
    assert batch_key(base) == batch_key(Recipe(seed=5, tokens="image", **SMALL))
    assert batch_key(base) != batch_key(Recipe(width=128, height=64, steps=2))
    assert batch_key(base) != batch_key(Recipe(width=64, height=64, steps=3))
    assert batch_key(Recipe(strength=0.5, **SMALL)) is None  # img2img runs alone
    assert batch_key(Recipe(schedule="0:vl, 1:qwen3", **SMALL)) is None


def test_batch_groups_are_consecutive_runs_of_one_shape():
    from types import SimpleNamespace

    from vlbench.experiments.runner import batch_groups

    recipes = [Recipe(seed=0, **SMALL), Recipe(seed=1, **SMALL), Recipe(seed=2, **SMALL), Recipe(strength=.5, **SMALL),
               Recipe(seed=3, **SMALL), Recipe(width=128, height=64, steps=2), Recipe(seed=4, **SMALL)]
    jobs = [SimpleNamespace(recipe=r) for r in recipes]
    assert batch_groups(jobs, 2) == [[0, 1], [2], [3], [4], [5], [6]]
    assert batch_groups(jobs, 4) == [[0, 1, 2], [3], [4], [5], [6]]
    assert batch_groups(jobs, 1) == [[i] for i in range(7)]


def _rows(folder):
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]


def test_cli_run_batch_records_each_image_once_and_resumes(tiny_dirs, tmp_path, ref_image, capsys):
    kind = tmp_path / "two.toml"
    kind.write_text('name = "two"\ndescription = "d"\nquestion = "q"\n\n[base]\nalpha = 1.0\n\n'
                    '[[configs]]\nname = "full"\ntokens = "full"\n\n[[configs]]\nname = "image"\ntokens = "image"\n')
    common = ["run", "--experiment", str(kind), "--tiny", "--device", "cpu", "--dtype", "fp32", "--seeds", "0,1,2",
              "--steps", "2", "--width", "64", "--height", "64", "--image", str(ref_image), "--prompt", "a cat",
              "--no-store", "--no-diagnostics"]
    batched, single = tmp_path / "b", tmp_path / "s"
    assert main([*common, "--output-dir", str(batched), "--batch", "4", "--limit", "5"]) == 0, capsys.readouterr().err
    assert len(_rows(batched)) == 5
    assert main([*common, "--output-dir", str(batched), "--batch", "4"]) == 0, capsys.readouterr().err  # resumes
    rows = _rows(batched)
    assert len(rows) == 6 and len({r["key"] for r in rows}) == 6
    assert [r["environment"]["batch"]["size"] for r in rows] == [4, 4, 4, 4, 1, 1]
    assert main([*common, "--output-dir", str(single)]) == 0, capsys.readouterr().err
    alone = {r["key"]: r for r in _rows(single)}
    assert all("batch" not in r["environment"] for r in alone.values())
    from PIL import Image

    for row in rows:
        assert close(Image.open(batched / row["image"]), Image.open(single / alone[row["key"]]["image"]))


def test_batch_must_be_positive(tiny_dirs, tmp_path, ref_image, capsys):
    code = main(["run", "--experiment", "token_sweep", "--tiny", "--image", str(ref_image), "--prompt", "p",
                 "--output-dir", str(tmp_path / "o"), "--batch", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--batch 0" in err and "Traceback" not in err, err


SPACE = """
name = "tiny_batch_search"
seeds = [0]
objectives = ["siglip"]
metrics = ["siglip"]

[fixed]
steps = 2
width = 64
height = 64
alpha = 1.0

[space]
layer = [-1, -2, -3]
tokens = ["full", "image"]
"""


def test_search_batch_asks_trials_together_and_each_trial_is_its_batch_1_image(engine, tiny_dirs, tmp_path,
                                                                                 ref_image, capsys):
    from PIL import Image

    from vlbench.engine.engine import Reference

    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    out = tmp_path / "search"
    code = main(["search", "--output-dir", str(out), "--tiny", "--device", "cpu", "--space", str(space), "--image",
                 str(ref_image), "--prompt", "a red square", "--trials", "3", "--batch", "2", "--no-store"])
    assert code == 0, capsys.readouterr().err
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [t["number"] for t in trials] == [0, 1, 2] and {t["state"] for t in trials} == {"complete"}
    sizes = []
    for t in trials:
        rows = _rows(out / t["folder"])
        assert len(rows) == 1
        sizes.append(rows[0]["environment"]["batch"]["size"])
        alone = engine.run(Recipe.from_dict(rows[0]["recipe"]), "a red square", [Reference.open(ref_image)]).image
        assert close(Image.open(out / t["folder"] / rows[0]["image"]), alone)
    assert sizes == [2, 2, 1]  # trials 0 and 1 together; the third asked alone (--trials 3)


def test_a_job_that_fails_in_a_batch_fails_alone_and_the_others_are_done(engine, refs):
    """A caption over the DiT's budget fails the shared call: every job runs again alone, each classified."""
    from vlbench.jobs import execute_batch
    from vlbench.records import RunRecord

    ok = RunRecord(prompt="a red fox", recipe=Recipe(seed=0, **SMALL).to_dict())
    too_long = RunRecord(prompt=" ".join(["lighthouse"] * 400), recipe=Recipe(seed=1, **SMALL).to_dict())
    outcomes = execute_batch(engine, [ok, too_long], [refs, refs])
    assert outcomes[0].record.status == "done" and outcomes[0].record.environment["batch"] == {"size": 1,
                                                                                                "position": 0}
    assert outcomes[1].record.status == "failed" and outcomes[1].failure.kind == "input"
    assert "caption budget" in outcomes[1].failure.reason


def test_under_buckets_a_short_batch_is_padded_to_the_full_size_and_keeps_its_images(engine, refs):
    """--fast's static graphs are per batch size: a short batch runs at the full size (its last image repeated,
    the extras discarded), and its images stay their batch-1 images."""
    from vlbench.engine import buckets

    items = [Item(Recipe(seed=s, **SMALL), "a red fox", refs) for s in (0, 1)]
    transformer = engine.models.pipe.transformer
    buckets.install(transformer, engine.models.caption_budget)
    try:
        results = run_batch(engine, items, pad_to=4)
    finally:
        buckets.uninstall(transformer)
    assert [r.batch for r in results] == [{"size": 2, "position": 0, "padded_to": 4},
                                          {"size": 2, "position": 1, "padded_to": 4}]
    for item, result in zip(items, results):
        assert close(result.image, engine.run(item.recipe, item.prompt, item.refs).image)


def test_search_batch_on_ray_is_refused_in_one_line(tiny_dirs, tmp_path, ref_image, capsys):
    """A search batches its trials in this process's engine; with --executor ray the flag would do nothing."""
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    code = main(["search", "--space", str(space), "--tiny", "--image", str(ref_image), "--prompt", "p",
                 "--output-dir", str(tmp_path / "s"), "--trials", "2", "--batch", "4", "--executor", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and "--batch 4" in err and "local executor" in err and "Traceback" not in err, err
