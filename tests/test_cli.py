"""The headless CLI: outputs equal the engine's, and every bad input is one line, exit 2, no traceback.

Most runs call `vlbench.cli.main([...])` in-process (it returns the exit code); two run the real
`vlbench` executable, so what a user's shell sees (stderr, exit code) is checked as is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vlbench.cli import main
from vlbench.engine.engine import Reference
from vlbench.recipe import Recipe
from vlbench.errors import UserError

PROMPT = "A photo of a red fox sitting in fresh snow"
CPU = ["--device", "cpu", "--dtype", "fp32"]  # the session engine's placement
SMALL = ["--width", "64", "--height", "64", "--steps", "2"]
VLBENCH = Path(sys.executable).with_name("vlbench")


@pytest.fixture(autouse=True)
def _tiny_cache(tiny_dirs):
    """`--tiny` finds the session's build through VLBENCH_CACHE_DIR (set by the tiny_dirs fixture)."""
    assert Path(os.environ["VLBENCH_CACHE_DIR"]) / "tiny" == Path(tiny_dirs.vl).parent


def error_line(capsys, code) -> str:
    """The run failed with exit 2 and exactly one error line, last on stderr, and no traceback."""
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("vlbench: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


# ---------------------------------------------------------------- embed
def test_embed_writes_the_engines_conditioning_and_a_sidecar(engine, tmp_path, ref_image, capsys):
    out = tmp_path / "x.safetensors"
    code = main(["embed", "--tiny", *CPU, "--image", str(ref_image), "--prompt", PROMPT, "--tokens", "image-markers",
                 "--layer", "-5", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    from safetensors.torch import load_file

    tensors = load_file(out)
    assert list(tensors) == ["prompt_embeds"]
    recipe = Recipe(tokens="image-markers", layer=-5)
    cond = engine.condition(recipe, PROMPT, [Reference.open(ref_image)])
    assert tensors["prompt_embeds"].ndim == 2
    assert torch.equal(tensors["prompt_embeds"], cond.embeds)

    side = json.loads(out.with_suffix(".json").read_text())
    assert side["recipe"] == recipe.to_dict()
    assert side["shape"] == list(cond.embeds.shape)
    vl = side["conditioning"]["vl"]
    ex = cond.extraction
    assert vl["input_ids"] == ex.input_ids
    assert vl["decoded"] == ex.decoded and PROMPT in vl["decoded"] and "<|vision_start|>" in vl["decoded"]
    rows = side["conditioning"]["rows"]
    assert [r["role"] for r in rows] == ex.roles_of("image-markers")
    assert [r["position"] for r in rows] == ex.positions("image-markers")
    assert side["environment"]["torch"] == torch.__version__


def test_embed_alpha_0_is_zimages_own_encoding(engine, tmp_path, capsys):
    out = tmp_path / "q.safetensors"
    assert main(["embed", "--tiny", *CPU, "--prompt", PROMPT, "--alpha", "0", "--out", str(out)]) == 0
    from safetensors.torch import load_file

    assert torch.equal(load_file(out)["prompt_embeds"], engine.condition(Recipe(alpha=0), PROMPT, []).embeds)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["conditioning"]["qwen3"]["input_ids"] == engine.text_encoding(PROMPT).input_ids


def test_embed_writes_every_scheduled_caption_and_its_attention_weights(engine, tmp_path, ref_image, capsys):
    """A schedule conditions later steps on other captions and an attend mix weights its rows: the file holds
    every tensor the DiT reads (step 0's under "prompt_embeds", step K's under "prompt_embeds@K"), and the
    sidecar says which key conditions which steps."""
    out = tmp_path / "s.safetensors"
    flags = ["--tokens", "image", "--alpha", "0.3", "--alpha-policy", "attend", "--steps", "3",
             "--schedule", "0:qwen3, 1:recipe, 2:vl"]
    code = main(["embed", "--tiny", *CPU, "--image", str(ref_image), "--prompt", PROMPT, *flags, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    from safetensors.torch import load_file

    tensors = load_file(out)
    assert sorted(tensors) == ["attention_weights@1", "prompt_embeds", "prompt_embeds@1", "prompt_embeds@2"]
    recipe = Recipe(tokens="image", alpha=0.3, alpha_policy="attend", steps=3, schedule="0:qwen3, 1:recipe, 2:vl")
    cond = engine.condition(recipe, PROMPT, [Reference.open(ref_image)])
    first, attend, vl = cond.schedule
    assert torch.equal(tensors["prompt_embeds"], first.embeds) and torch.equal(tensors["prompt_embeds"], cond.embeds)
    assert torch.equal(tensors["prompt_embeds@1"], attend.embeds)
    assert torch.equal(tensors["attention_weights@1"], attend.weights)
    assert torch.equal(tensors["prompt_embeds@2"], vl.embeds)
    assert not torch.equal(tensors["prompt_embeds"], tensors["prompt_embeds@2"])
    side = json.loads(out.with_suffix(".json").read_text())
    assert [(c["key"], c["from_step"], c["to_step"], c.get("attention_weights")) for c in side["captions"]] == [
        ("prompt_embeds", 0, 1, None), ("prompt_embeds@1", 1, 2, "attention_weights@1"), ("prompt_embeds@2", 2, 3, None)]
    assert [c["shape"] for c in side["captions"]] == [list(s.embeds.shape) for s in cond.schedule]
    # without a schedule: one caption, one key, described the same way
    plain = tmp_path / "p.safetensors"
    assert main(["embed", "--tiny", *CPU, "--image", str(ref_image), "--prompt", PROMPT, "--tokens", "image",
                 "--out", str(plain)]) == 0
    assert list(load_file(plain)) == ["prompt_embeds"]
    assert [c["key"] for c in json.loads(plain.with_suffix(".json").read_text())["captions"]] == ["prompt_embeds"]
    # img2img: the caption conditions the steps the sampler runs (3 of 6 at strength 0.5), not `steps`
    i2i = tmp_path / "i.safetensors"
    assert main(["embed", "--tiny", *CPU, "--image", str(ref_image), "--prompt", PROMPT, "--tokens", "image",
                 "--strength", "0.5", "--steps", "6", "--out", str(i2i)]) == 0
    (caption,) = json.loads(i2i.with_suffix(".json").read_text())["captions"]
    assert (caption["from_step"], caption["to_step"]) == (0, Recipe(strength=0.5, steps=6).run_steps) == (0, 3)


def test_recipe_file_with_a_flag_overriding_it(engine, tmp_path, ref_image, capsys):
    from vlbench.recipe import save_recipe

    recipe_file = tmp_path / "r.toml"
    save_recipe(Recipe(tokens="text", layer=-3, seed=3), recipe_file)
    out = tmp_path / "x.safetensors"
    code = main(["embed", "--tiny", *CPU, "--image", str(ref_image), "--prompt", PROMPT, "--recipe", str(recipe_file),
                 "--layer", "4", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    side = json.loads(out.with_suffix(".json").read_text())
    expected = Recipe(tokens="text", layer=4, seed=3)
    assert side["recipe"] == expected.to_dict()
    from safetensors.torch import load_file

    assert torch.equal(load_file(out)["prompt_embeds"],
                       engine.condition(expected, PROMPT, [Reference.open(ref_image)]).embeds)


# ---------------------------------------------------------------- generate
def test_generate_writes_the_engines_image_with_its_metadata(engine, tmp_path, ref_image, capsys):
    import diffusers
    import transformers
    from PIL import Image

    from vlbench.pngs import read_png_metadata

    out = tmp_path / "o.png"
    code = main(["generate", "--tiny", *CPU, "--image", str(ref_image), "--prompt", PROMPT, *SMALL, "--seed", "4",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    recipe = Recipe(width=64, height=64, steps=2, seed=4)
    expected = engine.run(recipe, PROMPT, [Reference.open(ref_image)]).image
    with Image.open(out) as img:
        assert img.size == (64, 64)
        np.testing.assert_array_equal(np.asarray(img.convert("RGB")), np.asarray(expected))
    meta = read_png_metadata(out)
    assert meta["recipe"] == recipe.to_dict()
    assert meta["seed"] == 4 and meta["prompt"] == PROMPT
    env = meta["environment"]
    assert (env["torch"], env["transformers"], env["diffusers"]) == (
        torch.__version__, transformers.__version__, diffusers.__version__)
    assert env["device"] == "cpu" and env["dtype"] == "float32"
    assert meta["conditioning"]["vl"]["input_ids"] == engine.condition(recipe, PROMPT, [Reference.open(ref_image)]).extraction.input_ids
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# ---------------------------------------------------------------- bad inputs: exit 2, one line, no traceback
def _bad_inputs(tmp: Path, ref: Path, tiny) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, a string the error line must contain)."""
    garbage = tmp / "garbage.png"
    garbage.write_bytes(b"this is not an image at all" * 20)
    data = ref.read_bytes()
    truncated = tmp / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    empty = tmp / "empty_model"
    empty.mkdir()
    plain_lm = tmp / "plain_qwen3"  # a text-only Qwen3 with its tokenizer: a model, but not a VL one
    shutil.copytree(tiny.zimage / "text_encoder", plain_lm)
    for f in (tiny.zimage / "tokenizer").iterdir():
        shutil.copy(f, plain_lm / f.name)
    emb = ["embed", *CPU, "--prompt", PROMPT, "--out", str(tmp / "x.safetensors")]
    img = ["--image", str(ref)]
    models = ["--zimage", str(tiny.zimage), "--vl", str(tiny.vl)]
    return {
        "missing image": (emb + ["--tiny", "--image", str(tmp / "nope.png")], f"--image {tmp / 'nope.png'}"),
        "corrupt image": (emb + ["--tiny", "--image", str(garbage)], f"--image {garbage}"),
        "truncated png": (emb + ["--tiny", "--image", str(truncated)], f"--image {truncated}"),
        "directory as image": (emb + ["--tiny", "--image", str(tmp)], f"--image {tmp}"),
        "empty zimage dir": (emb + img + ["--zimage", str(empty), "--vl", str(tiny.vl)], f"--zimage {empty}"),
        "zimage is a VL dir": (emb + img + ["--zimage", str(tiny.vl), "--vl", str(tiny.vl)], f"--zimage {tiny.vl}"),
        "vl is a text-only model": (emb + img + ["--zimage", str(tiny.zimage), "--vl", str(plain_lm)], f"--vl {plain_lm}"),
        "zimage is a file": (emb + img + ["--zimage", str(ref), "--vl", str(tiny.vl)], f"--zimage {ref}"),
        "vl is a file": (emb + img + ["--zimage", str(tiny.zimage), "--vl", str(ref)], f"--vl {ref}"),
        "vl is a diffusers dir": (emb + img + ["--zimage", str(tiny.zimage), "--vl", str(tiny.zimage)],
                                  f"--vl {tiny.zimage}"),
        "width not multiple of 16": (emb + img + ["--tiny", "--width", "100"], "width"),
        "alpha over 1": (emb + img + ["--tiny", "--alpha", "2"], "alpha"),
        "alpha not a number": (emb + img + ["--tiny", "--alpha", "lots"], "--alpha"),
        "unknown token selection": (emb + img + ["--tiny", "--tokens", "bogus"], "--tokens"),
        "layer out of range": (emb + img + ["--tiny", "--layer", "99"], "layer"),
        "steps zero": (emb + img + ["--tiny", "--steps", "0"], "steps"),
        "image selection without image": (emb + ["--tiny", "--tokens", "image"], "image"),
        "embed out suffix": (["embed", "--tiny", *img, "--prompt", "p", "--out", str(tmp / "x.png")], "--out"),
        "generate out suffix": (["generate", "--tiny", *img, "--prompt", "p", "--out", str(tmp / "x.jpg")], "--out"),
        "out folder missing": (["embed", "--tiny", *img, "--prompt", "p", "--out", str(tmp / "no" / "x.safetensors")],
                               "--out"),
        "tiny with zimage": (emb + img + ["--tiny", "--zimage", str(tiny.zimage)], "--tiny"),
        "tiny with vl": (emb + img + ["--tiny", "--vl", str(tiny.vl)], "--tiny"),
        "missing recipe file": (emb + img + ["--tiny", "--recipe", str(tmp / "none.toml")], "--recipe"),
        "prompt with an undecodable byte": (["embed", "--tiny", *CPU, "--prompt", "caf\udce9", "--out",
                                             str(tmp / "x.safetensors")], "--prompt"),
        "negative prompt with an undecodable byte": (["generate", "--tiny", *CPU, "--prompt", "p", "--alpha", "0",
                                                      "--guidance", "1", "--negative-prompt", "caf\udce9", *SMALL,
                                                      "--out", str(tmp / "o.png")], "--negative-prompt"),
        "missing prompt": (["embed", "--tiny", *img, "--out", str(tmp / "x.safetensors")], "--prompt"),
        "unknown command": (["paint"], "paint"),
        "bad dtype": (emb + img + models + ["--dtype", "fp8"], "--dtype"),
        "bad device": (emb[:1] + ["--device", "gpu0"] + emb[5:] + img + ["--tiny"], "--device"),
    }


BAD = ["missing image", "corrupt image", "truncated png", "directory as image", "empty zimage dir",
       "zimage is a VL dir", "zimage is a file", "vl is a file", "vl is a text-only model", "vl is a diffusers dir", "width not multiple of 16",
       "alpha over 1", "alpha not a number", "unknown token selection", "layer out of range", "steps zero",
       "image selection without image", "embed out suffix", "generate out suffix", "out folder missing",
       "tiny with zimage", "tiny with vl", "missing recipe file", "prompt with an undecodable byte",
       "negative prompt with an undecodable byte", "missing prompt", "unknown command",
       "bad dtype", "bad device"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exits_2_with_one_line_naming_it(case, tmp_path, ref_image, tiny_dirs, capsys):
    argv, names = _bad_inputs(tmp_path, ref_image, tiny_dirs)[case]
    line = error_line(capsys, main(argv))
    assert names in line, line
    assert not (tmp_path / "x.safetensors").exists()


def test_decompression_bomb_is_a_user_error(tmp_path, ref_image, capsys, monkeypatch):
    """PIL's DecompressionBombError is not an OSError; it must still end as one line, not a traceback."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 96x64 reference is now "over twice the limit"
    argv = ["embed", "--tiny", "--image", str(ref_image), "--prompt", "p", "--out", str(tmp_path / "x.safetensors")]
    line = error_line(capsys, main(argv))
    assert f"--image {ref_image}" in line and "pixels" in line


def test_status_lines_are_never_wrapped(tmp_path, ref_image, tiny_dirs, capsys):
    """A log keeps one status per line, whatever the length of the model paths."""
    long = tmp_path / ("models-" + "x" * 90)
    long.symlink_to(Path(tiny_dirs.vl).parent, target_is_directory=True)
    argv = ["embed", *CPU, "--zimage", str(long / Path(tiny_dirs.zimage).name), "--vl", str(long / Path(tiny_dirs.vl).name),
            "--image", str(ref_image), "--prompt", "p", "--layer", "99", "--out", str(tmp_path / "x.safetensors")]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert all(line.startswith(("loading ", "vlbench: error: ")) for line in err.splitlines()), err


def test_bad_input_cases_are_all_tested(tmp_path, ref_image, tiny_dirs):
    assert sorted(_bad_inputs(tmp_path, ref_image, tiny_dirs)) == sorted(BAD)


def test_debug_raises_with_the_traceback(tmp_path, capsys):
    """With --debug, main re-raises: the entry point then prints Python's traceback."""
    argv = ["embed", "--tiny", "--image", str(tmp_path / "nope.png"), "--prompt", "p",
            "--out", str(tmp_path / "x.safetensors")]
    with pytest.raises(UserError, match="image .*nope.png: no such file"):
        main([*argv, "--debug"])
    with pytest.raises(UserError, match="image .*nope.png: no such file"):  # the flag may come before the command too
        main(["--debug", *argv])
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- the real executable
def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(VLBENCH), *args], env=os.environ, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not VLBENCH.exists(), reason="the vlbench entry point is not installed in this environment")
def test_real_executable_embed_equals_the_engine(engine, tmp_path, ref_image):
    out = tmp_path / "x.safetensors"
    proc = _run("embed", "--tiny", *CPU, "--image", str(ref_image), "--prompt", PROMPT, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    from safetensors.torch import load_file

    expected = engine.condition(Recipe(), PROMPT, [Reference.open(ref_image)]).embeds
    assert torch.equal(load_file(out)["prompt_embeds"], expected)
    assert json.loads(out.with_suffix(".json").read_text())["conditioning"]["vl"]["input_ids"] == \
        engine.condition(Recipe(), PROMPT, [Reference.open(ref_image)]).extraction.input_ids


def test_the_scripts_quick_exit_still_does_what_a_normal_exit_does(tmp_path):
    """`vlbench` skips only the interpreter's teardown: threads are joined, exit handlers run, buffered output is
    flushed through a pipe, and the command's exit code is the process's."""
    code = """if True:
        import atexit, sys, threading, time
        from vlbench.cli import exit_now
        atexit.register(lambda: print("exit handler ran", flush=False))
        threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished"))).start()
        sys.stdout.write("buffered, no newline")
        sys.stderr.write("to stderr")
        exit_now(3)
        print("never")
    """
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert proc.stdout == "buffered, no newlinethread finished\nexit handler ran\n"
    assert proc.stderr == "to stderr"


@pytest.mark.skipif(not VLBENCH.exists(), reason="the vlbench entry point is not installed in this environment")
def test_real_executable_bad_input_is_exactly_one_line_on_stderr(tmp_path):
    """Nothing else reaches the user's terminal: no library warnings, no usage text, no traceback."""
    missing = tmp_path / "nope.png"
    proc = _run("generate", "--tiny", "--image", str(missing), "--prompt", "p", "--out", str(tmp_path / "o.png"))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"vlbench: error: --image {missing}: no such file"], proc.stderr
    assert proc.stdout == ""
