"""Device checks: what the card and this torch build can do, before and while the models load.

The settings that need torch (`--fast`, `--attention`, `--quantize fp8`, `--gpu-memory`) are checked against the
device (`check_settings`); the memory cap is set here (`cap_gpu_memory`); `cuda_problem` and the CPU-fallback
warning say in one line why real models would run on the CPU; `time_attention` times the attention kernels on the
card (--fast picks the fastest that takes a key mask).
"""

from __future__ import annotations

import time
import warnings
from contextlib import contextmanager

import torch

from vlbench.errors import UserError
from vlbench.modelspec import ModelSpec

# --fast: the attention kernels that take a key mask, timed on the card at load (sdpa-flash takes none)
FAST_ATTENTION_CANDIDATES = ("sdpa-cudnn", "sdpa-efficient", "sdpa")
# ModelSpec.attention -> diffusers' attention backend name (diffusers.models.attention_dispatch.AttentionBackendName)
ATTENTION_DIFFUSERS = {"sdpa": "native", "sdpa-flash": "_native_flash", "sdpa-efficient": "_native_efficient",
                       "sdpa-cudnn": "_native_cudnn", "sdpa-math": "_native_math"}
ATTENTION_ON_CPU = ("sdpa", "sdpa-math")
FP8_MIN_CAPABILITY = (8, 9)  # float8 matmuls (torch._scaled_mm): Ada, Hopper, Blackwell


def check_settings(spec: ModelSpec, device: torch.device) -> None:
    """The checks that need torch: CUDA for the GPU-only settings, fp8 matmuls, the memory cap (set here)."""
    cuda = device.type == "cuda"
    if spec.fast:  # before quantize's checks: the user asked for fast, not for fp8
        if not cuda:
            raise UserError("needs a CUDA GPU with fp8 matmuls (compute capability 8.9+); this run is on the CPU",
                            field="fast", fix="drop it")
        if torch.cuda.get_device_capability(device) < FP8_MIN_CAPABILITY:
            raise UserError(f"needs fp8 matmuls (compute capability 8.9+: Ada, Hopper, Blackwell); "
                            f"{torch.cuda.get_device_name(device)} is not one", field="fast",
                            fix="use compile (bf16) instead")
    if spec.attention is not None and spec.attention not in ATTENTION_ON_CPU and not cuda:
        raise UserError(f"runs on CUDA only; on the CPU use {' or '.join(ATTENTION_ON_CPU)}", field="attention",
                        value=spec.attention)
    if spec.quantize == "fp8":
        if not cuda:
            raise UserError("needs a CUDA GPU with fp8 matmuls (compute capability 8.9+)", field="quantize",
                            value="fp8", fix="drop it: bf16 is the default")
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < FP8_MIN_CAPABILITY:
            raise UserError(f"needs fp8 matmuls (compute capability 8.9+: Ada, Hopper, Blackwell); "
                            f"{torch.cuda.get_device_name(device)} is {major}.{minor}", field="quantize",
                            value="fp8", fix="drop it: bf16 is the default")
        try:
            import torchao.quantization  # noqa: F401
        except ImportError:
            raise UserError("needs torchao", field="quantize", value="fp8",
                            fix="pip install torchao (a build for this torch)") from None
    if spec.gpu_memory is not None:
        if not cuda:
            raise UserError("caps GPU memory; this run is on the CPU", field="gpu_memory", value=spec.gpu_memory,
                            fix="drop it, or use a CUDA device")
        cap_gpu_memory(device, spec.gpu_memory)


def time_attention(transformer, device: torch.device, candidates, image_tokens: int = 4096, caption: int = 256,
                   reps: int = 5) -> dict[str, float]:
    """Milliseconds of one joint attention of `transformer`'s shape (a 1024² image: 4096 tokens, and a 256-row
    caption bucket whose last 32 rows are masked) per candidate backend, through diffusers' dispatcher as the DiT
    calls it; a backend that refuses (kernel unavailable for the shape, mask or card) is left out."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    heads = int(transformer.config.n_heads)
    head_dim = int(transformer.config.dim) // heads
    length = image_tokens + caption
    shape = (1, length, heads, head_dim)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    mask = (torch.arange(length, device=device) < length - 32)[None, None, None, :]
    out: dict[str, float] = {}
    for name in candidates:
        backend = ATTENTION_DIFFUSERS[name]
        try:
            with torch.inference_mode(), warnings.catch_warnings(), _quiet_diffusers():
                warnings.simplefilter("ignore")
                for _ in range(2):
                    dispatch_attention_fn(q, k, v, attn_mask=mask, backend=backend)
                sync()
                start = time.perf_counter()
                for _ in range(reps):
                    dispatch_attention_fn(q, k, v, attn_mask=mask, backend=backend)
                sync()
        except (RuntimeError, ValueError, NotImplementedError, TypeError):
            continue
        out[name] = (time.perf_counter() - start) / reps * 1000
    return out


@contextmanager
def _quiet_diffusers():
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        yield
    finally:
        dlogging.set_verbosity(level)


def cap_gpu_memory(device: torch.device, gib: float) -> None:
    """At most `gib` GiB for this process's CUDA allocations on `device` (the caching allocator's hard cap)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    if gib * 2**30 > total:
        raise UserError(f"is more than the card's {total / 2**30:.1f} GiB", field="gpu_memory", value=gib)
    torch.cuda.set_per_process_memory_fraction(gib * 2**30 / total, index)


def cuda_problem() -> str | None:
    """Why CUDA is not usable here, in one line; None when it is."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = torch.cuda.is_available()
    if ok:
        return None
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    reason = next((str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()), "")
    reason = reason.removeprefix("CUDA initialization: ")
    if len(reason) > 140:
        reason = reason[:137] + "..."
    return f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) finds no usable GPU" + (
        f": {reason}" if reason else "")


def startup_warning(spec: ModelSpec) -> str | None:
    """The CPU-fallback warning for `spec` before anything loads (the workbench's header), or None."""
    try:
        device = spec.resolved_device()
    except UserError:
        return None  # the load will say what is wrong with the device
    return cpu_fallback_warning(spec, device)


def cpu_fallback_warning(spec: ModelSpec, device: torch.device) -> str | None:
    """One line when real models would run on the CPU only because CUDA is unusable (no cpu device asked for)."""
    if spec.tiny or spec.device is not None or device.type != "cpu":
        return None
    problem = cuda_problem()
    if problem is None:
        return None
    return (f"CUDA is not usable ({problem}): the real models would run on the CPU in fp32, minutes per image; "
            "install a torch build for this driver (README: Install) or set device cpu to mean it")
