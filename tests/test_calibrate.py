"""Calibration statistics and recipe normalisation, specified against the text encoders run directly.

`calibrate` must store, per model, layer and token role, exactly the mean / std / RMS of the rows a
plain transformers forward gives for the same template ids, with attention-sink rows kept apart
(DESIGN §4). The tiny random models have no massive activations of their own, so both copies of
each model (the Engine's and the directly loaded one) get the same planted sink: the
`<|im_start|>` embedding scaled up, as Qwen3's first token is in the real models.
"""

from __future__ import annotations

import pytest
import torch

from conftest import make_image
from vlbench.engine import blend
from vlbench.engine.calibrate import calibrate, load_stats, save_stats
from vlbench.engine.engine import Engine, Reference
from vlbench.engine.models import Models
from vlbench.recipe import Recipe
from vlbench.errors import UserError

PROMPTS = ["A red fox in fresh snow", "A watercolor lighthouse on a rocky coast", "Homer Simpson eating spaghetti",
           "a cat"]
SINK_TOKEN = "<|im_start|>"
SINK_SCALE = 100.0


def plant_sink(model, token_id: int) -> None:
    with torch.no_grad():
        model.get_input_embeddings().weight[token_id] *= SINK_SCALE


@pytest.fixture(scope="module")
def cal_engine(tiny_spec):
    """An Engine of its own (the planted sink must not reach other tests' models)."""
    models = Models(tiny_spec)
    plant_sink(models.text_pipe.text_encoder, models.text_pipe.tokenizer.convert_tokens_to_ids(SINK_TOKEN))
    plant_sink(models.vl.model, models.vl.processor.tokenizer.convert_tokens_to_ids(SINK_TOKEN))
    return Engine(models)


@pytest.fixture(scope="module")
def calibration(cal_engine):
    return calibrate(cal_engine, PROMPTS)


@pytest.fixture(scope="module")
def stats_path(calibration, tmp_path_factory):
    return save_stats(*calibration, tmp_path_factory.mktemp("calibration") / "stats.safetensors")


# ---------------------------------------------------------------- reference side: the encoders run directly
@pytest.fixture(scope="module")
def qwen3_direct(tiny_dirs):
    """Every hidden layer of the tiny Qwen3-4B for each prompt, on Z-Image's template ids: [layers+1, L, D] each."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dirs.zimage, subfolder="tokenizer")
    model = AutoModel.from_pretrained(tiny_dirs.zimage, subfolder="text_encoder", dtype=torch.float32).eval()
    plant_sink(model, tok.convert_tokens_to_ids(SINK_TOKEN))
    out = []
    for prompt in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True, enable_thinking=True)
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        out.append(torch.stack([h[0] for h in hidden]))
    return out


@pytest.fixture(scope="module")
def vl_direct(tiny_dirs):
    """Every hidden layer of the tiny Qwen3-VL for each prompt read as text only (no image)."""
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_dirs.vl)
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_dirs.vl, dtype=torch.float32).eval()
    plant_sink(model, processor.tokenizer.convert_tokens_to_ids(SINK_TOKEN))
    out = []
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
        rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=rendered, return_tensors="pt")
        with torch.no_grad():
            hidden = model.model(**inputs, output_hidden_states=True).hidden_states
        out.append(torch.stack([h[0] for h in hidden]))
    return out


def pooled(per_prompt, layer, sinks: bool = False):
    """The rows of every prompt at `layer`: the non-sink ones, or (sinks=True) only the sink ones."""
    rows = []
    for hidden in per_prompt:
        h = hidden[layer]
        found = set(blend.sink_positions(h))
        rows.append(h[[i for i in range(h.shape[0]) if (i in found) == sinks]])
    return torch.cat(rows)


def check_stats(tensors, key, rows):
    """The stored entry `key` (model.layer.role) holds the count, mean, std and RMS of `rows`."""
    assert int(tensors[f"{key}.count"]) == rows.shape[0]
    mean, std = blend.dim_stats(rows)
    torch.testing.assert_close(tensors[f"{key}.mean"], mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tensors[f"{key}.std"], std, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tensors[f"{key}.rms"].reshape(()), blend.rms(rows), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- the statistics
def test_the_planted_sinks_are_real_massive_activations(qwen3_direct, vl_direct):
    for per_prompt in (qwen3_direct, vl_direct):
        for hidden in per_prompt:
            assert blend.sink_positions(hidden[-2]) != []  # the layer Z-Image reads
            assert blend.sink_positions(hidden[-1]) == []  # the final norm removes them


@pytest.mark.parametrize("layer", [0, 2, -2, -1])
def test_qwen3_text_stats_equal_the_non_sink_rows_of_the_encoder_run_directly(calibration, qwen3_direct, layer):
    tensors, meta = calibration
    n = qwen3_direct[0].shape[0]
    assert meta["layers"]["qwen3"] == n
    check_stats(tensors, f"qwen3.{layer % n}.text", pooled(qwen3_direct, layer))


@pytest.mark.parametrize("layer", [0, 7, -2, -1])
def test_vl_text_stats_equal_the_non_sink_rows_of_qwen3_vl_run_directly(calibration, vl_direct, layer):
    tensors, meta = calibration
    n = vl_direct[0].shape[0]
    assert meta["layers"]["vl"] == n
    check_stats(tensors, f"vl.{layer % n}.text", pooled(vl_direct, layer))


@pytest.mark.parametrize("model", ["qwen3", "vl"])
def test_sink_rows_are_kept_apart(calibration, qwen3_direct, vl_direct, model):
    tensors, _ = calibration
    per_prompt = qwen3_direct if model == "qwen3" else vl_direct
    n = per_prompt[0].shape[0]
    sinks = pooled(per_prompt, -2, sinks=True)
    assert sinks.shape[0] == 2 * len(PROMPTS)  # both <|im_start|> of each template
    check_stats(tensors, f"{model}.{n - 2}.sink", sinks)
    total = sum(h.shape[1] for h in per_prompt)
    assert int(tensors[f"{model}.{n - 2}.text.count"]) + sinks.shape[0] == total
    # the sinks would have swamped the ordinary rows' statistics
    assert blend.rms(sinks) > 10 * tensors[f"{model}.{n - 2}.text.rms"].reshape(())
    assert f"{model}.{n - 1}.sink.mean" not in tensors  # no sink after the final norm: no entry


def test_template_and_prompt_roles_partition_the_text_rows(calibration):
    tensors, meta = calibration
    for model, n in meta["layers"].items():
        for layer in range(n):
            parts = [int(tensors[f"{model}.{layer}.{role}.count"]) for role in ("template", "prompt")]
            assert sum(parts) == int(tensors[f"{model}.{layer}.text.count"]) and all(parts)


def test_save_and_load_round_trip(calibration, stats_path, cal_engine):
    tensors, meta = calibration
    stats = load_stats(str(stats_path), cal_engine.models)
    assert stats.meta == meta
    assert stats.tensors.keys() == tensors.keys()
    for key, value in tensors.items():
        assert torch.equal(stats.tensors[key], value), key
    got = stats.get("qwen3", -2, "text")
    n = meta["layers"]["qwen3"]
    assert torch.equal(got["mean"], tensors[f"qwen3.{n - 2}.text.mean"])
    assert got["rms"].shape == ()


def test_a_rewritten_stats_file_is_read_again(calibration, cal_engine, tmp_path):
    """A long-lived worker that re-calibrates must not keep serving the old file's statistics."""
    tensors, meta = calibration
    path = save_stats(tensors, meta, tmp_path / "stats.safetensors")
    n = meta["layers"]["qwen3"]
    assert torch.equal(load_stats(path, cal_engine.models).tensors[f"qwen3.{n - 2}.text.rms"],
                       tensors[f"qwen3.{n - 2}.text.rms"])
    changed = dict(tensors)
    changed[f"qwen3.{n - 2}.text.rms"] = tensors[f"qwen3.{n - 2}.text.rms"] * 2
    save_stats(changed, meta, path)
    assert torch.equal(load_stats(path, cal_engine.models).tensors[f"qwen3.{n - 2}.text.rms"],
                       changed[f"qwen3.{n - 2}.text.rms"])


def test_per_dim_normalisation_onto_the_calibrations_own_stats(calibration, vl_direct):
    tensors, meta = calibration
    n, layer = meta["layers"]["vl"], meta["layers"]["vl"] - 2
    rows = pooled(vl_direct, -2)  # the calibration prompts' own VL text rows
    vl = {k: tensors[f"vl.{layer}.text.{k}"] for k in ("mean", "std")}
    assert n == vl_direct[0].shape[0]
    same = blend.normalize_per_dim(rows, vl["mean"], vl["std"], vl["mean"], vl["std"])
    torch.testing.assert_close(same, rows, atol=1e-4, rtol=1e-4)  # src = ref: the identity
    q = meta["layers"]["qwen3"] - 2
    onto = blend.normalize_per_dim(rows, vl["mean"], vl["std"], tensors[f"qwen3.{q}.text.mean"],
                                   tensors[f"qwen3.{q}.text.std"])
    mean, std = blend.dim_stats(onto)  # the VL rows now carry Qwen3-4B's per-dimension statistics
    torch.testing.assert_close(mean, tensors[f"qwen3.{q}.text.mean"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(std, tensors[f"qwen3.{q}.text.std"], atol=1e-4, rtol=1e-3)


# ---------------------------------------------------------------- normalisation through Engine.condition
@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return Reference.open(make_image(tmp_path_factory.mktemp("cal") / "ref.png", size=(96, 64)))


def test_global_normalisation_scales_the_non_sink_vl_rows_to_qwen3s_rms(cal_engine, stats_path, calibration, ref):
    tensors, meta = calibration
    prompt = PROMPTS[0]
    plain = cal_engine.condition(Recipe(tokens="full"), prompt, [ref])
    cond = cal_engine.condition(Recipe(tokens="full", normalization="global", calibration=str(stats_path)),
                                prompt, [ref])
    x = plain.embeds
    sinks = blend.sink_positions(x)
    assert sinks  # the planted <|im_start|> rows
    keep = [i for i in range(x.shape[0]) if i not in sinks]
    target = tensors[f"qwen3.{meta['layers']['qwen3'] - 2}.text.rms"].reshape(())
    torch.testing.assert_close(blend.rms(cond.embeds[keep]), target, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cond.embeds[keep], blend.normalize_global(x[keep], target))
    assert torch.equal(cond.embeds[sinks], x[sinks])  # sinks untouched
    assert [cond.rows[i]["normalized"] for i in sinks] == ["sink, untouched"] * len(sinks)
    # normalisation happens before the alpha mix, where a scale matters
    mixed = cal_engine.condition(Recipe(tokens="full", alpha=0.5, normalization="global", calibration=str(stats_path),
                                        length_policy="pool"), prompt, [ref])
    qwen3 = cal_engine.condition(Recipe(alpha=0.0), prompt, []).embeds
    torch.testing.assert_close(mixed.embeds, blend.mix_sequences(qwen3, cond.embeds, 0.5, "pool")[0])


def test_per_dim_normalisation_maps_text_rows_by_vl_stats_and_image_rows_by_their_own(cal_engine, stats_path,
                                                                                      calibration, ref):
    tensors, meta = calibration
    prompt = PROMPTS[1]
    plain = cal_engine.condition(Recipe(tokens="full"), prompt, [ref])
    cond = cal_engine.condition(Recipe(tokens="full", normalization="per-dim", calibration=str(stats_path)),
                                prompt, [ref])
    x = plain.embeds
    sinks = set(blend.sink_positions(x))
    roles = plain.extraction.roles
    text = [i for i, r in enumerate(roles) if r in ("template", "prompt") and i not in sinks]
    image = [i for i, r in enumerate(roles) if r not in ("template", "prompt") and i not in sinks]
    q, v = meta["layers"]["qwen3"] - 2, meta["layers"]["vl"] - 2
    ref_mean, ref_std = tensors[f"qwen3.{q}.text.mean"], tensors[f"qwen3.{q}.text.std"]
    expected = x.clone()
    expected[text] = blend.normalize_per_dim(x[text], tensors[f"vl.{v}.text.mean"], tensors[f"vl.{v}.text.std"],
                                             ref_mean, ref_std)
    expected[image] = blend.normalize_per_dim(x[image], *blend.dim_stats(x[image]), ref_mean, ref_std)
    torch.testing.assert_close(cond.embeds, expected)
    assert not torch.allclose(cond.embeds, x)


@pytest.mark.parametrize("normalization", ["global", "per-dim"])
def test_a_missing_stats_file_tells_to_run_vlbench_calibrate(cal_engine, ref, tmp_path, normalization):
    for calibration in (str(tmp_path / "nowhere.safetensors"), None):  # None: the default path, not written yet
        recipe = Recipe(normalization=normalization, calibration=calibration)
        with pytest.raises(UserError, match="vlbench calibrate"):
            cal_engine.condition(recipe, PROMPTS[0], [ref])
