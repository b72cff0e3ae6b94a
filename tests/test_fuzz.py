"""Issue 13's fuzz suite: hostile recipe TOML files, experiment files, prompt files and command-line values.

The rule, for every input: a correct result (exit 0, the file written, finite numbers), or exactly one line
saying what is wrong (exit non-zero) — never a traceback, never a hang, never NaN output. Hypothesis draws the
inputs (types, ranges, unicode, control characters, huge and empty values); every example runs under a time
limit. Examples are derandomized so CI is repeatable; VLBENCH_FUZZ_RANDOM=1 explores fresh ones and
VLBENCH_FUZZ_EXAMPLES=N sets how many (default 25 per test).
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from conftest import make_image
from vlbench.errors import UserError
from vlbench.recipe import Recipe, field_infos

FUZZ = settings(max_examples=int(os.environ.get("VLBENCH_FUZZ_EXAMPLES", 25)), deadline=None, database=None,
                derandomize=os.environ.get("VLBENCH_FUZZ_RANDOM") != "1",
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
LIMIT_S = 60  # one example; a hang fails the test instead of stalling CI
FIELDS = sorted(field_infos())
SMALL = {"steps": 2, "width": 64, "height": 64}


@contextmanager
def bounded(seconds: int = LIMIT_S):
    def timeout(signum, frame):
        raise TimeoutError(f"no answer in {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---- hostile values ----
CONTROL = st.sampled_from(["\x00", "\x1b[31m", "\r", "\n", "\t", "\x7f", "\u202e", "\ufeff", "\x08", "\u2028"])
SPECIAL = st.sampled_from(["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<think>",
                           "<|endoftext|>", "<script>alert(1)</script>"])
TEXT = st.one_of(
    st.just(""), st.just(" "), st.just("\n\n"),
    st.text(max_size=40),  # any unicode, control characters included
    st.lists(st.one_of(st.text(max_size=6), CONTROL, SPECIAL), max_size=6).map("".join),
    st.text(min_size=1, max_size=4).map(lambda s: s * 2000),  # huge
    st.sampled_from(["../../etc/passwd", "/dev/null", "~", "${HOME}", "%s%n", "none", "prompt", "-2", "full",
                     "a\udcffb"]),  # an undecodable argv byte arrives as a lone surrogate
)
NUMBER_TEXT = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "NaN", "1e309", "-0", "0x10", "１６", "1_000", "1,2", "1,,2", ",", "0.5,nan",
                     "1e-400", "0,0", "-1,-2,-5", "3-1", "0-7", "1e9", "", " 1", "2 ", "+4", "−2"]),
)
SCALAR = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                   TEXT.filter(lambda s: "\udcff" not in s))
VALUE = st.one_of(SCALAR, st.lists(SCALAR, max_size=4), st.dictionaries(st.text(max_size=5), SCALAR, max_size=2))


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        out = []
        for ch in value:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_table(data: dict) -> str:
    return "".join(f"{toml_value(str(k))} = {toml_value(v)}\n" for k, v in data.items())


KEYS = st.one_of(st.sampled_from(FIELDS), st.text(max_size=12))
RECIPE_DATA = st.dictionaries(KEYS, VALUE, max_size=6)
FILE_TEXT = st.one_of(RECIPE_DATA.map(toml_table), st.text(max_size=300),
                      st.binary(max_size=300).map(lambda b: b.decode("latin-1")))


def check_recipe(recipe: Recipe) -> None:
    """A recipe that loaded holds no NaN or inf anywhere."""
    for name, value in recipe.to_dict().items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, float):
                assert math.isfinite(v), (name, value)


def one_line(exc: UserError) -> str:
    text = str(exc)
    assert text and "\n" not in text and "\r" not in text.replace("\\r", ""), repr(text)
    return text


def _file(text: str, suffix: str, raw: bytes | None = None) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="vlbench-fuzz-"))
    path = folder / f"f{suffix}"
    path.write_bytes(raw if raw is not None else text.encode("utf-8", "surrogatepass"))
    return path


# ---- files ----
@FUZZ
@given(FILE_TEXT)
def test_a_recipe_file_loads_whole_and_finite_or_is_refused_in_one_line(text):
    path = _file(text, ".toml")
    with bounded():
        try:
            recipe = load_recipe_file(path)
        except UserError as exc:
            one_line(exc)
        else:
            check_recipe(recipe)


def load_recipe_file(path):
    from vlbench.recipe import load_recipe

    return load_recipe(path)


CONFIG = st.fixed_dictionaries({"name": st.one_of(st.text(max_size=12), st.sampled_from(["a", "b-1", "../x"]))},
                               optional={"quick": VALUE}).flatmap(
    lambda meta: st.dictionaries(st.sampled_from(FIELDS), VALUE, max_size=3).map(lambda d: {**meta, **d}))
EXPERIMENT = st.fixed_dictionaries(
    {"name": st.one_of(st.just("t"), st.text(max_size=10))},
    optional={"description": VALUE, "question": VALUE, "seeds": VALUE,
              "base": st.dictionaries(st.sampled_from(FIELDS), VALUE, max_size=3),
              "configs": st.lists(CONFIG, max_size=3)})


def experiment_toml(data: dict) -> str:
    head = {k: v for k, v in data.items() if k not in ("base", "configs")}
    text = toml_table(head)
    if "base" in data:
        text += "[base]\n" + toml_table(data["base"])
    for config in data.get("configs", []):
        text += "[[configs]]\n" + toml_table(config)
    return text


@FUZZ
@given(st.one_of(EXPERIMENT.map(experiment_toml), st.text(max_size=200)), st.booleans())
def test_an_experiment_file_builds_finite_recipes_or_is_refused_in_one_line(text, quick):
    from vlbench.experiments.spec import load_type

    path = _file(text, ".toml")
    with bounded():
        try:
            experiment = load_type(str(path))
            named = experiment.recipes(quick=quick, overrides=SMALL)
        except UserError as exc:
            one_line(exc)
        else:
            for n in named:
                check_recipe(n.recipe)
                assert n.name and "/" not in n.name and "\n" not in n.name


@FUZZ
@given(st.one_of(st.binary(max_size=400), st.lists(TEXT, max_size=8).map(lambda ls: "\n".join(ls).encode(
    "utf-8", "surrogatepass"))), st.sampled_from([".txt", ".toml", ""]))
def test_a_prompt_file_gives_valid_prompts_or_one_line(raw, suffix):
    from vlbench.prompts import check_prompt, read_prompts_file

    path = _file("", suffix or ".txt", raw)
    with bounded():
        try:
            prompts = read_prompts_file(path)
        except UserError as exc:
            one_line(exc)
        else:
            assert prompts and all(check_prompt(p) == p for p in prompts)


# ---- the command line, end to end on the tiny models ----
@pytest.fixture
def cli(engine, tmp_path, monkeypatch, capsys):
    """vlbench's main() in this process, on the session's tiny models (a command loads none of its own)."""
    from vlbench.cli import common, main

    monkeypatch.setattr(common, "engine", lambda spec, console, cache_dir=None, files=None: engine)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a model id drawn by the fuzzer is never looked up online
    monkeypatch.chdir(tmp_path)  # relative output paths land here
    ref = make_image(tmp_path / "ref.png")

    def call(argv: list[str]) -> tuple[int, str]:
        capsys.readouterr()
        with bounded():
            code = main(argv)  # anything but a return is a traceback: the test fails with it
        err = capsys.readouterr().err
        event(f"exit {code}")
        assert "Traceback" not in err, err
        if code == 2:
            lines = [ln for ln in err.splitlines() if ln.startswith("vlbench: error:")]
            assert len(lines) == 1 and lines[0] == err.strip().splitlines()[-1], err
        elif code != 0:  # 1: jobs failed, each named in one line (generate, embed: the last line)
            assert code == 1 and any(ln.startswith("failed:") for ln in err.splitlines()), (code, err)
        return code, err

    call.ref = ref
    call.tmp = tmp_path
    return call


RECIPE_FLAGS = [name for name in FIELDS if name not in ("steps", "width", "height")]
FLAG_VALUE = st.one_of(TEXT, NUMBER_TEXT).filter(lambda s: "\x00" not in s)  # argv cannot carry NUL


def plausible(name: str):
    """Values of the field's own domain (so that combinations run end to end), as command-line text."""
    info = field_infos()[name]
    if info.choices is not None:
        return st.sampled_from(list(info.choices.values()))
    if info.kind == "float":
        hi = info.hi if info.hi is not None else 10.0
        return st.floats(info.lo or 0.0, hi).map(lambda v: f"{v:.3g}")
    if info.kind == "floats":
        return st.lists(st.floats(0, 3), min_size=1, max_size=3).map(lambda vs: ",".join(f"{v:.2g}" for v in vs))
    if info.kind == "int":
        lo = int(info.lo) if info.lo is not None else -40
        return st.integers(lo, lo + 60).map(str)
    if info.kind == "vl_text":
        return st.one_of(st.sampled_from(["prompt", "none"]), st.text(max_size=20))
    return st.text(max_size=20)


FLAG = st.sampled_from(RECIPE_FLAGS).flatmap(
    lambda name: st.tuples(st.just(name), st.one_of(plausible(name), plausible(name), FLAG_VALUE)))


def _png_is_an_image(path: Path) -> None:
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 0, "a flat image: NaN latents decoded to black"


@FUZZ
@given(st.lists(FLAG, min_size=1, max_size=3), st.one_of(st.just("a red fox"), st.just("a red fox"), TEXT),
       st.sampled_from(["--steps", "--width", "--height"]), st.one_of(st.just("2"), NUMBER_TEXT))
def test_generate_with_hostile_flag_values(cli, flags, prompt, size_flag, size):
    out = cli.tmp / "out.png"
    out.unlink(missing_ok=True)
    argv = ["generate", "--tiny", "--device", "cpu", "--image", str(cli.ref), "--prompt", prompt.replace("\x00", ""),
            "--steps", "2", "--width", "64", "--height", "64", "--no-store", "--out", str(out)]
    if not size.strip().lstrip("+-").isdigit():  # a real size or step count is a long generation, not a hostile input
        argv += [f"{size_flag}={size}"]
    for name, value in flags:
        kind = field_infos()[name].kind
        argv += [f"--{name.replace('_', '-')}"] + ([] if kind == "bool" else [value])
    code, err = cli(argv)
    if code == 0:
        _png_is_an_image(out)
    else:
        assert not out.exists()


@FUZZ
@given(st.sampled_from(["--image", "--out", "--recipe", "--calibration", "--zimage", "--vl", "--device", "--dtype"]),
       st.one_of(TEXT, st.sampled_from(["/", ".", "/dev/zero", "/dev/urandom", "/proc/self/mem", "x.png/",
                                        "~/x.png"])).filter(
           lambda s: "\x00" not in s))
def test_generate_with_hostile_paths(cli, flag, value):
    out = cli.tmp / "out.png"
    out.unlink(missing_ok=True)
    argv = ["generate", "--tiny", "--device", "cpu", "--image", str(cli.ref), "--prompt", "a cat", "--steps", "2",
            "--width", "64", "--height", "64", "--no-store", "--out", str(out), f"{flag}={value}"]
    if flag == "--calibration":
        argv.append("--normalization=per-dim")
    if flag in ("--zimage", "--vl"):
        argv.remove("--tiny")
    code, err = cli(argv)
    if code == 0:
        written = Path(value).expanduser() if flag == "--out" else out
        _png_is_an_image(written)
        if flag == "--out":
            written.unlink()


@FUZZ
@given(st.sampled_from(["--image-weights", "--alpha", "--intra-ratio", "--dual-ratio", "--guidance", "--layer",
                        "--max-image-tokens", "--seed"]), NUMBER_TEXT)
def test_embed_with_hostile_numbers_writes_a_finite_tensor_or_one_line(cli, flag, value):
    out = cli.tmp / "c.safetensors"
    out.unlink(missing_ok=True)
    argv = ["embed", "--tiny", "--device", "cpu", "--image", str(cli.ref), "--image", str(cli.ref), "--multi-image",
            "separate", "--length-policy", "pool", "--prompt", "a cat", f"{flag}={value}", "--out", str(out)]
    code, err = cli(argv)
    if code == 0:
        import torch
        from safetensors.torch import load_file

        tensor = load_file(str(out))["prompt_embeds"]
        assert tensor.numel() and bool(torch.isfinite(tensor).all())
    else:
        assert not out.exists()


RUN_FLAGS = st.sampled_from(["--seeds", "--limit", "--experiment", "--prompt", "--eval-set", "--metrics",
                             "--ray-actors", "--executor", "--prompts-file", "--output-dir"])


@settings(FUZZ, max_examples=max(5, FUZZ.max_examples // 2))
@given(st.lists(st.tuples(RUN_FLAGS, FLAG_VALUE), min_size=1, max_size=2))
def test_run_with_hostile_values(cli, flags):
    out = cli.tmp / "run"
    argv = ["run", "--experiment", "token_sweep", "--quick", "--tiny", "--device", "cpu", "--image", str(cli.ref),
            "--prompt", "a cat", "--seeds", "1", "--steps", "2", "--width", "64", "--height", "64", "--no-store",
            "--no-diagnostics", "--limit", "2", "--output-dir", str(out)]
    for flag, value in flags:
        if flag == "--output-dir":
            value = str(cli.tmp / "runs" / value.replace("/", "_"))[:200] if value.strip() else value
        if flag == "--prompts-file":
            value = str(_file(value, ".txt"))
        if flag == "--limit" and value.isdigit():
            value = str(min(int(value), 2))
        argv += [f"{flag}={value}"]
    code, err = cli(argv)
    if code == 0:
        rows = [json.loads(line) for p in (cli.tmp / "run", *(cli.tmp / "runs").glob("*"))
                if (p / "results.jsonl").is_file() for line in (p / "results.jsonl").read_text().splitlines()]
        assert all(r["status"] in ("done", "failed") for r in rows)
