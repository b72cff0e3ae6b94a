"""Issue 16 on the CPU: the new placement / precision / attention / memory-cap settings validate and refuse bad
combinations in one line; offload group's wiring (diffusers' group offloading on the blocks the plan streams)
keeps images identical; the batched generation path; the CUDA-unusable warning. Timings live in
benchmarks/results, never here.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from vlbench.cli.common import flag_name
from vlbench.engine import models as models_mod
from vlbench.engine.engine import Engine, Reference
from vlbench.engine.models import Models, plan_group
from vlbench.recipe import Recipe
from vlbench.errors import UserError
from vlbench.modelspec import MIN_GPU_MEMORY_GIB, ModelSpec, resolve_model_spec

PROMPT = "a red square"
BOTH = Recipe(alpha=0.5, tokens="full", steps=2, width=64, height=64)  # Qwen3-4B and Qwen3-VL both run


def _spec(tiny_dirs, **kw) -> ModelSpec:
    kw = {"device": "cpu", "dtype": "fp32", **kw}
    return ModelSpec(zimage=str(tiny_dirs.zimage), vl=str(tiny_dirs.vl), **kw)


def _line(exc: pytest.ExceptionInfo) -> str:
    text = exc.value.render(flag_name)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------- validation, torch-free
@pytest.mark.parametrize("kw, starts", [
    ({"quantize": "int4"}, "--quantize int4: unknown"),
    ({"quantize": "fp8"}, "--quantize fp8: is slower than bf16 without compile"),
    ({"quantize": "fp8", "compile": True, "dtype": "fp16"}, "--quantize fp8: quantizes bf16 weights"),
    ({"offload": "group", "compile": True}, "--compile: cannot be combined with offload group"),
    ({"attention": "flash3"}, "--attention flash3: unknown backend"),
    ({"gpu_memory": 0}, "--gpu-memory 0: must be a positive number"),
    ({"gpu_memory": "lots"}, "--gpu-memory lots: not a number"),
    ({"gpu_memory": MIN_GPU_MEMORY_GIB - 1}, "--gpu-memory 8.0: is below what any placement can do"),
    ({"gpu_memory": 12, "device": "cpu"}, "--gpu-memory 12: caps GPU memory; with device cpu there is none"),
])
def test_bad_settings_are_one_line_errors(kw, starts):
    kw = {"zimage": "some/zimage", "vl": "some/vl", **kw}
    with pytest.raises(UserError) as exc:
        ModelSpec(**kw)
    assert _line(exc).startswith(starts)


def test_good_settings_and_their_defaults():
    spec = ModelSpec(zimage="z", vl="v", offload="group", gpu_memory="12")
    assert (spec.offload, spec.gpu_memory, spec.quantize, spec.attention) == ("group", 12.0, "none", None)
    assert ModelSpec(zimage="z", vl="v", quantize="fp8", compile=True).quantize == "fp8"
    assert ModelSpec(tiny=True, zimage="", vl="", gpu_memory=0.5).gpu_memory == 0.5  # tiny models: any cap


def test_environment_sets_the_new_fields():
    spec = resolve_model_spec({}, {"VLBENCH_ZIMAGE": "z", "VLBENCH_OFFLOAD": "group", "VLBENCH_GPU_MEMORY": "12.5",
                                   "VLBENCH_ATTENTION": "sdpa-math", "VLBENCH_QUANTIZE": "none"}, {})
    assert (spec.offload, spec.gpu_memory, spec.attention, spec.quantize) == ("group", 12.5, "sdpa-math", "none")


def test_modelspec_imports_no_torch():
    code = "import sys, vlbench.modelspec; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- checks that need torch (CPU machine)
def test_group_fp8_cap_and_gpu_attention_are_refused_on_the_cpu(tiny_dirs):
    with pytest.raises(UserError) as exc:
        _spec(tiny_dirs, offload="group").resolved_offload()
    assert _line(exc).startswith("--offload group: needs a CUDA GPU")
    with pytest.raises(UserError) as exc:
        Models(_spec(tiny_dirs, offload="group"))
    assert _line(exc).startswith("--offload group: needs a CUDA GPU")
    with pytest.raises(UserError) as exc:
        Models(_spec(tiny_dirs, quantize="fp8", compile=True, dtype="bf16"))
    assert _line(exc).startswith("--quantize fp8: needs a CUDA GPU with fp8 matmuls")
    with pytest.raises(UserError) as exc:
        Models(_spec(tiny_dirs, attention="sdpa-cudnn"))
    assert _line(exc).startswith("--attention sdpa-cudnn: runs on CUDA only")


def test_memory_cap_without_cuda_is_refused(tiny_dirs, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = ModelSpec(zimage=str(tiny_dirs.zimage), vl=str(tiny_dirs.vl), gpu_memory=12)  # device: the default
    with pytest.raises(UserError) as exc:
        Models(spec)
    assert _line(exc).startswith("--gpu-memory 12.0: caps GPU memory; this run is on the CPU")


def test_cap_gpu_memory_passes_a_device_index_and_refuses_more_than_the_card(monkeypatch):
    """torch wants an index for the fraction (a bare "cuda" device failed on the H200)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("P", (), {"total_memory": 16 * 2**30}))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, i: calls.append((f, i)))
    models_mod.cap_gpu_memory(torch.device("cuda"), 12)
    models_mod.cap_gpu_memory(torch.device("cuda", 1), 4)
    assert calls == [(0.75, 0), (0.25, 1)]
    with pytest.raises(UserError) as exc:
        models_mod.cap_gpu_memory(torch.device("cuda"), 20)
    assert _line(exc) == "--gpu-memory 20: is more than the card's 16.0 GiB"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cpu_fallback_warning_says_why_and_only_when_it_applies(monkeypatch, tiny_dirs):
    def unusable():
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (found version 12040).")
        return False

    monkeypatch.setattr(torch.cuda, "is_available", unusable)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    real = ModelSpec(zimage="z", vl="v")
    text = models_mod.cpu_fallback_warning(real, torch.device("cpu"))
    assert "CUDA is not usable" in text and "driver on your system is too old" in text and "\n" not in text
    assert "set device cpu" in text and "README" in text
    assert models_mod.cpu_fallback_warning(ModelSpec(zimage="z", vl="v", device="cpu"), torch.device("cpu")) is None
    assert models_mod.cpu_fallback_warning(ModelSpec(tiny=True, zimage="", vl=""), torch.device("cpu")) is None
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only build" in models_mod.cpu_fallback_warning(real, torch.device("cpu"))
    models = Models(ModelSpec(zimage=str(tiny_dirs.zimage), vl=str(tiny_dirs.vl)))  # real-looking dirs, no device
    assert len(models.warnings) == 1 and "CUDA is not usable" in models.warnings[0]


def test_sdpa_math_backend_on_the_cpu_reaches_diffusers(tiny_dirs):
    models = Models(_spec(tiny_dirs, attention="sdpa-math"))
    backends = {m.processor._attention_backend for m in models.pipe.transformer.modules() if hasattr(m, "processor")}
    assert {str(getattr(b, "value", b)) for b in backends} == {"_native_math"}


# ---------------------------------------------------------------- the group plan
def test_plan_group_streams_the_fewest_blocks_spread_over_the_layers():
    names = [f"noise_refiner.{i}" for i in range(2)] + [f"context_refiner.{i}" for i in range(2)] + \
            [f"layers.{i}" for i in range(30)]
    size, gib = 360 * 2**20, 2**30
    sizes = [size] * len(names)
    assert plan_group(names, sizes, 0, None, 3 * gib) == []  # no budget known: nothing streams
    assert plan_group(names, sizes, 0, 16 * gib, 3 * gib) == []  # everything fits
    assert plan_group(names, sizes, 0, 3 * gib + 2 * size, 3 * gib) is None  # not even 3 blocks in flight
    streamed = plan_group(names, sizes, 0, 12 * gib, 3 * gib)
    resident = len(names) - len(streamed)
    assert resident * size + 3 * size <= 9 * gib < (resident + 1) * size + 3 * size  # the fewest
    layers = sorted(int(n.split(".")[1]) for n in streamed)
    assert all(n.startswith("layers.") for n in streamed)
    assert max(b - a for a, b in zip(layers, layers[1:])) <= 3  # spread, not a run of neighbours
    assert plan_group(names, sizes, 0, 3 * gib + 3 * size, 3 * gib) == names  # all stream, refiners too


def test_plan_group_for_z_image_turbo_at_16_and_12_gib():
    """The published DiT's block sizes (built on the meta device): 16 GiB keeps all 34 blocks, 12 GiB streams 11."""
    from diffusers import ZImageTransformer2DModel

    with torch.device("meta"):
        dit = ZImageTransformer2DModel(axes_lens=[1536, 512, 512]).to(torch.bfloat16)
    blocks = models_mod._dit_blocks(dit)
    sizes = [sum(t.numel() * t.element_size() for _, t in models_mod._module_tensors(m)) for _, m in blocks]
    fixed = sum(t.numel() * t.element_size() for m in models_mod._non_block_modules(dit, {id(m) for _, m in blocks})
                for _, t in models_mod._module_tensors(m))
    vae = int(0.16 * 2**30)
    names = [n for n, _ in blocks]
    assert len(names) == 34
    assert plan_group(names, sizes, fixed, 16 * 2**30 - vae, models_mod.GROUP_ACTIVATION_RESERVE) == []
    assert len(plan_group(names, sizes, fixed, 12 * 2**30 - vae, models_mod.GROUP_ACTIVATION_RESERVE)) == 11


# ---------------------------------------------------------------- offload group's wiring on the tiny models
def _group_models(tiny_dirs, stream_all_but: int = 1) -> Models:
    """offload group forced on a CPU device (no streams there), with a budget that streams most blocks."""
    probe = Models(_spec(tiny_dirs))
    dit = probe.pipe.transformer
    blocks = models_mod._dit_blocks(dit)
    size = max(sum(t.numel() * t.element_size() for _, t in models_mod._module_tensors(m)) for _, m in blocks)
    fixed = sum(t.numel() * t.element_size() for m in models_mod._non_block_modules(dit, {id(m) for _, m in blocks})
                for _, t in models_mod._module_tensors(m))
    models = Models(_spec(tiny_dirs))
    models.offload = "group"
    models.group_reserve = 0
    models.group_budget = fixed + (models_mod.GROUP_STREAM_SLOTS + stream_all_but) * size
    return models


def test_group_offload_streams_planned_blocks_through_diffusers_hooks_and_keeps_images(tiny_dirs, engine, ref_image):
    models = _group_models(tiny_dirs)
    eng = Engine(models)
    ref = Reference.open(ref_image)
    got = eng.run(BOTH, PROMPT, [ref])
    plan = models.group_plan
    assert plan["streamed"] and len(plan["streamed"]) < plan["blocks"]
    dit = models.pipe.transformer
    hooked = {n for n, m in models_mod._dit_blocks(dit) if getattr(m, "_diffusers_hook", None) is not None}
    assert hooked == set(plan["streamed"])  # diffusers' hooks on exactly the streamed blocks
    from diffusers.hooks.group_offloading import _is_group_offload_enabled

    assert _is_group_offload_enabled(dit)
    want = engine.run(BOTH, PROMPT, [ref])
    assert np.array_equal(np.asarray(got.image), np.asarray(want.image))
    # the DiT's resident part leaves while an encoder runs and comes back for the image
    assert [m[:2] for m in models.moves] == [("dit", "host"), ("vl", "host"), ("text_encoder", "host"),
                                             ("dit", "device")]
    other = "a blue circle"  # both encoders again: every part makes its round trip; still the same numbers
    got = eng.run(BOTH.replace(seed=3), other, [ref])
    assert np.array_equal(np.asarray(got.image), np.asarray(engine.run(BOTH.replace(seed=3), other, [ref]).image))
    assert models._where == {"vl": "host", "text_encoder": "host", "dit": "device"}
    assert "streamed" in models.placement()["dit"]


def test_group_budget_below_the_working_set_is_a_one_line_error(tiny_dirs):
    models = Models(_spec(tiny_dirs))
    models.offload = "group"
    models.group_reserve = 0
    models.group_budget = 1000
    with pytest.raises(UserError) as exc:
        models.pipe
    assert _line(exc).startswith("--offload group: leaves 0.0 GiB for the DiT: too little for offload group")


def test_cli_takes_the_new_flags(tiny_dirs, tmp_path, capsys):
    from vlbench.cli import build_parser, main
    from vlbench.cli.common import model_spec

    args = build_parser().parse_args(["generate", "--tiny", "--offload", "group", "--gpu-memory", "12",
                                      "--attention", "sdpa-math", "--prompt", PROMPT, "--out", str(tmp_path / "a.png")])
    spec = model_spec(args)
    assert (spec.offload, spec.gpu_memory, spec.attention, spec.quantize) == ("group", 12.0, "sdpa-math", "none")
    code = main(["generate", "--tiny", "--quantize", "fp8", "--prompt", PROMPT, "--out", str(tmp_path / "b.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("vlbench: error: --quantize fp8: is slower than bf16 without compile")


# ---------------------------------------------------------------- batched seeds
def test_generate_batch_of_one_is_generate_and_batches_start_from_each_seed(tiny_dirs):
    """One seed: the same call as before, identical pixels. Several: each sample starts from its own seed's noise
    (diffusers' randn_tensor with a list of CPU generators), so sample i starts where generate(seed=i) starts;
    the finished images are NOT bit-identical (a batch changes the matmuls' shapes), which is why the runner
    does not batch on its own (benchmarks/results/README.md)."""
    from vlbench.engine.generate import generate, generate_batch

    models = Models(_spec(tiny_dirs))
    emb = torch.randn(37, models.caption_width, generator=torch.Generator().manual_seed(0))
    kw = dict(steps=2, width=64, height=64, guidance=0.0, budget=models.caption_budget)
    one = generate(models.pipe, emb, seed=5, **kw)
    assert np.array_equal(np.asarray(one), np.asarray(generate_batch(models.pipe, emb, seeds=[5], **kw)[0]))
    starts = []
    original = models.pipe.prepare_latents

    def spy(*a, **k):
        out = original(*a, **k)
        starts.append(out.detach().clone())
        return out

    models.pipe.prepare_latents = spy
    try:
        images = generate_batch(models.pipe, emb, seeds=[5, 6], **kw)
        generate(models.pipe, emb, seed=6, **kw)
    finally:
        del models.pipe.prepare_latents
    assert len(images) == 2
    assert torch.equal(starts[0][1], starts[1][0])  # the batch's second sample starts from seed 6's noise
    single5 = np.asarray(one).astype(int)
    assert np.abs(np.asarray(images[0]).astype(int) - single5).max() <= 8  # close, not necessarily identical


def test_workbench_header_warns_when_real_models_would_run_on_the_cpu(monkeypatch, engine):
    import asyncio
    import time

    from vlbench.config import parse_settings
    from vlbench.tui.app import VlbenchApp
    from vlbench.modelspec import ModelSpec

    monkeypatch.setattr(models_mod, "startup_warning", lambda spec: "CUDA is not usable (test): the real models …")

    async def go():
        app = VlbenchApp(parse_settings({"recipe": {"width": 64, "height": 64, "steps": 2}}),
                         ModelSpec(zimage="some/zimage", vl="some/vl"),
                         engine_factory=lambda on_status: engine)
        async with app.run_test(size=(160, 48)) as pilot:
            deadline = time.monotonic() + 30
            while "WARNING" not in app.sub_title and time.monotonic() < deadline:
                await pilot.pause(0.05)
            assert app.sub_title == "some/zimage + some/vl · WARNING: CUDA is not usable (test): the real models …"
        app.close()

    asyncio.run(go())


def test_cli_warns_in_one_line_when_real_models_would_run_on_the_cpu(tiny_dirs, tmp_path, capsys, monkeypatch):
    from vlbench.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "a.png"
    assert main(["generate", "--zimage", str(tiny_dirs.zimage), "--vl", str(tiny_dirs.vl), "--prompt", PROMPT,
                 "--alpha", "0", "--width", "64", "--height", "64", "--steps", "1", "--out", str(out)]) == 0
    lines = [l for l in capsys.readouterr().err.splitlines() if "warning:" in l]
    assert len(lines) == 1 and "CUDA is not usable" in lines[0] and "set device cpu" in lines[0]
    assert main(["generate", "--zimage", str(tiny_dirs.zimage), "--vl", str(tiny_dirs.vl), "--device", "cpu",
                 "--prompt", PROMPT, "--alpha", "0", "--width", "64", "--height", "64", "--steps", "1",
                 "--out", str(out)]) == 0
    assert "CUDA is not usable" not in capsys.readouterr().err  # asked for the CPU: no warning


def test_perf16_tiny_smoke_runs_its_policy_and_compile_sections(tiny_dirs, tmp_path):  # tiny_dirs: the shared cache
    """benchmarks/perf16.py on the CPU (tiny models): the group policy's wiring through the benchmark, eager images;
    fp8 is skipped there. The full smoke (every section) is `perf16.py --tiny-smoke`."""
    import json
    from pathlib import Path

    root = Path(__file__).parents[1]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "perf16.py"), "--tiny-smoke", "--out", str(out),
                           "--workdir", str(tmp_path / "work"), "--sections", "policies,compile", "--fp8-only",
                           "--policies", "none,group@12"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((out / "perf16.json").read_text())
    group = result["policies"]["group@12"]
    assert group["ok"] and group["group_plan"]["streamed"]
    assert group["image_vs_none_seed1"]["identical"]
    assert result["compile"]["fp8"]["skipped"].startswith("fp8 needs a CUDA card")


def test_fp8_on_a_card_without_fp8_matmuls_is_one_line(tiny_dirs, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce RTX 3090")
    with pytest.raises(UserError) as exc:
        Models(_spec(tiny_dirs, device="cuda", dtype="bf16", quantize="fp8", compile=True))
    assert _line(exc) == ("--quantize fp8: needs fp8 matmuls (compute capability 8.9+: Ada, Hopper, Blackwell); "
                          "NVIDIA GeForce RTX 3090 is 8.6; drop it: bf16 is the default")
