"""Qwen3-VL extraction, specified against transformers called directly on the same tiny model.

Every token selection at every layer must be exactly `hidden_states[layer][positions]` of a plain
`model.model(**processor(...), output_hidden_states=True)` forward, with the positions found from
the processor's own special-token ids (never hard-coded).
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_image
from vlbench.engine.engine import Engine, Reference
from vlbench.engine.extract import extract
from vlbench.recipe import Recipe
from vlbench.errors import UserError

PROMPT = "A photo of a red fox sitting in fresh snow"
LAYERS = [0, -1, -2, -5, 3]
SELECTIONS = ["full", "image", "image-markers", "text", "prompt"]


# ---------------------------------------------------------------- reference side (plain transformers)
class Ref:
    """Qwen3-VL loaded with transformers alone; positions found from the processor's token ids."""

    def __init__(self, vl_dir):
        from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

        self.processor = AutoProcessor.from_pretrained(vl_dir)
        self.model = Qwen3VLForConditionalGeneration.from_pretrained(vl_dir, dtype=torch.float32).eval()
        self.tokenizer = self.processor.tokenizer
        self.image_pad = self.processor.image_token_id
        self.vision_start = self.processor.vision_start_token_id
        self.vision_end = self.processor.vision_end_token_id
        self.im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert len({self.image_pad, self.vision_start, self.vision_end, self.im_end}) == 4

    def inputs(self, images, text):
        content = [{"type": "image"} for _ in images]
        if text is not None:
            content.append({"type": "text", "text": text})
        messages = [{"role": "user", "content": content}]
        rendered = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        kwargs = {"images": images} if images else {}
        return self.processor(text=rendered, return_tensors="pt", **kwargs)

    @torch.no_grad()
    def forward(self, images, text):
        inputs = self.inputs(images, text)
        out = self.model.model(**inputs, output_hidden_states=True)
        return inputs["input_ids"][0].tolist(), [h[0] for h in out.hidden_states], inputs

    def vision_mask(self, ids):
        """True inside vision blocks, markers included."""
        mask, inside = [], False
        for t in ids:
            if t == self.vision_start:
                inside = True
            mask.append(inside)
            if t == self.vision_end:
                inside = False
        return mask

    def positions(self, ids, selection, has_text=True):
        vision = self.vision_mask(ids)
        if selection == "full":
            return list(range(len(ids)))
        if selection == "image":
            return [i for i, t in enumerate(ids) if t == self.image_pad]
        if selection == "image-markers":
            return [i for i, v in enumerate(vision) if v]
        if selection == "text":
            return [i for i, v in enumerate(vision) if not v]
        if selection == "prompt":
            # The user turn's text: after the last vision block (or after "<|im_start|>user\n") up to its <|im_end|>.
            if not has_text:
                return []
            ends = [i for i, t in enumerate(ids) if t == self.vision_end]
            start = ends[-1] + 1 if ends else len(self.tokenizer("<|im_start|>user\n")["input_ids"])
            stop = ids.index(self.im_end, start)
            return list(range(start, stop))
        raise AssertionError(selection)


@pytest.fixture(scope="module")
def ref(tiny_dirs):
    return Ref(tiny_dirs.vl)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("refs")
    return {
        "a": make_image(d / "a.png", size=(96, 64)),
        "b": make_image(d / "b.png", size=(80, 144), color=(20, 160, 220)),
    }


def _close(a, b):
    assert a.shape == b.shape
    assert torch.equal(a, b) or torch.allclose(a, b, atol=1e-6, rtol=0), (a - b).abs().max()


# ---------------------------------------------------------------- selections x layers
@pytest.mark.parametrize("selection", SELECTIONS)
def test_selection_at_each_layer_equals_transformers_hidden_states_at_those_positions(engine, ref, images, selection):
    refs = [Reference.open(images["a"])]
    ids, hidden, _ = ref.forward([r.image for r in refs], PROMPT)
    positions = ref.positions(ids, selection)
    assert positions
    for layer in LAYERS:
        cond = engine.condition(Recipe(tokens=selection, layer=layer), PROMPT, refs)
        assert cond.extraction.input_ids == ids
        assert cond.extraction.positions(selection) == positions
        assert [row["position"] for row in cond.rows] == positions
        _close(cond.embeds, hidden[layer][positions])


def test_layer_indexing_follows_transformers_hidden_states_convention(engine, ref, images):
    """[0] = embeddings, [-1] = after the final norm, [-2] = input of the last layer; layers + 1 entries."""
    refs = [Reference.open(images["a"])]
    ex = engine.condition(Recipe(), PROMPT, refs).extraction
    n_layers = engine.models.vl.num_hidden_layers
    assert ex.num_layers == n_layers + 1
    _, hidden, _ = ref.forward([refs[0].image], PROMPT)
    assert len(hidden) == ex.num_layers
    for layer in range(-ex.num_layers, ex.num_layers):
        _close(ex.select("full", layer), hidden[layer])


def test_image_selection_is_exactly_the_image_pad_tokens_and_markers_add_the_two_vision_markers(engine, ref, images):
    refs = [Reference.open(images["a"])]
    ex = engine.condition(Recipe(), PROMPT, refs).extraction
    ids = ex.input_ids
    assert {ids[p] for p in ex.positions("image")} == {ref.image_pad}
    markers = ex.positions("image-markers")
    assert ids[markers[0]] == ref.vision_start and ids[markers[-1]] == ref.vision_end
    assert markers == list(range(markers[0], markers[-1] + 1))
    assert markers[1:-1] == ex.positions("image")
    assert sorted(ex.positions("text") + markers) == ex.positions("full")


def test_text_positions_are_token_for_token_zimage_qwen3_template_for_the_same_prompt(engine, tiny_dirs, images):
    from transformers import AutoTokenizer

    ztok = AutoTokenizer.from_pretrained(tiny_dirs.zimage, subfolder="tokenizer")
    expected = ztok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                        enable_thinking=True, tokenize=True, return_dict=False)
    # Also Z-Image's own encode path records the same ids.
    assert engine.text_encoding(PROMPT).input_ids == expected
    for paths in ([], [images["a"]], [images["a"], images["b"]]):
        ex = engine.condition(Recipe(tokens="text"), PROMPT, [Reference.open(p) for p in paths]).extraction
        assert [ex.input_ids[p] for p in ex.positions("text")] == expected, paths


def test_prompt_positions_decode_back_to_the_prompt(engine, ref, images):
    for paths in ([], [images["a"]], [images["a"], images["b"]]):
        ex = engine.condition(Recipe(tokens="prompt"), PROMPT, [Reference.open(p) for p in paths]).extraction
        ids = [ex.input_ids[p] for p in ex.positions("prompt")]
        assert ref.tokenizer.decode(ids, skip_special_tokens=False) == PROMPT
        assert ex.positions("prompt") == ref.positions(ex.input_ids, "prompt")


def test_text_only_extraction_equals_transformers_without_an_image(engine, ref):
    cond = engine.condition(Recipe(tokens="full", layer=-2), PROMPT, [])
    ids, hidden, _ = ref.forward([], PROMPT)
    assert cond.extraction.input_ids == ids
    assert ref.vision_start not in ids and ref.image_pad not in ids
    _close(cond.embeds, hidden[-2])
    _close(engine.condition(Recipe(tokens="prompt", layer=-5), PROMPT, []).embeds,
           hidden[-5][ref.positions(ids, "prompt")])


def test_each_image_gets_its_own_vision_block_with_the_processors_token_count(engine, ref, images):
    refs = [Reference.open(images["a"]), Reference.open(images["b"])]
    cond = engine.condition(Recipe(tokens="image-markers", layer=-2), PROMPT, refs)
    ex = cond.extraction
    ids, hidden, inputs = ref.forward([r.image for r in refs], PROMPT)
    assert ex.input_ids == ids
    assert ids.count(ref.vision_start) == 2 and ids.count(ref.vision_end) == 2
    merge = ref.processor.image_processor.merge_size
    expected = [int(t * h * w) // merge**2 for t, h, w in inputs["image_grid_thw"].tolist()]
    assert expected[0] != expected[1]  # the two references differ in size
    # Pad tokens between each start/end pair = that image's grid t*h*w / merge^2.
    starts = [i for i, t in enumerate(ids) if t == ref.vision_start]
    ends = [i for i, t in enumerate(ids) if t == ref.vision_end]
    blocks = [ids[s + 1:e] for s, e in zip(starts, ends)]
    assert [len(b) for b in blocks] == expected
    assert all(set(b) == {ref.image_pad} for b in blocks)
    assert ex.image_token_counts == expected
    assert ex.roles.count("vision_start") == 2
    _close(cond.embeds, hidden[-2][ref.positions(ids, "image-markers")])
    # The images keep their order: the first block belongs to the first reference.
    single = engine.condition(Recipe(tokens="image"), PROMPT, refs[:1]).extraction
    assert single.image_token_counts == expected[:1]


# ---------------------------------------------------------------- VL text none, errors
def test_vl_text_none_has_no_prompt_role_and_prompt_selection_errors(engine, ref, images):
    refs = [Reference.open(images["a"])]
    cond = engine.condition(Recipe(vl_text="none", tokens="full"), PROMPT, refs)
    ex = cond.extraction
    assert ex.vl_text is None
    assert "prompt" not in ex.roles
    assert PROMPT not in ex.decoded
    ids, hidden, _ = ref.forward([refs[0].image], None)
    assert ex.input_ids == ids
    _close(cond.embeds, hidden[-2])
    with pytest.raises(UserError, match="tokens prompt"):
        engine.condition(Recipe(vl_text="none", tokens="prompt"), PROMPT, refs)


def test_vl_text_verbatim_string_is_what_the_vl_reads(engine, ref, images):
    refs = [Reference.open(images["a"])]
    other = "Describe this image."
    ex = engine.condition(Recipe(vl_text=other, tokens="prompt"), PROMPT, refs).extraction
    assert ref.tokenizer.decode([ex.input_ids[p] for p in ex.positions("prompt")]) == other
    assert ex.input_ids == ref.forward([refs[0].image], other)[0]


@pytest.mark.parametrize("selection", ["image", "image-markers"])
def test_image_selection_without_an_image_is_a_user_error(engine, selection):
    with pytest.raises(UserError, match="image"):
        engine.condition(Recipe(tokens=selection), PROMPT, [])


def test_no_image_and_no_text_is_a_user_error(engine):
    with pytest.raises(UserError, match="nothing to extract"):
        engine.condition(Recipe(vl_text="none", tokens="full"), PROMPT, [])


def test_out_of_range_layer_is_a_user_error_and_the_ends_are_in_range(engine, images):
    refs = [Reference.open(images["a"])]
    n = engine.models.vl.num_hidden_layers + 1
    for layer in (n - 1, -n):
        engine.condition(Recipe(layer=layer), PROMPT, refs)
    for layer in (n, -n - 1, 99):
        with pytest.raises(UserError, match=f"layer {layer}: is out of range"):
            engine.condition(Recipe(layer=layer), PROMPT, refs)


def test_one_forward_serves_every_selection_and_layer(engine, images):
    fresh = Engine(engine.models)
    refs = [Reference.open(images["b"])]
    for selection in SELECTIONS:
        for layer in LAYERS:
            fresh.condition(Recipe(tokens=selection, layer=layer), PROMPT, refs)
    assert fresh.vl_forwards == 1


# ---------------------------------------------------------------- caption budget: downscale exactly when needed
def _native(ref, image):
    """The processor's own smart-resize size (width, height) and token count, without any cap."""
    grid = ref.processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0].tolist()
    t, h, w = grid
    patch, merge = ref.processor.image_processor.patch_size, ref.processor.image_processor.merge_size
    return (w * patch, h * patch), t * h * w // merge**2


def _text_tokens(ref, text):
    """Tokens of the VL input besides the image pads (one image)."""
    ids, _, _ = ref.forward([], text)
    return len(ids) + 2  # + <|vision_start|> <|vision_end|>


@pytest.fixture(scope="module")
def big_image(tmp_path_factory):
    from PIL import Image

    # 448x288 -> 14x9 merged tokens = 126 native tokens (not a square, so the aspect ratio is visible).
    return Image.open(make_image(tmp_path_factory.mktemp("big") / "big.png", size=(448, 288))).convert("RGB")


def test_image_that_fits_is_passed_unchanged(engine, ref, big_image):
    vl = engine.models.vl
    size, native = _native(ref, big_image)
    budget = _text_tokens(ref, PROMPT) + native
    ex = extract(vl, [big_image], PROMPT, budget)
    assert ex.image_sizes == [size]
    assert ex.image_token_counts == [native]
    assert len(ex.input_ids) == budget
    # Identical to the processor with no cap at all.
    assert ex.input_ids == ref.forward([big_image], PROMPT)[0]


def test_one_token_over_the_budget_downscales_keeping_the_aspect_ratio(engine, ref, big_image):
    vl = engine.models.vl
    (w0, h0), native = _native(ref, big_image)
    budget = _text_tokens(ref, PROMPT) + native - 1
    ex = extract(vl, [big_image], PROMPT, budget)
    (w, h), = ex.image_sizes
    assert ex.image_token_counts[0] < native
    assert len(ex.input_ids) <= budget
    assert ex.source_sizes == [big_image.size]
    W, H = big_image.size
    # Aspect ratio kept up to the 32-pixel grid of the smart resize.
    assert abs(w / h - W / H) <= (W / H) * (32 / h + 32 / w), ((w, h), (W, H))
    assert w < w0 or h < h0


def test_max_image_tokens_lowers_the_image_budget(engine, ref, big_image):
    vl = engine.models.vl
    size, native = _native(ref, big_image)
    roomy = 10_000
    assert extract(vl, [big_image], PROMPT, roomy, max_image_tokens=native).image_sizes == [size]
    for cap in (native - 1, 40):
        ex = extract(vl, [big_image], PROMPT, roomy, max_image_tokens=cap)
        assert ex.image_token_counts[0] <= cap
        assert ex.image_sizes != [size]


def test_budget_is_shared_by_several_images(engine, ref, big_image, images):
    from PIL import Image

    vl = engine.models.vl
    other = Image.open(images["b"]).convert("RGB")
    natives = [_native(ref, big_image)[1], _native(ref, other)[1]]
    budget = _text_tokens(ref, PROMPT) + 2 + sum(natives) - 1  # one more vision block's markers
    ex = extract(vl, [big_image, other], PROMPT, budget)
    assert len(ex.input_ids) <= budget
    assert sum(ex.image_token_counts) < sum(natives)


def test_text_over_the_budget_is_a_user_error(engine, ref, big_image):
    vl = engine.models.vl
    text_tokens = _text_tokens(ref, PROMPT) - 2
    with pytest.raises(UserError, match="over the caption budget"):
        extract(vl, [], PROMPT, text_tokens - 1)
    assert len(extract(vl, [], PROMPT, text_tokens).input_ids) == text_tokens
    with pytest.raises(UserError, match="reference.s. cannot fit") as err:
        extract(vl, [big_image], PROMPT, text_tokens + 2)
    assert err.value.field == "image"  # no room left for any image token


def test_engine_fits_the_reference_into_the_dits_caption_budget(engine, tmp_path):
    """A reference far over the tiny DiT's budget (224) is downscaled so image + text fit."""
    refs = [Reference.open(make_image(tmp_path / "huge.png", size=(1024, 768)))]
    cond = engine.condition(Recipe(), PROMPT, refs)
    assert cond.embeds.shape[0] <= engine.models.caption_budget
    assert cond.describe()["vl"]["resized"] is True


def test_extreme_aspect_ratio_is_a_user_error_naming_the_reference_size(engine):
    """Qwen3-VL's processor refuses aspect ratios over 200:1; that is the user's input, not a crash."""
    from PIL import Image

    with pytest.raises(UserError, match="^image: a 1000×2 reference"):
        extract(engine.models.vl, [Image.new("RGB", (1000, 2))], PROMPT, 10_000)
    assert extract(engine.models.vl, [Image.new("RGB", (300, 2))], PROMPT, 10_000).image_token_counts[0] > 0


@pytest.mark.parametrize("token", ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
def test_a_vision_token_inside_the_text_is_a_user_error_not_a_forged_vision_block(engine, images, token):
    """The tokenizer parses special tokens in text; a vision marker there would break the VL layout."""
    for refs in ([], [Reference.open(images["a"])]):
        with pytest.raises(UserError, match=f"contains {token}"):
            engine.condition(Recipe(tokens="full"), f"a cat {token} on a mat", refs)
