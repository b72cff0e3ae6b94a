"""Image metrics, specified against the reference libraries run directly on tiny random twins of every
metric model (SigLIP 2, CLIP, DINO ViT, DINOv2, PickScore, VGG-19, the Qwen3-VL judge).

Every score must equal the same computation done with the model's own classes and processor (torchvision's
VGG for the Gram statistic); an image against itself has reference similarity 1; scores do not depend on
batch size or order; an interrupted pass resumes without duplicates; values reach the run store and the report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import make_image
from vlbench.errors import UserError
from vlbench.experiments.results import ResultsLog, reference_copy, validate_row
from vlbench.records import RunRecord
from vlbench.metrics import DEFAULT_METRICS, METRICS, check_available, parse_metrics
from vlbench.metrics.score import SCORES, ScoresLog, load_scores, score_folder

PROMPTS = ["a red fox in the snow", "a watercolor lighthouse", "Homer Simpson eating spaghetti"]
ALL = ("siglip", "clip_t", "clip_i", "dino")
EVERY = ("siglip", "siglip_p", "clip_t", "vqascore", "clip_i", "dino", "dinov2", "style_gram", "content_leak",
         "pickscore")


@pytest.fixture(scope="session")
def metric_dirs(tmp_path_factory, tiny_dirs):
    from vlbench.metrics.tiny import ensure_tiny_metric_models

    return ensure_tiny_metric_models(tmp_path_factory.mktemp("tiny-metrics"), vl=tiny_dirs.vl)


@pytest.fixture(scope="session")
def models(metric_dirs):
    from vlbench.metrics.models import MetricModels

    return MetricModels(metric_dirs.sources(), device="cpu")


def fresh(metric_dirs, **sources):
    from vlbench.metrics.models import MetricModels

    return MetricModels({**metric_dirs.sources(), **sources}, device="cpu")


def fake_run(out: Path, n: int = 5, order=None) -> list[dict]:
    """A run folder as the runner leaves it (results.jsonl, images/, references/), without generating."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    refs = [make_image(out.parent / f"src-{out.name}" / f"ref{i}.png", size=(80 + 16 * i, 64),
                       color=(40 * i, 200 - 30 * i, 90)) for i in range(2)]
    rows = []
    for i in range(n):
        ref = refs[i % 2]
        sha = f"{i % 2:064x}"
        copy = out / reference_copy(str(ref), sha)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ref, copy)
        image = f"images/config{i}.png"
        make_image(out / image, size=(64, 64), color=(30 * i % 256, 90, 255 - 40 * i))
        record = RunRecord(key=f"key{i}", experiment="fake", name=f"config{i % 3}", config_index=i % 3,
                           recipe={"layer": -2, "seed": i}, prompt=PROMPTS[i % 3], seed=i,
                           references=[{"path": str(ref), "sha256": sha}], image=image, status="done",
                           timings={"extraction": 0.0, "blend": 0.0, "generation": 0.1, "model_load": 0.0},
                           caption_tokens=40, vl_forwards=1, finished_at=1.0)
        rows.append(record.to_json())
    log = ResultsLog(out / "results.jsonl")
    for i in (order or range(n)):
        log.append(rows[i])
    # the tests read the (first) reference of each row
    return [{**r, "reference": r["references"][0]["path"], "reference_sha256": r["references"][0]["sha256"]}
            for r in rows]


def values(out: Path) -> dict[str, dict]:
    return {k: v["metrics"] for k, v in load_scores(out).items()}


# ---- each score equals transformers' own computation ----
def test_siglip_is_siglip_models_own_logit_of_the_lowercased_prompt_and_siglip_p_its_sigmoid(tmp_path, models):
    from transformers import AutoModel, AutoProcessor

    rows = fake_run(tmp_path / "run")
    score_folder(tmp_path / "run", ("siglip", "siglip_p"), models)
    got = values(tmp_path / "run")
    model = AutoModel.from_pretrained(models.sources["siglip"]).eval()
    processor = AutoProcessor.from_pretrained(models.sources["siglip"])
    images = [Image.open(tmp_path / "run" / r["image"]).convert("RGB") for r in rows]
    inputs = processor(text=[r["prompt"].lower() for r in rows], images=images, padding="max_length", max_length=64,
                       return_tensors="pt")
    assert inputs["input_ids"].shape[1] == 64  # SigLIP's fixed text length
    with torch.no_grad():
        expected = model(**inputs).logits_per_image.diag()  # exp(logit_scale)·cos + logit_bias
    assert torch.allclose(torch.tensor([got[r["key"]]["siglip"] for r in rows]), expected, atol=1e-5)
    assert torch.allclose(torch.tensor([got[r["key"]]["siglip_p"] for r in rows]), torch.sigmoid(expected), atol=1e-6)
    homer = next(r for r in rows if r["prompt"].startswith("Homer"))  # mixed case in the prompt: read lowercased
    with torch.no_grad():
        cased = model(**processor(text=[homer["prompt"]], images=[images[rows.index(homer)]], padding="max_length",
                                  max_length=64, return_tensors="pt")).logits_per_image[0, 0]
    assert abs(float(cased) - got[homer["key"]]["siglip"]) > 1e-6  # the case would have mattered


def test_clip_t_and_clip_i_equal_clip_models_own_embeddings(tmp_path, models):
    from transformers import AutoModel, AutoProcessor

    rows = fake_run(tmp_path / "run")
    score_folder(tmp_path / "run", ("clip_t", "clip_i"), models)
    got = values(tmp_path / "run")
    model = AutoModel.from_pretrained(models.sources["clip"]).eval()
    processor = AutoProcessor.from_pretrained(models.sources["clip"])
    images = [Image.open(tmp_path / "run" / r["image"]).convert("RGB") for r in rows]
    refs = [Image.open(r["reference"]).convert("RGB") for r in rows]
    with torch.no_grad():
        out = model(**processor(text=[r["prompt"] for r in rows], images=images, padding=True, return_tensors="pt"))
        ref_out = model(**processor(text=[r["prompt"] for r in rows], images=refs, padding=True, return_tensors="pt"))
    clip_t = (out.image_embeds * out.text_embeds).sum(-1)  # forward() returns them normalised
    clip_i = (out.image_embeds * ref_out.image_embeds).sum(-1)
    assert torch.allclose(torch.tensor([got[r["key"]]["clip_t"] for r in rows]), clip_t, atol=1e-5)
    assert torch.allclose(torch.tensor([got[r["key"]]["clip_i"] for r in rows]), clip_i, atol=1e-5)


def test_dinov2_is_the_cosine_of_dinov2_pooler_outputs(tmp_path, models):
    from transformers import AutoImageProcessor, AutoModel

    rows = fake_run(tmp_path / "run")
    score_folder(tmp_path / "run", ("dinov2",), models)
    got = values(tmp_path / "run")
    model = AutoModel.from_pretrained(models.sources["dinov2"]).eval()
    processor = AutoImageProcessor.from_pretrained(models.sources["dinov2"])
    with torch.no_grad():
        a = model(**processor(images=[Image.open(tmp_path / "run" / r["image"]).convert("RGB") for r in rows],
                              return_tensors="pt")).pooler_output
        b = model(**processor(images=[Image.open(r["reference"]).convert("RGB") for r in rows],
                              return_tensors="pt")).pooler_output
    expected = torch.nn.functional.cosine_similarity(a, b)
    assert torch.allclose(torch.tensor([got[r["key"]]["dinov2"] for r in rows]), expected, atol=1e-5)


def test_dino_is_the_cls_cosine_of_a_dino_vit_with_dreambenchs_preprocessing(tmp_path, models):
    """DreamBench's DINO: the last layer's CLS token (after the final LayerNorm) of a ViT-S/16 DINO, images
    resized (shorter side 256, bicubic), centre-cropped to 224 and normalised with ImageNet statistics."""
    from transformers import BitImageProcessor, ViTModel

    rows = fake_run(tmp_path / "run")
    score_folder(tmp_path / "run", ("dino",), models)
    got = values(tmp_path / "run")
    model = ViTModel.from_pretrained(models.sources["dino"], add_pooling_layer=False).eval()
    processor = BitImageProcessor(size={"shortest_edge": 256}, resample=3, crop_size={"height": 224, "width": 224},
                                  do_center_crop=True, image_mean=[0.485, 0.456, 0.406],
                                  image_std=[0.229, 0.224, 0.225])
    outs = [Image.open(tmp_path / "run" / r["image"]).convert("RGB") for r in rows]
    refs = [Image.open(r["reference"]).convert("RGB") for r in rows]
    with torch.no_grad():
        a = model(**processor(images=outs, return_tensors="pt")).last_hidden_state[:, 0]
        b = model(**processor(images=refs, return_tensors="pt")).last_hidden_state[:, 0]
    assert processor(images=outs[:1], return_tensors="pt")["pixel_values"].shape[-2:] == (224, 224)
    expected = torch.nn.functional.cosine_similarity(a, b)
    assert torch.allclose(torch.tensor([got[r["key"]]["dino"] for r in rows]), expected, atol=1e-5)


def test_pickscore_is_its_model_cards_scaled_cosine(tmp_path, models):
    """PickScore's model card: normalised get_image_features / get_text_features, times logit_scale.exp()."""
    from transformers import AutoModel, AutoProcessor

    rows = fake_run(tmp_path / "run")
    score_folder(tmp_path / "run", ("pickscore",), models)
    got = values(tmp_path / "run")
    processor = AutoProcessor.from_pretrained(models.sources["pickscore_processor"])
    model = AutoModel.from_pretrained(models.sources["pickscore"]).eval()
    for r in rows:
        image = Image.open(tmp_path / "run" / r["image"]).convert("RGB")
        with torch.no_grad():
            image_embs = model.get_image_features(**processor(images=[image], padding=True, truncation=True,
                                                              max_length=77, return_tensors="pt")).pooler_output
            image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
            text_embs = model.get_text_features(**processor(text=r["prompt"], padding=True, truncation=True,
                                                            max_length=77, return_tensors="pt")).pooler_output
            text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
            score = model.logit_scale.exp() * (text_embs @ image_embs.T)[0]
        assert got[r["key"]]["pickscore"] == pytest.approx(float(score[0]), abs=1e-4)
    assert abs(float(model.logit_scale.detach().exp()) - 1.0) > 1  # the scale is applied (a plain cosine would pass otherwise)


def _torchvision_gram_style(vgg_dir: Path, a: Image.Image, b: Image.Image) -> float:
    """The style statistic computed with torchvision's own VGG and transforms, written independently."""
    from safetensors.torch import load_file
    from torchvision import transforms
    from torchvision.models.vgg import make_layers

    from vlbench.metrics.tiny import TINY_VGG_CFG

    features = make_layers(TINY_VGG_CFG)
    state = load_file(str(vgg_dir / "model.safetensors"))
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()})
    features.eval()
    relu_firsts = [i + 1 for i, m in enumerate(features) if isinstance(m, torch.nn.Conv2d)
                   and (i == 0 or isinstance(features[i - 1], torch.nn.MaxPool2d))]
    tf = transforms.Compose([transforms.Resize(256, antialias=True), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    def grams(img):
        x, out = tf(img).unsqueeze(0), []
        with torch.no_grad():
            for i, layer in enumerate(features):
                x = layer(x)
                if i in relu_firsts:
                    f = x[0].reshape(x.shape[1], -1)
                    out.append((f @ f.T / f.shape[1]).flatten())
        return out

    ga, gb = grams(a), grams(b)
    assert len(ga) == 5  # relu1_1 … relu5_1
    return float(torch.stack([torch.nn.functional.cosine_similarity(x, y, dim=0) for x, y in zip(ga, gb)]).mean())


def test_style_gram_equals_torchvisions_vgg_gram_cosines(tmp_path, models):
    rows = fake_run(tmp_path / "run")
    score_folder(tmp_path / "run", ("style_gram",), models)
    got = values(tmp_path / "run")
    for r in rows:
        expected = _torchvision_gram_style(Path(models.sources["vgg"]), Image.open(tmp_path / "run" / r["image"]).convert("RGB"),
                                           Image.open(r["reference"]).convert("RGB"))
        assert got[r["key"]]["style_gram"] == pytest.approx(expected, abs=1e-5)


def test_a_vgg_checkpoint_that_is_not_vgg_is_one_line(tmp_path):
    from safetensors.torch import save_file

    from vlbench.metrics.models import load_family

    save_file({"features.0.weight": torch.zeros(4, 3, 5, 5), "features.0.bias": torch.zeros(4)},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match=r"vgg .*cannot load it \(features.0.weight: not a 3×3 convolution\)"):
        load_family("vgg", str(tmp_path), torch.device("cpu"), torch.float32)


def _transformers_yes(vl_dir, images, question, answer_ids):
    """P(answer) with transformers alone: chat template, processor, the full model's logits, softmax."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(vl_dir).eval()
    processor = AutoProcessor.from_pretrained(vl_dir)
    messages = [{"role": "user", "content": [*({"type": "image"} for _ in images), {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=images, return_tensors="pt")
    n = inputs["input_ids"].shape[1]
    ids = torch.cat([inputs["input_ids"], torch.tensor([answer_ids])], 1)
    inputs = dict(inputs, input_ids=ids, attention_mask=torch.ones_like(ids),
                  mm_token_type_ids=torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, len(answer_ids), dtype=torch.long)], 1))
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    return float(torch.exp(torch.stack([logp[n - 1 + j, t] for j, t in enumerate(answer_ids)]).mean()))


def test_vqascore_is_qwen3_vls_probability_of_yes_to_vqascores_question(tmp_path, models):
    from transformers import AutoProcessor

    rows = fake_run(tmp_path / "run", n=3)
    score_folder(tmp_path / "run", ("vqascore",), models, batch_size=3)
    got = values(tmp_path / "run")
    vl_dir = models.sources["vqa"]
    yes = AutoProcessor.from_pretrained(vl_dir).tokenizer.encode("Yes", add_special_tokens=False)
    for r in rows:
        question = f'Does this figure show "{r["prompt"]}"? Please answer yes or no.'
        expected = _transformers_yes(vl_dir, [Image.open(tmp_path / "run" / r["image"]).convert("RGB")], question, yes)
        assert got[r["key"]]["vqascore"] == pytest.approx(expected, rel=1e-4)


def test_a_one_token_answer_is_the_softmax_of_the_next_token_logits(tmp_path, models):
    """With the real Qwen tokenizer "Yes" is one token: the score is then softmax(next-token logits)["Yes"]."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlbench.metrics.vqa import answer_probability

    vl = models["vqa"].model
    image = make_image(tmp_path / "x.png", size=(64, 48))
    img = Image.open(image).convert("RGB")
    token = vl.processor.tokenizer.encode("Y", add_special_tokens=False)
    assert len(token) == 1
    got = answer_probability(vl, [([img], "Is it red?")], answer="Y")[0]
    model = AutoModelForImageTextToText.from_pretrained(models.sources["vqa"]).eval()
    processor = AutoProcessor.from_pretrained(models.sources["vqa"])
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it red?"}]}],
                                         add_generation_prompt=True, tokenize=False)
    with torch.no_grad():
        logits = model(**processor(text=[text], images=[img], return_tensors="pt")).logits[0, -1]
    assert got == pytest.approx(float(torch.softmax(logits.float(), -1)[token[0]]), rel=1e-5)


def test_content_leak_asks_the_judge_about_reference_then_output(tmp_path, models):
    from transformers import AutoProcessor

    from vlbench.metrics import LEAK_QUESTION

    rows = fake_run(tmp_path / "run", n=2)
    score_folder(tmp_path / "run", ("content_leak",), models)
    got = values(tmp_path / "run")
    vl_dir = models.sources["vqa"]
    yes = AutoProcessor.from_pretrained(vl_dir).tokenizer.encode("Yes", add_special_tokens=False)
    for r in rows:
        images = [Image.open(r["reference"]).convert("RGB"), Image.open(tmp_path / "run" / r["image"]).convert("RGB")]
        assert got[r["key"]]["content_leak"] == pytest.approx(_transformers_yes(vl_dir, images, LEAK_QUESTION, yes), rel=1e-4)


def test_the_judge_is_batched_without_changing_any_answer(tmp_path, models):
    from vlbench.metrics.vqa import vqascore

    vl = models["vqa"].model
    images = [Image.open(make_image(tmp_path / f"{i}.png", size=(48 + 16 * i, 64), color=(60 * i, 90, 30))).convert("RGB")
              for i in range(3)]
    prompts = ["a fox", "a lighthouse on a rocky coast at dawn", "spaghetti"]
    batched = vqascore(vl, images, prompts)
    single = [vqascore(vl, [im], [p])[0] for im, p in zip(images, prompts)]
    assert batched == pytest.approx(single, rel=1e-4)


def test_run_shares_its_own_vl_as_the_judge(tmp_path, metric_dirs):
    """`vlbench run --metrics` passes the loaded Qwen3-VL: no second copy is loaded."""
    from vlbench.metrics.models import MetricModels

    sentinel = object()
    shared = MetricModels(metric_dirs.sources(), device="cpu", shared={"vqa": lambda: sentinel},
                          shared_sources={"vqa": str(metric_dirs.vqa)})
    assert shared["vqa"].model is sentinel and shared.load_seconds == {}
    other = MetricModels({**metric_dirs.sources(), "vqa": str(tmp_path)}, device="cpu",
                         shared={"vqa": lambda: sentinel}, shared_sources={"vqa": str(metric_dirs.vqa)})
    assert other._shared == {}  # --vqa names another model: the run's is not used for it


def test_an_image_against_itself_has_reference_similarity_1(tmp_path, models):
    out = tmp_path / "run"
    rows = fake_run(out, n=2)
    for r in rows:  # make each output its own reference
        shutil.copyfile(out / r["image"], out / reference_copy(r["reference"], r["reference_sha256"]))
        shutil.copyfile(out / r["image"], r["reference"])
    score_folder(out, ("clip_i", "dino", "dinov2", "style_gram"), models)
    for v in values(out).values():
        for m in ("clip_i", "dino", "dinov2", "style_gram"):
            assert v[m] == pytest.approx(1.0, abs=1e-5), m


# ---- batching, order, resuming ----
def test_scores_do_not_depend_on_batch_size_or_order(tmp_path, models):
    fake_run(tmp_path / "a", n=5)
    fake_run(tmp_path / "b", n=5, order=[3, 0, 4, 2, 1])
    score_folder(tmp_path / "a", EVERY, models, batch_size=1)
    score_folder(tmp_path / "b", EVERY, models, batch_size=3)
    a, b = values(tmp_path / "a"), values(tmp_path / "b")
    assert set(a) == set(b) == {f"key{i}" for i in range(5)}
    for key in a:
        assert set(a[key]) == set(EVERY)
        for m in EVERY:
            assert a[key][m] == pytest.approx(b[key][m], rel=1e-4, abs=1e-5), (key, m)


def test_an_interrupted_pass_resumes_without_duplicates(tmp_path, metric_dirs):
    out = tmp_path / "run"
    fake_run(out, n=5)

    def stop(batch):
        if batch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        score_folder(out, ALL, fresh(metric_dirs), batch_size=2, on_batch=stop)
    assert len(ScoresLog(out / SCORES).read()[0]) == 4  # two whole batches on disk
    with open(out / SCORES, "a") as f:
        f.write('{"key": "key4", "image": "images/con')  # a kill in the middle of a write
    summary = score_folder(out, ALL, fresh(metric_dirs), batch_size=2)
    assert (summary.scored, summary.skipped) == (1, 4)
    entries, bad = ScoresLog(out / SCORES).read()
    assert bad == 0 and sorted(e["key"] for e in entries) == [f"key{i}" for i in range(5)]
    again = fresh(metric_dirs)
    summary = score_folder(out, ALL, again)
    assert (summary.scored, summary.skipped) == (0, 5) and again.load_seconds == {}  # nothing loaded
    assert validate_row(json.loads((out / "results.jsonl").read_text().splitlines()[0])) == []  # untouched


def test_another_model_rescores_only_its_metrics(tmp_path, metric_dirs):
    out = tmp_path / "run"
    fake_run(out, n=2)
    score_folder(out, ALL, fresh(metric_dirs))
    before = values(out)
    other = tmp_path / "dino-copy"
    shutil.copytree(metric_dirs.dino, other)
    summary = score_folder(out, ALL, fresh(metric_dirs, dino=str(other)))
    assert summary.scored == 2 and summary.values == 2  # dino only
    scores = load_scores(out)
    assert all(s["models"]["dino"] == str(other) and s["models"]["siglip"] == str(metric_dirs.siglip)
               for s in scores.values())
    after = values(out)
    assert all(after[k][m] == before[k][m] for k in before for m in ("siglip", "clip_t", "clip_i"))


# ---- store, names, optional extra ----
def test_scores_reach_the_run_store_and_history_sorts_by_them(tmp_path, models):
    from vlbench.store import Store

    out = tmp_path / "run"
    rows = fake_run(out, n=4)
    with Store(tmp_path / "runs.sqlite3") as store:
        ids = [store.add(RunRecord(prompt=r["prompt"], references=r["references"], recipe=r["recipe"], status="done",
                                   image=str((out / r["image"]).resolve()))) for r in rows]
        other = store.add(RunRecord(prompt="unscored", status="done", image=str(tmp_path / "elsewhere.png")))
        summary = score_folder(out, ("siglip", "dino"), models, store=store)
        assert summary.stored == 4
        got = values(out)
        for run_id, r in zip(ids, rows):
            metrics = store.get(run_id).metrics
            assert metrics["siglip"] == got[r["key"]]["siglip"] and metrics["metric_models"]["dino"]
        order = [r.id for r in store.history(sort="metric:siglip", descending=True)]
        by_value = sorted(ids, key=lambda i: -store.get(i).metrics["siglip"])
        assert order == [*by_value, other]  # unscored last, either way
        assert [r.id for r in store.history(sort="metric:siglip", descending=False)] == [*by_value[::-1], other]
        with pytest.raises(ValueError):
            store.history(sort="metric:x'); DROP TABLE runs; --")


def test_metric_names_are_checked_and_imagereward_names_its_extra(monkeypatch):
    assert parse_metrics(None) == DEFAULT_METRICS
    assert parse_metrics("dino, siglip,dino") == ("dino", "siglip")
    with pytest.raises(UserError, match="unknown metric 'fid'.*siglip"):
        parse_metrics("siglip,fid")
    assert set(METRICS) >= set(EVERY) | {"imagereward"}
    import importlib.util

    if importlib.util.find_spec("ImageReward") is not None:
        pytest.skip("ImageReward is installed here")
    with pytest.raises(UserError, match=r"not installed; pip install 'vlbench\[imagereward\]'"):
        check_available(("siglip", "imagereward"))


def test_an_installed_imagereward_that_cannot_import_says_why(tmp_path, monkeypatch):
    """image-reward 1.5 imports names transformers 5 removed: the error quotes the import failure, it does not
    claim the package is missing."""
    pkg = tmp_path / "site" / "ImageReward"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from transformers.modeling_utils import apply_chunking_to_forward\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(UserError) as err:
        check_available(("imagereward",))
    text = str(err.value)
    assert "installed but cannot be imported" in text and "apply_chunking_to_forward" in text
    assert "not installed" not in text and "pickscore" in text


def test_values_of_an_older_protocol_are_recomputed_not_shown(tmp_path, models):
    """`siglip` was the probability before it became the logit: an old line must not pass for the new metric."""
    out = tmp_path / "run"
    rows = fake_run(out, n=2)
    ScoresLog(out / SCORES).append([{"key": r["key"], "image": r["image"], "metrics": {"siglip": 0.001, "clip_t": 0.2},
                                     "models": {"siglip": models.sources["siglip"], "clip_t": models.sources["clip"]}}
                                    for r in rows])
    assert all(set(v) == {"clip_t"} for v in values(out).values())  # the old siglip is not shown
    summary = score_folder(out, ("siglip", "clip_t"), models)
    assert summary.scored == 2 and summary.values == 2  # siglip recomputed, clip_t (protocol 1) kept
    assert all(v["siglip"] != 0.001 for v in values(out).values())


def test_a_folder_without_results_is_a_one_line_error(tmp_path, models):
    with pytest.raises(UserError, match="no results.jsonl"):
        score_folder(tmp_path, ALL, models)


# ---- report ----
def test_report_has_a_sortable_metrics_table_and_the_adherence_plot(tmp_path, models):
    from vlbench.analysis.report import write_report

    out = tmp_path / "run"
    rows = fake_run(out, n=5)
    score_folder(out, ALL, models)
    write_report(out, rows, {"experiment": "fake"})
    html = (out / "report.html").read_text()
    assert "<table class='sortable'>" in html and "<script>" in html and "data-v=" in html
    assert "src='metrics.png'" in html and (out / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    for label in ("SigLIP", "CLIP-T", "CLIP-I", "DINO"):
        assert f"<th>{label}</th>" in html
    siglip = values(out)["key0"]["siglip"]
    assert f"data-v='{float(siglip)!r}'" in html


# ---- the command line ----
def _main(argv: list[str]) -> int:
    """A command in-process; a bad input raises its UserError (vlbench.cli.main would print it)."""
    from vlbench.cli import build_parser, command

    args = build_parser().parse_args(argv)
    return command(args.command).run(args)


def test_run_with_metrics_scores_stores_and_reports(tiny_dirs, tmp_path, ref_image, metric_dirs, monkeypatch, capsys):
    from vlbench.cli import common as tiny  # where the command line calls ensure_tiny_metric_models
    from vlbench.store import Store

    monkeypatch.setattr(tiny, "ensure_tiny_metric_models", lambda root=None, vl=None: metric_dirs)
    out = tmp_path / "out"
    examples = Path(__file__).parents[1] / "examples" / "experiments" / "my_layer_pair.toml"
    argv = ["run", "--experiment", str(examples), "--quick", "--image", str(ref_image), "--prompt", "a red square",
            "--output-dir", str(out), "--tiny", "--device", "cpu", "--steps", "2", "--width", "64", "--height", "64",
            "--metrics", "--metrics-batch-size", "2"]
    assert _main(argv) == 0
    err = capsys.readouterr().err
    assert "loading vqa metric model" not in err  # the judge is the run's own Qwen3-VL
    assert "VQAScore (vqascore; higher is better)" in err and "baseline" in err  # the statistics end the run
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    scores = load_scores(out)
    assert len(rows) == 3 and set(scores) == {r["key"] for r in rows}
    assert all(set(s["metrics"]) == set(DEFAULT_METRICS) for s in scores.values())
    with Store() as store:
        recorded = store.history()
        assert len(recorded) == 3 and all(set(DEFAULT_METRICS) <= set(r.metrics) for r in recorded)
    html = (out / "report.html").read_text()
    assert "<h2>Metrics</h2>" in html and "<h2>Embedding diagnostics</h2>" in html
    assert (out / "metrics.png").is_file() and list(out.glob("diagnostics-*.png"))
    # `vlbench score` on the same folder: already scored, nothing redone; a new metric subset is fine
    assert _main(["score", str(out), "--tiny", "--metrics", "siglip"]) == 0
    assert load_scores(out) == scores
    with pytest.raises(UserError, match="tiny: cannot be combined with --dino"):
        _main(["score", str(out), "--tiny", "--dino", "x"])


# ---- the workbench ----
def test_history_shows_metric_columns_sorts_by_them_and_preview_shows_scores():
    import asyncio

    from vlbench.recipe import Recipe
    from vlbench.tui.app import VlbenchApp
    from vlbench.config import parse_settings

    async def go():
        app = VlbenchApp(parse_settings({"recipe": {"width": 64, "height": 64, "steps": 2}}), start_worker=False)
        recipe = Recipe(width=64, height=64, steps=2).to_dict()
        ids = [app.store.add(RunRecord(prompt=f"prompt {i}", recipe=recipe, status="done", image=f"/nowhere/{i}.png"))
               for i in range(4)]
        for run_id, value in zip(ids, (0.2, 0.9, None, 0.5)):
            if value is not None:
                app.store.set_metrics(run_id, {"siglip": value, "dino": 1 - value})
        async with app.run_test(size=(160, 48)) as pilot:
            await pilot.pause()
            history = app.history
            table = history.table
            labels = [str(c.label) for c in table.columns.values()]
            assert labels[-2:] == ["SigLIP", "DINO"] and history.metric_columns == ["siglip", "dino"]
            history.focus()
            table.focus()
            while history.sort != "metric:siglip":
                await pilot.press("s")
            await pilot.pause()
            order = [int(k.value) for k in table.rows]
            assert order == [ids[1], ids[3], ids[0], ids[2]]  # highest first, the unscored run last
            assert "siglip" in str(app.query_one("#history-sort").render())
            await pilot.press("o")
            await pilot.pause()
            assert [int(k.value) for k in table.rows] == [ids[0], ids[3], ids[1], ids[2]]
            await pilot.press("down")  # the Preview follows the cursor (once it rests): the second row, run ids[3]
            await pilot.pause(0.5)
            caption = str(app.query_one("#preview-caption").render())
            assert "scores: SigLIP 0.500 · DINO 0.500" in caption
        app.close()

    asyncio.run(go())


# ---- the GPU benchmark, checked on the CPU with the tiny twins ----
def test_the_metrics_gpu_benchmark_runs_on_tiny_twins(tmp_path, tiny_dirs):
    import os
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "benchmarks" / "metrics_gpu.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run([sys.executable, str(script), "--tiny-smoke", "--out", str(tmp_path), "--dtypes", "fp32",
                           "--batch-sizes", "1,2", "--families", "siglip,dino,vgg,pickscore,vqa"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((tmp_path / "metrics_gpu.json").read_text())
    assert result["errors"] == {} and set(result["families"]) == {
        "siglip:fp32", "dino:fp32", "vgg:fp32", "pickscore:fp32", "vqa:fp32"}
    assert result["families"]["vqa:fp32"]["batches"]["2"]["vqascore"] > 0
    assert result["families"]["siglip:fp32"]["batches"]["1"]["text_embedding"] > 0


# ---- issue 25: the newcomer's first `vlbench score` ----
@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "no route"])
def test_score_offline_without_the_metric_models_is_one_line_at_once(tmp_path, offline):
    """Issue 25.11: with real image models configured and the metric models neither cached nor reachable, `vlbench
    score` spent 150 s in download retries before exit 2; now one line naming the model and the fix, exit 2."""
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    fake_run(out, n=2)
    config = tmp_path / "config"
    config.mkdir()
    (config / "config.toml").write_text('[models]\nzimage = "Tongyi-MAI/Z-Image-Turbo"\n'
                                        'vl = "Qwen/Qwen3-VL-4B-Instruct"\n')
    env = dict(os.environ, VLBENCH_CONFIG_DIR=str(config), HF_HUB_CACHE=str(tmp_path / "hf-cache"),
               HF_HOME=str(tmp_path / "hf-home"))
    env.pop("HF_HUB_OFFLINE", None)
    if offline == "HF_HUB_OFFLINE":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens there: the connection is refused at once
    proc = subprocess.run([sys.executable, "-m", "vlbench", "score", str(out), "--metrics", "siglip,dino"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("vlbench: error: --dino: metric model facebook/dino-vits16 (and 1 more) is not in the "
                               "Hugging Face cache")
    assert "--tiny" in lines[0] and ("HF_HUB_OFFLINE is set" if offline == "HF_HUB_OFFLINE" else "127.0.0.1") \
        in lines[0]
    assert not (out / "scores.jsonl").exists()


def test_score_of_a_tiny_models_run_uses_the_tiny_metric_models(tmp_path, metric_dirs, monkeypatch, capsys):
    """Issue 25.11: "nothing named → the tiny models" reaches the metric models: a folder the tiny models made is
    scored by the tiny metric models (saying so), not by downloading the real ones."""
    import huggingface_hub.constants

    from vlbench.cli import common as tiny  # where the command line calls ensure_tiny_metric_models

    monkeypatch.setattr(tiny, "ensure_tiny_metric_models", lambda root=None, vl=None: metric_dirs)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # nothing cached
    out = tmp_path / "run"
    fake_run(out, n=2)
    (out / "run.json").write_text(json.dumps({"experiment": "fake", "models": {"tiny": True}}))
    assert _main(["score", str(out), "--metrics", "siglip,dino", "--no-store"]) == 0
    err = capsys.readouterr().err
    assert "metric models: the built-in tiny RANDOM-WEIGHT ones" in err
    assert all(set(s["metrics"]) == {"siglip", "dino"} for s in load_scores(out).values())
    (out / "run.json").write_text(json.dumps({"experiment": "fake", "models": {"tiny": False}}))
    with pytest.raises(UserError, match="is not in the Hugging Face cache and HF_HUB_OFFLINE is set"):
        _main(["score", str(out), "--metrics", "clip_t", "--no-store"])
