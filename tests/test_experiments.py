"""Experiment types and the runner, as specifications, on the tiny models (CPU, 64×64, 2 steps)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_image
from vlbench.analysis.report import write_folder_report
from vlbench.engine.engine import Engine, Reference
from vlbench.recipe import Recipe
from vlbench.errors import UserError
from vlbench.experiments.grid import grid_layout
from vlbench.experiments.results import ResultsLog, validate_row
from vlbench.experiments.runner import run_experiment
from vlbench.experiments.spec import TYPES_DIR, builtin_names, load_type

SMALL = {"steps": 2, "width": 64, "height": 64}
PROMPT = "a red square"
SEED = 7
CUSTOM = Path(__file__).parents[1] / "examples" / "experiments" / "my_layer_pair.toml"

# type -> (configs, configs under --quick)
COUNTS = {
    "vl_only_vs_qwen3": (5, 5), "vl_intra_token_blend": (13, 13), "vl_layer_by_token": (10, 4),
    "vl_double_conditioning": (11, 11), "vl_prompt_variations": (6, 6), "alpha_sweep": (5, 5),
    "layer_sweep": (7, 2), "token_sweep": (6, 6), "normalization_sweep": (4, 4), "mix_policy_sweep": (3, 3),
    "img2img_style": (7, 7), "multi_reference": (3, 3), "schedule_sweep": (11, 4),
    "vl_system_prompt": (6, 3), "vl_guidance_sweep": (7, 2), "vl_grid_positions": (6, 2), "vl_block_sweep": (8, 3),
    "vl_negative": (4, 2),
}
# With one reference and one prompt: distinct (reference, VL text) extractions each type reads.
EXTRACTIONS = {
    "vl_only_vs_qwen3": 1, "vl_intra_token_blend": 1, "vl_layer_by_token": 1, "vl_double_conditioning": 2,
    "vl_prompt_variations": 4, "alpha_sweep": 1, "layer_sweep": 1, "token_sweep": 1, "normalization_sweep": 1,
    "mix_policy_sweep": 1, "img2img_style": 1, "my_layer_pair": 1, "multi_reference": 3, "schedule_sweep": 1,
    "vl_system_prompt": 3, "vl_guidance_sweep": 1, "vl_grid_positions": 1, "vl_block_sweep": 1, "vl_negative": 2,
}
def _recipes(experiment, **kw):
    return experiment.recipes(**kw)  # a renamed or missing Recipe field fails here, loudly


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


# ---- type files ----
def test_every_builtin_type_is_listed():
    assert sorted(builtin_names()) == sorted(COUNTS)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_type_file_parses_with_its_config_counts(name):
    experiment = load_type(name)
    assert experiment.name == name == (TYPES_DIR / f"{name}.toml").stem
    assert experiment.question and experiment.description
    assert (len(experiment.selected()), len(experiment.selected(quick=True))) == COUNTS[name]


@pytest.mark.parametrize("name", sorted(COUNTS) + [str(CUSTOM)])
def test_type_builds_a_recipe_per_config(name):
    experiment = load_type(name)
    full, quick = _recipes(experiment), _recipes(experiment, quick=True, overrides=SMALL)
    assert [r.name for r in full] == [c.name for c in experiment.configs]
    assert len(quick) == len(experiment.selected(quick=True))
    assert all(r.recipe.steps == 2 and r.recipe.width == 64 for r in quick)


def test_quick_drops_layers_never_a_kind_of_config():
    for name in ("vl_layer_by_token", "layer_sweep"):
        experiment = load_type(name)
        kinds = lambda configs: {(c.fields.get("tokens"), c.fields.get("vl_text")) for c in configs}  # noqa: E731
        assert kinds(experiment.selected(quick=True)) == kinds(experiment.selected())
    layers = {c.fields["layer"] for c in load_type("vl_layer_by_token").selected(quick=True)}
    assert layers == {-2, -10}


def test_a_path_to_a_custom_type_file_works_like_a_name():
    experiment = load_type(str(CUSTOM))
    assert experiment.name == "my_layer_pair" and len(experiment.configs) == 4


BAD_FILES = {
    "unknown config key": ('name = "t"\n[[configs]]\nname = "a"\nalpah = 1.0\n', "'alpah'"),
    "unknown base key": ('name = "t"\n[base]\ntokenz = "text"\n[[configs]]\nname = "a"\n', "'tokenz'"),
    "unknown top-level key": ('name = "t"\nconfig = 1\n[[configs]]\nname = "a"\n', "'config'"),
    "bad value": ('name = "t"\n[[configs]]\nname = "a"\nalpha = 2.0\n', "alpha"),
    "bad choice": ('name = "t"\n[[configs]]\nname = "a"\ntokens = "pixels"\n', "tokens"),
    "missing type name": ('[[configs]]\nname = "a"\n', "name"),
    "missing config name": ('name = "t"\n[[configs]]\nalpha = 1.0\n', "name"),
    "duplicate config name": ('name = "t"\n[[configs]]\nname = "a"\n[[configs]]\nname = "a"\n', "'a'"),
    "quick not a boolean": ('name = "t"\n[[configs]]\nname = "a"\nquick = "no"\n', "quick"),
    "no configs": ('name = "t"\n', "configs"),
    "not TOML": ('name = "t\n', "TOML"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_type_file_error_is_one_line_naming_the_file_and_key(case, tmp_path):
    text, key = BAD_FILES[case]
    path = tmp_path / "bad_type.toml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_type(str(path)).recipes()
    message = str(err.value)
    assert "\n" not in message and str(path) in message and key in message, message


# ---- the grid's layout ----
def _row(i, name, sha="r1", prompt="p", seed=0, **recipe):
    base = Recipe(**SMALL).to_dict()
    return {"name": name, "config_index": i, "recipe": {**base, **recipe, "seed": seed},
            "references": [{"path": "ref.png", "sha256": sha}], "prompt": prompt, "seed": seed, "status": "done",
            "image": f"{name}.png"}


def test_grid_is_2d_when_exactly_two_recipe_fields_vary():
    rows = [_row(i, f"{t}_L{l}", tokens=t, layer=l) for i, (t, l) in
            enumerate((t, l) for t in ("image", "text") for l in (-1, -2, -5))]
    layout = grid_layout(rows)
    assert layout.axes == ("tokens", "layer")  # rows: the field with fewer values
    (block,) = layout.blocks
    assert block.cells == {(r, c): 3 * r + c for r in range(2) for c in range(3)}


def test_grid_is_1d_otherwise_and_one_block_per_reference_prompt_seed():
    configs = [dict(alpha=0.0), dict(alpha=1.0, tokens="text"), dict(alpha=1.0, vl_text="none", tokens="image")]
    rows = [_row(i, f"c{i}", sha=sha, seed=seed, **c)
            for sha in ("r1", "r2") for seed in (0, 1) for i, c in enumerate(configs)]
    layout = grid_layout(rows)
    assert layout.axes is None and len(layout.blocks) == 4
    assert all(b.cells.keys() == {(0, 0), (0, 1), (0, 2)} for b in layout.blocks)


def test_grid_gives_every_row_a_cell_even_duplicates_and_failures():
    rows = [_row(0, "a", layer=-1), _row(1, "b", layer=-2), _row(1, "b", layer=-2)]
    rows[1].update(status="failed", image=None, error="boom")
    layout = grid_layout(rows)
    assert layout.assigned() == [0, 1, 2]


def test_the_grid_pastes_each_rows_own_image_and_marks_one_that_does_not_decode(tmp_path):
    """Thumbnails are decoded on threads: each cell must still hold its own row's image, in order, and a damaged
    file must become the red 'image missing' cell, not an error or another row's picture."""
    from vlbench.experiments.grid import BAD, render_grid

    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    rows = [_row(i, f"c{i}", layer=-1 - i) for i in range(len(colours))]
    make_image(tmp_path / "ref.png", size=(64, 64), color=(128, 128, 128))
    for row, colour in zip(rows, colours):
        Image.new("RGB", (64, 64), colour).save(tmp_path / row["image"])
    (tmp_path / rows[2]["image"]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    layout = grid_layout(rows)
    grid = np.asarray(render_grid(rows, tmp_path, layout, cell=64))
    (block,) = layout.blocks
    column = {i: c for (_, c), i in block.cells.items()}
    lefts = {}
    for i, colour in enumerate(colours):
        ys, xs = np.nonzero((grid == colour).all(axis=2))
        if i == 2:
            assert xs.size == 0  # the damaged file's colour is nowhere
            continue
        assert xs.size == 64 * 64 and xs.max() - xs.min() == 63  # one whole 64² thumbnail, once
        lefts[i] = int(xs.min())
    order = sorted(lefts, key=lefts.get)
    assert order == sorted(lefts, key=column.get)  # left to right in the cells' column order
    step = (lefts[order[-1]] - lefts[order[0]]) // (column[order[-1]] - column[order[0]])
    left2 = lefts[order[0]] + (column[2] - column[order[0]]) * step  # where row 2's cell is
    assert (grid[:, left2:left2 + 64] == BAD).all(axis=2).any()  # its red placeholder


# ---- running types end to end ----
@pytest.fixture(scope="module")
def runs(engine, tmp_path_factory):
    """Run a type once per module (one reference, one prompt, seed 7, --quick): name -> (out, summary, engine)."""
    done: dict = {}
    root = tmp_path_factory.mktemp("runs")
    ref = Reference.open(make_image(root / "ref.png"))
    second = Reference.open(make_image(root / "ref2.png", size=(64, 96), color=(20, 90, 200)))

    def run(name: str):
        if name not in done:
            experiment = load_type(name)
            recipes = _recipes(experiment, quick=True, overrides=SMALL)
            fresh = Engine(engine.models)  # models loaded once for the session; an empty extraction cache
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("VLBENCH_DATA_DIR", str(root / "data"))
                out = root / Path(name).stem
                refs = experiment.reference_sets([ref, second]) if experiment.references == "together" else [ref]
                summary = run_experiment(fresh, experiment, recipes, refs, [PROMPT], out, seeds=[SEED],
                                         report=write_folder_report)
            done[name] = (out, summary, fresh, ref)
        return done[name]

    return run


@pytest.mark.parametrize("name", sorted(COUNTS) + [str(CUSTOM)])
def test_type_runs_end_to_end_with_one_vl_forward_per_extraction(runs, name):
    out, summary, fresh, _ = runs(name)
    rows = _rows(out)
    assert len(rows) == summary.jobs == len(load_type(name).selected(quick=True))
    for row in rows:
        assert validate_row(row) == [], row
        if name == "normalization_sweep" and row["status"] == "failed":
            assert "calibrat" in row["error"]  # global and per-dim need `vlbench calibrate` first
            continue
        assert row["status"] == "done", row["error"]
        assert Image.open(out / row["image"]).size == (64, 64)
    assert fresh.vl_forwards == EXTRACTIONS[Path(name).stem] == sum(r["vl_forwards"] for r in rows)
    layout = grid_layout(rows)
    assert layout.assigned() == list(range(len(rows)))  # one cell per row, none dropped
    assert (out / "grid.png").is_file() and (out / "run.json").is_file()
    report = (out / "report.html").read_text()
    assert all(r["image"] in report for r in rows if r["status"] == "done")


def test_pure_qwen3_arm_equals_generate_alpha_0_pixel_for_pixel(runs, engine):
    out, _, _, ref = runs("vl_only_vs_qwen3")
    (row,) = [r for r in _rows(out) if r["name"] == "qwen3_4b"]
    expected = engine.run(Recipe(alpha=0.0, seed=SEED, **SMALL), PROMPT, [ref]).image
    assert np.array_equal(np.asarray(Image.open(out / row["image"]).convert("RGB")), np.asarray(expected))


def test_2d_types_get_2d_grids(runs):
    assert grid_layout(_rows(runs("vl_layer_by_token")[0])).axes == ("tokens", "layer")
    assert grid_layout(_rows(runs("alpha_sweep")[0])).axes is None


def test_extractions_are_shared_across_prompts_and_configs(engine, tmp_path, ref_image):
    """vl_prompt_variations × 2 prompts: none, describe and instruct are shared; the prompt is read per prompt."""
    experiment = load_type("vl_prompt_variations")
    recipes = [r for r in experiment.recipes(overrides=SMALL) if r.name in ("none_text", "prompt_text", "describe_text")]
    fresh = Engine(engine.models)
    summary = run_experiment(fresh, experiment, recipes, [Reference.open(ref_image)], [PROMPT, "a blue dog"],
                             tmp_path / "out")
    assert summary.done == 6 and fresh.vl_forwards == 4  # none and describe shared, the prompt read per prompt


# ---- resume ----
def test_resume_after_an_interrupt_completes_with_unique_rows(engine, tmp_path, ref_image):
    experiment = load_type("token_sweep")
    recipes = experiment.recipes(overrides=SMALL)
    refs, out = [Reference.open(ref_image)], tmp_path / "out"
    finished = []

    def interrupt_after_two(job, row):
        finished.append(row["key"])
        if len(finished) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(Engine(engine.models), experiment, recipes, refs, [PROMPT], out, on_job_done=interrupt_after_two,
                       report=write_folder_report)
    assert [r["key"] for r in _rows(out)] == finished
    assert (out / "report.html").is_file()  # written on the way out
    with open(out / "results.jsonl", "a") as f:  # killed in the middle of writing a row
        f.write('{"key": "0123", "name": "ful')

    n = len(recipes)
    summary = run_experiment(Engine(engine.models), experiment, recipes, refs, [PROMPT], out)
    assert (summary.skipped, summary.done, summary.failed) == (2, n - 2, 0)
    rows = _rows(out)  # every line parses: the torn line is gone
    assert len(rows) == n and len({r["key"] for r in rows}) == n

    (out / rows[0]["image"]).unlink()  # a row whose PNG is missing is redone, not trusted
    summary = run_experiment(Engine(engine.models), experiment, recipes, refs, [PROMPT], out)
    assert (summary.skipped, summary.done) == (n - 1, 1)
    rows = _rows(out)
    assert len(rows) == n and len({r["key"] for r in rows}) == n
    for row in rows:
        Image.open(out / row["image"]).verify()


def test_a_job_limit_stops_early_and_the_rerun_finishes(engine, tmp_path, ref_image):
    experiment = load_type("token_sweep")
    recipes = experiment.recipes(overrides=SMALL)[:3]
    refs, out = [Reference.open(ref_image)], tmp_path / "out"
    first = run_experiment(Engine(engine.models), experiment, recipes, refs, [PROMPT], out, limit=1)
    second = run_experiment(Engine(engine.models), experiment, recipes, refs, [PROMPT], out)
    assert (first.done, second.skipped, second.done) == (1, 1, 2)
    assert len({r["key"] for r in _rows(out)}) == len(_rows(out)) == 3


def test_results_log_ignores_a_corrupt_last_line(tmp_path):
    log = ResultsLog(tmp_path / "results.jsonl")
    log.path.write_text('{"not": "a row"}\n{"key": "x", "na')
    rows, bad = log.read()
    assert rows == [] and bad == 2
    assert log.needs_newline()


# ---- the command line ----
def _main(argv: list[str]) -> int:
    """A command in-process; a bad input raises its UserError (vlbench.cli.main would print it)."""
    from vlbench.cli import build_parser, command

    args = build_parser().parse_args(argv)
    return command(args.command).run(args)


def test_cli_run_with_prompts_file_and_seeds(tiny_dirs, tmp_path, ref_image):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# my prompts\n\na red square\n")
    out = tmp_path / "out"
    argv = ["run", "--experiment", str(CUSTOM), "--quick", "--image", str(ref_image), "--prompts-file", str(prompts),
            "--seeds", "1,2", "--output-dir", str(out), "--tiny", "--device", "cpu", "--steps", "2",
            "--width", "64", "--height", "64"]
    assert _main(argv) == 0
    rows = _rows(out)
    assert len(rows) == 3 * 2 and {r["seed"] for r in rows} == {1, 2}
    assert {r["prompt"] for r in rows} == {"a red square"}
    info = json.loads((out / "run.json").read_text())
    assert info["experiment"] == "my_layer_pair" and "[[configs]]" in info["type_source"]
    assert info["invocations"][0]["environment"]["torch"]
    assert _main(argv) == 0 and len(_rows(out)) == 6  # resumed: nothing redone


def test_cli_rejects_bad_inputs_before_loading_models(tmp_path, ref_image):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "t"\n[[configs]]\nname = "a"\nlayer = "deep"\n')
    base = ["run", "--image", str(ref_image), "--prompt", "p", "--output-dir", str(tmp_path / "o"),
            "--zimage", "/nonexistent", "--vl", "/nonexistent"]
    for extra, fragment in [(["--experiment", str(bad)], "layer"), (["--experiment", "nope"], "unknown type"),
                            (["--experiment", "token_sweep", "--seeds", "1,x"], "seeds x")]:
        with pytest.raises(UserError, match=fragment):
            _main(base + extra)


def test_prompts_file_in_toml(tmp_path):
    from vlbench.prompts import read_prompts_file

    path = tmp_path / "prompts.toml"
    path.write_text('prompts = ["a cat", "a dog"]\n')
    assert read_prompts_file(str(path)) == ["a cat", "a dog"]


def test_cli_experiments_lists_every_type_with_counts(capsys):
    assert _main(["experiments"]) == 0
    text = capsys.readouterr().out
    for name in COUNTS:
        assert name in text
    assert "(quick 4)" in text and "image_L-10" in text


# ---- the run store ----
def test_finished_images_are_recorded_in_the_run_store(engine, tmp_path, ref_image):
    from vlbench.store import Store

    experiment = load_type("token_sweep")
    recipes = experiment.recipes(overrides=SMALL)[:2]
    with Store(tmp_path / "runs.sqlite3") as store:
        run_experiment(Engine(engine.models), experiment, recipes, [Reference.open(ref_image)], [PROMPT],
                       tmp_path / "out", store=store)
        runs = store.history(experiment="token_sweep")
    assert sorted(r.name for r in runs) == ["full", "image"]
    assert all(r.status == "done" and r.source == "experiment" and Path(r.image).is_file() for r in runs)
    assert all(r.duration is not None and r.duration >= r.timings["generation"] for r in runs)


# ---- every label is a claim: each shipped config computes what its file says ----
MIX_POLICY_FIELD = {"alpha": "alpha_policy", "intra_ratio": "intra_policy", "dual_ratio": "dual_policy"}
NAMED_RATIO = {"alpha": "alpha", "blend": "alpha", "intra": "intra_ratio", "dual": "dual_ratio"}


def _mix_records(row: dict, knob: str) -> list[dict]:
    """Every record of mix `knob` in one row's provenance (mixes nest: an attend row keeps its inner rows)."""
    found = []
    if row.get("mix") == knob:
        found.append(row)
    if f"{knob}_mix" in row:
        found.append(row[f"{knob}_mix"])
    for key in ("base", "other"):
        if isinstance(row.get(key), dict):
            found += _mix_records(row[key], knob)
    return found


@pytest.fixture(scope="module")
def shipped_stats(engine, tmp_path_factory):
    """Calibration statistics for the normalisation arms (calibrated on the tiny models themselves)."""
    from vlbench.engine.calibrate import calibrate, save_stats

    refs = [Reference.open(make_image(tmp_path_factory.mktemp("cal") / "c.png", size=(64, 64)))]
    return str(save_stats(*calibrate(engine, [PROMPT, "a blue circle"], refs),
                          tmp_path_factory.mktemp("stats") / "stats.safetensors"))


def test_a_multi_reference_type_reads_every_reference_in_each_job_and_records_them(runs):
    out, summary, _, ref = runs("multi_reference")
    rows = _rows(out)
    assert summary.done == 3 and all(len(r["references"]) == 2 for r in rows)
    assert {r["references"][0]["sha256"] for r in rows} == {ref.sha256}


def test_a_config_that_cannot_run_with_the_given_references_is_refused_before_models_load(tmp_path, ref_image):
    argv = ["run", "--experiment", "multi_reference", "--image", str(ref_image), "--prompt", "p", "--output-dir",
            str(tmp_path / "o"), "--zimage", "/nonexistent", "--vl", "/nonexistent"]
    with pytest.raises(UserError, match=r"config 'separate_1_1' \(with 1 reference\(s\) read together\): "
                                        r"image_weights 1.0,1.0: 2 weights for 1 references"):
        _main(argv)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_each_shipped_config_computes_what_its_file_says(engine, ref_image, shipped_stats, name):
    """Its recorded provenance: every mix it makes, under the policy its file names, with the weight its ratio gives
    (attend: r/(1-r) odds, the larger weight 1; positionwise: r on every row); a name that ends in a number is that
    mix's ratio; a config that makes no mix has no mixed row."""
    from vlbench.engine import blend

    experiment = load_type(name)
    refs = [Reference.open(ref_image)]
    if experiment.references == "together":
        refs.append(Reference.open(make_image(ref_image.parent / "second.png", size=(64, 96), color=(9, 9, 200))))
    # the type's own steps: conditioning runs no sampler, and a schedule's breakpoints need the steps it names
    for named in experiment.recipes(overrides={k: v for k, v in SMALL.items() if k != "steps"}):
        recipe = named.recipe
        if recipe.normalization != "none":
            recipe = recipe.replace(calibration=shipped_stats)
        try:
            cond = engine.condition(recipe, PROMPT, refs)
        except UserError as exc:  # layers deeper than the tiny VL's 16 (the published model has 36), or blocks
            # between the tiny DiT's 2 joint blocks (Z-Image-Turbo has 30)
            assert (exc.field == "layer" and "out of range" in exc.problem) or (
                exc.field == "vl_blocks" and "selects no block" in exc.problem), str(exc)
            continue
        stated = {**experiment.base, **next(c.fields for c in experiment.configs if c.name == named.name)}
        for knob, (ratio, policy) in recipe.mixes.items():
            assert MIX_POLICY_FIELD[knob] in stated, f"{name}/{named.name}: the file must state {MIX_POLICY_FIELD[knob]}"
            assert stated[MIX_POLICY_FIELD[knob]] == policy
            records = [rec for row in cond.rows for rec in _mix_records(row, knob)]
            assert records and {rec["policy"] for rec in records} == {policy}, (name, named.name, knob)
            if policy == "positionwise":
                assert {rec["weight_other"] for rec in records} == {ratio}
            elif policy == "attend" and ratio != "natural" and 0 < ratio < 1:
                # the label is the share: the other source's attention mass among the mix's rows, from the
                # weights the DiT receives (with equal logits, the share of the caption's attention it gets)
                share = _prior_share(cond, knob)
                assert share == pytest.approx(ratio, abs=1e-6), (name, named.name, knob, share)
            elif policy == "attend" and ratio == "natural":
                assert all(rec["weight"] == 1.0 for rec in records), (name, named.name)
        if not recipe.mixes:
            assert not any("mix" in row or any(k.endswith("_mix") for k in row) for row in cond.rows), named.name
        match = re.fullmatch(r"(alpha|blend|intra|dual)_(\d+(?:\.\d+)?|natural)(_.*)?", named.name)
        if match:
            value = getattr(recipe, NAMED_RATIO[match.group(1)])
            assert value == (match.group(2) if match.group(2) == "natural" else float(match.group(2))), named.name
        if recipe.normalization != "none":
            assert {r.get("normalized") for r in cond.rows} <= {recipe.normalization, "sink, untouched"}


def _prior_share(cond, knob: str) -> float:
    """The other source's share of mix `knob`'s attention mass, from each row's recorded side and its weight."""
    import torch

    weights = cond.weights if cond.weights is not None else torch.ones(len(cond.rows))
    other = base = 0.0
    for row, w in zip(cond.rows, weights.tolist()):
        tag = row.get(f"{knob}_mix")
        if tag is not None:
            other, base = (other + w, base) if tag["from"] == "other" else (other, base + w)
    return other / (other + base)


def test_each_example_attend_recipe_gives_the_other_source_its_ratio_as_a_share(engine, ref_image):
    from vlbench.recipe import load_recipe

    for path in sorted((Path(__file__).parents[1] / "examples" / "recipes").glob("*.toml")):
        recipe = load_recipe(path).replace(**SMALL)
        if recipe.normalization != "none" or not any(p == "attend" for _, p in recipe.mixes.values()):
            continue
        cond = engine.condition(recipe, PROMPT, [Reference.open(ref_image)])
        for knob, (ratio, policy) in recipe.mixes.items():
            if policy == "attend" and ratio != "natural":
                assert _prior_share(cond, knob) == pytest.approx(ratio, abs=1e-6), (path.name, knob)


def test_each_example_recipe_states_the_policy_of_every_mix_it_makes():
    from vlbench.recipe import load_recipe, read_recipe_file

    for path in sorted((Path(__file__).parents[1] / "examples" / "recipes").glob("*.toml")):
        recipe, stated = load_recipe(path), read_recipe_file(path)
        for knob, (_, policy) in recipe.mixes.items():
            assert stated.get(MIX_POLICY_FIELD[knob]) == policy, (path.name, knob)
