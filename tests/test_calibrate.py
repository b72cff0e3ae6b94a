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
def cal_refs(tmp_path_factory):
    """Calibration references (prompt i is read with reference i % 2)."""
    d = tmp_path_factory.mktemp("cal-refs")
    return [Reference.open(make_image(d / "r0.png", size=(64, 64))),
            Reference.open(make_image(d / "r1.png", size=(96, 48), color=(30, 200, 90)))]


@pytest.fixture(scope="module")
def calibration(cal_engine, cal_refs):
    return calibrate(cal_engine, PROMPTS, cal_refs)


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


@pytest.fixture(scope="module")
def vl_image_direct(tiny_dirs, cal_refs):
    """Every hidden layer of the tiny Qwen3-VL for each prompt read with its calibration reference, and the roles
    of the positions (image pads vs text outside the vision block)."""
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_dirs.vl)
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_dirs.vl, dtype=torch.float32).eval()
    plant_sink(model, processor.tokenizer.convert_tokens_to_ids(SINK_TOKEN))
    out = []
    for i, prompt in enumerate(PROMPTS):
        ref = cal_refs[i % len(cal_refs)]
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=rendered, images=[ref.image], return_tensors="pt")
        with torch.no_grad():
            hidden = model.model(**inputs, output_hidden_states=True).hidden_states
        ids = inputs["input_ids"][0].tolist()
        start, end = ids.index(processor.vision_start_token_id), ids.index(processor.vision_end_token_id)
        roles = ["image" if t == processor.image_token_id else ("marker" if start <= j <= end else "text")
                 for j, t in enumerate(ids)]
        out.append((torch.stack([h[0] for h in hidden]), roles))
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


@pytest.mark.parametrize("layer", [0, -2])
@pytest.mark.parametrize("role", ["image", "image_text"])
def test_vl_image_and_image_text_stats_equal_the_rows_of_qwen3_vl_reading_the_references(calibration, vl_image_direct,
                                                                                     layer, role):
    """Image rows, and the text rows that attended an image, have statistics of their own (sinks apart)."""
    tensors, meta = calibration
    n = meta["layers"]["vl"]
    rows = []
    for hidden, roles in vl_image_direct:
        h = hidden[layer]
        sinks = set(blend.sink_positions(h))
        want = "image" if role == "image" else "text"
        rows.append(h[[j for j, r in enumerate(roles) if r == want and j not in sinks]])
    check_stats(tensors, f"vl.{layer % n}.{role}", torch.cat(rows))
    assert meta["references"] and "vlbench-calibration-2" == meta["format"]


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
            if f"{model}.{layer}.template.count" not in tensors:
                continue
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


def test_global_normalisation_scales_the_vl_text_rows_to_qwen3s_rms_before_a_positionwise_mix(
        cal_engine, stats_path, calibration, ref):
    tensors, meta = calibration
    prompt = PROMPTS[0]
    plain = cal_engine.condition(Recipe(tokens="text"), prompt, [ref])
    x = plain.embeds
    sinks = blend.sink_positions(x)
    assert sinks  # the planted <|im_start|> rows
    keep = [i for i in range(x.shape[0]) if i not in sinks]
    target = tensors[f"qwen3.{meta['layers']['qwen3'] - 2}.text.rms"].reshape(())
    recipe = Recipe(tokens="text", alpha=0.5, alpha_policy="positionwise", normalization="global",
                    calibration=str(stats_path))
    mixed = cal_engine.condition(recipe, prompt, [ref])
    normalised = x.clone()
    normalised[keep] = blend.normalize_global(x[keep], target)  # sinks untouched
    qwen3 = cal_engine.condition(Recipe(alpha=0.0), prompt, []).embeds
    torch.testing.assert_close(mixed.embeds, blend.mix(qwen3, normalised, 0.5))
    with pytest.raises(UserError, match="normalization global: has no effect here"):
        Recipe(tokens="full", normalization="global")  # a single scale the DiT's RMSNorm removes


def test_per_dim_normalisation_maps_each_role_by_its_own_calibrated_statistics(cal_engine, stats_path, calibration,
                                                                              ref):
    tensors, meta = calibration
    prompt = PROMPTS[1]
    plain = cal_engine.condition(Recipe(tokens="full"), prompt, [ref])
    x = plain.embeds
    sinks = set(blend.sink_positions(x))
    roles = plain.extraction.roles
    text = [i for i, r in enumerate(roles) if r in ("template", "prompt") and i not in sinks]
    image = [i for i, r in enumerate(roles) if r == "image" and i not in sinks]
    markers = [i for i, r in enumerate(roles) if r in ("vision_start", "vision_end")]
    q, v = meta["layers"]["qwen3"] - 2, meta["layers"]["vl"] - 2
    ref_mean, ref_std = tensors[f"qwen3.{q}.text.mean"], tensors[f"qwen3.{q}.text.std"]
    stat = lambda role, k: tensors[f"vl.{v}.{role}.{k}"]  # noqa: E731
    for mode in ("per-dim", "per-dim-scale"):
        cond = cal_engine.condition(Recipe(tokens="full", normalization=mode, calibration=str(stats_path)), prompt,
                                    [ref])
        expected = x.clone()
        for rows, role in ((text, "image_text"), (image, "image")):  # text that attended an image: its own role
            target_mean = ref_mean if mode == "per-dim" else stat(role, "mean")  # the role's calibrated mean
            expected[rows] = blend.normalize_per_dim(x[rows], stat(role, "mean"), stat(role, "std"), target_mean,
                                                     ref_std)
        torch.testing.assert_close(cond.embeds, expected)
        assert torch.equal(cond.embeds[markers], x[markers]) and torch.equal(cond.embeds[sorted(sinks)],
                                                                              x[sorted(sinks)])


def test_text_only_vl_rows_use_the_text_only_statistics(cal_engine, stats_path, calibration):
    tensors, meta = calibration
    v, q = meta["layers"]["vl"] - 2, meta["layers"]["qwen3"] - 2
    plain = cal_engine.condition(Recipe(tokens="text"), PROMPTS[2], [])
    cond = cal_engine.condition(Recipe(tokens="text", normalization="per-dim", calibration=str(stats_path)),
                                PROMPTS[2], [])
    keep = [i for i in range(plain.embeds.shape[0]) if i not in set(blend.sink_positions(plain.embeds))]
    torch.testing.assert_close(cond.embeds[keep], blend.normalize_per_dim(
        plain.embeds[keep], tensors[f"vl.{v}.text.mean"], tensors[f"vl.{v}.text.std"],
        tensors[f"qwen3.{q}.text.mean"], tensors[f"qwen3.{q}.text.std"]))


def test_the_normalization_sweep_arms_all_differ(cal_engine, stats_path, ref):
    """An arm that cannot differ is not an arm: every pair of the shipped sweep's arms differs."""
    from vlbench.experiments.spec import load_type

    experiment = load_type("normalization_sweep")
    outputs = {}
    for named in experiment.recipes():
        recipe = named.recipe.replace(calibration=str(stats_path)) if named.recipe.normalization != "none" \
            else named.recipe
        outputs[named.name] = cal_engine.condition(recipe, PROMPTS[0], [ref]).embeds
    names = list(outputs)
    assert len(names) >= 3
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert outputs[a].shape != outputs[b].shape or not torch.allclose(outputs[a], outputs[b]), (a, b)


def test_an_old_stats_file_without_image_statistics_is_refused_in_one_line(calibration, cal_engine, tmp_path):
    tensors, meta = calibration
    path = save_stats(tensors, dict(meta, format="vlbench-calibration-1"), tmp_path / "old.safetensors")
    with pytest.raises(UserError, match="without image-token statistics; re-run vlbench calibrate"):
        load_stats(path, cal_engine.models)


@pytest.mark.parametrize("normalization", ["per-dim", "per-dim-scale", "instance", "per-ref-mean"])
def test_a_missing_stats_file_tells_to_run_vlbench_calibrate(cal_engine, ref, tmp_path, normalization):
    for calibration in (str(tmp_path / "nowhere.safetensors"), None):  # None: the default path, not written yet
        recipe = Recipe(normalization=normalization, calibration=calibration)
        with pytest.raises(UserError, match="vlbench calibrate"):
            cal_engine.condition(recipe, PROMPTS[0], [ref])


def test_per_reference_modes_move_each_image_of_a_joint_extraction_by_its_own_statistics(cal_engine, stats_path,
                                                                                          calibration, cal_refs):
    """Two references read jointly (one VL forward, two images): per-ref-mean leaves each image's rows with that
    image's own per-dimension means (atol 1e-4: float32 hidden states of order 1-10), instance leaves both with
    Qwen3-4B's calibrated mean, and both give Qwen3-4B's calibrated std."""
    tensors, meta = calibration
    q = meta["layers"]["qwen3"] - 2
    prompt = PROMPTS[3]
    plain = cal_engine.condition(Recipe(tokens="image"), prompt, cal_refs)
    counts = plain.extractions[0].image_token_counts
    assert len(counts) == 2  # one extraction, two images
    images = [list(range(0, counts[0])), list(range(counts[0], counts[0] + counts[1]))]
    sinks = set(blend.sink_positions(plain.embeds))
    images = [[i for i in rows if i not in sinks] for rows in images]
    own = [plain.embeds[rows].double().mean(0) for rows in images]
    assert (own[0] - own[1]).abs().max() > 1e-2  # the two references differ
    out = {mode: cal_engine.condition(Recipe(tokens="image", normalization=mode, calibration=str(stats_path)), prompt,
                                      cal_refs).embeds for mode in ("instance", "per-ref-mean")}
    q_mean, q_std = tensors[f"qwen3.{q}.text.mean"].double(), tensors[f"qwen3.{q}.text.std"].double()
    for k, rows in enumerate(images):
        kept, removed = out["per-ref-mean"][rows].double(), out["instance"][rows].double()
        torch.testing.assert_close(kept.mean(0), own[k], atol=1e-4, rtol=0)
        torch.testing.assert_close(removed.mean(0), q_mean, atol=1e-4, rtol=0)
        for x in (kept, removed):
            torch.testing.assert_close(x.std(0, correction=0), q_std, atol=1e-4, rtol=1e-4)
