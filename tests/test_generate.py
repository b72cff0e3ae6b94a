"""Generation, specified against diffusers' ZImagePipeline called directly on the same tiny model.

The Engine must add nothing of its own between the conditioning tensor and the image: the same
embeddings and seed through `ZImagePipeline(...)` give the same pixels, and `alpha 0` is exactly
Z-Image's own text path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlbench.engine.engine import Engine, Reference
from vlbench.engine.generate import check_caption, generate
from vlbench.pngs import read_png_metadata, save_png
from vlbench.recipe import Recipe
from vlbench.errors import CaptionTooLong, UserError

PROMPT = "A watercolor painting of a lighthouse on a rocky coast"
SIZE = dict(width=64, height=64, steps=2)


def diffusers_image(pipe, *, seed, steps=2, width=64, height=64, guidance=0.0, **kwargs):
    with torch.no_grad():
        out = pipe(generator=torch.Generator("cpu").manual_seed(seed), num_inference_steps=steps, height=height,
                   width=width, guidance_scale=guidance, **kwargs)
    return np.asarray(out.images[0])


def px(image):
    return np.asarray(image)


# ---------------------------------------------------------------- alpha 0 = Z-Image's own text path
def test_alpha_0_conditioning_is_exactly_zimage_encode_prompt(engine, ref_pipe):
    cond = engine.condition(Recipe(alpha=0), PROMPT, [])
    with torch.no_grad():
        expected = ref_pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)[0][0]
    assert cond.embeds.shape == expected.shape
    assert torch.equal(cond.embeds, expected)
    assert cond.extraction is None  # the VL model plays no part
    assert all(row["source"] == "qwen3" and row["layer"] == -2 for row in cond.rows)


def test_alpha_0_generation_equals_zimage_pipeline_called_with_the_prompt(engine, ref_pipe):
    result = engine.run(Recipe(alpha=0, seed=7, **SIZE), PROMPT, [])
    expected = diffusers_image(ref_pipe, seed=7, prompt=PROMPT)
    assert result.image.size == (64, 64)
    np.testing.assert_array_equal(px(result.image), expected)


# ---------------------------------------------------------------- VL conditioning -> diffusers' own sampler
@pytest.mark.parametrize("tokens", ["full", "text"])
def test_generation_equals_zimage_pipeline_with_the_same_prompt_embeds_and_seed(engine, ref_pipe, refs, tokens):
    result = engine.run(Recipe(tokens=tokens, seed=3, **SIZE), PROMPT, refs)
    embeds = result.conditioning.embeds
    expected = diffusers_image(ref_pipe, seed=3, prompt_embeds=[embeds.clone()])
    np.testing.assert_array_equal(px(result.image), expected)



def test_the_dit_runs_in_diffusers_own_grad_mode_not_inference_mode(engine, refs):
    """A compiled DiT's graphs are guarded on the grad mode: under torch.inference_mode dynamo built graphs of its
    own, whose images differed from plain compiled diffusers' (its __call__ runs under no_grad) by up to 6/255 on an
    H100 (benchmarks/results/2026-12-07_h100_eager_parity_compiled_warm_6700fc5.json). Every DiT forward of a run,
    one image or a batch, has gradients off and is not in inference mode, as in diffusers' own call."""
    from vlbench.engine.generate import generate_batch

    modes = []
    hook = engine.models.pipe.transformer.register_forward_pre_hook(
        lambda module, args: modes.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled())))
    try:
        result = engine.run(Recipe(seed=3, **SIZE), PROMPT, refs)
        generate_batch(engine.models.pipe, result.conditioning.embeds, seeds=[1, 2], steps=2, width=64, height=64,
                       guidance=0.0, budget=engine.models.caption_budget)
    finally:
        hook.remove()
    assert len(modes) == 4 and set(modes) == {(False, False)}, modes

def test_non_square_size_is_width_by_height(engine, ref_pipe, refs):
    result = engine.run(Recipe(seed=1, width=96, height=64, steps=2), PROMPT, refs)
    assert result.image.size == (96, 64)
    expected = diffusers_image(ref_pipe, seed=1, width=96, height=64, prompt_embeds=[result.conditioning.embeds])
    np.testing.assert_array_equal(px(result.image), expected)


def test_same_seed_and_recipe_reproduce_image_and_conditioning_bit_for_bit(engine, refs):
    recipe = Recipe(seed=11, **SIZE)
    first = engine.run(recipe, PROMPT, refs)
    again = Engine(engine.models).run(recipe, PROMPT, refs)  # fresh caches: a new VL forward
    assert torch.equal(first.conditioning.embeds, again.conditioning.embeds)
    np.testing.assert_array_equal(px(first.image), px(again.image))


def test_different_seed_gives_a_different_image(engine, refs):
    a = engine.run(Recipe(seed=1, **SIZE), PROMPT, refs)
    b = engine.run(Recipe(seed=2, **SIZE), PROMPT, refs)
    assert torch.equal(a.conditioning.embeds, b.conditioning.embeds)
    assert not np.array_equal(px(a.image), px(b.image))


def test_different_conditioning_gives_a_different_image(engine, refs):
    a = engine.run(Recipe(tokens="full", **SIZE), PROMPT, refs)
    b = engine.run(Recipe(tokens="image", **SIZE), PROMPT, refs)
    assert not np.array_equal(px(a.image), px(b.image))


def test_on_step_reports_every_step(engine, refs):
    seen = []
    engine.run(Recipe(steps=3, width=64, height=64), PROMPT, refs, on_step=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


# ---------------------------------------------------------------- guidance > 0 uses the negative prompt
def test_guidance_uses_the_negative_prompt_as_diffusers_does(engine, ref_pipe, refs):
    images = []
    for negative in ("", "blurry, low quality"):
        recipe = Recipe(guidance=2.5, negative_prompt=negative, seed=5, **SIZE)
        result = engine.run(recipe, PROMPT, refs)
        with torch.no_grad():
            neg = ref_pipe.encode_prompt(negative, device="cpu", do_classifier_free_guidance=False)[0]
        assert torch.equal(engine.negative(recipe), neg[0])
        expected = diffusers_image(ref_pipe, seed=5, guidance=2.5, prompt_embeds=[result.conditioning.embeds],
                                   negative_prompt_embeds=neg)
        np.testing.assert_array_equal(px(result.image), expected)
        images.append(px(result.image))
    assert not np.array_equal(*images)  # the negative prompt matters
    assert engine.negative(Recipe(guidance=0)) is None  # unused without guidance
    with pytest.raises(UserError, match="negative_prompt blurry: has no effect"):  # and refused there
        Recipe(guidance=0, negative_prompt="blurry")


def test_alpha_0_guided_equals_zimage_pipeline_with_prompt_and_negative_prompt(engine, ref_pipe):
    result = engine.run(Recipe(alpha=0, guidance=3.0, negative_prompt="dark", seed=2, **SIZE), PROMPT, [])
    expected = diffusers_image(ref_pipe, seed=2, guidance=3.0, prompt=PROMPT, negative_prompt="dark")
    np.testing.assert_array_equal(px(result.image), expected)


# ---------------------------------------------------------------- caption budget: refused before the DiT runs
@pytest.fixture
def dit_calls(engine):
    calls = []
    handle = engine.models.pipe.transformer.register_forward_pre_hook(lambda *a: calls.append(1))
    yield calls
    handle.remove()


def test_caption_budget_is_read_from_the_dit_config(engine):
    assert engine.models.caption_budget == engine.models.pipe.transformer.config.axes_lens[0] - 32


def test_caption_over_budget_raises_before_the_dit_runs(engine, dit_calls):
    pipe, budget = engine.models.pipe, engine.models.caption_budget
    width = engine.models.caption_width
    with pytest.raises(CaptionTooLong, match=f"{budget + 1} tokens.*{budget}"):
        generate(pipe, torch.zeros(budget + 1, width), seed=0, steps=2, width=64, height=64, guidance=0.0,
                 budget=budget)
    assert dit_calls == []
    with pytest.raises(CaptionTooLong):  # the negative prompt is a caption too
        generate(pipe, torch.zeros(4, width), seed=0, steps=2, width=64, height=64, guidance=2.0,
                 negative_embeds=torch.zeros(budget + 1, width), budget=budget)
    assert dit_calls == []
    with pytest.raises(CaptionTooLong, match="empty"):
        generate(pipe, torch.zeros(0, width), seed=0, steps=2, width=64, height=64, guidance=0.0, budget=budget)
    assert dit_calls == []


def test_caption_of_exactly_the_budget_runs(engine, dit_calls):
    pipe, budget = engine.models.pipe, engine.models.caption_budget
    image = generate(pipe, torch.randn(budget, engine.models.caption_width, generator=torch.Generator().manual_seed(0)),
                     seed=0, steps=1, width=32, height=32, guidance=0.0, budget=budget)
    assert image.size == (32, 32)
    assert dit_calls


def _prompt_of(engine, n_tokens: int) -> str:
    """A prompt whose Z-Image template is exactly n_tokens long."""
    from vlbench.engine.encode import template_ids

    tok = engine.models.text_pipe.tokenizer
    for extra in range(n_tokens):  # " fox" is one token; the first word may take a few
        prompt = "fox" + " fox" * (n_tokens - len(template_ids(tok, "")[0]) - 1 - extra)
        if len(template_ids(tok, prompt)[0]) == n_tokens:
            return prompt
    raise AssertionError(f"no prompt of {n_tokens} tokens")


def test_alpha_0_prompt_over_the_caption_budget_is_refused_before_the_dit(engine, dit_calls):
    budget = engine.models.caption_budget
    prompt = _prompt_of(engine, budget + 1)
    with pytest.raises(CaptionTooLong, match=f"{budget + 1} tokens"):
        engine.run(Recipe(alpha=0, **SIZE), prompt, [])
    assert dit_calls == []


def test_alpha_0_prompt_over_zimages_text_limit_is_refused_not_truncated(engine):
    from vlbench.engine.encode import MAX_SEQUENCE_LENGTH
    from vlbench.errors import UserError

    prompt = _prompt_of(engine, MAX_SEQUENCE_LENGTH + 1)
    with pytest.raises(UserError, match=f"{MAX_SEQUENCE_LENGTH + 1} tokens.*{MAX_SEQUENCE_LENGTH}"):
        engine.condition(Recipe(alpha=0), prompt, [])
    assert engine.condition(Recipe(alpha=0), _prompt_of(engine, 40), []).embeds.shape[0] == 40


def test_check_caption_bounds():
    check_caption(1, 1)
    check_caption(1504, 1504)
    with pytest.raises(CaptionTooLong):
        check_caption(1505, 1504)
    with pytest.raises(CaptionTooLong):
        check_caption(0, 1504)


# ---------------------------------------------------------------- PNG output
def test_png_metadata_round_trips_and_the_save_is_atomic(tmp_path):
    from PIL import Image

    image = Image.new("RGB", (32, 16), (10, 200, 30))
    meta = {"recipe": Recipe().to_dict(), "prompt": "ünïcode \"quoted\"\nnew line", "seed": 2**40,
            "environment": {"torch": torch.__version__}, "timings": {"generation": 0.25}}
    out = save_png(image, tmp_path / "sub" / "out.png", meta)
    assert out == tmp_path / "sub" / "out.png"
    assert read_png_metadata(out) == meta
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["out.png"]
    with Image.open(out) as back:
        np.testing.assert_array_equal(np.asarray(back.convert("RGB")), np.asarray(image))
    # Overwriting replaces the file whole.
    save_png(Image.new("RGB", (8, 8)), out, {"seed": 1})
    assert read_png_metadata(out) == {"seed": 1}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["out.png"]


def test_a_failed_save_leaves_neither_a_partial_png_nor_a_temp_file(tmp_path):
    from PIL import Image

    import vlbench.files as files

    out = tmp_path / "out.png"
    save_png(Image.new("RGB", (8, 8)), out, {"seed": 0})
    real_fsync = files._fsync_file

    def full_disk(path):  # the bytes are in the temp file; the disk fills before they are durable
        assert path.name.endswith(".tmp") and path.read_bytes()
        raise OSError(28, "No space left on device")

    files._fsync_file = full_disk
    try:
        with pytest.raises(OSError, match="No space left"):
            save_png(Image.new("RGB", (8, 8), "red"), out, {"seed": 1})
    finally:
        files._fsync_file = real_fsync
    assert read_png_metadata(out) == {"seed": 0}  # the earlier file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_png_without_vlbench_metadata_reads_as_empty(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert read_png_metadata(tmp_path / "plain.png") == {}


# ---------------------------------------------------------------- attend: the continuous strength
@pytest.mark.parametrize("fields", [dict(intra_ratio="natural"), dict(intra_ratio=0.5, attend_ratio="token-odds")])
def test_attend_at_the_natural_share_is_plain_concatenation_and_equals_diffusers_with_the_same_embeds(
        engine, ref_pipe, refs, fields):
    """At `natural` (and at token-odds 0.5) both sources weigh 1: no bias is installed and the DiT is diffusers' own,
    bit for bit."""
    from vlbench.recipe import Recipe as R

    result = engine.run(R(**fields, seed=2, **SIZE), PROMPT, refs)
    assert result.conditioning.weights is None
    expected = diffusers_image(ref_pipe, seed=2, prompt_embeds=[result.conditioning.embeds.clone()])
    np.testing.assert_array_equal(px(result.image), expected)


def test_the_image_changes_continuously_with_an_attend_ratio(engine, refs):
    def image(r):
        return px(engine.run(Recipe(intra_ratio=r, seed=5, **SIZE), PROMPT, refs).image).astype(float)

    for r in (0.2, 0.45, 0.55):
        near = np.abs(image(r) - image(r + 0.01)).mean()
        far = np.abs(image(r) - image(r + 0.4)).mean()
        assert near < far / 5, (r, near, far)


def test_caption_weights_become_log_biases_on_the_conditional_items_caption_keys(engine):
    """The joint blocks receive a float key mask: log w on each caption row of the first (conditional) item, after
    its padded image tokens; 0 elsewhere; -inf where the boolean mask hid a batch-padding position."""
    from vlbench.engine.generate import CAPTION_PAD, caption_attention

    transformer = engine.models.pipe.transformer
    layer = transformer.layers[0]
    weights = torch.tensor([1.0, 0.5, 0.25, 1.0, 0.125])
    x_pad, cap_pad, total = 64, 32, 64 + 32
    hidden = torch.zeros(2, total + 32, transformer.config.dim)
    mask = torch.ones(2, total + 32, dtype=torch.bool)
    mask[0, total:] = False  # item 0 is shorter: batch padding at its end
    with caption_attention(transformer, weights):
        (hook,) = layer._forward_pre_hooks.values()
        args = hook(layer, (hidden, mask, None, None, None, None, None))
    assert len(layer._forward_pre_hooks) == 0  # removed on the way out
    float_mask = args[1]
    assert float_mask.dtype == hidden.dtype and float_mask.shape == (2, total + 32)
    assert torch.equal(float_mask[0, x_pad:x_pad + 5], weights.log())
    assert torch.equal(float_mask[0, :x_pad], torch.zeros(x_pad)) and torch.equal(float_mask[0, x_pad + 5:total],
                                                                                   torch.zeros(total - x_pad - 5))
    assert torch.isinf(float_mask[0, total:]).all() and torch.equal(float_mask[1], torch.zeros(total + 32))
    assert cap_pad == CAPTION_PAD
    with caption_attention(transformer, torch.ones(5)):  # all weights 1: nothing installed at all
        assert len(layer._forward_pre_hooks) == 0


@pytest.mark.parametrize("fields, biased", [
    (dict(alpha=1.0, tokens="full"), False),
    (dict(alpha=1.0, intra_ratio="natural"), False),
    (dict(alpha=1.0, intra_ratio=0.5, attend_ratio="token-odds"), False),
    (dict(alpha=1.0, intra_ratio=0.5), True),  # a share of 0.5: the counts differ, so the weights do
    (dict(alpha=1.0, intra_ratio=0.3), True),
    (dict(alpha=1.0, intra_ratio=0.3, intra_policy="split"), False),
    (dict(alpha=0.3, tokens="image"), True),
    (dict(alpha="natural", tokens="image"), False),
    (dict(alpha=0.3, tokens="image", alpha_policy="split"), False),
])
def test_attention_bias_says_exactly_when_the_conditioning_carries_weights(engine, refs, fields, biased):
    """Recipe.attention_bias (checked before any model runs) is true exactly when the engine's conditioning has
    caption weights other than 1, and then sdpa-flash, which takes no mask, is refused in one line."""
    from vlbench.engine.engine import check_attention

    recipe = Recipe(**fields, **SIZE)
    cond = engine.condition(recipe, PROMPT, refs)
    assert recipe.attention_bias == (cond.weights is not None) == biased
    check_attention(recipe, "sdpa")
    if biased:
        with pytest.raises(UserError) as e:
            check_attention(recipe, "sdpa-flash")
        assert "attention" in str(e.value) and "sdpa-flash" in str(e.value) and "\n" not in str(e.value)
    else:
        check_attention(recipe, "sdpa-flash")
