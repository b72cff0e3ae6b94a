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
def qwen3(ref_pipe):
    """Z-Image's own encoding of PROMPT: [Lq, D]."""
    with torch.no_grad():
        return ref_pipe.encode_prompt(PROMPT, device="cpu", do_classifier_free_guidance=False)[0][0]


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


def attended(base, other, r, meaning="share"):
    """What an attend mix gives: [base; other] (a source of weight 0 dropped) and each row's attention weight."""
    wb, wo = blend.attend_weights(r) if meaning == "token-odds" else blend.share_weights(r, len(base), len(other))
    parts = [(base, wb), (other, wo)]
    kept = [(x, w) for x, w in parts if w > 0]
    return torch.cat([x for x, _ in kept]), torch.cat([torch.full((len(x),), w) for x, w in kept])


def weights_of(cond):
    return cond.weights if cond.weights is not None else torch.ones(cond.embeds.shape[0])


def image_grid(engine, ref):
    return engine.extraction([ref], PROMPT, None).image_grids[0]


def test_the_fixtures_make_every_mix_do_something(vlref, refs, qwen3):
    """Image rows outnumber text rows; the VL's text rows of the prompt match Qwen3-4B's token for token."""
    text = vlref.rows([refs["a"]], PROMPT, "text")
    image = vlref.rows([refs["a"]], PROMPT, "image")
    assert text.shape[0] == qwen3.shape[0] < image.shape[0]


# ---------------------------------------------------------------- the ends of every ratio, under every policy
@pytest.mark.parametrize("policy", ["attend", "split"])
def test_intra_ratio_0_is_exactly_the_text_selection_and_1_the_image_selection(engine, vlref, refs, policy):
    zero = engine.condition(Recipe(intra_ratio=0.0, intra_policy=policy), PROMPT, [refs["a"]])
    one = engine.condition(Recipe(intra_ratio=1.0, intra_policy=policy), PROMPT, [refs["a"]])
    same(zero.embeds, vlref.rows([refs["a"]], PROMPT, "text"))
    same(one.embeds, vlref.rows([refs["a"]], PROMPT, "image"))  # nothing resampled at the ends
    assert zero.weights is None and one.weights is None


@pytest.mark.parametrize("policy", ["attend", "split", "positionwise"])
def test_alpha_0_is_exactly_zimages_own_qwen3_encoding_and_alpha_1_the_vl_selection(engine, vlref, refs, qwen3,
                                                                                      policy):
    cond = engine.condition(Recipe(alpha=0.0), PROMPT, [refs["a"]])
    assert torch.equal(cond.embeds, qwen3)
    assert cond.extractions == []  # the VL plays no part
    if policy != "attend":  # the default may stay; naming another policy where no mix happens is refused
        with pytest.raises(UserError, match="alpha_policy .*: has no effect"):
            Recipe(alpha=0.0, alpha_policy=policy)
    one = engine.condition(Recipe(alpha=1.0, tokens="text"), PROMPT, [refs["a"]])
    same(one.embeds, vlref.rows([refs["a"]], PROMPT, "text"))
    assert one.text is None  # Qwen3-4B is not even run


# ---------------------------------------------------------------- attend: every token whole, weighted attention
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.6])
@pytest.mark.parametrize("meaning", ["share", "token-odds"])
def test_intra_attend_is_both_selections_whole_with_the_ratio_as_a_share_or_as_token_odds(engine, vlref, refs, ratio,
                                                                                          meaning):
    cond = engine.condition(Recipe(intra_ratio=ratio, attend_ratio=meaning), PROMPT, [refs["a"]])
    text = vlref.rows([refs["a"]], PROMPT, "text")
    image = vlref.rows([refs["a"]], PROMPT, "image")
    embeds, weights = attended(text, image, ratio, meaning)
    same(cond.embeds, embeds)
    assert torch.allclose(weights_of(cond), weights)
    image_mass = float(weights[len(text):].sum())
    if meaning == "share":  # with equal logits the image rows receive exactly r of the caption's attention
        assert image_mass / float(weights.sum()) == pytest.approx(ratio, abs=1e-6)
        assert cond.weights is not None  # the counts differ, so even 0.5 weights them
    else:
        assert (cond.weights is None) == (ratio == 0.5)  # at 0.5 both weigh 1: nothing for the DiT to weight
    (account,) = cond.mixes
    assert account["prior_share"] == pytest.approx(image_mass / float(weights.sum()))
    assert account["rows"] == [len(text), len(image)]


def test_natural_is_plain_concatenation_and_its_share_is_the_row_share(engine, vlref, refs):
    cond = engine.condition(Recipe(intra_ratio="natural"), PROMPT, [refs["a"]])
    text = vlref.rows([refs["a"]], PROMPT, "text")
    image = vlref.rows([refs["a"]], PROMPT, "image")
    same(cond.embeds, torch.cat([text, image]))
    assert cond.weights is None
    (account,) = cond.mixes
    assert account["prior_share"] == pytest.approx(len(image) / (len(text) + len(image)))


def test_nested_attend_mixes_compose_as_shares(engine, vlref, refs, qwen3):
    """alpha 0.4 over intra 0.25: the VL receives 0.4 of the caption's attention prior, the image rows 0.25 of the
    VL's, so 0.1 of the whole."""
    cond = engine.condition(Recipe(alpha=0.4, intra_ratio=0.25), PROMPT, [refs["a"]])
    w = weights_of(cond)
    n_q = len(qwen3)
    n_text = len(vlref.rows([refs["a"]], PROMPT, "text"))
    total = float(w.sum())
    assert float(w[n_q:].sum()) / total == pytest.approx(0.4, abs=1e-6)
    assert float(w[n_q + n_text:].sum()) / total == pytest.approx(0.1, abs=1e-6)
    assert [m["mix"] for m in cond.mixes] == ["intra_ratio", "alpha"]


def test_alpha_attend_keeps_qwen3_and_the_vl_selection_whole(engine, vlref, refs, qwen3):
    for tokens in ("full", "text", "image", "image+template"):
        cond = engine.condition(Recipe(alpha=0.4, tokens=tokens), PROMPT, [refs["a"]])
        embeds, weights = attended(qwen3, vlref.rows([refs["a"]], PROMPT, tokens), 0.4) \
            if tokens != "image+template" else attended(qwen3, cond.embeds[len(qwen3):], 0.4)
        same(cond.embeds, embeds)
        assert torch.allclose(weights_of(cond), weights)


@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_split_shares_caption_rows_and_pools_the_image_on_its_grid(engine, vlref, refs, ratio):
    cond = engine.condition(Recipe(intra_ratio=ratio, intra_policy="split"), PROMPT, [refs["a"]])
    text = vlref.rows([refs["a"]], PROMPT, "text")
    image = vlref.rows([refs["a"]], PROMPT, "image")
    keep_text, keep_image = blend.split_counts(len(text), len(image), ratio)
    grid = image_grid(engine, refs["a"])
    target = blend.grid_for(grid, keep_image)
    same(cond.embeds, torch.cat([blend.pool(text, keep_text), blend.pool_grid(image, grid, target)]))


# ---------------------------------------------------------------- positionwise: token for token only
def test_alpha_positionwise_mixes_the_vl_text_tokens_row_by_row(engine, vlref, refs, qwen3):
    for ratio in (0.25, 0.6):
        cond = engine.condition(Recipe(alpha=ratio, tokens="text", alpha_policy="positionwise"), PROMPT, [refs["a"]])
        same(cond.embeds, blend.mix(qwen3, vlref.rows([refs["a"]], PROMPT, "text"), ratio))
        assert all(r["policy"] == "positionwise" and r["weight_other"] == ratio for r in cond.rows)


def test_positionwise_never_pairs_text_with_image_tokens(engine, refs):
    for fields in ({"alpha": 0.5, "tokens": "full"}, {"alpha": 0.5, "tokens": "image"},
                   {"alpha": 0.5, "intra_ratio": 0.5}):
        with pytest.raises(UserError, match="alpha_policy positionwise: pairs"):
            Recipe(**fields, alpha_policy="positionwise")
    with pytest.raises(UserError, match="intra_policy positionwise: would pair text tokens with image tokens"):
        Recipe(intra_ratio=0.5, intra_policy="positionwise")
    with pytest.raises(UserError, match="alpha_policy positionwise: pairs rows one to one, but the sequences do not"):
        engine.condition(Recipe(alpha=0.5, tokens="text", vl_text="none", alpha_policy="positionwise"), PROMPT,
                         [refs["a"]])  # the VL read no prompt: its template is shorter than Qwen3-4B's


def test_positionwise_blends_are_continuous_in_their_ratio(engine, vlref, refs, qwen3):
    text = vlref.rows([refs["a"]], PROMPT, "text")
    step = 1e-3
    bound = step * (text - qwen3).abs().max() * 1.01 + 1e-5

    def recipe(r):  # the ends are the sources alone (no mix, so no policy); between them, row by row
        if r <= 0:
            return Recipe(alpha=0.0)
        return Recipe(alpha=r, tokens="text") if r >= 1 else Recipe(alpha=r, tokens="text", alpha_policy="positionwise")

    for r in (0.0, 0.5, 1 - step):
        a = engine.condition(recipe(r), PROMPT, [refs["a"]]).embeds
        b = engine.condition(recipe(min(r + step, 1.0)), PROMPT, [refs["a"]]).embeds
        assert a.shape == b.shape and 0 < (a - b).abs().max() <= bound, r


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


def test_intra_blend_takes_image_rows_from_image_layer_and_text_rows_from_text_layer(engine, vlref, refs):
    recipe = Recipe(intra_ratio=0.3, image_layer=-5, text_layer=3)
    cond = engine.condition(recipe, PROMPT, [refs["a"]])
    text = vlref.rows([refs["a"]], PROMPT, "text", layer=3)
    image = vlref.rows([refs["a"]], PROMPT, "image", layer=-5)
    same(cond.embeds, attended(text, image, 0.3)[0])


def test_image_template_selection_is_the_image_rows_and_the_template_rows(engine, vlref, refs):
    cond = engine.condition(Recipe(tokens="image+template"), PROMPT, [refs["a"]])
    ids, hidden = vlref.forward((refs["a"],), PROMPT)
    text_positions = set(vlref.positions(ids, "text"))
    prompt_ids = cond.extraction.roles
    keep = [i for i, t in enumerate(ids) if t == vlref.image_pad or (i in text_positions and prompt_ids[i] == "template")]
    same(cond.embeds, hidden[-2][keep])
    assert {r["role"] for r in cond.rows} == {"image", "template"} and cond.rows[0]["position"] == 0  # the sink


# ---------------------------------------------------------------- dual extraction: two forwards, one mix
@pytest.mark.parametrize("policy", ["attend", "split"])
def test_dual_recipe_equals_mixing_two_single_extractions_done_directly(engine, vlref, refs, policy):
    recipe = Recipe(dual=True, style_vl_text="none", style_tokens="image", style_layer=-4,
                    content_vl_text="prompt", content_tokens="text", content_layer=-3, dual_ratio=0.35,
                    dual_policy=policy)
    cond = engine.condition(recipe, PROMPT, [refs["a"]])
    style = vlref.rows([refs["a"]], None, "image", layer=-4)  # the image read with no text at all
    content = vlref.rows([refs["a"]], PROMPT, "text", layer=-3)
    if policy == "attend":
        same(cond.embeds, attended(content, style, 0.35)[0])
    else:
        kc, ks = blend.split_counts(len(content), len(style), 0.35)
        grid = engine.extraction([refs["a"]], None, None).image_grids[0]
        same(cond.embeds, torch.cat([blend.pool(content, kc), blend.pool_grid(style, grid, blend.grid_for(grid, ks))]))
    assert [ex.vl_text for ex in cond.extractions] == [PROMPT, None]  # [content, style]
    # the ends are the two passes, nothing resampled
    same(engine.condition(recipe.replace(dual_ratio=0.0), PROMPT, [refs["a"]]).embeds, content)
    same(engine.condition(recipe.replace(dual_ratio=1.0), PROMPT, [refs["a"]]).embeds, style)


# ---------------------------------------------------------------- per-token ratio curves (positionwise alpha)
def test_alpha_linear_curve_runs_from_qwen3s_first_row_to_the_vl_texts_last_row(engine, vlref, refs, qwen3):
    recipe = Recipe(alpha=0.0, alpha_end=1.0, curve="linear", tokens="text", alpha_policy="positionwise")
    cond = engine.condition(recipe, PROMPT, [refs["a"]])
    vl = vlref.rows([refs["a"]], PROMPT, "text")
    assert cond.embeds.shape == qwen3.shape
    assert torch.equal(cond.embeds[0], qwen3[0])
    same(cond.embeds[-1], vl[-1])
    same(cond.embeds, blend.mix(qwen3, vl, blend.ratio_curve(len(qwen3), 0.0, 1.0, "linear")))
    with pytest.raises(UserError, match="curve linear: has no effect"):
        Recipe(alpha=0.0, alpha_end=1.0, curve="linear", tokens="text")  # attend: no per-token pairing


# ---------------------------------------------------------------- image rows pooled on their own grid
def test_pool_image_tokens_pools_each_image_on_its_grid_keeping_its_aspect(engine, vlref, refs):
    for ref in (refs["a"], refs["b"]):
        cond = engine.condition(Recipe(tokens="image", pool_image_tokens=12), PROMPT, [ref])
        grid = image_grid(engine, ref)
        target = blend.grid_for(grid, 12)
        same(cond.embeds, blend.pool_grid(vlref.rows([ref], PROMPT, "image"), grid, target))
        assert target[0] * target[1] <= 12 and (target[0] >= target[1]) == (grid[0] >= grid[1])
    with pytest.raises(UserError, match="pool_image_tokens 5000: asks for 5000 tokens from an image of"):
        engine.condition(Recipe(tokens="image", pool_image_tokens=5000), PROMPT, [refs["a"]])


# ---------------------------------------------------------------- several references
def test_separate_references_average_each_image_pooled_on_its_grid_to_the_common_grid(engine, vlref, refs):
    a, b = refs["a"], refs["b"]
    recipe = Recipe(tokens="image", multi_image="separate", image_weights=(1, 3))
    cond = engine.condition(recipe, PROMPT, [a, b])
    ga, gb = image_grid(engine, a), image_grid(engine, b)
    assert ga != gb
    common = (min(ga[0], gb[0]), min(ga[1], gb[1]))
    first = blend.pool_grid(vlref.rows([a], PROMPT, "image"), ga, common)
    second = blend.pool_grid(vlref.rows([b], PROMPT, "image"), gb, common)
    same(cond.embeds, 0.25 * first + 0.75 * second)
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
        engine.condition(Recipe(multi_image="separate", image_weights=(1, 3)), PROMPT, [refs["a"]])
    with pytest.raises(UserError, match="image_weights"):
        engine.condition(Recipe(multi_image="separate", image_weights=(1, 3, 1)), PROMPT, [refs["a"], refs["b"]])


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
    sweep = [Recipe(tokens=t, layer=layer) for t in ("full", "image", "image-markers", "image+template", "text",
                                                      "prompt") for layer in (-1, -2, -5, 3)]
    sweep += [Recipe(tokens="full", image_layer=-4, text_layer=2)]
    sweep += [Recipe(intra_ratio=r, intra_policy=p, image_layer=-3) for r in (0.0, 0.3, 1.0) for p in ("attend", "split")]
    sweep += [Recipe(alpha=r, tokens=t, alpha_policy=p)
              for r in (0.3, 0.7) for t in ("text", "full") for p in ("attend", "split")]
    sweep += [Recipe(alpha=0.3, tokens="text", alpha_policy="positionwise"), Recipe(tokens="image", pool_image_tokens=6)]
    sweep += [Recipe(alpha=0.0, alpha_end=1.0, curve="ease-out", tokens="text", alpha_policy="positionwise"),
              Recipe(alpha=0.0)]
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
    again = engine.condition(recipe.replace(dual_ratio=0.8, dual_policy="split"), PROMPT, [refs["a"]])
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
    """issue 23: the caption is planned whole — the reference is sized to what Qwen3-4B's rows leave — and a caption
    that cannot fit even with the smallest reference is refused before the VL (and the DiT) run, naming each part."""
    budget = engine.models.caption_budget
    long_prompt = " ".join(["a lighthouse on a rocky coast in the fog"] * 30)
    big = Reference.open(make_image(tmp_path / "big.png", size=(1024, 768)))
    recipe = Recipe(alpha=0.4, tokens="full", vl_text="none", **SIZE)  # attend: both sequences whole
    vl = engine.condition(recipe.replace(alpha=1.0), long_prompt, [big])
    assert vl.embeds.shape[0] <= budget  # the VL alone fits
    forwards = engine.vl_forwards
    with pytest.raises(CaptionTooLong, match=rf"caption over the budget of {budget}: Qwen3-4B prompt (\d+), VL \d+, "
                                             r"references need >= \d+ each ×1") as err:
        engine.run(recipe, long_prompt, [big])
    assert int(err.value.problem.split("Qwen3-4B prompt ")[1].split(",")[0]) > budget
    assert dit_calls == [] and engine.vl_forwards == forwards


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


def test_img2img_at_strength_half_depends_on_the_reference_and_equals_diffusers(engine, ref_pipe, refs):
    from diffusers import ZImageImg2ImgPipeline

    recipe = Recipe(alpha=0.0, strength=0.5, seed=4, steps=4, width=64, height=64)
    a = engine.run(recipe, PROMPT, [refs["a"]])
    b = engine.run(recipe, PROMPT, [refs["b"]])
    assert not np.array_equal(np.asarray(a.image), np.asarray(b.image))
    pipe = ZImageImg2ImgPipeline(**ref_pipe.components)
    pipe.set_progress_bar_config(disable=True)
    init = pipe.image_processor.resize(refs["a"].image, height=64, width=64)  # the pipeline needs the output size
    with torch.no_grad():
        expected = pipe(prompt=PROMPT, image=init, strength=0.5, num_inference_steps=4, height=64, width=64,
                        guidance_scale=0.0, generator=torch.Generator("cpu").manual_seed(4)).images[0]
    np.testing.assert_array_equal(np.asarray(a.image), np.asarray(expected))
