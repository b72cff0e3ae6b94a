"""Issue 11: one definition of each idea — each defect the review found, specified so it cannot come back.

The Recipe is the schema (flags, help, the form and files come from it); a setting with no effect is an
error; errors are data that each front end words; one job path, one run record, one model spec; one
atomic-write helper; the torch-free modules stay torch-free.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vlbench.errors import UserError
from vlbench.recipe import Recipe, field_default, field_infos, format_value

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "vlbench"


# ---------------------------------------------------------------- the schema drives the command line
def _help_of(command: str) -> dict[str, str]:
    from vlbench.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {a.dest: a.help or "" for a in sub._actions}


def test_every_recipe_flag_states_the_recipes_real_default():
    """`generate --help` once said --length-policy defaulted to pool while the Recipe said concat."""
    helps = _help_of("generate")
    for name in field_infos():
        default = field_default(name)
        shown = "not set" if default is None else (format_value(name, default) or "empty")
        assert f"(default {shown}" in helps[name], (name, helps[name])
    assert "(default attend" in helps["alpha_policy"]


def test_the_readme_recipe_table_is_generated_from_the_schema():
    from vlbench.recipe import markdown_table

    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- recipe-table:start -->", "<!-- recipe-table:end -->"
    assert start in readme and end in readme, "README.md lost its generated recipe table"
    table = readme.split(start, 1)[1].split(end, 1)[0].strip()
    assert table == markdown_table(), "README recipe table is stale: run python -m vlbench.recipe > table"


def test_the_workbench_form_reads_the_schema_not_the_source():
    from vlbench.tui.recipe_fields import recipe_fields

    specs = {s.name: s for s in recipe_fields()}
    assert list(specs) == list(field_infos())
    for name, info in field_infos().items():
        assert specs[name].help == info.help and specs[name].section == str(info.section)
        if info.choices is not None:
            assert specs[name].choices == info.choices.values()
    text = (SRC / "tui" / "recipe_fields.py").read_text()
    assert "inspect" not in text and "getsource" not in text  # no reflection over recipe.py's source


# ---------------------------------------------------------------- one seed parser
@pytest.mark.parametrize("text, seeds", [("0-7", list(range(8))), ("1,2,5", [1, 2, 5]), ("0-3,8", [0, 1, 2, 3, 8]),
                                         ("3", [3])])
def test_one_seed_list_parser_serves_the_cli_the_workbench_and_experiment_files(text, seeds, tmp_path):
    from vlbench.cli import build_parser
    from vlbench.experiments.spec import load_type
    from vlbench.recipe import parse_seeds
    from vlbench.tui.recipe_fields import parse_value, recipe_fields

    assert parse_seeds(text) == seeds
    args = build_parser().parse_args(["run", "--experiment", "token_sweep", "--seeds", text, "--output-dir", "x"])
    assert parse_seeds(args.seeds) == seeds  # `vlbench run --seeds 0-7` was an error
    seed_field = next(s for s in recipe_fields() if s.name == "seed")
    assert parse_value(seed_field, text) == seeds
    path = tmp_path / "t.toml"
    path.write_text(f'name = "t"\nseeds = "{text}"\n[[configs]]\nname = "a"\n')
    assert list(load_type(path).seeds) == seeds


# ---------------------------------------------------------------- a setting with no effect is an error
NO_EFFECT = [  # (fields, the field named in the error)
    ({"dual": True, "image_layer": -3}, "image_layer"),
    ({"dual": True, "text_layer": -3}, "text_layer"),
    ({"alpha": 0.0, "intra_ratio": 0.3}, "intra_ratio"),
    ({"alpha": 0.0, "tokens": "image"}, "tokens"),
    ({"alpha": 0.0, "layer": -5}, "layer"),
    ({"alpha": 0.0, "vl_text": "none"}, "vl_text"),
    ({"alpha": 0.0, "max_image_tokens": 64}, "max_image_tokens"),
    ({"alpha": 0.0, "normalization": "global"}, "normalization"),
    ({"alpha": 0.0, "dual": True}, "dual"),
    ({"intra_ratio": 0.5, "tokens": "text"}, "tokens"),
    ({"dual": True, "tokens": "text"}, "tokens"),
    ({"dual": True, "vl_text": "none"}, "vl_text"),
    ({"style_layer": -3}, "style_layer"),
    ({"content_tokens": "full"}, "content_tokens"),
    ({"dual_ratio": 0.2}, "dual_ratio"),
    ({"image_layer": -3, "text_layer": -4, "layer": -5}, "layer"),
    ({"alpha": 0.5, "tokens": "text", "alpha_policy": "positionwise", "alpha_end": 0.2}, "alpha_end"),
    ({"alpha": 0.5, "tokens": "text", "curve": "linear", "alpha_end": 0.2}, "curve"),
    ({"alpha_policy": "split"}, "alpha_policy"),
    ({"intra_policy": "split"}, "intra_policy"),
    ({"dual_policy": "split"}, "dual_policy"),
    ({"alpha": 0.0, "pool_image_tokens": 16}, "pool_image_tokens"),
    ({"calibration": "stats.safetensors"}, "calibration"),
    ({"image_weights": (1.0, 2.0)}, "image_weights"),
    ({"negative_prompt": "blurry"}, "negative_prompt"),
]


@pytest.mark.parametrize("fields, named", NO_EFFECT, ids=[n for _, n in NO_EFFECT])
def test_a_setting_with_no_effect_in_its_combination_is_refused_naming_it(fields, named):
    with pytest.raises(UserError) as err:
        Recipe(**fields)
    assert err.value.field == named and "has no effect" in err.value.problem, str(err.value)
    assert "\n" not in str(err.value)


def test_the_same_rule_applies_in_files_experiment_types_the_cli_and_the_workbench(tmp_path):
    from vlbench.cli import main
    from vlbench.experiments.spec import load_type
    from vlbench.recipe import load_recipe
    from vlbench.tui.wording import render

    path = tmp_path / "r.toml"
    path.write_text("alpha = 0.0\nintra_ratio = 0.3\n")
    with pytest.raises(UserError, match="intra_ratio 0.3: has no effect"):
        load_recipe(path)
    kind = tmp_path / "t.toml"
    kind.write_text('name = "t"\n[[configs]]\nname = "a"\ndual = true\nimage_layer = -3\n')
    with pytest.raises(UserError, match="config 'a': image_layer -3: has no effect"):
        load_type(kind).recipes()
    with pytest.raises(UserError) as err:
        Recipe(alpha=0.0, tokens="image")
    assert render(err.value).startswith("tokens image: has no effect")
    assert main(["embed", "--tiny", "--prompt", "p", "--alpha", "0", "--tokens", "image",
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert not (tmp_path / "x.safetensors").exists()


def test_multi_image_separate_with_one_reference_is_refused():
    with pytest.raises(UserError, match="multi_image separate: has no effect with fewer than two references"):
        Recipe(multi_image="separate").check_inputs(1)


# ---------------------------------------------------------------- errors are data, worded by each front end
def test_one_error_two_wordings(tmp_path):
    from vlbench.cli.common import render as cli
    from vlbench.engine.extract import load_image
    from vlbench.tui.wording import render as workbench

    with pytest.raises(UserError) as err:
        load_image(tmp_path / "ref.png")
    assert cli(err.value) == f"--image {tmp_path / 'ref.png'}: no such file"
    assert workbench(err.value) == f"Reference {tmp_path / 'ref.png'}: no such file"


def test_no_flag_text_inside_the_engine():
    """The engine words nothing for the command line: a `--flag` in a string literal there is a front end's word."""
    offenders = []
    for path in (SRC / "engine").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and " --" in f" {node.value}":
                if any(part.startswith("--") and part[2:3].isalpha() for part in node.value.split()):
                    offenders.append(f"{path.name}: {node.value[:60]!r}")
    assert offenders == []


# ---------------------------------------------------------------- one model spec, one default
def test_with_nothing_configured_every_command_and_the_workbench_use_the_tiny_models(monkeypatch):
    from vlbench.cli import build_parser
    from vlbench.cli.common import model_spec

    for var in ("VLBENCH_ZIMAGE", "VLBENCH_VL"):
        monkeypatch.delenv(var, raising=False)
    for argv in (["generate", "--prompt", "p", "--out", "x.png"], ["embed", "--prompt", "p", "--out", "x.safetensors"],
                 ["run", "--experiment", "token_sweep", "--output-dir", "x"], ["tui"]):
        assert model_spec(build_parser().parse_args(argv)).tiny, argv
    monkeypatch.setenv("VLBENCH_ZIMAGE", "Tongyi-MAI/Z-Image-Turbo")
    spec = model_spec(build_parser().parse_args(["tui"]))
    assert not spec.tiny and spec.vl == "Qwen/Qwen3-VL-4B-Instruct"


def test_the_workbench_honours_offload_and_compile(monkeypatch):
    """`vlbench tui --offload cpu --compile` was accepted and ignored."""
    import vlbench.tui.app as app_module
    from vlbench.cli import main

    seen = {}

    class Recording:
        def __init__(self, settings, models, **kwargs):
            seen["models"] = models
            self.return_code = 0

        def run(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(app_module, "VlbenchApp", Recording)
    assert main(["tui", "--tiny", "--offload", "cpu", "--compile", "--device", "cpu"]) == 0
    spec = seen["models"]
    assert (spec.offload, spec.compile, spec.tiny, spec.device) == ("cpu", True, True, "cpu")


# ---------------------------------------------------------------- one run record
def test_the_three_serialisations_of_a_run_share_their_names():
    from dataclasses import fields

    from vlbench.experiments.results import ROW_SCHEMA
    from vlbench.records import RunRecord
    from vlbench.store import RunRow

    names = {f.name for f in fields(RunRecord)}
    assert set(ROW_SCHEMA) == names  # a results.jsonl line is the record
    assert names <= {f.name for f in fields(RunRow)}  # a store row is the record and its place in the queue
    assert set(RunRecord().png_metadata()) <= names  # the PNG carries part of it, under the same names
    assert {"peak_memory_bytes", "image", "references"} <= names
    assert not {"peak_vram_bytes", "output_path", "images"} & names


def test_results_files_written_before_the_record_still_resume(tmp_path, engine, ref_image):
    """A v1 results.jsonl row (reference, reference_sha256, peak_vram_bytes, ISO finished_at) reads as a record
    and counts as done on resume."""
    import json

    from vlbench.engine.engine import Engine, Reference
    from vlbench.experiments.runner import run_experiment
    from vlbench.experiments.spec import load_type

    experiment = load_type("token_sweep")
    recipes = experiment.recipes(overrides=dict(width=64, height=64, steps=2))[:2]
    ref = Reference.open(ref_image)
    out = tmp_path / "out"
    run_experiment(Engine(engine.models), experiment, recipes, [ref], ["p"], out)
    results = out / "results.jsonl"
    v1 = []
    for line in results.read_text().splitlines():
        row = json.loads(line)
        first = row.pop("references")[0]
        for key in ("schema", "image_sha256", "failure", "started_at", "conditioning", "environment", "metrics"):
            row.pop(key)
        row.update(reference=first["path"], reference_sha256=first["sha256"],
                   peak_vram_bytes=row.pop("peak_memory_bytes"), finished_at="2026-11-27T10:00:00+00:00")
        v1.append(json.dumps(row))
    results.write_text("\n".join(v1) + "\n")
    summary = run_experiment(Engine(engine.models), experiment, recipes, [ref], ["p"], out)
    assert (summary.skipped, summary.done) == (2, 0)
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    from vlbench.records import RECORD_VERSION

    assert all(r["schema"] == RECORD_VERSION and r["references"][0]["sha256"] == ref.sha256 for r in rows)  # rewritten


def test_worker_and_experiment_runs_record_the_same_conditioning_shape(tmp_path, engine, tiny_spec, ref_image):
    from vlbench.engine.engine import Engine, Reference
    from vlbench.experiments.runner import run_experiment
    from vlbench.experiments.spec import load_type
    from vlbench.store import Store
    from vlbench.worker import Worker

    store = Store()
    experiment = load_type("vl_intra_token_blend")
    named = [n for n in experiment.recipes(overrides=dict(width=64, height=64, steps=2))
             if n.recipe.intra_ratio is not None][:1]
    run_id = store.enqueue("p", [str(ref_image)], named[0].recipe.to_dict())  # the same recipe, from the workbench
    worker = Worker(tiny_spec, engine_factory=lambda: engine, poll_s=0.05)
    worker.start()
    worker.wake()
    assert worker.wait_idle(60)
    worker.stop()
    from_worker = store.get(run_id).conditioning
    run_experiment(Engine(engine.models), experiment, named, [Reference.open(ref_image)], ["p"], tmp_path / "o",
                   store=store)
    from_runner = next(r for r in store.history() if r.experiment == "vl_intra_token_blend").conditioning
    assert set(from_worker) == set(from_runner)
    assert from_worker["role_counts"] and from_runner["role_counts"]
    assert "None" not in from_worker["role_counts"] and "None" not in from_runner["role_counts"]
    store.close()


# ---------------------------------------------------------------- files
def test_a_leftover_temp_file_of_any_name_never_stops_the_worker(tmp_path, engine, tiny_spec, ref_image):
    """A thread id read as a process id made os.kill raise OverflowError; the worker never started."""
    from vlbench import paths
    from vlbench.files import remove_stale_temp_files
    from vlbench.store import Store
    from vlbench.worker import Worker

    outputs = paths.outputs_dir()
    odd = [".000001.png.4242.140234567890123.tmp", ".x.png.vlbench-99999999999-1.tmp",
           ".x.png.vlbench-1-1.tmp", ".weird.tmp", "..tmp", ".a.png.vlbench--1.tmp"]
    for name in odd:
        (outputs / name).write_bytes(b"x")
    remove_stale_temp_files(outputs)
    left = {p.name for p in outputs.iterdir()}
    assert ".x.png.vlbench-99999999999-1.tmp" not in left  # ours, owner dead: removed
    store = Store()
    run_id = store.enqueue("p", [str(ref_image)], Recipe(width=64, height=64, steps=2).to_dict())
    worker = Worker(tiny_spec, engine_factory=lambda: engine, poll_s=0.05)
    worker.start()
    worker.wake()
    assert worker.wait_idle(60)
    worker.stop()
    assert store.get(run_id).status == "done"
    store.close()


# test_structure.py checks by AST that every write goes through files.atomic_write (it replaced a text search here)


def test_themes_ship_in_the_wheel(tmp_path):
    import zipfile

    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PIP_NO_INDEX": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("vlbench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"vlbench/themes/vlbench-dark.toml", "vlbench/themes/vlbench-light.toml"} <= set(names)
    assert "vlbench/tui/vlbench.tcss" in names and any(n.startswith("vlbench/experiments/types/") for n in names)


# ---------------------------------------------------------------- layout rules
def test_command_modules_import_no_other_command_module():
    commands = {p.stem for p in (SRC / "cli").glob("*.py")} - {"__init__", "common"}
    for path in (SRC / "cli").glob("*.py"):
        if path.stem in ("__init__", "common"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vlbench.cli."):
                assert node.module.split(".")[2] not in commands, (path.name, node.module)


# test_structure.py checks by AST that nothing below the command line imports argparse (it replaced a text search)


def test_one_job_path():
    """The worker, the experiment runner, the Ray actors and `vlbench generate` all run a job with jobs.execute."""
    for rel in ("worker/worker.py", "experiments/runner.py", "executors/ray_actor.py", "cli/generate.py"):
        text = (SRC / rel).read_text()
        assert "from vlbench.jobs import" in text and "execute(" in text, rel
        assert "engine.run(" not in text, rel


def test_the_torch_free_modules_import_no_torch():
    code = ("import sys, vlbench.tui.app, vlbench.recipe, vlbench.store, vlbench.config, vlbench.modelspec, "
            "vlbench.records, vlbench.jobs, vlbench.worker, vlbench.analysis.stats, vlbench.analysis.folders, vlbench.analysis.report, vlbench.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
