"""issue 23, the caption budget: the whole caption is planned before any reference is sized (caption_plan).

The planner's length against the caption the engine really assembles on the tiny models; references sized to what the
rest of the caption leaves; refusal in one line naming each part, before any model is built; the shipped search space
and img2img_style complete on the tiny models."""

from __future__ import annotations

import pytest

from conftest import make_image
from vlbench.engine.caption_plan import SELECTION_ROLES, VLCounts, plan_caption
from vlbench.engine.engine import Reference
from vlbench.engine.extract import prepare_inputs
from vlbench.errors import CaptionTooLong, UserError
from vlbench.recipe import Recipe

SIZE = dict(width=64, height=64, steps=1)
PROMPT = "a lighthouse on a rocky coast at dusk, painted in thick oil strokes"


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    """Two references far too big for the tiny DiT's 224-row caption alone (sized down by the processor)."""
    d = tmp_path_factory.mktemp("refs")
    return [Reference.open(make_image(d / "a.png", size=(1024, 768))),
            Reference.open(make_image(d / "b.png", size=(768, 768), color=(30, 90, 200)))]


# every recipe shape the engine assembles: (recipe, references used, exact?)
CASES = {
    "full + qwen3 attend (img2img_style)": (Recipe(tokens="full", vl_text="prompt", alpha=0.1, **SIZE), 1, True),
    "image tokens + qwen3 attend": (Recipe(tokens="image", alpha=0.5, **SIZE), 1, True),
    "intra attend + qwen3 attend (search space)": (Recipe(intra_ratio=0.5, intra_policy="attend", alpha=0.6,
                                                          layer=-3, **SIZE), 1, True),
    "intra attend at 0 (image dropped)": (Recipe(intra_ratio=0.0, intra_policy="attend", alpha=0.6, **SIZE), 1,
                                          True),
    "intra attend + qwen3 split": (Recipe(intra_ratio=0.25, intra_policy="attend", alpha=0.6, alpha_policy="split",
                                          **SIZE), 1, False),
    "vl alone, full": (Recipe(tokens="full", alpha=1.0, **SIZE), 1, True),
    "dual attend + qwen3 blend": (Recipe(dual=True, style_tokens="image", content_tokens="full",
                                         content_vl_text="prompt", style_vl_text="describe the style",
                                         alpha=0.5, **SIZE), 1, True),
    "two refs joint, full": (Recipe(tokens="full", alpha=0.3, **SIZE), 2, True),
    "two refs separate": (Recipe(tokens="image", alpha=0.3, multi_image="separate", **SIZE), 2, False),
    "pooled image tokens": (Recipe(tokens="full", alpha=0.5, pool_image_tokens=16, **SIZE), 1, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_plan_bounds_the_assembled_caption_and_fits_the_budget(engine, refs, name):
    recipe, n, exact = CASES[name]
    budget = engine.models.caption_budget
    cond = engine.condition(recipe, PROMPT, refs[:n])
    plan = engine.last_plan
    assert plan is not None and plan.exact == exact
    tokens = [sum(ex.image_token_counts) for ex in engine_order(cond)]
    predicted = plan.length(tokens)
    real = max(int(c.shape[0]) for c in cond.captions)
    assert real <= budget, f"{name}: {real} rows over {budget}"
    if exact:
        assert predicted == real, name
    else:
        assert real <= predicted <= budget, name
    if plan.image_budget is not None:  # every VL input was sized to what the rest of the caption left it
        assert all(t <= plan.image_budget for t in tokens)


def engine_order(cond):
    """The extractions in the engine's request order (dual: style then content; Conditioning keeps content first)."""
    return list(reversed(cond.extractions)) if cond.dual else cond.extractions


def test_before_the_plan_these_recipes_overflowed(engine, refs):
    """The defect: sized to the whole budget, the reference leaves no room for Qwen3-4B's rows."""
    recipe = CASES["full + qwen3 attend (img2img_style)"][0]
    cond = engine.condition(recipe, PROMPT, refs[:1])
    ex = cond.extractions[0]
    budget = engine.models.caption_budget
    text_tokens = len(ex.input_ids) - sum(ex.image_token_counts)
    old_room = budget - text_tokens  # what extract._fit gave the image before issue 23
    assert sum(ex.image_token_counts) <= engine.last_plan.image_budget < old_room
    account = cond.describe()["caption_plan"]  # the record says the reference was sized to the plan
    assert account["image_budget"] == [engine.last_plan.image_budget] and account["budget"] == budget
    assert account["parts"]["Qwen3-4B prompt"] == len(cond.text.input_ids)
    assert len(cond.text.input_ids) + text_tokens + engine.last_plan.image_budget <= budget


def test_a_reference_that_fits_is_sized_as_before(engine, refs, tmp_path):
    """Old results keep their meaning: a job whose caption fitted under the old rule is sized exactly as before (same
    image tokens, same extraction cache key)."""
    small = Reference.open(make_image(tmp_path / "small.png", size=(96, 64)))
    recipe = Recipe(tokens="full", alpha=0.5, **SIZE)
    cond = engine.condition(recipe, PROMPT, [small])
    assert engine.last_plan.image_budget is None or engine.last_plan.image_budget >= sum(
        cond.extractions[0].image_token_counts)
    assert engine.plan_caption(recipe, PROMPT, [small], len(cond.text.input_ids)) == [None]
    old = prepare_inputs(engine.models.vl_processor, [small.image], PROMPT, engine.models.caption_budget)
    assert cond.extractions[0].input_ids == old.input_ids  # the rule before issue 23: the same image tokens
    assert cond.extractions[0].image_sizes[0] == tuple(old.inputs["image_grid_thw"][0, 1:].flip(0).mul(
        engine.models.vl_processor.image_processor.patch_size).tolist())


def test_limits_enter_the_extraction_cache_key(engine, refs):
    """Two recipes that size a reference differently never share an extraction (memory or disk); a limit that does
    not bind leaves the key as it was before issue 23."""
    from vlbench.engine.cache import extraction_key

    with_qwen3 = engine.condition(Recipe(tokens="full", alpha=0.5, **SIZE), PROMPT, refs[:1])
    limit = engine.last_plan.image_budget
    vl_only = engine.condition(Recipe(tokens="full", alpha=1.0, **SIZE), PROMPT, refs[:1])
    a, b = with_qwen3.extractions[0], vl_only.extractions[0]
    assert a is not b and sum(a.image_token_counts) < sum(b.image_token_counts)  # no Qwen3-4B rows: a bigger image
    keys = [k for k in engine._extractions if k[0] == (refs[0].sha256,) and k[1] == PROMPT]
    assert {k[-1] for k in keys} >= {limit, None}
    vl, budget = engine.models.vl, engine.models.caption_budget
    old = extraction_key(vl, [refs[0].cache_id], PROMPT, budget, None)
    assert extraction_key(vl, [refs[0].cache_id], PROMPT, budget, None, image_budget=None) == old
    assert extraction_key(vl, [refs[0].cache_id], PROMPT, budget, None, image_budget=limit) != old


# ---------------------------------------------------------------- refusal
def test_refusal_names_each_part_and_happens_before_the_vl_runs(engine, refs):
    long_prompt = " ".join(["a lighthouse on a rocky coast in the fog"] * 12)  # fits each model, not both
    recipe = Recipe(dual=True, style_tokens="image", content_tokens="full", content_vl_text="prompt",
                    style_vl_text="describe the style", alpha=0.5, **SIZE)
    before = engine.vl_forwards
    with pytest.raises(CaptionTooLong) as err:
        engine.condition(recipe, long_prompt, refs[:1])
    message = str(err.value)
    assert engine.vl_forwards == before
    assert "caption over the budget of 224" in message
    for part in ("Qwen3-4B prompt", "VL content pass", "references need >= ", "×2"):
        assert part in message, message
    assert "\n" not in message and err.value.field == "conditioning"


def test_the_planner_alone_is_exact_arithmetic():
    """Without models: the parts add up as the mixes say (attend side by side, split shares, sides dropped)."""
    counts = [VLCounts(template=10, prompt=5, images=1)]
    recipe = Recipe(tokens="full", alpha=0.5)
    plan = plan_caption(recipe, 224, 30, counts, [4])
    assert plan.length([100]) == 30 + (10 + 5 + 2 + 100)
    assert plan.image_budget == 224 - 30 - 17
    assert plan_caption(recipe.replace(alpha=1.0), 224, None, counts, [4]).image_budget == 224 - 17
    split = plan_caption(recipe.replace(alpha_policy="split", alpha=0.25), 224, 40, counts, [4])
    assert split.length([100]) == 30 + round(0.25 * 117)  # round(0.75·40) + round(0.25·117)
    image_only = plan_caption(Recipe(tokens="image", alpha=0.5), 224, 30, counts, [4])
    assert image_only.image_budget == 224 - 30
    with pytest.raises(CaptionTooLong, match=r"Qwen3-4B prompt 220, VL 17, references need >= 4 each ×1"):
        plan_caption(recipe, 224, 220, counts, [4])


def test_selection_roles_are_one_table():
    from vlbench.engine import extract

    assert extract.SELECTION_ROLES is SELECTION_ROLES


def test_the_pre_load_check_gives_the_engines_refusal(engine, refs, tiny_spec):
    from vlbench.engine.precheck import check_plan, read_model_files

    long_prompt = " ".join(["a lighthouse on a rocky coast in the fog"] * 12)  # fits each model, not both
    recipe = Recipe(tokens="full", alpha=0.5, **SIZE)
    with pytest.raises(CaptionTooLong) as planned:
        check_plan(read_model_files(tiny_spec), [(recipe, long_prompt, refs[:1])])
    with pytest.raises(CaptionTooLong) as ran:
        engine.run(recipe, long_prompt, refs[:1])
    assert str(planned.value) == str(ran.value)
    assert "Qwen3-4B prompt" in str(planned.value) and "references need >= " in str(planned.value)


def _no_models(monkeypatch):
    from vlbench.engine import models

    monkeypatch.setattr(models.Models, "__init__", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))


def test_generate_refuses_a_caption_that_cannot_fit_before_any_model_is_built(tiny_dirs, tmp_path, capsys,
                                                                             monkeypatch):
    from vlbench.cli import main

    _no_models(monkeypatch)
    big = make_image(tmp_path / "big.png", size=(1024, 768))
    long_prompt = " ".join(["a lighthouse on a rocky coast in the fog"] * 12)
    code = main(["generate", "--tiny", "--device", "cpu", "--prompt", long_prompt, "--alpha", "0.5",
                 "--tokens", "full", "--image", str(big), "--width", "64", "--height", "64", "--steps", "1",
                 "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "caption over the budget of 224" in err and "Qwen3-4B prompt" in err and "VL " in err, err
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------- the shipped search space and img2img_style
ROOT = __import__("pathlib").Path(__file__).parents[1]


def test_the_shipped_search_space_runs_every_trial_on_the_tiny_models(tiny_dirs, tmp_path):
    """examples/search/style_vs_prompt.toml with a reference too big for the budget alone (its attend trials, 2 of
    the first 3, overflowed before the plan): every trial completes."""
    import json

    from vlbench.cli import main

    big = make_image(tmp_path / "big.png", size=(1024, 768))
    out = tmp_path / "search"
    code = main(["search", "--space", str(ROOT / "examples" / "search" / "style_vs_prompt.toml"), "--image",
                 str(big), "--prompt", "a lighthouse", "--trials", "3", "--width", "64", "--height", "64",
                 "--steps", "1", "--seeds", "0", "--output-dir", str(out), "--tiny", "--device", "cpu"])
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert code == 0 and len(trials) == 3
    assert [t["error"] for t in trials] == [None] * 3, trials
    assert any(t["params"]["alpha_policy"] == "attend" for t in trials)  # the overflowing kind is among them


def test_img2img_style_completes_every_image_on_the_tiny_models(tiny_dirs, tmp_path):
    """Before the plan, 6 of its 7 images overflowed with this reference (every VL config: full tokens beside
    Qwen3-4B's rows)."""
    import json

    from vlbench.cli import main

    big = make_image(tmp_path / "big.png", size=(1024, 768))
    out = tmp_path / "img2img"
    code = main(["run", "--experiment", "img2img_style", "--quick", "--tiny", "--device", "cpu", "--seeds", "1",
                 "--steps", "1", "--width", "64", "--height", "64", "--image", str(big), "--prompt",
                 "a lighthouse", "--output-dir", str(out), "--no-store", "--no-diagnostics"])
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    done = [r for r in rows if r.get("status") == "done" and r.get("error") is None]
    assert code == 0 and len(done) == 7, [(r.get("name"), r.get("status"), r.get("error")) for r in rows]


@pytest.mark.parametrize("recipe", [Recipe(tokens="full", alpha=1.0, **SIZE),  # resized before, and it fitted
                                    Recipe(tokens="image", alpha=1.0, **SIZE),
                                    Recipe(tokens="text", alpha=0.5, **SIZE)])
def test_a_job_that_fitted_under_the_old_rule_reads_the_same_image(engine, refs, recipe):
    """Old results keep their meaning: where the caption fitted with the reference sized to the whole budget (the
    rule before issue 23), the plan sets no limit and the VL reads exactly the same input."""
    cond = engine.condition(recipe, PROMPT, refs[:1])
    old = prepare_inputs(engine.models.vl_processor, [refs[0].image], PROMPT, engine.models.caption_budget)
    assert max(int(c.shape[0]) for c in cond.captions) <= engine.models.caption_budget
    assert engine.plan_caption(recipe, PROMPT, refs[:1], len(cond.text.input_ids) if cond.text else None) == [None]
    assert cond.extractions[0].input_ids == old.input_ids
    assert "caption_plan" not in cond.describe()  # nothing limited: the record reads as every earlier one


def test_the_planner_is_torch_free():
    import subprocess
    import sys

    code = ("import sys; from vlbench.engine.caption_plan import plan_caption, VLCounts; from vlbench.recipe import "
            "Recipe; plan_caption(Recipe(tokens='full', alpha=0.5), 224, 30, [VLCounts(10, 5, 1)], [4]); "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
