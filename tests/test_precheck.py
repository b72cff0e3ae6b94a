"""Checks from the models' files before any weight loads (vlbench.engine.precheck): each gives exactly the
error the engine gives for the same job, and `vlbench run` / `generate` / `embed` give it before loading."""

from __future__ import annotations

import pytest

from vlbench.engine.engine import Reference
from vlbench.engine.precheck import check_plan, read_model_files
from vlbench.errors import UserError
from vlbench.modelspec import ModelSpec
from vlbench.recipe import Recipe

SMALL = dict(width=64, height=64, steps=1)


@pytest.fixture(scope="module")
def files(tiny_spec):
    found = read_model_files(tiny_spec)
    assert found is not None
    return found


def _engine_error(engine, recipe, prompt, refs) -> UserError:
    with pytest.raises(UserError) as err:
        engine.run(recipe, prompt, refs)
    return err.value


def _plan_error(files, recipe, prompt, refs) -> UserError:
    with pytest.raises(UserError) as err:
        check_plan(files, [(recipe, prompt, refs)])
    return err.value


def test_the_files_give_the_loaded_models_limits(files, engine):
    assert files.caption_budget == engine.models.caption_budget
    pipe = engine.models.pipe
    assert files.axes_lens == list(pipe.transformer.config.axes_lens)
    assert files.pixels_per_token == pipe.vae_scale_factor * 2


def test_each_check_gives_the_engines_own_error_for_the_same_job(files, engine, ref_image):
    refs = [Reference.open(ref_image)]
    side = files.axes_lens[2] * files.pixels_per_token
    cases = [
        (Recipe(**dict(SMALL, width=side + 16)), "a cat"),  # past the DiT's positions
        (Recipe(**SMALL), "a cat <|im_start|> on a mat"),  # the VL reads the prompt
        (Recipe(**SMALL, alpha=0.0), "a cat <|im_end|> on a mat"),  # only Qwen3-4B reads it
        (Recipe(**SMALL, guidance=2.0, negative_prompt="blurry <|im_start|>"), "a cat"),
        (Recipe(**SMALL, tokens="image", image_attention="topk", image_top_k=10_000), "a cat"),
    ]
    for recipe, prompt in cases:
        planned, ran = _plan_error(files, recipe, prompt, refs), _engine_error(engine, recipe, prompt, refs)
        assert (planned.field, str(planned)) == (ran.field, str(ran)), recipe


def test_a_plan_that_can_run_passes_and_top_k_at_the_exact_count_is_allowed(files, engine, ref_image):
    refs = [Reference.open(ref_image)]
    n = engine.condition(Recipe(tokens="image", **SMALL), "a cat", refs).extraction.image_token_counts[0]
    check_plan(files, [(Recipe(tokens="image", image_attention="topk", image_top_k=n, **SMALL), "a cat", refs),
                       (Recipe(alpha=0.5, **SMALL), "a cat", refs)])
    with pytest.raises(UserError, match=f"keeps {n + 1} tokens of an image of {n}"):
        check_plan(files, [(Recipe(tokens="image", image_attention="topk", image_top_k=n + 1, **SMALL), "a cat",
                            refs)])


def test_unreadable_model_files_leave_the_checks_to_the_engine(tmp_path):
    assert read_model_files(ModelSpec(zimage=str(tmp_path / "none"), vl=str(tmp_path / "none"))) is None


@pytest.mark.parametrize("argv, field", [
    (["--width", "100000", "--height", "64"], "width"),
    (["--prompt", "a <|im_start|> cat"], "prompt"),
])
def test_run_refuses_a_plan_the_model_files_rule_out_before_loading_anything(tiny_dirs, tmp_path, ref_image, capsys,
                                                                             argv, field, monkeypatch):
    from vlbench.cli import main
    from vlbench.engine import models

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models.Models, "__init__", no_load)
    base = ["run", "--experiment", "layer_sweep", "--quick", "--tiny", "--device", "cpu", "--seeds", "1",
            "--steps", "1", "--width", "64", "--height", "64", "--image", str(ref_image), "--prompt", "a cat",
            "--output-dir", str(tmp_path / "o"), "--no-store"]
    for flag in argv[::2]:  # the case's flags replace the base ones
        i = base.index(flag)
        del base[i:i + 2]
    code = main(base + argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--{field}" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_a_configs_own_top_k_is_named_with_its_config(tiny_dirs, tmp_path, ref_image, capsys, monkeypatch):
    from vlbench.cli import main
    from vlbench.engine import models

    monkeypatch.setattr(models.Models, "__init__", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    kind = tmp_path / "topk.toml"
    kind.write_text('name = "topk_probe"\ndescription = "top-k probe"\nquestion = "q"\n\n[[configs]]\n'
                    'name = "k_huge"\ntokens = "image"\nimage_attention = "topk"\nimage_top_k = 100000\n')
    code = main(["run", "--experiment", str(kind), "--tiny", "--device", "cpu", "--seeds", "1", "--steps", "1",
                 "--width", "64", "--height", "64", "--image", str(ref_image), "--prompt", "a cat",
                 "--output-dir", str(tmp_path / "o"), "--no-store"])
    err = capsys.readouterr().err
    assert code == 2 and "k_huge" in err and "--image-top-k 100000" in err and "keeps 100000 tokens" in err, err


def test_the_model_files_are_read_from_disk_or_the_hub_cache_never_the_network(monkeypatch):
    """A hub id not downloaded yet: the checks step aside at once (the loader downloads); no model file is asked
    for. (huggingface_hub itself may ask once per process for its agent registry; that is not a model file.)"""
    from huggingface_hub.utils import _http

    # the HTTP client huggingface_hub sends every request through: httpx2 since huggingface_hub 2, httpx before
    http = getattr(_http, "httpx2", None) or getattr(_http, "httpx")
    asked = []

    def refuse(self, request, *args, **kwargs):
        asked.append(str(request.url))
        raise http.ConnectError("no network in this test", request=request)

    monkeypatch.setattr(http.Client, "send", refuse)
    assert read_model_files(ModelSpec(zimage="someone/not-cached-zimage", vl="someone/not-cached-vl")) is None
    assert [url for url in asked if "not-cached" in url] == []


def test_the_models_reuse_the_processor_and_tokenizer_the_checks_read(tiny_spec, files):
    """What the plan checks read is not read again by the loader."""
    from vlbench.engine.models import Models

    models = Models(tiny_spec, files=files)
    assert models.vl.processor is files.vl_processor
    assert models.text_pipe.tokenizer is files.qwen3_tokenizer


# ---------------------------------------------------------------- issue 26: layers and text lengths before loading
class _Bounded:
    """A tokenizer that fails the test if asked to read more than `most` characters of anything."""

    def __init__(self, inner, most: int):
        self._inner, self._most = inner, most

    def _guard(self, value):
        texts = value if isinstance(value, list) else [value]
        for t in texts:
            text = t if isinstance(t, str) else str(t)
            assert len(text) <= self._most, f"the tokenizer was given {len(text):,} characters"

    def __call__(self, text, *args, **kwargs):
        self._guard(text)
        return self._inner(text, *args, **kwargs)

    def apply_chat_template(self, messages, *args, **kwargs):
        self._guard([m["content"] for m in messages if isinstance(m.get("content"), str)])
        return self._inner.apply_chat_template(messages, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


@pytest.mark.parametrize("field", ["negative_prompt", "prompt", "vl_text"])
def test_a_10_mb_text_is_refused_from_its_length_without_being_tokenized(files, field, monkeypatch):
    import dataclasses

    from vlbench.engine.precheck import NORMALIZATION_MARGIN, max_token_chars

    huge = "blurry " * 1_500_000  # 10.5 MB
    most = 1504 * 256 * NORMALIZATION_MARGIN  # far below 10 MB: what a bounded check may read at the most
    bounded = dataclasses.replace(files, qwen3_tokenizer=_Bounded(files.qwen3_tokenizer, most))
    monkeypatch.setattr(files.vl_processor, "tokenizer", _Bounded(files.vl_processor.tokenizer, most))
    recipe, prompt = {"negative_prompt": (Recipe(**SMALL, guidance=2.0, negative_prompt=huge), "a cat"),
                      "prompt": (Recipe(**SMALL, alpha=0.5), huge),
                      "vl_text": (Recipe(**SMALL, vl_text=huge), "a cat")}[field]
    error = _plan_error(bounded, recipe, prompt, [])
    assert error.field == field and f"is {len(huge):,} characters" in str(error) and "\n" not in str(error)
    assert max_token_chars(files.qwen3_tokenizer) >= max(len(t) for t in files.qwen3_tokenizer.get_vocab())


def test_the_length_bound_never_refuses_a_text_that_fits(files):
    """The bound is a necessary condition only: the longest text of the vocabulary's longest token, repeated to the
    limit, is what the bound allows; texts that fit are then counted exactly (the engine's own count)."""
    from vlbench.engine.encode import MAX_SEQUENCE_LENGTH, template_ids
    from vlbench.engine.precheck import check_plan

    tokenizer = files.qwen3_tokenizer
    longest = max((t for t in tokenizer.get_vocab() if t.isalpha()), key=len)
    text = " ".join([longest] * 50)
    assert len(template_ids(tokenizer, text)[0]) <= MAX_SEQUENCE_LENGTH
    check_plan(files, [(Recipe(**SMALL, guidance=2.0, negative_prompt=text), "a cat", [])])


def test_a_text_over_the_limit_but_within_the_bound_gives_the_engines_own_error(files, engine, ref_image):
    refs = [Reference.open(ref_image)]
    for recipe, prompt in [(Recipe(**SMALL, alpha=0.0), "cat " * 600),  # Qwen3-4B's 512-token template
                           (Recipe(**SMALL, guidance=2.0, negative_prompt="blur " * 600), "a cat"),
                           (Recipe(**SMALL, tokens="text"), "cat " * 400)]:  # the VL input over the caption budget
        planned, ran = _plan_error(files, recipe, prompt, refs), _engine_error(engine, recipe, prompt, refs)
        assert (planned.field, str(planned)) == (ran.field, str(ran)), recipe


@pytest.mark.parametrize("settings, field", [
    (dict(layer=40), "layer"), (dict(layer=-40), "layer"), (dict(image_layer=17), "image_layer"),
    (dict(text_layer=-18), "text_layer"), (dict(dual=True, style_layer=30), "style_layer"),
    (dict(dual=True, content_layer=-30), "content_layer"),
    (dict(tokens="image", image_attention="topk", image_top_k=3, attention_layer=99), "attention_layer"),
])
def test_a_layer_out_of_range_is_refused_from_the_config_alone(files, settings, field):
    from vlbench.engine.precheck import check_layers

    assert files.vl_layers == 16  # the tiny VL's decoder layers: hidden_states has 17 entries
    with pytest.raises(UserError) as caught:
        check_layers(Recipe(**SMALL, **settings), files.vl_layers)
    assert caught.value.field == field and "out of range for this VL model" in caught.value.problem
    assert _plan_error(files, Recipe(**SMALL, **settings), "a cat", []).field == field


def test_layers_at_the_ends_of_the_range_pass(files):
    from vlbench.engine.precheck import check_layers

    for layer in (-17, -1, 0, 16):
        check_layers(Recipe(**SMALL, layer=layer), files.vl_layers)
    check_layers(Recipe(**SMALL, dual=True, style_layer=16, content_layer=-17), files.vl_layers)


@pytest.mark.parametrize("argv, field", [
    (["--layer", "40"], "layer"),
    (["--guidance", "2", "--negative-prompt", "x" * 100_000], "negative-prompt"),
])
def test_generate_refuses_a_bad_layer_or_a_huge_text_before_loading_a_model(tiny_dirs, tmp_path, capsys,
                                                                             monkeypatch, argv, field):
    from vlbench.cli import main
    from vlbench.engine import models

    monkeypatch.setattr(models.Models, "__init__", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    code = main(["generate", "--tiny", "--device", "cpu", "--prompt", "a cat", "--alpha", "0.5", "--width", "64",
                 "--height", "64", "--steps", "1", "--out", str(tmp_path / "x.png"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and f"--{field}" in err, err
