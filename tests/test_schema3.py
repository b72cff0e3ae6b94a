"""Recipe schema 3 (issue 23): attend ratios are shares. Records written before it keep their meaning.

tests/data/schema2_* were written by vlbench at commit 024d3b6 (recipe schema 2, record schema 2), before this
change: `vlbench generate --tiny --image tests/data/schema2_ref.png --prompt "a red house" --intra-ratio 0.3
--steps 2 --width 64 --height 64 --seed 3` (the PNG, with its record in its metadata) and the run store the same
command wrote without --no-store (schema2_runs.sqlite3).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vlbench.errors import UserError
from vlbench.pngs import read_png_metadata
from vlbench.recipe import Recipe, load_recipe, upgrade_recipe
from vlbench.records import RECORD_VERSION, RunRecord, job_key

DATA = Path(__file__).parent / "data"
OLD_PNG = DATA / "schema2_intra_0.3.png"
OLD_REF = DATA / "schema2_ref.png"


@pytest.fixture(scope="module")
def old_record() -> RunRecord:
    raw = read_png_metadata(OLD_PNG)
    assert raw["schema"] == 2 and raw["recipe"]["intra_ratio"] == 0.3 and "attend_ratio" not in raw["recipe"]
    return RunRecord.from_json(raw)


def test_an_old_record_is_read_as_what_it_was(old_record):
    assert old_record.schema == RECORD_VERSION
    recipe = Recipe.from_dict(old_record.recipe)
    assert recipe.intra_ratio == 0.3
    assert recipe.attend_ratio == "token-odds"  # each image row weighs 0.3/0.7 of a text row, as it did
    assert recipe.attend_scope == "joint"  # the bias acted in the joint blocks only, as it did


def test_rerunning_an_old_record_reproduces_its_image_and_its_share_is_what_its_token_counts_say(engine, old_record):
    """The record's recipe, run today, gives the stored image (pixel values within 1 of 255, on average within
    0.05); its conditioning
    account names the share that the old odds gave: image mass / caption mass from the old record's own counts."""
    from PIL import Image

    from vlbench.engine.engine import Reference

    recipe = Recipe.from_dict(old_record.recipe)
    result = engine.run(recipe, old_record.prompt, [Reference.open(OLD_REF)])
    stored = np.asarray(Image.open(OLD_PNG).convert("RGB")).astype(int)
    again = np.abs(np.asarray(result.image.convert("RGB")).astype(int) - stored)
    assert again.max() <= 1 and again.mean() < 0.05
    counts = old_record.conditioning["attention_weights"]  # {"0.428571": 70, "1": 23}: weight -> rows
    old_share = sum(float(w) * n for w, n in counts.items() if float(w) != 1) / sum(
        float(w) * n for w, n in counts.items())
    (account,) = result.conditioning.mixes
    assert account["meaning"] == "token-odds" and account["prior_share"] == pytest.approx(old_share, abs=1e-5)
    # the same number read as today's share is another image: the upgrade is what keeps the meaning
    today = engine.run(recipe.replace(attend_ratio="share", attend_scope="refiner+joint"), old_record.prompt,
                       [Reference.open(OLD_REF)])
    assert np.abs(np.asarray(today.image.convert("RGB")).astype(int) - stored).mean() > 0.5  # 10× the tolerance


def test_the_old_run_store_is_migrated_to_the_old_meaning(tmp_path):
    from vlbench.store import Store

    path = tmp_path / "runs.sqlite3"
    shutil.copy(DATA / "schema2_runs.sqlite3", path)
    store = Store(path)
    (row,) = store.history()
    assert row.recipe["intra_ratio"] == 0.3 and row.recipe["attend_ratio"] == "token-odds"
    assert Recipe.from_dict(row.recipe).attend_scope == "joint"


def test_a_run_folder_of_old_attend_images_is_refused_in_one_line(tmp_path, old_record):
    from vlbench.experiments.folder import resume

    out = tmp_path / "run"
    out.mkdir()
    raw = read_png_metadata(OLD_PNG)
    row = {**raw, "name": "intra_0.3", "experiment": "vl_intra_token_blend", "config_index": 3,
           "image": "images/x.png", "image_sha256": None, "status": "done", "error": None, "failure": None,
           "timings": {"extraction": 0, "blend": 0, "generation": 0, "model_load": 0}, "peak_memory_bytes": None,
           "vl_forwards": 1, "started_at": 0.0, "finished_at": 1.0, "metrics": {}}
    (out / "results.jsonl").write_text(json.dumps(row) + "\n")
    before = (out / "results.jsonl").read_text()
    with pytest.raises(UserError) as err:
        resume(out)
    assert "per-token odds" in str(err.value) and "intra_0.3" in str(err.value) and "\n" not in str(err.value)
    assert (out / "results.jsonl").read_text() == before  # nothing rewritten


def test_a_job_whose_meaning_did_not_change_keeps_its_key(old_record):
    """Fields added at schema 3 leave a job key alone at their defaults, so an old folder of non-attend jobs
    resumes; an upgraded attend job's key changes (and its folder is refused, above)."""
    raw = read_png_metadata(OLD_PNG)
    plain = {k: v for k, v in raw["recipe"].items()}
    plain["intra_ratio"] = None
    old_key = job_key("", plain, "p", ["s"])
    assert job_key("", Recipe.from_dict(upgrade_recipe(plain, 2)).to_dict(), "p", ["s"]) == old_key
    assert job_key("", old_record.recipe, old_record.prompt, ["s"]) != job_key("", raw["recipe"], raw["prompt"], ["s"])


def test_a_recipe_file_written_before_schema_3_keeps_its_meaning_and_todays_says_its_schema(tmp_path):
    old = Recipe(intra_ratio=0.3).to_toml().replace("# vlbench recipe (schema 3)", "# vlbench recipe")
    old = "\n".join(line for line in old.splitlines() if not line.startswith(("attend_ratio", "attend_scope")))
    (tmp_path / "old.toml").write_text(old + "\n")
    assert load_recipe(tmp_path / "old.toml").attend_ratio == "token-odds"
    (tmp_path / "new.toml").write_text(Recipe(intra_ratio=0.3).to_toml())
    new = load_recipe(tmp_path / "new.toml")
    assert new.attend_ratio == "share" and new == Recipe(intra_ratio=0.3)
    (tmp_path / "mine.toml").write_text("intra_ratio = 0.3\n")  # a hand-written file: today's meaning
    assert load_recipe(tmp_path / "mine.toml").attend_ratio == "share"


def test_an_old_search_over_a_ratio_is_refused_in_one_line():
    from vlbench.cli.search import _check_meaning
    from vlbench.search.space import load_space

    space = load_space(Path(__file__).parents[1] / "examples" / "search" / "style_vs_prompt.toml")
    with pytest.raises(UserError, match="per-token odds"):
        _check_meaning({"schema": "vlbench.search/1"}, space, "out")
    _check_meaning({"schema": "vlbench.search/2"}, space, "out")  # today's: resumes


@pytest.mark.parametrize("old, new", [
    ({"intra_ratio": 0.3}, {"intra_ratio": 0.3, "attend_ratio": "token-odds", "attend_scope": "joint"}),
    ({"intra_ratio": 0.5}, {"intra_ratio": 0.5, "attend_ratio": "token-odds"}),  # 0.5 odds: no bias, as before
    ({"intra_ratio": 0.3, "intra_policy": "split"}, {"intra_ratio": 0.3, "intra_policy": "split"}),
    ({"alpha": 0.0}, {"alpha": 0.0}),
    ({"schedule": "0:alpha=0.3, 1:vl", "steps": 2},  # a schedule's alpha=R entry is an attend mix too
     {"schedule": "0:alpha=0.3, 1:vl", "steps": 2, "attend_ratio": "token-odds", "attend_scope": "joint"}),
])
def test_upgrade_recipe_keeps_each_old_meaning(old, new):
    assert upgrade_recipe(old, 2) == new
    Recipe.from_dict(new)  # a valid recipe of today's schema


def test_inspect_shows_an_old_pngs_meaning_and_the_share_its_row_counts_give(capsys):
    from vlbench.cli import main

    assert main(["inspect", str(OLD_PNG)]) == 0
    out = capsys.readouterr().out
    assert "written as record schema 2" in out and '"attend_ratio": "token-odds"' in out
    assert "prior share of the down-weighted source 0.566" in out  # 70·(3/7) / (23 + 70·(3/7)) = 30/53
