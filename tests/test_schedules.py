"""Conditioning schedules and the text bridge (issue 17), specified on the tiny models against diffusers' and
transformers' own calls (CPU, 64×64, 2–3 steps)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlbench.engine import bridge
from vlbench.engine.engine import Engine, Reference
from vlbench.errors import UserError
from vlbench.jobs import compact_conditioning
from vlbench.recipe import Recipe

PROMPT = "a red square on a blue field"
S = dict(width=64, height=64, steps=3)


def px(image) -> np.ndarray:
    return np.asarray(image)


def swapping_call(pipe, first, later: dict, *, seed, steps, guidance=0.0, negative=None):
    """diffusers' ZImagePipeline called directly, its documented callback_on_step_end handing it the caption of
    the next step."""
    def callback(_pipe, i, _t, tensors):
        if i + 1 in later:
            tensors["prompt_embeds"] = [later[i + 1]]
        return tensors

    with torch.no_grad():
        out = pipe(prompt_embeds=[first], negative_prompt_embeds=None if negative is None else [negative],
                   guidance_scale=guidance, num_inference_steps=steps, width=64, height=64,
                   generator=torch.Generator("cpu").manual_seed(5), callback_on_step_end=callback,
                   callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    return px(out.images[0])


# ---------------------------------------------------------------- schedules: the schema
@pytest.mark.parametrize("fields, problem", [
    (dict(schedule="0:vl, 4:qwen3, 2:vl"), "breakpoints out of order: step 2 comes after step 4"),
    (dict(schedule="0:vl, 9:qwen3"), "breakpoint 9:qwen3 is past the last step (steps 9, counted 0 … 8)"),
    (dict(schedule="0:qwen3, 3:vl", strength=0.5, steps=6), "img2img runs 3 of steps 6 at strength 0.5"),
    (dict(schedule="2:vl, 4:qwen3"), "starts at step 2"),
    (dict(schedule="0:vl, 2:paint"), "names an unknown source"),
    (dict(schedule="vl then qwen3"), "is not K:SOURCE"),
    (dict(schedule="0:vl, 2:recipe"), "conditions on what the step before it already uses (vl)"),
    (dict(schedule="0:recipe"), "has no effect"),
    (dict(schedule="0:vl"), "has no effect"),  # alpha 1: vl is the recipe's own conditioning
    (dict(schedule="0:vl, 2:qwen3", alpha=0.5), "applies only when the recipe's own conditioning is used"),
    (dict(schedule="0:alpha=1, 2:qwen3", tokens="image"), "entry '0:alpha=1' is the vl source; write 0:vl"),
    (dict(schedule="0:qwen3, 2:alpha=nan"), "alpha must be a number in [0, 1]"),
    (dict(schedule="0:alpha=0.3, 2:alpha=0.30"), "already uses (alpha=0.3)"),
    (dict(schedule="0:recipe, 2:alpha=0.5", alpha=0.5, tokens="image"), "already uses (recipe)"),
])
def test_a_bad_schedule_is_one_line_naming_it_before_any_model_loads(fields, problem):
    with pytest.raises(UserError) as info:
        Recipe(**fields)
    text = str(info.value)
    assert problem in text and "\n" not in text
    assert info.value.field in ("schedule", "alpha")


def test_a_schedule_has_one_spelling_and_round_trips_through_toml_and_the_form(tmp_path):
    from vlbench.recipe import load_recipe, parse_value, save_recipe

    recipe = Recipe(schedule=" 0 : vl,2:qwen3 ", tokens="image")
    assert recipe.schedule == "0:vl, 2:qwen3"
    assert recipe.schedule_entries == ((0, "vl"), (2, "qwen3"))
    save_recipe(recipe, tmp_path / "r.toml")
    assert load_recipe(tmp_path / "r.toml") == recipe
    assert parse_value("schedule", "0:vl, 2:qwen3") == "0:vl, 2:qwen3" and parse_value("schedule", "") is None


def test_a_schedule_decides_which_encoders_and_fields_are_in_play():
    vl_then_text = Recipe(schedule="0:vl, 2:qwen3", tokens="image")
    assert vl_then_text.uses_vl and vl_then_text.uses_qwen3 and not vl_then_text.own_used
    only_text = Recipe(schedule="0:qwen3")  # Qwen3-4B at every step: the VL is never read
    assert not only_text.uses_vl and only_text.uses_qwen3
    with pytest.raises(UserError, match="tokens image: has no effect"):
        Recipe(schedule="0:qwen3", tokens="image")


# ---------------------------------------------------------------- schedules: the engine
def test_a_constant_schedule_is_bit_identical_to_the_unscheduled_recipe(engine, refs):
    """Qwen3-4B at every step (a one-entry schedule) is the pure Qwen3-4B recipe: same pixels, same tensor."""
    plain = engine.run(Recipe(alpha=0.0, **S), PROMPT, refs)
    scheduled = engine.run(Recipe(schedule="0:qwen3", **S), PROMPT, refs)
    assert np.array_equal(px(plain.image), px(scheduled.image))
    assert torch.equal(plain.conditioning.embeds, scheduled.conditioning.embeds)


def test_swapping_in_an_identical_caption_changes_no_pixel(engine, refs):
    """The swap machinery itself (a callback that hands the pipeline a caption at a breakpoint) adds nothing."""
    from vlbench.engine.generate import generate

    cond = engine.condition(Recipe(tokens="image", **S), PROMPT, refs)
    kw = dict(seed=3, steps=3, width=64, height=64, guidance=0.0, budget=engine.models.caption_budget)
    plain = generate(engine.models.pipe, cond.embeds, **kw)
    swapped = generate(engine.models.pipe, cond.embeds, schedule=[(1, cond.embeds.clone(), None),
                                                                  (2, cond.embeds.clone(), None)], **kw)
    assert np.array_equal(px(plain), px(swapped))


@pytest.mark.parametrize("guidance", [0.0, 1.5])
def test_a_schedule_equals_diffusers_swapping_prompt_embeds_in_its_step_callback(engine, ref_pipe, refs, guidance):
    recipe = Recipe(schedule="0:vl, 2:qwen3", tokens="image", seed=5, guidance=guidance, **S)
    result = engine.run(recipe, PROMPT, refs)
    cond = result.conditioning
    vl, qwen3 = (s.embeds for s in cond.schedule)
    negative = engine.negative(recipe)
    assert torch.equal(cond.embeds, vl)
    expected = swapping_call(ref_pipe, vl, {2: qwen3}, seed=5, steps=3, guidance=guidance, negative=negative)
    assert np.array_equal(px(result.image), expected)
    # and the swap is real: the pipeline re-reads prompt_embeds at every step
    assert not np.array_equal(expected, swapping_call(ref_pipe, vl, {}, seed=5, steps=3, guidance=guidance,
                                                      negative=negative))


def test_a_one_entry_alpha_schedule_is_the_recipe_with_that_alpha(engine, refs):
    """`0:alpha=0.3` at every step is the recipe `alpha = 0.3` (same policy, weights included): pixel for pixel."""
    for policy in ("attend", "split"):
        common = dict(tokens="image", alpha_policy=policy, **S)
        scheduled = engine.run(Recipe(schedule="0:alpha=0.3", **common), PROMPT, refs)
        plain = engine.run(Recipe(alpha=0.3, **common), PROMPT, refs)
        assert np.array_equal(px(scheduled.image), px(plain.image)), policy
        assert torch.equal(scheduled.conditioning.embeds, plain.conditioning.embeds)


def test_a_ratio_that_moves_with_the_step_is_the_alpha_mix_at_each_steps_ratio(engine, ref_pipe, refs):
    """`0:alpha=0.2, 1:alpha=0.5, 2:alpha=0.8`: each step's caption is exactly the caption of the recipe with that
    alpha (same policy), and the image equals diffusers swapping those captions in its step callback."""
    common = dict(tokens="text", alpha_policy="split", **S)  # split: no caption weights to hand over
    recipe = Recipe(schedule="0:alpha=0.2, 1:alpha=0.5, 2:alpha=0.8", seed=5, **common)
    assert recipe.uses_vl and recipe.uses_qwen3 and recipe.scheduled_alphas == (0.2, 0.5, 0.8)
    result = engine.run(recipe, PROMPT, refs)
    steps = result.conditioning.schedule
    assert [(s.from_step, s.to_step, s.source) for s in steps] == [(0, 1, "alpha=0.2"), (1, 2, "alpha=0.5"),
                                                                   (2, 3, "alpha=0.8")]
    for step, alpha in zip(steps, (0.2, 0.5, 0.8)):
        fixed = engine.condition(Recipe(alpha=alpha, **common), PROMPT, refs)
        assert torch.equal(step.embeds, fixed.embeds) and step.weights is None
    assert not torch.equal(steps[0].embeds, steps[2].embeds)
    expected = swapping_call(ref_pipe, steps[0].embeds, {1: steps[1].embeds, 2: steps[2].embeds}, seed=5, steps=3)
    assert np.array_equal(px(result.image), expected)


def test_the_caption_weights_follow_the_caption_at_each_step(engine, refs):
    """Attend at 0.3 and at `natural` give the same rows (Qwen3-4B then the VL), weighted and unweighted: a schedule
    that reaches that caption at step 1 must apply its weights from step 1 on, and drop them when it leaves it."""
    common = dict(tokens="image", alpha_policy="attend", **S)
    weighted = engine.run(Recipe(alpha=0.3, schedule="0:qwen3, 1:recipe", **common), PROMPT, refs)
    plain = engine.run(Recipe(alpha="natural", schedule="0:qwen3, 1:recipe", **common), PROMPT, refs)
    w_rows, p_rows = weighted.conditioning.schedule[1], plain.conditioning.schedule[1]
    assert torch.equal(w_rows.embeds, p_rows.embeds) and p_rows.weights is None and w_rows.weights is not None
    assert not np.array_equal(px(weighted.image), px(plain.image))
    # weights on step 0 only: equal to diffusers with our bias hook on step 0 and none after the swap
    from vlbench.engine.generate import caption_attention

    recipe = Recipe(alpha=0.3, schedule="0:recipe, 2:qwen3", seed=5, **common)
    result = engine.run(recipe, PROMPT, refs)
    first, then = result.conditioning.schedule
    pipe = engine.models.pipe
    with caption_attention(pipe.transformer, first.weights) as bias:
        def callback(_pipe, i, _t, tensors):
            if i + 1 == 2:
                tensors["prompt_embeds"] = [then.embeds]
                bias.set(None)
            return tensors

        with torch.no_grad():
            out = pipe(prompt_embeds=[first.embeds], guidance_scale=0.0, num_inference_steps=3, width=64, height=64,
                       generator=torch.Generator("cpu").manual_seed(5), callback_on_step_end=callback,
                       callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    assert np.array_equal(px(result.image), px(out.images[0]))


def test_the_record_says_which_caption_conditioned_which_steps(engine, refs):
    result = engine.run(Recipe(schedule="0:vl, 2:qwen3", tokens="image", **S), PROMPT, refs)
    info = compact_conditioning(result.conditioning)
    json.dumps(info)  # the record is JSON
    first, then = info["schedule"]
    assert (first["from_step"], first["to_step"], first["source"]) == (0, 2, "vl")
    assert (then["from_step"], then["to_step"], then["source"]) == (2, 3, "qwen3")
    assert first["length"] == result.conditioning.schedule[0].embeds.shape[0] == first["role_counts"]["image"]
    assert then["source_counts"] == {"qwen3": then["length"]}
    assert info["length"] == first["length"]  # the top-level caption is step 0's


def test_same_seed_and_scheduled_recipe_reproduce_image_and_tensors(engine, refs):
    recipe = Recipe(schedule="0:vl, 1:qwen3", tokens="image", seed=11, **S)
    a, b = engine.run(recipe, PROMPT, refs), engine.run(recipe, PROMPT, refs)
    assert np.array_equal(px(a.image), px(b.image))
    assert all(torch.equal(x, y) for x, y in zip(a.conditioning.captions, b.conditioning.captions))


def test_a_schedule_in_img2img_counts_the_steps_the_sampler_runs(engine, refs):
    recipe = Recipe(schedule="0:vl, 1:qwen3", tokens="image", strength=0.5, **S)  # diffusers runs 2 of 3 steps
    seen: list[tuple[int, int]] = []
    result = engine.run(recipe, PROMPT, refs, on_step=lambda i, n: seen.append((i, n)))
    assert recipe.run_steps == len(seen) == seen[-1][1] == 2  # the schema's count is the pipeline's
    assert [(s.from_step, s.to_step) for s in result.conditioning.schedule] == [(0, 1), (1, 2)]
    with pytest.raises(UserError, match="img2img runs 2 of steps 3 at strength 0.5"):
        recipe.replace(schedule="0:vl, 2:qwen3")


# ---------------------------------------------------------------- the text bridge
def test_text_bridge_schema():
    assert Recipe(alpha=0.0, text_bridge=True).uses_qwen3
    assert Recipe(schedule="0:vl, 2:qwen3", text_bridge=True).text_bridge
    with pytest.raises(UserError, match="text_bridge true: has no effect"):
        Recipe(text_bridge=True)  # alpha 1: Qwen3-4B encodes nothing
    with pytest.raises(UserError, match="text_bridge true: describes one reference's style, and 0 references"):
        Recipe(alpha=0.0, text_bridge=True).check_inputs(0)


def test_the_description_equals_transformers_generate_on_the_same_inputs(engine, refs):
    vl = engine.models.vl
    description = engine.description(refs[0])
    processor = vl.processor
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": bridge.INSTRUCTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[refs[0].image], return_tensors="pt")
    with torch.no_grad():
        out = vl.model.generate(**inputs, do_sample=False, max_new_tokens=bridge.MAX_NEW_TOKENS)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    assert description.generated_ids == new
    assert description.input_ids == inputs["input_ids"][0].tolist()
    added = set(processor.tokenizer.added_tokens_decoder)
    assert description.token_ids == [t for t in new if t not in added]
    assert description.text == processor.tokenizer.decode(description.token_ids, skip_special_tokens=True).strip()


def test_text_bridge_conditioning_is_qwen3_4b_of_prompt_and_description_and_is_deterministic(engine, refs,
                                                                                               ref_pipe, tmp_path):
    recipe = Recipe(alpha=0.0, text_bridge=True, seed=4, **S)
    fresh = Engine(engine.models, cache_dir=tmp_path / "cache")  # empty caches
    first = fresh.run(recipe, PROMPT, refs)
    desc = first.conditioning.bridge
    joined = f"{PROMPT}\n\nStyle: {desc.text}"
    assert desc.joined(PROMPT) == joined
    with torch.no_grad():
        expected = ref_pipe.encode_prompt(joined, device="cpu", do_classifier_free_guidance=False)[0][0]
    assert torch.equal(first.conditioning.embeds, expected)
    again = Engine(engine.models, cache_dir=tmp_path / "other").run(recipe, PROMPT, refs)  # generated again
    assert again.conditioning.bridge == desc
    assert np.array_equal(px(first.image), px(again.image))
    cached = Engine(engine.models, cache_dir=tmp_path / "cache")  # read back from the disk cache
    assert cached.description(refs[0]) == desc and cached.vl_generations == 0 and fresh.vl_generations == 1
    info = compact_conditioning(first.conditioning)
    assert info["text_bridge"]["text"] == desc.text and info["text_bridge"]["instruction"] == bridge.INSTRUCTION
    assert info["text_bridge"]["token_ids"] == desc.token_ids
    assert info["qwen3"]["decoded"].count(desc.text) == 1  # what Qwen3-4B read, verbatim


# ---------------------------------------------------------------- the text bridge as the style experiments' baseline
STYLE_TYPES = {"schedule_sweep": "text_bridge", "vl_intra_token_blend": "text_bridge",
               "vl_double_conditioning": "text_bridge", "img2img_style": "text_bridge_strength_0.7"}


def test_the_style_experiments_name_the_text_bridge_as_their_baseline_and_vl_only_vs_qwen3_has_the_arm():
    from vlbench.experiments.spec import builtin_names, load_type

    for name in builtin_names():
        experiment = load_type(name)
        if name not in STYLE_TYPES:  # another type's baseline (vl_block_sweep's all_blocks) is not the bridge
            assert experiment.baseline is None or not any(
                r.recipe.text_bridge for r in experiment.recipes() if r.name == experiment.baseline), name
            continue
        assert experiment.baseline == STYLE_TYPES[name], name
        if experiment.baseline:
            (named,) = [r for r in experiment.recipes() if r.name == experiment.baseline]
            assert named.recipe.text_bridge and not named.recipe.uses_vl  # the VL speaks only through words
    bridge_arm = [r for r in load_type("vl_only_vs_qwen3").recipes() if r.recipe.text_bridge]
    assert [r.name for r in bridge_arm] == ["text_bridge"] and bridge_arm[0].recipe.alpha == 0


def test_a_type_baseline_that_is_not_a_config_is_one_line(tmp_path):
    from vlbench.experiments.spec import load_type

    path = tmp_path / "t.toml"
    path.write_text('name = "t"\nbaseline = "nope"\n[[configs]]\nname = "a"\n')
    with pytest.raises(UserError, match=r"t.toml: baseline: 'nope' is not a config of this type"):
        load_type(path)


def test_stats_compares_with_the_types_recorded_baseline_unless_told_otherwise(tmp_path, capsys):
    from test_stats import main_json, synthetic_run

    out = tmp_path / "run"
    synthetic_run(out, configs={"vl": 0.0, "text_bridge": 0.0, "other": 0.3})
    assert main_json([str(out)], capsys)["baseline"] == "vl"  # no run.json: the first config
    (out / "run.json").write_text(json.dumps({"experiment": "synthetic", "baseline": "text_bridge"}))
    assert main_json([str(out)], capsys)["baseline"] == "text_bridge"
    assert main_json([str(out), "--baseline", "other"], capsys)["baseline"] == "other"
    (out / "run.json").write_text(json.dumps({"experiment": "synthetic", "baseline": "gone"}))  # not scored here
    assert main_json([str(out)], capsys)["baseline"] == "vl"


def test_a_run_of_a_style_type_records_its_baseline(engine, refs, tmp_path):
    from vlbench.experiments.folder import read_info
    from vlbench.experiments.runner import run_experiment
    from vlbench.experiments.spec import load_type

    experiment = load_type("schedule_sweep")
    recipes = [r for r in experiment.recipes(quick=True, overrides={"steps": 2, "width": 64, "height": 64})
               if r.name in ("text_bridge", "vl_1_then_qwen3")]
    out = tmp_path / "out"
    run_experiment(Engine(engine.models), experiment, recipes, refs, [PROMPT], out, seeds=[0])
    assert read_info(out)["baseline"] == "text_bridge"
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["name"]: r["status"] for r in rows} == {"text_bridge": "done", "vl_1_then_qwen3": "done"}
    bridged = next(r for r in rows if r["name"] == "text_bridge")["conditioning"]
    assert bridged["text_bridge"]["instruction"] == bridge.INSTRUCTION
    scheduled = next(r for r in rows if r["name"] == "vl_1_then_qwen3")["conditioning"]
    assert [(e["from_step"], e["source"]) for e in scheduled["schedule"]] == [(0, "vl"), (1, "qwen3")]
