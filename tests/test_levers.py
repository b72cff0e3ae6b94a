"""issue 27: levers for VL conditioning, each specified against transformers / diffusers called directly on the tiny
models: its neutral setting equals today's output, and it changes exactly what it claims (docs/levers.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlbench.engine.engine import Reference
from vlbench.errors import UserError
from vlbench.recipe import Recipe, VLSystem

PROMPT = "A photo of a red fox sitting in fresh snow"


@pytest.fixture(scope="module")
def hf_vl(tiny_dirs):
    """Qwen3-VL loaded by transformers alone: the reference for the VL input and its hidden states."""
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_dirs.vl)
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_dirs.vl, dtype=torch.float32).eval()
    return processor, model


def _hf_inputs(processor, images, text, system=None):
    """The VL input as transformers' own chat template renders it, with an optional system message."""
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    messages = [{"role": "user", "content": content}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=rendered, images=images or None, return_tensors="pt")


def _contains(seq: list[int], part: list[int]) -> bool:
    return any(seq[i:i + len(part)] == part for i in range(len(seq) - len(part) + 1))


# ---------------------------------------------------------------- lever 4: a VL system prompt
def test_no_vl_system_is_the_stock_template_token_for_token_and_state_for_state(engine, hf_vl, refs):
    processor, model = hf_vl
    cond = engine.condition(Recipe(), PROMPT, refs)
    inputs = _hf_inputs(processor, [refs[0].image], PROMPT)
    assert cond.extraction.input_ids == inputs["input_ids"][0].tolist()
    assert "system" not in cond.extraction.decoded
    assert "vl_system" not in cond.describe()["vl"]
    with torch.no_grad():
        hidden = model.model(**inputs, output_hidden_states=True).hidden_states[-2][0]
    torch.testing.assert_close(cond.embeds, hidden, atol=1e-5, rtol=0)


@pytest.mark.parametrize("setting", ["style", "content", "Read the picture as a painter would."])
def test_vl_system_tokens_appear_in_the_recorded_vl_input_ids(engine, hf_vl, refs, setting):
    processor, model = hf_vl
    recipe = Recipe(vl_system=setting)
    text = recipe.resolve_vl_system()
    assert text == (VLSystem(setting).help if setting in VLSystem.values() else setting)
    cond = engine.condition(recipe, PROMPT, refs)
    record = cond.describe()["vl"]
    inputs = _hf_inputs(processor, [refs[0].image], PROMPT, system=text)
    assert record["input_ids"] == inputs["input_ids"][0].tolist()  # what transformers renders with the system turn
    system_ids = processor.tokenizer(f"<|im_start|>system\n{text}<|im_end|>")["input_ids"]
    assert _contains(record["input_ids"], system_ids)
    assert record["input_ids"][:len(system_ids)] == system_ids  # the system turn comes first
    assert record["vl_system"] == text
    assert record["decoded"].startswith(f"<|im_start|>system\n{text}<|im_end|>")
    # the prompt is still found, and the system turn's rows are template rows
    ex = cond.extraction
    assert processor.tokenizer.decode([ex.input_ids[i] for i in ex.positions("prompt")]) == PROMPT
    assert all(ex.roles[i] == "template" for i in range(len(system_ids)))
    with torch.no_grad():
        hidden = model.model(**inputs, output_hidden_states=True).hidden_states[-2][0]
    torch.testing.assert_close(cond.embeds, hidden, atol=1e-5, rtol=0)


def test_vl_system_changes_the_image_rows_through_attention(engine, refs):
    plain = engine.condition(Recipe(tokens="image"), PROMPT, refs)
    styled = engine.condition(Recipe(tokens="image", vl_system="style"), PROMPT, refs)
    assert plain.embeds.shape == styled.embeds.shape  # the same image rows …
    assert not torch.allclose(plain.embeds, styled.embeds, atol=1e-4)  # … read after a system turn


def test_vl_system_is_refused_where_it_has_no_effect_or_is_empty():
    with pytest.raises(UserError) as exc:
        Recipe(alpha=0.0, vl_system="style")
    assert exc.value.field == "vl_system"
    with pytest.raises(UserError) as exc:
        Recipe(vl_system="  ")
    assert exc.value.field == "vl_system"
    with pytest.raises(UserError) as exc:
        Recipe(alpha=0.5, alpha_policy="positionwise", tokens="text", vl_system="style")
    assert exc.value.field == "vl_system"


def test_a_system_turn_over_the_caption_budget_names_vl_system(engine, refs):
    # the tiny DiT's budget is 224 tokens; its tiny BPE spends more than that on the edit instruction
    with pytest.raises(UserError) as exc:
        engine.condition(Recipe(vl_system=VLSystem.EDIT.help * 2), PROMPT, refs)
    assert exc.value.field == "vl_system"


def test_a_special_token_in_the_system_text_is_a_user_error(engine, refs):
    with pytest.raises(UserError) as exc:
        engine.condition(Recipe(vl_system="hi <|im_start|>user"), PROMPT, refs)
    assert exc.value.field == "vl_system"


def test_dual_passes_both_read_the_system_turn(engine, refs):
    cond = engine.condition(Recipe(dual=True, vl_system="content"), PROMPT, refs)
    assert len(cond.extractions) == 2
    assert all(ex.vl_system == VLSystem.CONTENT.help for ex in cond.extractions)


# ---------------------------------------------------------------- lever 2: separate guidance on the VL condition
SIZE = dict(width=64, height=64, steps=2)
NEGATIVE = "blurry, low quality"


def _latents(pipe, embeds, *, seed=5, guidance=0.0, negative=None):
    with torch.no_grad():
        out = pipe(prompt_embeds=[embeds], negative_prompt_embeds=[negative] if negative is not None else None,
                   guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(seed),
                   num_inference_steps=2, width=64, height=64, output_type="latent")
    return out.images


def test_vl_guidance_0_is_diffusers_cfg_through_the_branch_hooks(engine, ref_pipe, refs):
    """The hooks at vl_guidance 0 (batched [c; q; neg]) give diffusers' own CFG of [c; neg] (float tolerance:
    a different batch changes the kernels' summation order)."""
    from vlbench.engine.guidance import vl_guidance

    cond = engine.condition(Recipe(alpha=0.5, guidance=2.0, negative_prompt=NEGATIVE), PROMPT, refs)
    c, q = cond.embeds, engine.text_encoding(PROMPT).embeds
    n = engine.text_encoding(NEGATIVE).embeds
    expected = _latents(ref_pipe, c, guidance=2.0, negative=n)
    with vl_guidance(ref_pipe.transformer, q, n, 2.0, 0.0) as stats:
        got = _latents(ref_pipe, c)
    assert stats == {"calls": 2, "items": 6, "branches": 3}  # 2 steps, [c; q; neg] each
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_vl_guidance_0_recipe_runs_diffusers_call_untouched(engine, ref_pipe, refs):
    """The default recipe installs no hook: the image is diffusers' own CFG call, pixel for pixel."""
    recipe = Recipe(guidance=1.5, negative_prompt=NEGATIVE, seed=4, **SIZE)
    result = engine.run(recipe, PROMPT, refs)
    assert "vl_guidance" not in result.conditioning.describe()
    with torch.no_grad():
        expected = ref_pipe(prompt_embeds=[result.conditioning.embeds],
                            negative_prompt_embeds=[engine.text_encoding(NEGATIVE).embeds], guidance_scale=1.5,
                            generator=torch.Generator("cpu").manual_seed(4), num_inference_steps=2, width=64,
                            height=64).images[0]
    np.testing.assert_array_equal(np.asarray(result.image), np.asarray(expected))


@pytest.mark.parametrize("guidance", [0.0, 2.0])
def test_three_branch_prediction_is_the_hand_combination_of_the_branch_predictions(engine, ref_pipe, refs,
                                                                                    guidance):
    from vlbench.engine.guidance import vl_guidance

    transformer = ref_pipe.transformer
    c = engine.condition(Recipe(), PROMPT, refs).embeds
    q, n = engine.text_encoding(PROMPT).embeds, engine.text_encoding(NEGATIVE).embeds
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator("cpu").manual_seed(0))
    t = torch.tensor([0.3])
    g_vl = 1.7

    def branch(caption):
        with torch.no_grad():
            return transformer([x], t, [caption], return_dict=False)[0][0].float()

    pc, pq, pn = branch(c), branch(q), branch(n)
    by_hand = pc + guidance * (pc - pn) + g_vl * (pc - pq)
    with vl_guidance(transformer, q, n if guidance else None, guidance, g_vl) as stats, torch.no_grad():
        got = transformer([x], t, [c], return_dict=False)[0][0]
    assert stats["items"] == (3 if guidance else 2)
    torch.testing.assert_close(got, by_hand, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, pc + guidance * (pc - pn), atol=1e-4)  # the VL term is really there


def test_vl_guidance_run_records_the_text_branch_and_changes_the_image(engine, refs):
    base = engine.run(Recipe(seed=2, **SIZE), PROMPT, refs)
    guided = engine.run(Recipe(seed=2, vl_guidance=3.0, **SIZE), PROMPT, refs)
    record = guided.conditioning.describe()["vl_guidance"]
    assert record["scale"] == 3.0
    assert record["text_branch"]["length"] == engine.text_encoding(PROMPT).embeds.shape[0]
    assert not np.array_equal(np.asarray(base.image), np.asarray(guided.image))


def test_vl_guidance_is_refused_where_it_has_no_effect():
    for bad in (dict(alpha=0.0), dict(tokens="image", vl_text="none", schedule="0:vl, 1:qwen3")):
        with pytest.raises(UserError) as exc:
            Recipe(vl_guidance=1.0, **bad)
        assert exc.value.field == "vl_guidance"
    assert Recipe(vl_guidance=1.0).uses_text_encoder  # the text-only branch needs Qwen3-4B even at alpha 1


# ---------------------------------------------------------------- lever 5: image tokens on a 2-D grid
class RopeSpy:
    """Stands in for the transformer's RoPE embedder: records every id tensor it is given, then delegates."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, ids):
        self.calls.append(ids.clone())
        return self.inner(ids)


def _caption_ids(transformer, captions, x):
    """The RoPE ids the transformer's embedder receives for each caption (its second call: latents, then
    captions), split per caption as diffusers pads them (to a multiple of 32)."""
    spy = RopeSpy(transformer.rope_embedder)
    transformer.rope_embedder = spy
    try:
        with torch.no_grad():
            transformer([x] * len(captions), torch.tensor([0.4] * len(captions)), captions, return_dict=False)
    finally:
        transformer.rope_embedder = spy.inner
    # diffusers' ids per caption: (1 + i, 0, 0) over the padded length, then one (0, 0, 0) per padding row
    sizes = [len(c) + 2 * ((-len(c)) % 32) for c in captions]
    return list(spy.calls[1].split(sizes))


def test_image_rows_rope_ids_are_their_patch_grid_and_text_rows_keep_theirs(engine, ref_pipe, refs):
    from vlbench.engine.positions import grid_positions

    cond = engine.condition(Recipe(image_positions="grid"), PROMPT, refs)
    ex = cond.extraction
    image_rows = [i for i, row in enumerate(cond.rows) if row["role"] == "image"]
    (rows, cols), = ex.image_grids
    assert cond.grids == [(image_rows[0], (rows, cols))] and len(image_rows) == rows * cols
    negative = engine.text_encoding("blurry").embeds
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator("cpu").manual_seed(1))
    transformer = ref_pipe.transformer
    plain_c, plain_n = _caption_ids(transformer, [cond.embeds, negative], x)
    with grid_positions(transformer, cond.embeds, cond.grids) as stats:
        grid_c, grid_n = _caption_ids(transformer, [cond.embeds, negative], x)
    assert stats["items"] == 1
    s = image_rows[0]
    expected = torch.tensor([[1 + s, r, c] for r in range(rows) for c in range(cols)], dtype=grid_c.dtype)
    assert torch.equal(grid_c[image_rows], expected)  # axis 0 held at the image's first position; axes 1, 2 = (r, c)
    other = [i for i in range(len(grid_c)) if i not in image_rows]
    assert torch.equal(grid_c[other], plain_c[other])  # text and padding rows: diffusers' ids
    assert torch.equal(plain_c[:len(cond.embeds)], torch.tensor([[1 + i, 0, 0] for i in range(len(cond.embeds))],
                                                                dtype=plain_c.dtype))  # (the formula's premise)
    assert torch.equal(grid_n, plain_n)  # another caption (the negative) is untouched
    assert "patchify_and_embed" not in transformer.__dict__  # the wrapper is gone on exit


def test_image_positions_sequence_is_diffusers_call_and_grid_changes_the_image(engine, ref_pipe, refs):
    plain = engine.run(Recipe(image_positions="sequence", seed=6, **SIZE), PROMPT, refs)
    with torch.no_grad():
        expected = ref_pipe(prompt_embeds=[plain.conditioning.embeds], guidance_scale=0.0,
                            generator=torch.Generator("cpu").manual_seed(6), num_inference_steps=2, width=64,
                            height=64).images[0]
    np.testing.assert_array_equal(np.asarray(plain.image), np.asarray(expected))
    assert "image_positions" not in plain.conditioning.describe()
    grid = engine.run(Recipe(image_positions="grid", seed=6, **SIZE), PROMPT, refs)
    assert torch.equal(grid.conditioning.embeds, plain.conditioning.embeds)  # the same rows, other positions
    assert not np.array_equal(np.asarray(grid.image), np.asarray(plain.image))
    record = grid.conditioning.describe()["image_positions"]
    assert record["mode"] == "grid" and record["images"][0]["grid"] == list(grid.conditioning.extraction.image_grids[0])


def test_grid_positions_follow_pooled_and_mixed_image_rows(engine, refs):
    cond = engine.condition(Recipe(alpha=0.5, alpha_policy="attend", tokens="image", pool_image_tokens=4,
                                   image_positions="grid"), PROMPT, refs)
    text_rows = engine.text_encoding(PROMPT).embeds.shape[0]
    (start, (rows, cols)), = cond.grids
    assert start == text_rows and rows * cols <= 4 and start + rows * cols == cond.embeds.shape[0]


def test_image_positions_grid_is_refused_without_image_rows(engine):
    with pytest.raises(UserError) as exc:
        Recipe(tokens="text", image_positions="grid")
    assert exc.value.field == "image_positions"
    with pytest.raises(UserError) as exc:  # tokens full without a reference: no image rows at run time
        engine.condition(Recipe(image_positions="grid"), PROMPT, [])
    assert exc.value.field == "image_positions"


def test_grid_positions_put_back_a_wrapper_that_was_there(ref_pipe):
    """Under --fast the caption buckets wrap patchify_and_embed first: the grid wrapper must leave theirs in place."""
    from vlbench.engine.positions import grid_positions

    transformer = ref_pipe.transformer
    marker = transformer.patchify_and_embed
    transformer.patchify_and_embed = marker  # stands in for the buckets' instance attribute
    try:
        with grid_positions(transformer, torch.zeros(4, 64), [(0, (2, 2))]):
            assert transformer.patchify_and_embed is not marker
        assert transformer.__dict__["patchify_and_embed"] is marker
    finally:
        del transformer.patchify_and_embed


def test_levers_that_hook_one_captions_call_never_share_a_batch():
    from vlbench.engine.batching import batch_key

    assert batch_key(Recipe()) is not None
    assert batch_key(Recipe(vl_guidance=1.0)) is None
    assert batch_key(Recipe(image_positions="grid")) is None


# ---------------------------------------------------------------- the three together, from the command line
def test_the_example_recipe_with_all_three_levers_runs_and_records_each(engine, ref_image, tmp_path, capsys):
    from pathlib import Path

    from vlbench.cli import main
    from vlbench.pngs import read_png_metadata

    example = Path(__file__).parents[1] / "examples" / "recipes" / "levers.toml"
    out = tmp_path / "o.png"
    code = main(["generate", "--tiny", "--device", "cpu", "--dtype", "fp32", "--image", str(ref_image), "--prompt",
                 PROMPT, "--recipe", str(example), "--width", "64", "--height", "64", "--steps", "2", "--out",
                 str(out)])
    assert code == 0, capsys.readouterr().err
    cond = read_png_metadata(out)["conditioning"]
    assert cond["vl"]["vl_system"] == VLSystem.STYLE.help
    assert cond["vl_guidance"]["scale"] == 1.5
    assert cond["image_positions"]["mode"] == "grid"


def test_a_lever_flag_with_no_effect_is_one_line_and_exit_2(tmp_path, capsys):
    from vlbench.cli import main

    code = main(["generate", "--tiny", "--device", "cpu", "--prompt", PROMPT, "--alpha", "0", "--vl-guidance", "1",
                 "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert code == 2 and "--vl-guidance" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- lever 1: per-block injection
def test_vl_blocks_resolve_indices_fractions_and_the_refiner(ref_pipe):
    from vlbench.engine.blocks import resolve

    transformer = ref_pipe.transformer  # the tiny DiT: 2 refiner blocks, 2 joint blocks
    assert resolve("0", transformer) == ["layers.0"]
    assert resolve("0-0.5", transformer) == ["layers.0"]  # centre 0.25 in [0, 0.5); 0.75 is not
    assert resolve("0.5-1", transformer) == ["layers.1"]
    assert resolve("refiner, 1", transformer) == ["context_refiner.0", "context_refiner.1", "layers.1"]
    for bad, words in (("5", "has 2"), ("0.4-0.6", "selects no block"), ("refiner, 0-1", "every block")):
        with pytest.raises(UserError, match=words) as exc:
            resolve(bad, transformer)
        assert exc.value.field == "vl_blocks"


def _vl_attention_by_block(engine, cond, seed=3):
    """Per joint block: the image tokens' attention mass on the caption's VL rows and on its other rows (ShareProbe,
    one per block), over a 2-step 64² generation of `cond` with its vl_blocks masks."""
    from vlbench.engine.generate import ShareProbe, generate

    transformer = engine.models.pipe.transformer
    probes = [ShareProbe(transformer, int(cond.embeds.shape[0]), 16, blocks=(i,)) for i in range(2)]
    try:
        generate(engine.models.pipe, cond.embeds, seed=seed, steps=2, width=64, height=64, guidance=0.0,
                 budget=engine.models.caption_budget, caption_weights=cond.weights,
                 hide=(cond.blocks["rows"], cond.blocks["masked"]) if cond.blocks else None)
    finally:
        for probe in probes:
            probe.remove()
    rows = cond.blocks["rows"] if cond.blocks else torch.tensor([r.get("source") == "vl" for r in cond.rows])
    return [(float(p.mass[rows].sum()), float(p.mass[~rows].sum())) for p in probes]


def test_masked_blocks_give_the_vl_rows_no_attention_and_the_chosen_blocks_do(engine, refs):
    cond = engine.condition(Recipe(alpha=0.5, alpha_policy="attend", tokens="image", vl_blocks="1"), PROMPT, refs)
    assert cond.blocks["read"] == ["layers.1"]
    assert cond.blocks["masked"] == ["context_refiner.0", "context_refiner.1", "layers.0"]
    (vl_0, other_0), (vl_1, other_1) = _vl_attention_by_block(engine, cond)
    assert vl_0 == 0.0 and other_0 > 0  # block 0 masks the VL keys: exactly no attention on them
    assert vl_1 > 0 and other_1 > 0  # block 1 reads both


def test_refiner_blocks_outside_the_selection_get_minus_inf_on_the_vl_keys(engine, refs):
    """The context refiner's key mask (a pre-hook on each refiner block's attention reads the mask it is given)."""
    from vlbench.engine.generate import generate

    cond = engine.condition(Recipe(alpha=0.5, alpha_policy="attend", tokens="image", vl_blocks="0-1"), PROMPT, refs)
    assert cond.blocks["masked"] == ["context_refiner.0", "context_refiner.1"]
    transformer = engine.models.pipe.transformer
    seen = []
    handles = [b.attention.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["attention_mask"][0].clone()),
                                                     with_kwargs=True) for b in transformer.context_refiner]
    try:
        generate(engine.models.pipe, cond.embeds, seed=1, steps=1, width=64, height=64, guidance=0.0,
                 budget=engine.models.caption_budget, hide=(cond.blocks["rows"], cond.blocks["masked"]))
    finally:
        for handle in handles:
            handle.remove()
    vl = cond.blocks["rows"]
    n = len(vl)
    assert len(seen) == 2
    for mask in seen:  # after the caption_attention hook: a float mask, -inf exactly on the VL rows
        mask = mask.reshape(-1)[:n]
        assert torch.isinf(mask[vl]).all() and torch.isfinite(mask[~vl]).all()


def test_vl_blocks_at_alpha_1_adds_qwen3_rows_and_says_so(engine, refs):
    plain = engine.condition(Recipe(tokens="image"), PROMPT, refs)
    cond = engine.condition(Recipe(tokens="image", vl_blocks="0"), PROMPT, refs)
    q = engine.text_encoding(PROMPT).embeds
    assert cond.blocks["qwen3_rows_added"] is True
    torch.testing.assert_close(cond.embeds, torch.cat([q, plain.embeds]), atol=0, rtol=0)
    assert all(r.get("added_for") == "vl_blocks" for r in cond.rows[:q.shape[0]])
    record = cond.describe()["vl_blocks"]
    assert record["qwen3_rows_added"] and record["vl_rows"] == plain.embeds.shape[0] and "rows" not in record


def test_vl_blocks_not_set_is_diffusers_call_and_refused_where_it_has_no_effect(engine, ref_pipe, refs):
    from vlbench.engine.generate import caption_attention

    with caption_attention(ref_pipe.transformer, None) as state:  # what Engine.run enters without vl_blocks
        assert not state.active
        assert all(not b._forward_pre_hooks for b in ref_pipe.transformer.layers)  # no hook at all
    with pytest.raises(UserError) as exc:
        Recipe(alpha=0.0, vl_blocks="0")
    assert exc.value.field == "vl_blocks"
    with pytest.raises(UserError) as exc:
        Recipe(alpha=0.5, alpha_policy="positionwise", tokens="text", vl_blocks="0")
    assert exc.value.field == "vl_blocks"
    with pytest.raises(UserError) as exc:
        engine.condition(Recipe(vl_blocks="refiner, 0-1"), PROMPT, refs)
    assert exc.value.field == "vl_blocks" and "every block" in exc.value.problem


# ---------------------------------------------------------------- lever 3: negative VL conditioning
def test_the_negative_branch_is_the_negative_vl_extractions_rows(engine, hf_vl, refs):
    processor, model = hf_vl
    recipe = Recipe(guidance=2.0, negative_vl_text=NEGATIVE, negative_tokens="prompt", negative_layer=-3,
                    seed=1, **SIZE)
    rendered = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": NEGATIVE}]}],
                                             add_generation_prompt=True, tokenize=False)
    inputs = processor(text=rendered, return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    neg_ids = processor.tokenizer(NEGATIVE, add_special_tokens=False)["input_ids"]
    start = next(i for i in range(len(ids)) if ids[i:i + len(neg_ids)] == neg_ids)
    with torch.no_grad():
        expected = model.model(**inputs, output_hidden_states=True).hidden_states[-3][0][start:start + len(neg_ids)]
    captions = []
    handle = engine.models.pipe.transformer.register_forward_pre_hook(lambda m, a: captions.append(list(a[2])))
    try:
        result = engine.run(recipe, PROMPT, refs)
    finally:
        handle.remove()
    assert all(len(c) == 2 for c in captions)  # diffusers' CFG: [caption; negative] in each call
    for _, negative in captions:  # what the DiT read as the negative branch, at every step
        torch.testing.assert_close(negative, expected, atol=1e-5, rtol=0)
    record = result.conditioning.describe()["negative"]
    assert record["source"] == "vl" and record["vl_text"] == NEGATIVE and record["layer"] == -3
    assert [ids[p] for p in record["positions"]] == neg_ids and record["input_ids"] == ids


def test_without_negative_vl_text_the_negative_is_qwen3s_encoding(engine, refs):
    recipe = Recipe(guidance=2.0, negative_prompt=NEGATIVE)
    torch.testing.assert_close(engine.negative(recipe), engine.text_encoding(NEGATIVE).embeds, atol=0, rtol=0)
    assert "negative" not in engine.condition(recipe, PROMPT, refs).describe()
