"""Image metrics, specified against transformers run directly on tiny random SigLIP / CLIP / DINOv2 models.

Every score must equal the same computation done with the model's own classes and processor; an
image against itself has reference similarity 1; scores do not depend on batch size or order; an
interrupted pass resumes without duplicates; values reach the run store and the report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import make_image
from vlbench.errors import UserError
from vlbench.experiments.results import ResultsLog, reference_copy, validate_row
from vlbench.records import RunRecord
from vlbench.metrics import DEFAULT_METRICS, METRICS, check_available, parse_metrics
from vlbench.metrics.score import SCORES, ScoresLog, load_scores, score_folder

PROMPTS = ["a red fox in the snow", "a watercolor lighthouse", "Homer Simpson eating spaghetti"]
ALL = ("siglip", "clip_t", "clip_i", "dino")


@pytest.fixture(scope="session")
def metric_dirs(tmp_path_factory):
    from vlbench.metrics.tiny import ensure_tiny_metric_models

    return ensure_tiny_metric_models(tmp_path_factory.mktemp("tiny-metrics"))


@pytest.fixture(scope="session")
def models(metric_dirs):
    from vlbench.metrics.models import MetricModels

    return MetricModels(metric_dirs.sources(), device="cpu")


def fresh(metric_dirs, **sources):
    from vlbench.metrics.models import MetricModels

    return MetricModels({**metric_dirs.sources(), **sources}, device="cpu")


def fake_run(out: Path, n: int = 5, order=None) -> list[dict]:
    """A run folder as the runner leaves it (results.jsonl, images/, references/), without generating."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    refs = [make_image(out.parent / f"src-{out.name}" / f"ref{i}.png", size=(80 + 16 * i, 64),
                       color=(40 * i, 200 - 30 * i, 90)) for i in range(2)]
    rows = []
    for i in range(n):
        ref = refs[i % 2]
        sha = f"{i % 2:064x}"
        copy = out / reference_copy(str(ref), sha)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ref, copy)
        image = f"images/config{i}.png"
        make_image(out / image, size=(64, 64), color=(30 * i % 256, 90, 255 - 40 * i))
        record = RunRecord(key=f"key{i}", experiment="fake", name=f"config{i % 3}", config_index=i % 3,
                           recipe={"layer": -2, "seed": i}, prompt=PROMPTS[i % 3], seed=i,
                           references=[{"path": str(ref), "sha256": sha}], image=image, status="done",
                           timings={"extraction": 0.0, "blend": 0.0, "generation": 0.1, "model_load": 0.0},
                           caption_tokens=40, vl_forwards=1, finished_at=1.0)
        rows.append(record.to_json())
    log = ResultsLog(out / "results.jsonl")
    for i in (order or range(n)):
        log.append(rows[i])
    # the tests read the (first) reference of each row
    return [{**r, "reference": r["references"][0]["path"], "reference_sha256": r["references"][0]["sha256"]}
            for r in rows]


def values(out: Path) -> dict[str, dict]:
    return {k: v["metrics"] for k, v in load_scores(out).items()}


# ---- each score equals transformers' own computation ----
def test_siglip_equals_sigmoid_of_siglip_models_own_logits(tmp_path, models):
    from transformers import AutoModel, AutoProcessor

    rows = fake_run(tmp_path / "run")
    score_folder(tmp_path / "run", ("siglip",), models)
    got = values(tmp_path / "run")
    model = AutoModel.from_pretrained(models.sources["siglip"]).eval()
    processor = AutoProcessor.from_pretrained(models.sources["siglip"])
    images = [Image.open(tmp_path / "run" / r["image"]).convert("RGB") for r in rows]
    inputs = processor(text=[r["prompt"] for r in rows], images=images, padding="max_length", max_length=64,
                       return_tensors="pt")
    assert inputs["input_ids"].shape[1] == 64  # SigLIP's fixed text length
    with torch.no_grad():
        expected = torch.sigmoid(model(**inputs).logits_per_image.diag())
    assert torch.allclose(torch.tensor([got[r["key"]]["siglip"] for r in rows]), expected, atol=1e-5)


def test_clip_t_and_clip_i_equal_clip_models_own_embeddings(tmp_path, models):
    from transformers import AutoModel, AutoProcessor

    rows = fake_run(tmp_path / "run")
    score_folder(tmp_path / "run", ("clip_t", "clip_i"), models)
    got = values(tmp_path / "run")
    model = AutoModel.from_pretrained(models.sources["clip"]).eval()
    processor = AutoProcessor.from_pretrained(models.sources["clip"])
    images = [Image.open(tmp_path / "run" / r["image"]).convert("RGB") for r in rows]
    refs = [Image.open(r["reference"]).convert("RGB") for r in rows]
    with torch.no_grad():
        out = model(**processor(text=[r["prompt"] for r in rows], images=images, padding=True, return_tensors="pt"))
        ref_out = model(**processor(text=[r["prompt"] for r in rows], images=refs, padding=True, return_tensors="pt"))
    clip_t = (out.image_embeds * out.text_embeds).sum(-1)  # forward() returns them normalised
    clip_i = (out.image_embeds * ref_out.image_embeds).sum(-1)
    assert torch.allclose(torch.tensor([got[r["key"]]["clip_t"] for r in rows]), clip_t, atol=1e-5)
    assert torch.allclose(torch.tensor([got[r["key"]]["clip_i"] for r in rows]), clip_i, atol=1e-5)


def test_dino_is_the_cosine_of_dinov2_pooler_outputs(tmp_path, models):
    from transformers import AutoImageProcessor, AutoModel

    rows = fake_run(tmp_path / "run")
    score_folder(tmp_path / "run", ("dino",), models)
    got = values(tmp_path / "run")
    model = AutoModel.from_pretrained(models.sources["dino"]).eval()
    processor = AutoImageProcessor.from_pretrained(models.sources["dino"])
    with torch.no_grad():
        a = model(**processor(images=[Image.open(tmp_path / "run" / r["image"]).convert("RGB") for r in rows],
                              return_tensors="pt")).pooler_output
        b = model(**processor(images=[Image.open(r["reference"]).convert("RGB") for r in rows],
                              return_tensors="pt")).pooler_output
    expected = torch.nn.functional.cosine_similarity(a, b)
    assert torch.allclose(torch.tensor([got[r["key"]]["dino"] for r in rows]), expected, atol=1e-5)


def test_an_image_against_itself_has_reference_similarity_1(tmp_path, models):
    out = tmp_path / "run"
    rows = fake_run(out, n=2)
    for r in rows:  # make each output its own reference
        shutil.copyfile(out / r["image"], out / reference_copy(r["reference"], r["reference_sha256"]))
        shutil.copyfile(out / r["image"], r["reference"])
    score_folder(out, ("clip_i", "dino"), models)
    for v in values(out).values():
        assert v["clip_i"] == pytest.approx(1.0, abs=1e-5) and v["dino"] == pytest.approx(1.0, abs=1e-5)


# ---- batching, order, resuming ----
def test_scores_do_not_depend_on_batch_size_or_order(tmp_path, models):
    fake_run(tmp_path / "a", n=5)
    fake_run(tmp_path / "b", n=5, order=[3, 0, 4, 2, 1])
    score_folder(tmp_path / "a", ALL, models, batch_size=1)
    score_folder(tmp_path / "b", ALL, models, batch_size=3)
    a, b = values(tmp_path / "a"), values(tmp_path / "b")
    assert set(a) == set(b) == {f"key{i}" for i in range(5)}
    for key in a:
        assert set(a[key]) == set(ALL)
        for m in ALL:
            assert a[key][m] == pytest.approx(b[key][m], abs=1e-5), (key, m)


def test_an_interrupted_pass_resumes_without_duplicates(tmp_path, metric_dirs):
    out = tmp_path / "run"
    fake_run(out, n=5)

    def stop(batch):
        if batch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_folder(out, ALL, fresh(metric_dirs), batch_size=2, on_batch=stop)
    assert len(ScoresLog(out / SCORES).read()[0]) == 4  # two whole batches on disk
    with open(out / SCORES, "a") as f:
        f.write('{"key": "key4", "image": "images/con')  # a kill in the middle of a write
    summary = score_folder(out, ALL, fresh(metric_dirs), batch_size=2)
    assert (summary.scored, summary.skipped) == (1, 4)
    entries, bad = ScoresLog(out / SCORES).read()
    assert bad == 0 and sorted(e["key"] for e in entries) == [f"key{i}" for i in range(5)]
    again = fresh(metric_dirs)
    summary = score_folder(out, ALL, again)
    assert (summary.scored, summary.skipped) == (0, 5) and again.load_seconds == {}  # nothing loaded
    assert validate_row(json.loads((out / "results.jsonl").read_text().splitlines()[0])) == []  # untouched


def test_another_model_rescores_only_its_metrics(tmp_path, metric_dirs):
    out = tmp_path / "run"
    fake_run(out, n=2)
    score_folder(out, ALL, fresh(metric_dirs))
    before = values(out)
    other = tmp_path / "dino-copy"
    shutil.copytree(metric_dirs.dino, other)
    summary = score_folder(out, ALL, fresh(metric_dirs, dino=str(other)))
    assert summary.scored == 2 and summary.values == 2  # dino only
    scores = load_scores(out)
    assert all(s["models"]["dino"] == str(other) and s["models"]["siglip"] == str(metric_dirs.siglip)
               for s in scores.values())
    after = values(out)
    assert all(after[k][m] == before[k][m] for k in before for m in ("siglip", "clip_t", "clip_i"))


# ---- store, names, optional extra ----
def test_scores_reach_the_run_store_and_history_sorts_by_them(tmp_path, models):
    from vlbench.store import Store

    out = tmp_path / "run"
    rows = fake_run(out, n=4)
    with Store(tmp_path / "runs.sqlite3") as store:
        ids = [store.add(RunRecord(prompt=r["prompt"], references=r["references"], recipe=r["recipe"], status="done",
                                   image=str((out / r["image"]).resolve()))) for r in rows]
        other = store.add(RunRecord(prompt="unscored", status="done", image=str(tmp_path / "elsewhere.png")))
        summary = score_folder(out, ("siglip", "dino"), models, store=store)
        assert summary.stored == 4
        got = values(out)
        for run_id, r in zip(ids, rows):
            metrics = store.get(run_id).metrics
            assert metrics["siglip"] == got[r["key"]]["siglip"] and metrics["metric_models"]["dino"]
        order = [r.id for r in store.history(sort="metric:siglip", descending=True)]
        by_value = sorted(ids, key=lambda i: -store.get(i).metrics["siglip"])
        assert order == [*by_value, other]  # unscored last, either way
        assert [r.id for r in store.history(sort="metric:siglip", descending=False)] == [*by_value[::-1], other]
        with pytest.raises(ValueError):
            store.history(sort="metric:x'); DROP TABLE runs; --")


def test_metric_names_are_checked_and_imagereward_names_its_extra():
    assert parse_metrics(None) == DEFAULT_METRICS
    assert parse_metrics("dino, siglip,dino") == ("dino", "siglip")
    with pytest.raises(UserError, match="unknown metric 'fid'.*siglip"):
        parse_metrics("siglip,fid")
    import importlib.util

    if importlib.util.find_spec("ImageReward") is not None:
        pytest.skip("ImageReward is installed here")
    with pytest.raises(UserError, match=r"pip install 'vlbench\[imagereward\]'"):
        check_available(("siglip", "imagereward"))
    assert set(METRICS) >= set(ALL) | {"imagereward"}


def test_a_folder_without_results_is_a_one_line_error(tmp_path, models):
    with pytest.raises(UserError, match="no results.jsonl"):
        score_folder(tmp_path, ALL, models)


# ---- report ----
def test_report_has_a_sortable_metrics_table_and_the_adherence_plot(tmp_path, models):
    from vlbench.report import write_report

    out = tmp_path / "run"
    rows = fake_run(out, n=5)
    score_folder(out, ALL, models)
    write_report(out, rows, {"experiment": "fake"})
    html = (out / "report.html").read_text()
    assert "<table class='sortable'>" in html and "<script>" in html and "data-v=" in html
    assert "src='metrics.png'" in html and (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    for label in ("SigLIP", "CLIP-T", "CLIP-I", "DINOv2"):
        assert f"<th>{label}</th>" in html
    siglip = values(out)["key0"]["siglip"]
    assert f"data-v='{float(siglip)!r}'" in html


# ---- the command line ----
def _main(argv: list[str]) -> int:
    """A command in-process; a bad input raises its UserError (vlbench.cli.main would print it)."""
    from vlbench.cli import build_parser, command

    args = build_parser().parse_args(argv)
    return command(args.command).run(args)


def test_run_with_metrics_scores_stores_and_reports(tiny_dirs, tmp_path, ref_image, metric_dirs, monkeypatch):
    from vlbench.metrics import tiny
    from vlbench.store import Store

    monkeypatch.setattr(tiny, "ensure_tiny_metric_models", lambda root=None: metric_dirs)
    out = tmp_path / "out"
    examples = Path(__file__).parents[1] / "examples" / "experiments" / "my_layer_pair.toml"
    argv = ["run", "--experiment", str(examples), "--quick", "--image", str(ref_image), "--prompt", "a red square",
            "--output-dir", str(out), "--tiny", "--device", "cpu", "--steps", "2", "--width", "64", "--height", "64",
            "--metrics", "--metrics-batch-size", "2"]
    assert _main(argv) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    scores = load_scores(out)
    assert len(rows) == 3 and set(scores) == {r["key"] for r in rows}
    assert all(set(s["metrics"]) == set(DEFAULT_METRICS) for s in scores.values())
    with Store() as store:
        recorded = store.history()
        assert len(recorded) == 3 and all(set(DEFAULT_METRICS) <= set(r.metrics) for r in recorded)
    html = (out / "report.html").read_text()
    assert "<h2>Metrics</h2>" in html and "<h2>Embedding diagnostics</h2>" in html
    assert (out / "metrics.png").is_file() and list(out.glob("diagnostics-*.png"))
    # `vlbench score` on the same folder: already scored, nothing redone; a new metric subset is fine
    assert _main(["score", str(out), "--tiny", "--metrics", "siglip"]) == 0
    assert load_scores(out) == scores
    with pytest.raises(UserError, match="tiny: cannot be combined with --dino"):
        _main(["score", str(out), "--tiny", "--dino", "x"])


# ---- the workbench ----
def test_history_shows_metric_columns_sorts_by_them_and_preview_shows_scores():
    import asyncio

    from vlbench.recipe import Recipe
    from vlbench.tui.app import VlbenchApp
    from vlbench.config import parse_settings

    async def go():
        app = VlbenchApp(parse_settings({"recipe": {"width": 64, "height": 64, "steps": 2}}), start_worker=False)
        recipe = Recipe(width=64, height=64, steps=2).to_dict()
        ids = [app.store.add(RunRecord(prompt=f"prompt {i}", recipe=recipe, status="done", image=f"/nowhere/{i}.png"))
               for i in range(4)]
        for run_id, value in zip(ids, (0.2, 0.9, None, 0.5)):
            if value is not None:
                app.store.set_metrics(run_id, {"siglip": value, "dino": 1 - value})
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause()
            history = app.history
            table = history.table
            labels = [str(c.label) for c in table.columns.values()]
            assert labels[-2:] == ["SigLIP", "DINOv2"] and history.metric_columns == ["siglip", "dino"]
            history.focus()
            table.focus()
            while history.sort != "metric:siglip":
                await pilot.press("s")
            await pilot.pause()
            order = [int(k.value) for k in table.rows]
            assert order == [ids[1], ids[3], ids[0], ids[2]]  # highest first, the unscored run last
            assert "siglip" in str(app.query_one("#history-sort").render())
            await pilot.press("o")
            await pilot.pause()
            assert [int(k.value) for k in table.rows] == [ids[0], ids[3], ids[1], ids[2]]
            await pilot.press("down")  # the Preview follows the cursor (once it rests): the second row, run ids[3]
            await pilot.pause(0.5)
            caption = str(app.query_one("#preview-caption").render())
            assert "scores: SigLIP 0.500 · DINOv2 0.500" in caption
        app.close()

    asyncio.run(go())
