"""Conditioning recipes, specified against transformers and diffusers called directly on the tiny models.

Every blend the Engine builds must equal the same blend done by hand: hidden states from a plain
`Qwen3VLForConditionalGeneration.model(**processor(...), output_hidden_states=True)` forward (positions
from the processor's own special-token ids), Z-Image's own `encode_prompt`, and the `blend.py`
functions applied to those rows. No mocks: a recipe's numbers come from the real (tiny) models.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_image
from vlbench.engine import blend
from vlbench.engine.engine import Engine, Reference
from vlbench.engine.models import Models
from vlbench.recipe import Recipe
from vlbench.errors import CaptionTooLong, UserError

PROMPT = "A photo of a red fox sitting in fresh snow"
POLICIES = ["pool", "resample", "truncate", "concat"]
POSITIONWISE = ["pool", "resample", "truncate"]
SIZE = dict(width=64, height=64, steps=2)


# ---------------------------------------------------------------- reference side: transformers and diffusers alone
class VLRef:
    """Qwen3-VL loaded with transformers alone; positions from the processor's special-token ids."""

    def __init__(self, vl_dir):
        from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

        self.processor = AutoProcessor.from_pretrained(vl_dir)
        self.model = Qwen3VLForConditionalGeneration.from_pretrained(vl_dir, dtype=torch.float32).eval()
        self.image_pad = self.processor.image_token_id
        self.vision_start = self.processor.vision_start_token_id
        self.vision_end = self.processor.vision_end_token_id
        self._memo: dict = {}

    @torch.no_grad()
    def forward(self, images: tuple, text: str | None):
        """(input_ids, hidden_states list) of one forward over (images, text); memoised per input."""
        key = (tuple(r.path for r in images), text)
        if key not in self._memo:
            content = [{"type": "image"} for _ in images]
            if text is not None:
                content.append({"type": "text", "text": text})
            rendered = self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                          add_generation_prompt=True, tokenize=False)
            kwargs = {"images": [r.image for r in images]} if images else {}
            inputs = self.processor(text=rendered, return_tensors="pt", **kwargs)
            out = self.model.model(**inputs, output_hidden_states=True)
            self._memo[key] = (inputs["input_ids"][0].tolist(), [h[0] for h in out.hidden_states])
        return self._memo[key]

    def vision_mask(self, ids):
        """True inside vision blocks, both markers included."""
        mask, inside = [], False
        for t in ids:
            inside = inside or t == self.vision_start
            mask.append(inside)
            if t == self.vision_end:
                inside = False
        return mask

    def positions(self, ids, selection):
        vision = self.vision_mask(ids)
        if selection == "full":
            return list(range(len(ids)))
        if selection == "image":
            return [i for i, t in enumerate(ids) if t == self.image_pad]
        if selection == "image-markers":
            return [i for i, v in enumerate(vision) if v]
        if selection == "text":
            return [i for i, v in enumerate(vision) if not v]
        raise AssertionError(selection)

    def rows(self, images, text, selection, layer=-2):
        """hidden_states[layer][positions(selection)] of the forward over (images, text)."""
        ids, hidden = self.forward(tuple(images), text)
        return hidden[layer][self.positions(ids, selection)]


@pytest.fixture(scope="module")
def vlref(tiny_dirs):
    return VLRef(tiny_dirs.vl)


@pytest.fixture(scope="module")
def zpipe(tiny_dirs):
    """Z-Image loaded by diffusers alone, with its own Qwen3-4B text encoder."""
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(tiny_dirs.zimage, torch_dtype=torch.float32).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def qwen3(zpipe):
    """Z-Image's own encoding of PROMPT: [Lq, D]."""
    with torch.no_grad():
        return zpipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)[0][0]


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    d = tmp_path_factory.mktemp("recipes")
    return {
        "a": Reference.open(make_image(d / "a.png", size=(96, 64))),
        "b": Reference.open(make_image(d / "b.png", size=(80, 144), color=(20, 160, 220))),
    }


def same(a, b):
    """Equal, or equal to float32 rounding (two separately loaded copies of the same weights)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.equal(a, b) or torch.allclose(a, b, atol=1e-6, rtol=1e-6), (a - b).abs().max()


def mapped(other, length, policy, base):
    """`other` after the policy's length mapping onto `length` rows (concat keeps it as it is)."""
    return other if policy == "concat" else blend.map_length(other, length, policy, base=base)


def test_the_fixtures_lengths_make_every_policy_do_something(vlref, refs, qwen3):
    """Image rows outnumber text rows, so pool/resample/truncate all change the image selection's length."""
    text = vlref.rows([refs["a"]], PROMPT, "text")
    image = vlref.rows([refs["a"]], PROMPT, "image")
    assert text.shape[0] == qwen3.shape[0] < image.shape[0]
    assert not torch.allclose(blend.pool(image, text.shape[0]), blend.resample(image, text.shape[0]))


# ---------------------------------------------------------------- the ends of every ratio, under every policy
@pytest.mark.parametrize("policy", POLICIES)
def test_intra_ratio_0_is_exactly_the_text_selection(engine, vlref, refs, policy):
    cond = engine.condition(Recipe(intra_ratio=0.0, length_policy=policy), PROMPT, [refs["a"]])
    text = engine.condition(Recipe(tokens="text"), PROMPT, [refs["a"]])
    assert torch.equal(cond.embeds, text.embeds)
    same(cond.embeds, vlref.rows([refs["a"]], PROMPT, "text"))


@pytest.mark.parametrize("policy", POLICIES)
def test_intra_ratio_1_is_the_image_selection_after_the_policys_length_mapping(engine, vlref, refs, policy):
    cond = engine.condition(Recipe(intra_ratio=1.0, length_policy=policy), PROMPT, [refs["a"]])
    text = vlref.rows([refs["a"]], PROMPT, "text")
    image = vlref.rows([refs["a"]], PROMPT, "image")
    expected = {"concat": image, "pool": blend.pool(image, len(text)), "resample": blend.resample(image, len(text)),
                "truncate": image[: len(text)]}[policy]
    same(cond.embeds, expected)


@pytest.mark.parametrize("policy", POLICIES)
def test_alpha_0_is_exactly_zimages_own_qwen3_encoding(engine, refs, qwen3, policy):
    cond = engine.condition(Recipe(alpha=0.0, length_policy=policy), PROMPT, [refs["a"]])
    assert torch.equal(cond.embeds, qwen3)
    assert cond.extractions == []  # the VL plays no part
    with pytest.raises(UserError, match="tokens text: has no effect"):  # a selection at alpha 0 is refused
        Recipe(alpha=0.0, tokens="text", length_policy=policy)


def test_alpha_1_under_concat_is_the_vl_selection_unchanged(engine, vlref, refs):
    cond = engine.condition(Recipe(alpha=1.0, tokens="full", length_policy="concat"), PROMPT, [refs["a"]])
    same(cond.embeds, vlref.rows([refs["a"]], PROMPT, "full"))


@pytest.mark.parametrize("policy", POSITIONWISE)
def test_alpha_1_is_the_vl_selection_mapped_onto_qwen3s_length(engine, vlref, refs, qwen3, policy):
    cond = engine.condition(Recipe(alpha=1.0, tokens="full", length_policy=policy), PROMPT, [refs["a"]])
    vl = vlref.rows([refs["a"]], PROMPT, "full")
    same(cond.embeds, blend.map_length(vl, len(qwen3), policy, base=qwen3))


# ---------------------------------------------------------------- intermediate ratios: blend.py by hand
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("ratio", [0.25, 0.6])
def test_intra_ratio_equals_mix_sequences_of_the_directly_computed_rows(engine, vlref, refs, policy, ratio):
    cond = engine.condition(Recipe(intra_ratio=ratio, length_policy=policy), PROMPT, [refs["a"]])
    text = vlref.rows([refs["a"]], PROMPT, "text")
    image = vlref.rows([refs["a"]], PROMPT, "image")
    expected, info = blend.mix_sequences(text, image, ratio, policy)
    same(cond.embeds, expected)
    assert len(cond.rows) == info["out_len"]


@pytest.mark.parametrize("policy", POLICIES)
def test_alpha_equals_mix_sequences_of_qwen3_and_the_vl_selection(engine, vlref, refs, qwen3, policy):
    for tokens in ("full", "text", "image"):
        cond = engine.condition(Recipe(alpha=0.4, tokens=tokens, length_policy=policy), PROMPT, [refs["a"]])
        expected, _ = blend.mix_sequences(qwen3, vlref.rows([refs["a"]], PROMPT, tokens), 0.4, policy)
        same(cond.embeds, expected)


@pytest.mark.parametrize("policy", POSITIONWISE)
def test_position_wise_blends_are_continuous_in_their_ratio(engine, vlref, refs, qwen3, policy):
    text = vlref.rows([refs["a"]], PROMPT, "text")
    image = mapped(vlref.rows([refs["a"]], PROMPT, "image"), len(text), policy, text)
    full = mapped(vlref.rows([refs["a"]], PROMPT, "full"), len(qwen3), policy, qwen3)
    step = 1e-3
    for knob, base, other in (("intra_ratio", text, image), ("alpha", qwen3, full)):
        # the change over a 1e-3 step is 1e-3 of the distance between the two ends, row by row
        bound = step * (other - base).abs().max() * 1.01 + 1e-5
        starts = (0.0, 0.5, 1 - step)
        for r in starts:
            a = engine.condition(Recipe(**{knob: r}, length_policy=policy), PROMPT, [refs["a"]]).embeds
            b = engine.condition(Recipe(**{knob: min(r + step, 1.0)}, length_policy=policy), PROMPT, [refs["a"]]).embeds
            assert a.shape == b.shape, (knob, r)
            assert 0 < (a - b).abs().max() <= bound, (knob, r)


# ---------------------------------------------------------------- per-role layers: one forward, two layers
def test_image_and_text_layers_pick_their_hidden_states_entries_for_tokens_full(engine, vlref, refs):
    cond = engine.condition(Recipe(tokens="full", image_layer=-5, text_layer=3), PROMPT, [refs["a"]])
    ids, hidden = vlref.forward((refs["a"],), PROMPT)
    vision = vlref.vision_mask(ids)  # image pads and both vision markers take image_layer
    expected = torch.stack([hidden[-5][p] if vision[p] else hidden[3][p] for p in range(len(ids))])
    same(cond.embeds, expected)
    assert not torch.allclose(hidden[-5], hidden[-2]) and not torch.allclose(hidden[3], hidden[-2])
    assert [row["layer"] for row in cond.rows] == [-5 if v else 3 for v in vision]
    # only one of them set: the other role keeps `layer`
    only_image = engine.condition(Recipe(tokens="full", layer=-3, image_layer=-5), PROMPT, [refs["a"]])
    same(only_image.embeds, torch.stack([hidden[-5][p] if vision[p] else hidden[-3][p] for p in range(len(ids))]))


@pytest.mark.parametrize("policy", ["pool", "concat"])
def test_intra_blend_takes_image_rows_from_image_layer_and_text_rows_from_text_layer(engine, vlref, refs, policy):
    recipe = Recipe(intra_ratio=0.5, image_layer=-5, text_layer=3, length_policy=policy)
    cond = engine.condition(recipe, PROMPT, [refs["a"]])
    text = vlref.rows([refs["a"]], PROMPT, "text", layer=3)
    image = vlref.rows([refs["a"]], PROMPT, "image", layer=-5)
    same(cond.embeds, blend.mix_sequences(text, image, 0.5, policy)[0])


# ---------------------------------------------------------------- dual extraction: two forwards, one mix
@pytest.mark.parametrize("policy", ["pool", "truncate", "concat"])
def test_dual_recipe_equals_blending_two_single_extractions_done_directly(engine, vlref, refs, policy):
    recipe = Recipe(dual=True, style_vl_text="none", style_tokens="image", style_layer=-4,
                    content_vl_text="prompt", content_tokens="text", content_layer=-3, dual_ratio=0.35,
                    length_policy=policy)
    cond = engine.condition(recipe, PROMPT, [refs["a"]])
    style = vlref.rows([refs["a"]], None, "image", layer=-4)  # the image read with no text at all
    content = vlref.rows([refs["a"]], PROMPT, "text", layer=-3)
    same(cond.embeds, blend.mix_sequences(content, style, 0.35, policy)[0])
    assert [ex.vl_text for ex in cond.extractions] == [PROMPT, None]  # [content, style]
    # the ends are the two passes
    same(engine.condition(recipe.replace(dual_ratio=0.0), PROMPT, [refs["a"]]).embeds, content)
    same(engine.condition(recipe.replace(dual_ratio=1.0), PROMPT, [refs["a"]]).embeds,
         mapped(style, len(content), policy, content))


# ---------------------------------------------------------------- per-token ratio curves
@pytest.mark.parametrize("policy", POSITIONWISE)
def test_alpha_linear_curve_runs_from_qwen3s_first_row_to_the_mapped_vl_last_row(engine, vlref, refs, qwen3, policy):
    recipe = Recipe(alpha=0.0, alpha_end=1.0, curve="linear", tokens="full", length_policy=policy)
    cond = engine.condition(recipe, PROMPT, [refs["a"]])
    vl = mapped(vlref.rows([refs["a"]], PROMPT, "full"), len(qwen3), policy, qwen3)
    assert cond.embeds.shape == qwen3.shape
    assert torch.equal(cond.embeds[0], qwen3[0])
    same(cond.embeds[-1], vl[-1])
    same(cond.embeds, blend.mix(qwen3, vl, blend.ratio_curve(len(qwen3), 0.0, 1.0, "linear")))


def test_intra_ratio_curve_equals_mix_with_the_per_token_ratios(engine, vlref, refs):
    recipe = Recipe(intra_ratio=0.2, intra_ratio_end=0.9, curve="ease-in", length_policy="resample")
    cond = engine.condition(recipe, PROMPT, [refs["a"]])
    text = vlref.rows([refs["a"]], PROMPT, "text")
    image = blend.resample(vlref.rows([refs["a"]], PROMPT, "image"), len(text))
    same(cond.embeds, blend.mix(text, image, blend.ratio_curve(len(text), 0.2, 0.9, "ease-in")))


# ---------------------------------------------------------------- several references
@pytest.mark.parametrize("policy", POSITIONWISE)
def test_separate_references_are_the_weighted_average_mapped_onto_the_first_ones_length(engine, vlref, refs, qwen3,
                                                                                       policy):
    a, b = refs["a"], refs["b"]
    recipe = Recipe(multi_image="separate", image_weights=(1, 3), length_policy=policy)
    cond = engine.condition(recipe, PROMPT, [a, b])
    first = vlref.rows([a], PROMPT, "full")
    second = vlref.rows([b], PROMPT, "full")
    assert first.shape[0] != second.shape[0]
    expected = 0.25 * first + 0.75 * blend.map_length(second, first.shape[0], policy, base=first)
    # alpha 1 under a position-wise policy: the VL mapped onto Qwen3-4B's length (continuous with alpha < 1)
    same(cond.embeds, blend.map_length(expected, qwen3.shape[0], policy, base=qwen3))
    counts = [len(vlref.positions(vlref.forward((r,), PROMPT)[0], "image")) for r in (a, b)]
    assert [ex.image_token_counts for ex in cond.extractions] == [[c] for c in counts]


def test_joint_extraction_of_two_references_has_two_vision_blocks(engine, vlref, refs):
    a, b = refs["a"], refs["b"]
    cond = engine.condition(Recipe(), PROMPT, [a, b])
    ids, _ = vlref.forward((a, b), PROMPT)
    ex = cond.extraction
    assert ex.roles.count("vision_start") == ex.roles.count("vision_end") == 2
    assert ex.input_ids == ids and len(cond.extractions) == 1
    same(cond.embeds, vlref.rows([a, b], PROMPT, "full"))
    single = [vlref.positions(vlref.forward((r,), PROMPT)[0], "image") for r in (a, b)]
    assert ex.image_token_counts == [len(p) for p in single]


def test_the_number_of_image_weights_must_match_the_references(engine, refs):
    with pytest.raises(UserError, match="image_weights"):
        engine.condition(Recipe(multi_image="separate", image_weights=(1, 3), length_policy="pool"), PROMPT, [refs["a"]])
    with pytest.raises(UserError, match="image_weights"):
        engine.condition(Recipe(multi_image="separate", image_weights=(1, 3, 1), length_policy="pool"), PROMPT,
                         [refs["a"], refs["b"]])


# ---------------------------------------------------------------- one VL forward per distinct (images, VL text)
@pytest.fixture(scope="module")
def fresh_models(tiny_spec):
    """Models of their own, so the counting hook never sees another test's forwards."""
    return Models(tiny_spec)


@pytest.fixture
def vl_calls(fresh_models):
    calls = []
    handle = fresh_models.vl.model.model.register_forward_pre_hook(lambda *a, **k: calls.append(1))
    yield calls
    handle.remove()


def test_a_sweep_of_layers_selections_ratios_and_policies_costs_one_forward_per_input(fresh_models, vl_calls, refs):
    engine = Engine(fresh_models)
    sweep = [Recipe(tokens=t, layer=layer) for t in ("full", "image", "image-markers", "text", "prompt")
             for layer in (-1, -2, -5, 3)]
    sweep += [Recipe(tokens="full", image_layer=-4, text_layer=2)]
    sweep += [Recipe(intra_ratio=r, length_policy=p, image_layer=-3) for r in (0.0, 0.3, 1.0) for p in POLICIES]
    sweep += [Recipe(alpha=r, tokens=t, length_policy=p)
              for r in (0.3, 0.7) for t in ("text", "full") for p in POLICIES]
    sweep += [Recipe(alpha=0.0, alpha_end=1.0, curve="ease-out", length_policy="pool"), Recipe(alpha=0.0)]
    outputs = [engine.condition(r, PROMPT, [refs["a"]]).embeds for r in sweep]
    assert engine.vl_forwards == 1 and len(vl_calls) == 1
    assert len({tuple(o.flatten()[:8].tolist()) + (o.shape[0],) for o in outputs}) > 20  # they really differ
    # a new VL text or a new image is a new input: one forward each, and only once
    for _ in range(2):
        engine.condition(Recipe(vl_text="none", tokens="image"), PROMPT, [refs["a"]])
        engine.condition(Recipe(vl_text="a red square", layer=-3), PROMPT, [refs["a"]])
        engine.condition(Recipe(tokens="text"), PROMPT, [refs["b"]])
        engine.condition(Recipe(tokens="text"), "another prompt", [refs["a"]])
    assert engine.vl_forwards == 5 and len(vl_calls) == 5
    # a dual recipe over inputs already seen costs nothing
    engine.condition(Recipe(dual=True, style_vl_text="none", content_vl_text="prompt"), PROMPT, [refs["a"]])
    assert engine.vl_forwards == 5 and len(vl_calls) == 5


def test_a_dual_recipe_costs_two_inputs_in_one_batched_call_and_nothing_when_run_again(fresh_models, vl_calls, refs):
    engine = Engine(fresh_models)
    recipe = Recipe(dual=True, style_vl_text="none", style_tokens="image", style_layer=-4,
                    content_vl_text="prompt", content_tokens="text", content_layer=-3, dual_ratio=0.5)
    first = engine.condition(recipe, PROMPT, [refs["a"]])
    # two distinct inputs, run as ONE batched model call (CPU always batches)
    assert engine.vl_forwards == 2 and engine.vl_batched_calls == 1 and len(vl_calls) == 1
    again = engine.condition(recipe.replace(dual_ratio=0.8, length_policy="concat"), PROMPT, [refs["a"]])
    engine.condition(recipe, PROMPT, [refs["a"]])
    assert engine.vl_forwards == 2 and len(vl_calls) == 1
    assert not torch.equal(first.embeds[: again.embeds.shape[0]], again.embeds[: first.embeds.shape[0]])


# ---------------------------------------------------------------- the disk extraction cache
def test_disk_cache_serves_a_fresh_engine_and_rejects_a_damaged_entry(fresh_models, vl_calls, refs, tmp_path):
    recipe = Recipe(tokens="full", layer=-3)
    writer = Engine(fresh_models, cache_dir=tmp_path)
    first = writer.condition(recipe, PROMPT, [refs["a"]])
    entries = list(tmp_path.rglob("*.safetensors"))
    assert len(entries) == 1 and writer.vl_forwards == 1 and len(vl_calls) == 1

    reader = Engine(fresh_models, cache_dir=tmp_path)  # as a new process would: empty memory cache
    second = reader.condition(recipe, PROMPT, [refs["a"]])
    assert reader.vl_forwards == 0 and len(vl_calls) == 1 and reader.disk_cache.hits == 1
    assert torch.equal(second.extraction.hidden_states, first.extraction.hidden_states)
    assert torch.equal(second.embeds, first.embeds)
    for name in ("input_ids", "roles", "decoded", "vl_text", "image_sizes", "source_sizes", "image_token_counts"):
        assert getattr(second.extraction, name) == getattr(first.extraction, name), name
    assert second.describe() == first.describe()

    data = bytearray(entries[0].read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    entries[0].write_bytes(bytes(data))
    third = Engine(fresh_models, cache_dir=tmp_path)
    recomputed = third.condition(recipe, PROMPT, [refs["a"]])
    assert third.disk_cache.rejected == 1 and third.disk_cache.hits == 0
    assert third.vl_forwards == 1 and len(vl_calls) == 2
    assert torch.equal(recomputed.extraction.hidden_states, first.extraction.hidden_states)
    assert torch.equal(recomputed.embeds, first.embeds)
    fourth = Engine(fresh_models, cache_dir=tmp_path)  # the recomputed entry replaced the damaged one
    fourth.condition(recipe, PROMPT, [refs["a"]])
    assert fourth.vl_forwards == 0 and fourth.disk_cache.hits == 1


def test_disk_cache_rejects_an_entry_whose_token_ids_were_altered(fresh_models, refs, tmp_path):
    """The roles and token ids stored beside the tensor are verified too: a one-digit change still parses."""
    writer = Engine(fresh_models, cache_dir=tmp_path)
    first = writer.condition(Recipe(tokens="text"), PROMPT, [refs["a"]])
    entry, = tmp_path.rglob("*.safetensors")
    data = bytearray(entry.read_bytes())
    at = data.index(b"input_ids")
    at += next(i for i, c in enumerate(data[at:]) if chr(c).isdigit())
    data[at] = ord("2") if data[at] != ord("2") else ord("3")  # still valid JSON, a different token id
    entry.write_bytes(bytes(data))
    reader = Engine(fresh_models, cache_dir=tmp_path)
    again = reader.condition(Recipe(tokens="text"), PROMPT, [refs["a"]])
    assert reader.disk_cache.rejected == 1 and reader.vl_forwards == 1
    assert again.extraction.input_ids == first.extraction.input_ids


def test_disk_cache_keys_on_the_vl_text_and_the_image(fresh_models, refs, tmp_path):
    engine = Engine(fresh_models, cache_dir=tmp_path)
    engine.condition(Recipe(), PROMPT, [refs["a"]])
    engine.condition(Recipe(vl_text="none"), PROMPT, [refs["a"]])
    engine.condition(Recipe(), PROMPT, [refs["b"]])
    assert len(list(tmp_path.rglob("*.safetensors"))) == 3 and engine.vl_forwards == 3


# ---------------------------------------------------------------- the caption budget of the final sequence
@pytest.fixture
def dit_calls(engine):
    calls = []
    handle = engine.models.pipe.transformer.register_forward_pre_hook(lambda *a, **k: calls.append(1))
    yield calls
    handle.remove()


def test_a_blend_over_the_caption_budget_raises_before_the_dit_runs(engine, tmp_path, dit_calls):
    budget = engine.models.caption_budget
    long_prompt = " ".join(["a lighthouse on a rocky coast in the fog"] * 30)
    qwen3_len = engine.condition(Recipe(alpha=0.0), long_prompt, []).embeds.shape[0]
    big = Reference.open(make_image(tmp_path / "big.png", size=(1024, 768)))
    recipe = Recipe(alpha=0.5, tokens="full", vl_text="none", length_policy="concat", **SIZE)
    vl = engine.condition(recipe.replace(alpha=1.0), long_prompt, [big])
    assert vl.embeds.shape[0] <= budget < qwen3_len  # the VL alone was fitted; the concatenation is not
    cond = engine.condition(recipe, long_prompt, [big])
    assert cond.embeds.shape[0] > budget
    with pytest.raises(CaptionTooLong, match=rf"{cond.embeds.shape[0]} tokens.*{budget}.*pool"):
        engine.run(recipe, long_prompt, [big])
    assert dit_calls == []


def test_truncate_keeps_only_the_first_image_rows(engine, vlref, refs, qwen3):
    cond = engine.condition(Recipe(alpha=0.5, tokens="image", length_policy="truncate"), PROMPT, [refs["a"]])
    image = vlref.rows([refs["a"]], PROMPT, "image")
    assert image.shape[0] > qwen3.shape[0]
    same(cond.embeds, blend.mix(qwen3, image[: qwen3.shape[0]], 0.5))
    assert any("TOP-LEFT" in w for w in cond.warnings)
    ids, _ = vlref.forward((refs["a"],), PROMPT)
    first_pads = vlref.positions(ids, "image")[: qwen3.shape[0]]
    assert [row["other_positions"][0] for row in cond.rows] == first_pads  # the top-left patches, in raster order


# ---------------------------------------------------------------- img2img from the first reference
def test_strength_outside_0_1_is_a_user_error():
    with pytest.raises(UserError, match="strength"):
        Recipe(strength=1.5)


def test_img2img_without_a_reference_is_a_user_error(engine):
    with pytest.raises(UserError, match="img2img starts from the first reference") as err:
        engine.run(Recipe(alpha=0.0, strength=0.5, **SIZE), PROMPT, [])
    assert err.value.field == "strength"


def test_img2img_at_strength_1_starts_from_pure_noise(engine, refs):
    # alpha 0: the conditioning ignores the references, so only the init image could differ
    recipe = Recipe(alpha=0.0, strength=1.0, seed=4, **SIZE)
    a = engine.run(recipe, PROMPT, [refs["a"]])
    b = engine.run(recipe, PROMPT, [refs["b"]])
    np.testing.assert_array_equal(np.asarray(a.image), np.asarray(b.image))


def test_img2img_at_strength_half_depends_on_the_reference_and_equals_diffusers(engine, zpipe, refs):
    from diffusers import ZImageImg2ImgPipeline

    recipe = Recipe(alpha=0.0, strength=0.5, seed=4, steps=4, width=64, height=64)
    a = engine.run(recipe, PROMPT, [refs["a"]])
    b = engine.run(recipe, PROMPT, [refs["b"]])
    assert not np.array_equal(np.asarray(a.image), np.asarray(b.image))
    pipe = ZImageImg2ImgPipeline(**zpipe.components)
    pipe.set_progress_bar_config(disable=True)
    init = pipe.image_processor.resize(refs["a"].image, height=64, width=64)  # the pipeline needs the output size
    with torch.no_grad():
        expected = pipe(prompt=PROMPT, image=init, strength=0.5, num_inference_steps=4, height=64, width=64,
                        guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(4)).images[0]
    np.testing.assert_array_equal(np.asarray(a.image), np.asarray(expected))
