"""Dual extraction as one batched Qwen3-VL call: each item equals its own unbatched forward.

`extract_batch` runs several (images, text) inputs through ONE `model.model` call (right-padded);
every item must keep exactly the ids, roles and image sizes `extract` gives it alone, and hidden
states equal to float summation order. The Engine's dual branch uses it for the two passes when
neither is cached, caches both as single runs would, and falls back to two calls when the batch
does not fit (or runs out of memory).
"""

from __future__ import annotations

import types

import pytest
import torch

from conftest import make_image
from vlbench.engine import engine as engine_module
from vlbench.engine.engine import Engine, Reference
from vlbench.engine.extract import batch_memory_bytes, collate, extract, extract_batch, prepare
from vlbench.engine.models import Models
from vlbench.recipe import Recipe

PROMPT = "A photo of a red fox sitting in fresh snow"
BUDGET = 224  # the tiny DiT's caption budget
ATOL = RTOL = 1e-5  # fp32; padding changes the attention kernels' reduction order, not the maths
FIELDS = ("input_ids", "roles", "decoded", "vl_text", "image_sizes", "source_sizes", "image_token_counts")


@pytest.fixture(scope="module")
def models(tiny_spec):
    """Models of their own, so the counting hook never sees another test's forwards."""
    return Models(tiny_spec)


@pytest.fixture(scope="module")
def vl(models):
    return models.vl


@pytest.fixture
def calls(models):
    """One entry per actual call of the VL base model."""
    seen = []
    handle = models.vl.model.model.register_forward_pre_hook(lambda *a, **k: seen.append(1))
    yield seen
    handle.remove()


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    d = tmp_path_factory.mktemp("dual")
    return {
        "a": Reference.open(make_image(d / "a.png", size=(96, 64))),
        "b": Reference.open(make_image(d / "b.png", size=(80, 144), color=(20, 160, 220))),
        "big": Reference.open(make_image(d / "big.png", size=(640, 480), color=(60, 200, 90))),  # over the budget
        "small": Reference.open(make_image(d / "small.png", size=(32, 32), color=(250, 250, 10))),
    }


def assert_same_extraction(batched, single):
    for name in FIELDS:
        assert getattr(batched, name) == getattr(single, name), name
    a, b = batched.hidden_states, single.hidden_states
    assert a.shape == b.shape and a.dtype == b.dtype
    assert torch.allclose(a, b, atol=ATOL, rtol=RTOL), (a - b).abs().max()


CASES = {
    "image-none+image-prompt": lambda r: [([r["a"]], None), ([r["a"]], PROMPT)],
    "two-images": lambda r: [([r["a"]], PROMPT), ([r["b"]], PROMPT)],
    "lengths-differ-a-lot": lambda r: [([r["small"]], None), ([r["big"]], PROMPT)],
    "text-vs-image": lambda r: [([], "hi"), ([r["big"]], PROMPT)],
    "two-images-vs-text-only": lambda r: [([r["a"], r["b"]], None), ([], "a red square")],
    "text-only": lambda r: [([], "hi"), ([], " ".join([PROMPT] * 4))],
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_batched_item_equals_its_unbatched_extract(vl, refs, calls, case):
    items = [([r.image for r in imgs], text) for imgs, text in CASES[case](refs)]
    batched = extract_batch(vl, items, BUDGET)
    assert len(calls) == 1
    singles = [extract(vl, imgs, text, BUDGET) for imgs, text in items]
    assert len(calls) == 3
    lengths = [len(s.input_ids) for s in singles]
    if case == "lengths-differ-a-lot":
        assert max(lengths) > 2 * min(lengths), lengths
    for b, s in zip(batched, singles):
        assert_same_extraction(b, s)
        assert b.hidden_states.is_contiguous() and b.hidden_states.shape[1] == len(s.input_ids)


def test_each_item_keeps_its_own_budget_fit(vl, refs):
    """A tight budget: the long-text item's reference is downscaled further than the no-text item's."""
    img = [refs["big"].image]
    long_text = " ".join([PROMPT] * 3)
    items = [(img, None), (img, long_text)]
    batched = extract_batch(vl, items, 120)
    singles = [extract(vl, i, t, 120) for i, t in items]
    assert singles[0].image_sizes != singles[1].image_sizes  # the fits really differ
    assert all(s.image_sizes != s.source_sizes for s in singles)
    for b, s in zip(batched, singles):
        assert_same_extraction(b, s)
        assert len(b.input_ids) <= 120


def test_max_image_tokens_applies_to_every_item(vl, refs):
    items = [([refs["big"].image], None), ([refs["big"].image], PROMPT)]
    for b, (imgs, text) in zip(extract_batch(vl, items, BUDGET, max_image_tokens=20), items):
        s = extract(vl, imgs, text, BUDGET, max_image_tokens=20)
        assert_same_extraction(b, s)
        assert sum(b.image_token_counts) <= 20


def test_the_collated_batch_is_the_processors_own_right_padded_batch(vl, refs):
    """Same image size for both items: our collation equals one processor call with padding (right side)."""
    imgs = [refs["a"].image]
    preps = [prepare(vl, imgs, None, BUDGET), prepare(vl, imgs, PROMPT, BUDGET)]
    ours = collate(vl, preps)
    proc = vl.processor
    rendered = [proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}] + (
        [{"type": "text", "text": t}] if t else [])}], add_generation_prompt=True, tokenize=False) for t in (None, PROMPT)]
    theirs = proc(text=rendered, images=imgs + imgs, padding=True, padding_side="right", return_tensors="pt")
    assert set(ours) == set(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    mask = ours["attention_mask"]
    assert mask[0].tolist() == [1] * preps[0].length + [0] * (preps[1].length - preps[0].length)  # padding on the right


# ---------------------------------------------------------------- the Engine's dual branch
DUAL = Recipe(dual=True, style_vl_text="none", style_tokens="image", style_layer=-4,
              content_vl_text="prompt", content_tokens="text", content_layer=-3, dual_ratio=0.4)


def test_a_dual_recipe_is_one_model_call_and_the_same_conditioning_as_two(models, calls, refs):
    batched = Engine(models)
    first = batched.condition(DUAL, PROMPT, [refs["a"]])
    assert len(calls) == 1 and batched.vl_forwards == 2 and batched.vl_batched_calls == 1

    single = Engine(models)
    single.batch_dual = False
    reference = single.condition(DUAL, PROMPT, [refs["a"]])
    assert len(calls) == 3 and single.vl_forwards == 2 and single.vl_batched_calls == 2

    assert first.rows == reference.rows
    assert torch.allclose(first.embeds, reference.embeds, atol=ATOL, rtol=RTOL)
    for b, s in zip(first.extractions, reference.extractions):
        assert_same_extraction(b, s)
    assert first.describe() == reference.describe()

    # running it again, or any other mix of the same two passes, costs nothing
    for recipe in (DUAL, DUAL.replace(dual_ratio=0.9, dual_policy="split"), DUAL.replace(style_tokens="full")):
        batched.condition(recipe, PROMPT, [refs["a"]])
    assert len(calls) == 3 and batched.vl_forwards == 2 and batched.vl_batched_calls == 1


def test_only_the_uncached_pass_runs(models, calls, refs):
    engine = Engine(models)
    engine.condition(Recipe(vl_text="none", tokens="image"), PROMPT, [refs["b"]])
    assert len(calls) == 1
    engine.condition(DUAL, PROMPT, [refs["b"]])  # the style pass (none) is cached: the content pass alone
    assert len(calls) == 2 and engine.vl_forwards == 2 and engine.vl_batched_calls == 2


def test_two_passes_with_the_same_input_are_one_forward(models, calls, refs):
    engine = Engine(models)
    cond = engine.condition(DUAL.replace(style_vl_text="prompt"), PROMPT, [refs["a"]])
    assert len(calls) == 1 and engine.vl_forwards == 1 and engine.vl_batched_calls == 1
    assert cond.extractions[0] is cond.extractions[1]


def test_both_passes_go_to_the_disk_cache_as_single_runs(models, calls, refs, tmp_path):
    writer = Engine(models, cache_dir=tmp_path)
    first = writer.condition(DUAL, PROMPT, [refs["a"]])
    assert len(calls) == 1 and len(list(tmp_path.rglob("*.safetensors"))) == 2
    reader = Engine(models, cache_dir=tmp_path)  # a new process: empty memory cache
    again = reader.condition(DUAL, PROMPT, [refs["a"]])
    assert len(calls) == 1 and reader.vl_forwards == 0 and reader.disk_cache.hits == 2
    assert torch.equal(again.embeds, first.embeds)
    # the entries are the ones single runs look up: a single-pass recipe over either input reads them
    single = Engine(models, cache_dir=tmp_path)
    single.condition(Recipe(vl_text="none", tokens="image"), PROMPT, [refs["a"]])
    single.condition(Recipe(tokens="text"), PROMPT, [refs["a"]])
    assert len(calls) == 1 and single.disk_cache.hits == 2


def test_a_batch_that_does_not_fit_runs_as_two_calls(models, calls, refs, monkeypatch):
    engine = Engine(models)
    monkeypatch.setattr(engine, "_batch_fits", lambda preps: False)
    engine.condition(DUAL, PROMPT, [refs["b"]])
    assert len(calls) == 2 and engine.vl_forwards == 2 and engine.vl_batched_calls == 2


def test_out_of_memory_in_the_batched_call_falls_back_to_two_calls(models, calls, refs, monkeypatch):
    def oom(vl, preps):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(engine_module, "forward_batch", oom)
    engine = Engine(models)
    cond = engine.condition(DUAL, PROMPT, [refs["a"]])
    assert len(calls) == 2 and engine.vl_forwards == 2 and engine.vl_batched_calls == 2
    monkeypatch.undo()
    assert torch.allclose(cond.embeds, Engine(models).condition(DUAL, PROMPT, [refs["a"]]).embeds,
                          atol=ATOL, rtol=RTOL)


def test_the_memory_estimate_covers_the_stacked_hidden_states_of_the_full_model():
    """Qwen3-VL-4B, bf16, a 768² reference (576 image tokens) with and without a 20-token prompt."""
    from transformers import Qwen3VLConfig

    config = Qwen3VLConfig(
        text_config=dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128),
        vision_config=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2560))
    vl = types.SimpleNamespace(model=types.SimpleNamespace(config=config), dtype=torch.bfloat16)
    grid = torch.tensor([[1, 48, 48]])

    def prep(length):
        return types.SimpleNamespace(length=length, inputs={"image_grid_thw": grid})

    need = batch_memory_bytes(vl, [prep(586), prep(611)])
    stacked = 37 * 2560 * 2 * (2 * 611 + 586 + 611)  # the padded batch's hidden states + each item's copy
    assert stacked < need < 4 * 2**30  # fits an 80 GB card beside the models with room to spare
    assert batch_memory_bytes(vl, [prep(586), prep(1400)]) > need


def test_the_benchmark_runs_without_diffusers(tmp_path):
    """benchmarks/dual_batch.py needs only torch, transformers and vlbench: it runs with diffusers blocked."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "dual_batch.json"
    code = ("import sys, runpy\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('diffusers', 'platformdirs'):\n"
            "            raise ImportError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            f"sys.argv = ['dual_batch.py', '--tiny', '-n', '1', '--warmup', '0', '--out', {str(out)!r}]\n"
            f"runpy.run_path({str(root / 'benchmarks' / 'dual_batch.py')!r}, run_name='__main__')\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, capture_output=True)
    result = json.loads(out.read_text())
    assert result["same_ids_roles_sizes"] and result["inputs"]["prompt_tokens"] == 20
    assert all(e["rel_fro_per_layer_max"] < 1e-5 for e in result["equivalence"])
    assert result["forward_only"]["batched"]["n"] == 1
