"""Embedding diagnostics, specified against Qwen3-VL and Qwen3-4B run directly with transformers.

Every statistic must equal the one computed by hand from a plain `output_hidden_states=True`
forward of each tiny model: RMS per token role with attention sinks apart, per-dimension std ratios
against Qwen3-4B's layer -2 text rows, position-aligned cosines, and the same after normalisation.
As in test_calibrate, both copies of each model get the same planted sink (`<|im_start|>` scaled up).
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_image
from test_calibrate import SINK_TOKEN, plant_sink
from vlbench.analysis.diagnose import ZIMAGE_LAYER, diagnose, role_stats, std_ratio
from vlbench.engine import blend
from vlbench.engine.engine import Engine, Reference
from vlbench.engine.models import Models
from vlbench.errors import UserError

PROMPT = "A red fox sitting in fresh snow"


@pytest.fixture(scope="module")
def sink_engine(tiny_spec):
    models = Models(tiny_spec)
    plant_sink(models.text_pipe.text_encoder, models.text_pipe.tokenizer.convert_tokens_to_ids(SINK_TOKEN))
    plant_sink(models.vl.model, models.vl.processor.tokenizer.convert_tokens_to_ids(SINK_TOKEN))
    return Engine(models)


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return Reference.open(make_image(tmp_path_factory.mktemp("diag") / "ref.png"))


@pytest.fixture(scope="module")
def direct(tiny_dirs, ref):
    """(VL ids, VL hidden [layers+1, L, D], Qwen3-4B hidden [layers+1, L', D]) from transformers alone."""
    from transformers import AutoModel, AutoProcessor, AutoTokenizer, Qwen3VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_dirs.vl)
    vl = Qwen3VLForConditionalGeneration.from_pretrained(tiny_dirs.vl, dtype=torch.float32).eval()
    plant_sink(vl, processor.tokenizer.convert_tokens_to_ids(SINK_TOKEN))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=rendered, images=[ref.image], return_tensors="pt")
    tok = AutoTokenizer.from_pretrained(tiny_dirs.zimage, subfolder="tokenizer")
    q = AutoModel.from_pretrained(tiny_dirs.zimage, subfolder="text_encoder", dtype=torch.float32).eval()
    plant_sink(q, tok.convert_tokens_to_ids(SINK_TOKEN))
    text = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True,
                                   enable_thinking=True)
    with torch.no_grad():
        vl_hidden = torch.stack([h[0] for h in vl.model(**inputs, output_hidden_states=True).hidden_states])
        q_hidden = torch.stack([h[0] for h in q(input_ids=torch.tensor([tok(text)["input_ids"]]),
                                                output_hidden_states=True).hidden_states])
    return inputs["input_ids"][0].tolist(), vl_hidden, q_hidden, processor


@pytest.fixture(scope="module")
def diag(sink_engine, ref):
    return diagnose(sink_engine, [ref], PROMPT, layers=(-1, -2, -5))


def by_layer(d, layer):
    return next(e for e in d["layers"] if e["layer"] == layer)


def positions(ids, processor):
    pad, start, end = processor.image_token_id, processor.vision_start_token_id, processor.vision_end_token_id
    image = [i for i, t in enumerate(ids) if t == pad]
    markers = [i for i, t in enumerate(ids) if t in (start, end)]
    text = [i for i in range(len(ids)) if i not in image and i not in markers]
    return {"image": image, "markers": markers, "text": text}


def q_ref_std(q_hidden):
    h = q_hidden[ZIMAGE_LAYER]
    sinks = set(blend.sink_positions(h))
    assert sinks, "the planted sink must show at layer -2"
    return h[[i for i in range(h.shape[0]) if i not in sinks]].std(0, correction=0), sinks


@pytest.mark.parametrize("layer", [-2, -5, -1])
def test_rms_and_std_ratios_per_role_equal_the_models_run_directly(diag, direct, layer):
    ids, vl_hidden, q_hidden, processor = direct
    ref_std, _ = q_ref_std(q_hidden)
    h = vl_hidden[layer]
    sinks = set(blend.sink_positions(h))
    entry = by_layer(diag, layer)
    assert entry["sinks"] == sorted(sinks)
    for role, pos in positions(ids, processor).items():
        rows = h[[p for p in pos if p not in sinks]]
        got = entry["modes"]["none"][role]
        assert got["n"] == rows.shape[0]
        assert got["rms"] == pytest.approx(float(rows.square().mean().sqrt()), rel=1e-5)
        ratio = rows.std(0, correction=0) / ref_std
        assert got["std_ratio_median"] == pytest.approx(float(ratio.median()), rel=1e-5)
        assert got["too_large"] == int((ratio > 8).sum()) and got["too_small"] == int((ratio < 1 / 8).sum())
        assert got["largest"][0][0] == int(ratio.argmax()) and got["smallest"][0][0] == int(ratio.argmin())
        assert got["largest"][0][1] == pytest.approx(float(ratio.max()), rel=1e-5)
    if sinks:
        assert entry["modes"]["none"]["sink"]["rms"] == pytest.approx(float(blend.rms(h[sorted(sinks)])), rel=1e-5)


@pytest.mark.parametrize("layer", [-2, -5])
def test_text_cosines_are_position_aligned_with_qwen3_4b(diag, direct, layer):
    ids, vl_hidden, q_hidden, processor = direct
    text = positions(ids, processor)["text"]
    assert diag["aligned"] and len(text) == q_hidden.shape[1]  # the text selection is Qwen3-4B's template
    vl_sinks = set(blend.sink_positions(vl_hidden[layer]))
    _, q_sinks = q_ref_std(q_hidden)
    keep = [i for i, p in enumerate(text) if p not in vl_sinks and i not in q_sinks]
    cos = torch.nn.functional.cosine_similarity(vl_hidden[layer][[text[i] for i in keep]], q_hidden[-2][keep])
    got = by_layer(diag, layer)["modes"]["none"]["text"]
    assert got["cos_zimage"]["n"] == len(keep)
    assert got["cos_zimage"]["mean"] == pytest.approx(float(cos.mean()), abs=1e-5)
    same_sinks = set(blend.sink_positions(q_hidden[layer]))
    keep = [i for i, p in enumerate(text) if p not in vl_sinks and i not in same_sinks]
    same = torch.nn.functional.cosine_similarity(vl_hidden[layer][[text[i] for i in keep]], q_hidden[layer][keep])
    assert got["cos_same_layer"]["mean"] == pytest.approx(float(same.mean()), abs=1e-5)


def test_layers_beyond_qwen3_4b_have_no_same_layer_cosine(diag, direct):
    _, vl_hidden, q_hidden, _ = direct
    deep = -(q_hidden.shape[0] + 1)
    assert -vl_hidden.shape[0] <= deep
    assert "cos_same_layer" not in by_layer(diag, deep)["modes"]["none"]["text"]
    assert "cos_zimage" in by_layer(diag, deep)["modes"]["none"]["text"]
    assert len(diag["layers"]) == vl_hidden.shape[0] and diag["selected_layers"] == [-1, -2, -5]


def test_without_calibration_normalised_columns_are_left_out_with_a_note(diag):
    assert diag["modes"] == ["none"]
    assert any("calibrate" in note for note in diag["notes"])


def test_normalised_columns_equal_the_normalisation_applied_by_hand(sink_engine, ref, direct, tmp_path):
    from vlbench.engine.calibrate import calibrate, load_stats, save_stats

    ids, vl_hidden, q_hidden, processor = direct
    path = save_stats(*calibrate(sink_engine, [PROMPT, "a watercolor lighthouse"], [ref]), tmp_path / "stats.safetensors")
    d = diagnose(sink_engine, [ref], PROMPT, layers=(-2,), calibration=path)
    assert d["modes"] == ["none", "per-dim", "per-dim-scale", "instance", "per-ref-mean"]
    assert d["calibration"] == str(path)
    stats = load_stats(path, None)
    h = vl_hidden[-2]
    sinks = set(blend.sink_positions(h))
    ref_std, _ = q_ref_std(q_hidden)
    image = [p for p in positions(ids, processor)["image"] if p not in sinks]
    got = by_layer(d, -2)["modes"]
    # per-dim: the image rows moved from the calibrated image-row statistics onto Qwen3-4B's
    cal = stats.get("qwen3", -2, "text")
    src = stats.get("vl", -2, "image")
    moved_image = blend.normalize_per_dim(h[image], src["mean"], src["std"], cal["mean"], cal["std"])
    assert got["per-dim"]["image"]["rms"] == pytest.approx(float(blend.rms(moved_image)), rel=1e-4)
    assert got["per-dim"]["image"]["std_ratio_median"] == pytest.approx(
        float((moved_image.std(0, correction=0) / ref_std).median()), rel=1e-4)
    # per-dim-scale: the spread only; the image rows' calibrated means stay
    scaled = blend.normalize_per_dim(h[image], src["mean"], src["std"], src["mean"], cal["std"])
    assert got["per-dim-scale"]["image"]["rms"] == pytest.approx(float(blend.rms(scaled)), rel=1e-4)
    # instance / per-ref-mean: the reference's own statistics over its image rows; text rows as they are
    own_mean, own_std = blend.dim_stats(h[image])
    for mode, target_mean in (("instance", cal["mean"]), ("per-ref-mean", own_mean)):
        moved = blend.normalize_per_dim(h[image], own_mean, own_std, target_mean, cal["std"])
        assert got[mode]["image"]["rms"] == pytest.approx(float(blend.rms(moved)), rel=1e-4), mode
        assert got[mode]["image"]["std_ratio_median"] == pytest.approx(
            float((moved.std(0, correction=0) / ref_std).median()), rel=1e-4), mode
        assert got[mode]["text"] == got["none"]["text"] and got[mode]["markers"] == got["none"]["markers"]
    # without a reference the per-reference modes have nothing to move: no columns (not a refusal of the diagnosis)
    assert diagnose(sink_engine, [], PROMPT, layers=(-2,), calibration=path)["modes"] == [
        "none", "per-dim", "per-dim-scale"]
    assert got["none"]["image"] == by_layer(diagnose(sink_engine, [ref], PROMPT, (-2,)), -2)["modes"]["none"]["image"]


def test_pure_helpers():
    rows, ref = torch.randn(40, 16), torch.rand(16) + 0.5
    ratio = std_ratio(rows, ref)
    assert torch.allclose(ratio, rows.std(0, correction=0) / ref)
    s = role_stats(rows, ref)
    assert s["n"] == 40 and s["largest"][0] == [int(ratio.argmax()), pytest.approx(float(ratio.max()))]
    assert role_stats(rows[:1], ref) == {"n": 1, "rms": pytest.approx(float(blend.rms(rows[:1])))}


def test_a_layer_the_vl_lacks_is_a_one_line_error(sink_engine, ref):
    with pytest.raises(UserError, match="--layers 99: is out of range"):
        diagnose(sink_engine, [ref], PROMPT, layers=(99,))


def test_cli_prints_tables_and_writes_json_and_plot(tiny_dirs, tmp_path, ref_image, capsys):
    from test_metrics import _main

    out = tmp_path / "diag"
    assert _main(["diagnose", "--image", str(ref_image), "--prompt", PROMPT, "--layers", "-1,-2", "--tiny",
                  "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "normalisation: none" in printed and "std ratio" in printed and "extreme dimensions" in printed
    (entry,) = json.loads((out / "diagnostics.json").read_text())
    assert entry["selected_layers"] == [-1, -2] and (out / entry["plot"]).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UserError, match="--layers"):
        _main(["diagnose", "--prompt", "p", "--layers", "-1,x", "--tiny"])
