"""Attention-weighted image tokens (issue 17), specified against transformers called directly on the tiny model.

The weight of image token j is the softmax attention probability from the VL-text (prompt-role) positions to j in
ONE decoder layer, averaged over heads and prompt positions and renormalised over the image tokens. It must equal
what transformers' eager attention returns with output_attentions=True, read from one hooked layer while the
default forward stays unhooked; top-k keeps exactly the k largest; weighted-pool is the weighted block mean; the
run record carries the weights and the heat map draws them.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_image
from vlbench.engine.engine import Engine, Reference
from vlbench.engine.extract import IMAGE, PROMPT, decoder_layer_for
from vlbench.errors import UserError
from vlbench.recipe import Recipe

PROMPT_TEXT = "A photo of a red fox sitting in fresh snow"


@pytest.fixture(scope="module")
def eager(tiny_dirs):
    """Qwen3-VL loaded by transformers alone with eager attention: output_attentions gives every layer's matrix."""
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_dirs.vl, dtype=torch.float32,
                                                            attn_implementation="eager").eval()
    return AutoProcessor.from_pretrained(tiny_dirs.vl), model


@pytest.fixture
def square_ref(tmp_path):
    return Reference.open(make_image(tmp_path / "square.png", size=(128, 128)))  # an 8×8 token grid


def _eager_attentions(eager, images, text):
    processor, model = eager
    messages = [{"role": "user", "content": [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=rendered, images=images, return_tensors="pt")
    with torch.no_grad():
        out = model.model(**inputs, output_attentions=True)
    return inputs["input_ids"][0].tolist(), [a[0] for a in out.attentions]  # [heads, L, L] per decoder layer


def _reference_weights(attn: torch.Tensor, prompt: list[int], image: list[int]) -> torch.Tensor:
    a = attn[:, prompt][:, :, image].mean(dim=(0, 1))
    return a / a.sum()


# ---------------------------------------------------------------- the weights themselves
@pytest.mark.parametrize("hidden_index", [1, 4, -2, -1])
def test_weights_equal_transformers_eager_output_attentions_of_the_layer_producing_that_hidden_state(
        engine, eager, ref_image, hidden_index):
    ref = Reference.open(ref_image)
    n_decoder = engine.models.vl.model.config.text_config.num_hidden_layers
    decoder = decoder_layer_for(hidden_index, n_decoder)
    assert decoder == hidden_index % (n_decoder + 1) - 1  # hidden state h is decoder layer h-1's output
    ex = engine.extraction([ref], PROMPT_TEXT, None, decoder)
    ids, attentions = _eager_attentions(eager, [ref.image], PROMPT_TEXT)
    assert ids == ex.input_ids
    prompt = [i for i, r in enumerate(ex.roles) if r == PROMPT]
    image = [i for i, r in enumerate(ex.roles) if r == IMAGE]
    assert prompt and image and max(image) < min(prompt)
    expected = _reference_weights(attentions[decoder], prompt, image)
    assert ex.image_attention.shape == (len(image),)
    assert float(ex.image_attention.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(ex.image_attention, expected, rtol=1e-4, atol=1e-7)
    neighbour = decoder + 1 if decoder + 1 < n_decoder else decoder - 1  # an off-by-one layer would fail here
    assert not torch.allclose(ex.image_attention, _reference_weights(attentions[neighbour], prompt, image),
                              rtol=1e-4, atol=1e-7)
    # the hook only reads: hidden states are those of the plain forward
    plain = engine.extraction([ref], PROMPT_TEXT, None)
    assert plain.image_attention is None
    torch.testing.assert_close(ex.hidden_states, plain.hidden_states)


def test_weights_of_two_joint_references_sum_to_one_over_all_their_image_tokens(engine, eager, tmp_path):
    refs = [Reference.open(make_image(tmp_path / "a.png", size=(128, 128))),
            Reference.open(make_image(tmp_path / "b.png", size=(96, 64), color=(20, 90, 200)))]
    ex = engine.extraction(refs, PROMPT_TEXT, None, 2)
    _, attentions = _eager_attentions(eager, [r.image for r in refs], PROMPT_TEXT)
    prompt = [i for i, r in enumerate(ex.roles) if r == PROMPT]
    image = [i for i, r in enumerate(ex.roles) if r == IMAGE]
    assert len(image) == sum(ex.image_token_counts)
    torch.testing.assert_close(ex.image_attention, _reference_weights(attentions[2], prompt, image),
                               rtol=1e-4, atol=1e-7)
    assert float(ex.image_attention.sum()) == pytest.approx(1.0, abs=1e-6)


def test_attention_layer_defaults_to_the_image_rows_layer(engine):
    n = engine.models.vl.model.config.text_config.num_hidden_layers
    on = dict(tokens="image", image_attention="topk", image_top_k=2)
    assert engine.attention_layer(Recipe(**on)) == n - 2  # layer -2: hidden state n-1, decoder layer n-2
    assert engine.attention_layer(Recipe(**on, image_layer=3)) == 2
    assert engine.attention_layer(Recipe(**on, layer=5)) == 4
    assert engine.attention_layer(Recipe(**on, image_layer=3, attention_layer=-1)) == n - 1
    with pytest.raises(UserError) as exc:
        engine.attention_layer(Recipe(**on, attention_layer=n + 1))
    assert exc.value.field == "attention_layer"


def _probes(module) -> int:
    """vlbench's attention probes among a module's forward hooks (transformers keeps its own output recorders)."""
    from vlbench.engine.extract import AttentionProbe

    return sum(isinstance(getattr(h, "__self__", None), AttentionProbe) for h in module._forward_hooks.values())


def test_the_default_forward_installs_no_hook(engine, tmp_path):
    """Weighting off: no layer's self-attention carries a probe during the forward (as fast as before)."""
    ref = Reference.open(make_image(tmp_path / "fresh.png", size=(112, 80)))  # uncached: the forward runs
    layers = engine.models.vl.model.model.language_model.layers
    seen: list[int] = []
    handles = [layer.register_forward_pre_hook(lambda m, a: seen.append(_probes(m.self_attn))) for layer in layers]
    try:
        before = engine.vl_forwards
        engine.condition(Recipe(tokens="image"), PROMPT_TEXT, [ref])
        assert engine.vl_forwards == before + 1 and seen == [0] * len(layers)
        seen.clear()
        engine.condition(Recipe(tokens="image", image_attention="topk", image_top_k=3, attention_layer=3),
                         PROMPT_TEXT, [ref])
        assert seen == [1 if i == 2 else 0 for i in range(len(layers))]  # one probe, on decoder layer 2 only
    finally:
        for h in handles:
            h.remove()
    assert not any(_probes(layer.self_attn) for layer in layers)  # removed after the forward


# ---------------------------------------------------------------- what the weights do
def test_topk_keeps_each_images_k_largest_weights_in_their_original_order(engine, ref_image):
    ref = Reference.open(ref_image)
    recipe = Recipe(tokens="image", image_attention="topk", image_top_k=5, layer=-3)
    cond = engine.condition(recipe, PROMPT_TEXT, [ref])
    ex = cond.extraction
    image = [i for i, r in enumerate(ex.roles) if r == IMAGE]
    w = ex.image_attention
    largest = sorted(range(len(image)), key=lambda j: -float(w[j]))[:5]
    kept = [image[j] for j in sorted(largest)]
    assert [r["position"] for r in cond.rows] == kept
    smallest_kept = min(float(w[image.index(p)]) for p in kept)
    assert all(float(w[j]) <= smallest_kept for j in range(len(image)) if image[j] not in kept)
    torch.testing.assert_close(cond.embeds, ex.hidden_states[-3][kept])
    assert [r["image_attention"] for r in cond.rows] == [float(w[image.index(p)]) for p in kept]


def test_topk_in_a_full_selection_keeps_the_text_rows(engine, ref_image):
    ref = Reference.open(ref_image)
    cond = engine.condition(Recipe(image_attention="topk", image_top_k=3), PROMPT_TEXT, [ref])
    roles = [r["role"] for r in cond.rows]
    assert roles.count("image") == 3
    assert len(roles) - 3 == sum(1 for r in cond.extraction.roles if r != "image")


def test_weighted_pool_is_the_attention_weighted_mean_of_each_cell(engine, square_ref):
    recipe = Recipe(tokens="image", image_attention="weighted-pool", pool_image_tokens=16)
    cond = engine.condition(recipe, PROMPT_TEXT, [square_ref])
    ex = cond.extraction
    assert ex.image_grids == [(8, 8)]
    x = ex.hidden_states[-2][[i for i, r in enumerate(ex.roles) if r == IMAGE]].reshape(8, 8, -1)
    w = ex.image_attention.reshape(8, 8)
    expected = torch.stack([
        (x[2 * a:2 * a + 2, 2 * b:2 * b + 2] * w[2 * a:2 * a + 2, 2 * b:2 * b + 2, None]).sum((0, 1))
        / w[2 * a:2 * a + 2, 2 * b:2 * b + 2].sum() for a in range(4) for b in range(4)])
    torch.testing.assert_close(cond.embeds, expected, rtol=1e-5, atol=1e-5)
    plain = engine.condition(Recipe(tokens="image", pool_image_tokens=16), PROMPT_TEXT, [square_ref])
    assert not torch.allclose(cond.embeds, plain.embeds)  # the weights change the pooled rows


def test_weighted_pool_with_equal_weights_is_the_plain_area_pool():
    from vlbench.engine import blend

    x = torch.randn(6 * 9, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(blend.pool_grid_weighted(x, torch.full((54,), 0.3), (6, 9), (4, 5)),
                               blend.pool_grid(x, (6, 9), (4, 5)))


# ---------------------------------------------------------------- bad inputs: one line, before models load
@pytest.mark.parametrize("fields, field, words", [
    (dict(image_attention="topk"), "image_attention", "needs image_top_k"),
    (dict(image_attention="topk", image_top_k=4, vl_text="none"), "image_attention", "vl_text none"),
    (dict(image_attention="weighted-pool"), "image_attention", "pool_image_tokens"),
    (dict(image_attention="topk", image_top_k=4, pool_image_tokens=8), "image_attention", "choose one"),
    (dict(image_attention="topk", image_top_k=4, tokens="text"), "image_attention", "has no effect"),
    (dict(image_attention="topk", image_top_k=4, dual=True), "image_attention", "has no effect"),
    (dict(image_top_k=4), "image_top_k", "has no effect"),
    (dict(attention_layer=3), "attention_layer", "has no effect"),
    (dict(image_attention="topk", image_top_k=4, alpha=0.5, alpha_policy="split"), "image_attention",
     "split"),
    (dict(image_attention="topk", image_top_k=4, intra_ratio=0.5, intra_policy="split"),
     "image_attention", "split"),
    (dict(image_attention="topk", image_top_k=4, multi_image="separate"), "image_attention",
     "separate"),
    (dict(image_attention="topk", image_top_k=300, max_image_tokens=256), "image_top_k", "at most 256"),
    (dict(image_attention="topk", image_top_k=4, attention_layer=0), "attention_layer", "embeddings"),
    (dict(image_attention="topk", image_top_k=4, image_layer=0), "image_layer", "embeddings"),
])
def test_bad_recipes_are_one_line_naming_the_field(fields, field, words):
    with pytest.raises(UserError) as exc:
        Recipe(**fields)
    assert exc.value.field == field
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_topk_larger_than_the_images_tokens_is_one_line_before_the_dit(engine, ref_image, monkeypatch):
    import vlbench.engine.engine as E

    monkeypatch.setattr(E, "generate", lambda *a, **k: pytest.fail("the DiT ran"))
    with pytest.raises(UserError) as exc:
        engine.run(Recipe(tokens="image", image_attention="topk", image_top_k=500, steps=1, width=64,
                          height=64), PROMPT_TEXT, [Reference.open(ref_image)])
    assert exc.value.field == "image_top_k" and "\n" not in str(exc.value)
    assert "keeps 500 tokens of an image of 70" in str(exc.value)


def test_cli_refuses_topk_without_k_in_one_line_without_loading_models(tmp_path, ref_image, capsys, monkeypatch):
    from vlbench.cli import main
    import vlbench.engine.models as M

    monkeypatch.setattr(M.Models, "__init__", lambda *a, **k: pytest.fail("a model loaded"))
    code = main(["embed", "--tiny", "--device", "cpu", "--image", str(ref_image), "--prompt", PROMPT_TEXT,
                 "--image-attention", "topk", "--out", str(tmp_path / "x.safetensors")])
    out, err = capsys.readouterr()
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["vlbench: error: --image-attention topk: needs image_top_k (image tokens kept per "
                     "reference); set image_top_k, e.g. 64"], err


# ---------------------------------------------------------------- determinism, records, heat maps
def test_a_weighted_run_is_deterministic(engine, ref_image):
    recipe = Recipe(image_attention="topk", image_top_k=6, steps=1, width=64, height=64, seed=5)
    ref = Reference.open(ref_image)
    first = engine.run(recipe, PROMPT_TEXT, [ref])
    second = Engine(engine.models).run(recipe, PROMPT_TEXT, [ref])  # a fresh engine: the forward runs again
    assert torch.equal(first.conditioning.embeds, second.conditioning.embeds)
    assert first.image.tobytes() == second.image.tobytes()
    assert torch.equal(first.conditioning.extraction.image_attention, second.conditioning.extraction.image_attention)


def test_the_run_record_carries_the_weights_and_the_grid(engine, ref_image):
    from vlbench.jobs import execute
    from vlbench.records import RunRecord

    recipe = Recipe(tokens="image", image_attention="topk", image_top_k=4, steps=1, width=64, height=64)
    ref = Reference.open(ref_image)
    record = RunRecord(prompt=PROMPT_TEXT, references=[{"path": str(ref_image), "sha256": ref.sha256}],
                       recipe=recipe.to_dict())
    outcome = execute(engine, record, [ref])
    assert outcome.record.status == "done", outcome.record.error
    stored = RunRecord.from_json(json.loads(json.dumps(outcome.record.to_json())))  # through JSON, as stored
    info = stored.conditioning["vl"]["image_attention"]
    ex = engine.extraction([ref], PROMPT_TEXT, None, engine.attention_layer(recipe))
    assert info["decoder_layer"] == ex.attention_layer and info["hidden_index"] == ex.attention_layer + 1
    (image,) = info["images"]
    assert image["grid"] == list(ex.image_grids[0])
    assert len(image["weights"]) == image["grid"][0] * image["grid"][1] == ex.image_token_counts[0]
    assert sum(image["weights"]) == pytest.approx(1.0, abs=1e-3)
    assert image["weights"] == pytest.approx(ex.image_attention.tolist(), rel=1e-3)
    assert stored.png_metadata()["conditioning"]["vl"]["image_attention"] == info


def test_the_disk_cache_keeps_the_attention_under_its_own_key(engine, ref_image, tmp_path):
    from vlbench.engine.cache import extraction_key

    ref = Reference.open(ref_image)
    vl = engine.models.vl
    budget = engine.models.caption_budget
    assert extraction_key(vl, [ref.sha256], PROMPT_TEXT, budget, None) != \
        extraction_key(vl, [ref.sha256], PROMPT_TEXT, budget, None, 3)
    cached = Engine(engine.models, cache_dir=tmp_path / "cache")
    first = cached.extraction([ref], PROMPT_TEXT, None, 3)
    again = Engine(engine.models, cache_dir=tmp_path / "cache")
    second = again.extraction([ref], PROMPT_TEXT, None, 3)
    assert again.vl_forwards == 0 and again.disk_cache.hits == 1
    assert torch.equal(first.image_attention, second.image_attention) and second.attention_layer == 3
    assert again.extraction([ref], PROMPT_TEXT, None).image_attention is None  # its own entry, no attention


def test_heatmap_render_paints_the_most_attended_token_brightest(tmp_path):
    import numpy as np
    from PIL import Image

    from vlbench.analysis import heatmap

    ref = Image.new("RGB", (90, 60), (128, 128, 128))
    weights = [0.0] * 6
    weights[4] = 0.7
    weights[0] = 0.3
    img = heatmap.render(ref, weights, (2, 3), opacity=1.0)
    assert img.size == ref.size
    px = np.asarray(img).astype(int)
    cell = lambda r, c: px[r * 30 + 15, c * 30 + 15].sum()  # noqa: E731 — centre of token (r, c)
    assert cell(1, 1) > cell(0, 0) > cell(0, 1)  # token 4 = row 1, column 1: raster order
    path = tmp_path / "h.png"
    img.save(path)
    assert Image.open(path).size == (90, 60)
    with pytest.raises(ValueError):
        heatmap.render(ref, weights, (3, 3))
    dimmed = np.asarray(heatmap.render(ref, weights, (2, 3), opacity=1.0, kept=[4])).astype(int)
    assert dimmed[15, 15].sum() < cell(0, 0)  # token 0 not kept: darkened
    assert heatmap.top_k([0.1, 0.5, 0.2, 0.5], 2) == [1, 3]


def test_embed_writes_the_heatmap_beside_the_tensor(engine, tmp_path, ref_image, capsys):
    from PIL import Image

    from vlbench.cli import main

    out = tmp_path / "w.safetensors"
    code = main(["embed", "--tiny", "--device", "cpu", "--dtype", "fp32", "--image", str(ref_image), "--prompt",
                 PROMPT_TEXT, "--image-attention", "topk", "--image-top-k", "8", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    heat = tmp_path / "w.heatmap.png"
    assert heat.exists() and Image.open(heat).size == Image.open(ref_image).size
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["conditioning"]["vl"]["image_attention"]["images"][0]["grid"] == [7, 10]
    plain = tmp_path / "p.safetensors"
    assert main(["embed", "--tiny", "--device", "cpu", "--dtype", "fp32", "--image", str(ref_image), "--prompt",
                 PROMPT_TEXT, "--out", str(plain)]) == 0
    assert not (tmp_path / "p.heatmap.png").exists()
    assert "image_attention" not in json.loads(plain.with_suffix(".json").read_text())["conditioning"]["vl"]


def test_the_report_shows_each_weighted_runs_heatmap(engine, tmp_path, ref_image):
    from vlbench.jobs import execute
    from vlbench.records import RunRecord
    from vlbench.analysis.report import write_report

    out = tmp_path / "run"
    (out / "images").mkdir(parents=True)
    ref = Reference.open(ref_image)
    rows = []
    for name, recipe in (("plain", Recipe(tokens="image", steps=1, width=64, height=64)),
                         ("topk", Recipe(tokens="image", image_attention="topk", image_top_k=4, steps=1,
                                         width=64, height=64))):
        record = RunRecord(prompt=PROMPT_TEXT, references=[{"path": str(ref_image), "sha256": ref.sha256}],
                           recipe=recipe.to_dict(), name=name)
        outcome = execute(engine, record, [ref])
        outcome.image.save(out / "images" / f"{name}.png")
        rows.append(outcome.record.replace(image=f"images/{name}.png").to_json())
    page = write_report(out, rows, {"experiment": "t"}).read_text()
    assert (out / "heatmaps" / "topk.png").exists() and not (out / "heatmaps" / "plain.png").exists()
    assert "src='heatmaps/topk.png'" in page and "heatmaps/plain.png" not in page


def test_heatmap_module_imports_no_torch():
    """The workbench draws heat maps before (or without) torch: vlbench.analysis.heatmap is torch-free."""
    import subprocess
    import sys

    code = ("import sys, vlbench.analysis.heatmap; "
            "print(sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_attention_probe_benchmark_runs_tiny_and_finds_no_probe_on_the_default_forward(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "attention_probe.py"), "--tiny", "-n", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["default_forward_probes"] == 0
    assert result["attention_layer"] == result["decoder_layers"] - 2
    assert result["weights_sum"] == pytest.approx(1.0, abs=1e-3)
    assert set(result["timings"]) == {"default", "probed"}


def test_each_extraction_is_recorded_under_a_name_that_says_what_it_is(engine, tmp_path):
    """multi_image separate: one extraction per reference, recorded as vl, vl_ref2, vl_ref3 (never as a 'style'
    pass), each with its weights, and one heat map per reference; dual: vl (content) and vl_style."""
    from vlbench.analysis import heatmap
    from vlbench.records import vl_extractions

    paths = [make_image(tmp_path / f"r{i}.png", color=(40 * i, 200 - 40 * i, 90)) for i in range(3)]
    refs = [Reference.open(p) for p in paths]
    recipe = Recipe(tokens="image", multi_image="separate", image_attention="weighted-pool", pool_image_tokens=4,
                    steps=1, width=64, height=64)
    info = engine.condition(recipe, PROMPT_TEXT, refs).describe()
    assert [k for k, _ in vl_extractions(info)] == ["vl", "vl_ref2", "vl_ref3"] and "vl_style" not in info
    assert all(len(vl["image_attention"]["images"]) == 1 for _, vl in vl_extractions(info))
    assert len(heatmap.from_conditioning(info, paths, recipe.to_dict())) == 3
    dual = Recipe(dual=True, steps=1, width=64, height=64)
    info = engine.condition(dual, PROMPT_TEXT, refs[:1]).describe()
    assert [k for k, _ in vl_extractions(info)] == ["vl", "vl_style"]
    assert info["vl_style"]["vl_text"] is None and info["vl"]["vl_text"] == PROMPT_TEXT  # style pass reads no text
