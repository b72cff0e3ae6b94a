"""--fast (issue 28): one flag for fp8 + compile (static graphs) + caption buckets + a mask-taking attention kernel.

fp8 needs a CUDA card with fp8 matmuls, so on the CPU the plumbing is tested: the spec it resolves to, its refusals
(one line, exit 2), and the load-time part that runs anywhere (buckets installed, the kernel timed and chosen).
benchmarks/perf28.py measures it on a GPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vlbench.cli import main
from vlbench.errors import UserError
from vlbench.modelspec import FAST_NOTE, ModelSpec, resolve_model_spec


def test_fast_sets_fp8_and_compile():
    spec = resolve_model_spec({}, environ={}, flags={"fast": True, "zimage": "z", "vl": "v"})
    assert (spec.fast, spec.compile, spec.quantize) == (True, True, "fp8")
    assert resolve_model_spec({}, environ={"VLBENCH_FAST": "1", "VLBENCH_ZIMAGE": "z"}).fast
    plain = resolve_model_spec({}, environ={}, flags={"fast": False, "zimage": "z"})
    assert (plain.fast, plain.compile, plain.quantize) == (False, False, "none")


@pytest.mark.parametrize("fields, field", [
    ({"offload": "group"}, "fast"), ({"offload": "sequential"}, "fast"), ({"dtype": "fp32"}, "fast"),
    ({"attention": "sdpa-flash"}, "attention")])
def test_fast_refuses_what_it_cannot_combine_with(fields, field):
    with pytest.raises(UserError) as caught:
        ModelSpec(zimage="z", vl="v", fast=True, **fields)
    assert caught.value.field == field


def test_fast_env_value_must_be_a_boolean():
    with pytest.raises(UserError) as caught:
        resolve_model_spec({}, environ={"VLBENCH_FAST": "maybe"})
    assert caught.value.field == "fast"


def test_fast_off_gpu_is_one_line_naming_fast(tiny_dirs, tmp_path, capsys):
    assert Path(os.environ["VLBENCH_CACHE_DIR"]) / "tiny" == Path(tiny_dirs.vl).parent
    code = main(["generate", "--tiny", "--device", "cpu", "--fast", "--prompt", "p", "--out", str(tmp_path / "o.png")])
    out, err = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("vlbench: error: ")]
    assert len(errors) == 1 and "fast" in errors[0] and "CPU" in errors[0], err


def test_the_start_note_says_each_thing_fast_changes():
    for part in ("fp8", "compiled static graphs", "caption bucket", "masked", "attention", "drift"):
        assert part in FAST_NOTE


def test_fast_load_installs_buckets_and_picks_a_timed_mask_taking_kernel(tiny_spec):
    """Models._fast is the part of --fast that runs anywhere: on the CPU only sdpa takes the mask, so it wins."""
    from vlbench.engine.models import FAST_ATTENTION_CANDIDATES, Models, time_attention

    models = Models(tiny_spec, warm_up=False)
    transformer = models.pipe.transformer
    try:
        models._fast(transformer)
        settings = models.fast_settings
        assert transformer._vlbench_buckets.lengths == settings["buckets"] == [32, 64, 96, 128, 192, 224]
        assert settings["attention"] in settings["attention_ms"]
        assert settings["attention"] == min(settings["attention_ms"], key=settings["attention_ms"].get)
        assert "sdpa-flash" not in FAST_ATTENTION_CANDIDATES
        timed = time_attention(transformer, models.device, ("sdpa", "sdpa-math"), image_tokens=64, caption=64)
        assert set(timed) == {"sdpa", "sdpa-math"} and all(v > 0 for v in timed.values())
    finally:
        from vlbench.engine import buckets

        buckets.uninstall(transformer)
