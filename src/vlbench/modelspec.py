"""Which models run, and where: one torch-free description shared by every command and the workbench.

A `ModelSpec` is merged from config.toml's [models] table, then the environment (VLBENCH_ZIMAGE,
VLBENCH_VL, VLBENCH_DEVICE, VLBENCH_DTYPE, VLBENCH_OFFLOAD, VLBENCH_COMPILE, VLBENCH_QUANTIZE,
VLBENCH_ATTENTION, VLBENCH_GPU_MEMORY, VLBENCH_FAST), then command-line flags,
by `resolve_model_spec` — the one place that decides. The default when nothing names a model is the
same for every command: the built-in tiny RANDOM-WEIGHT models, labelled as such (a new user's first
command works on a machine without weights; a researcher with weights names them once in config.toml).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

from vlbench.errors import UserError
from vlbench.recipe.vocab import Choice

# The published checkpoints a user names with `zimage = "..."`/`--zimage` (hub ids or local directories).
DEFAULT_ZIMAGE = "Tongyi-MAI/Z-Image-Turbo"
DEFAULT_VL = "Qwen/Qwen3-VL-4B-Instruct"


# The settings' vocabularies, each value with its one-line description (config.toml's comments are made from them).
class Offload(Choice):
    """GPU placement (engine/models.py says what each does)."""

    NONE = "none", "all resident"
    CPU = "cpu", "only the model in use on the GPU"
    GROUP = "group", "as cpu, and the DiT streams the blocks that do not fit: 16 / 12 GB cards, CUDA only"
    SEQUENTIAL = "sequential", "diffusers' offload hooks, layer by layer"


class Dtype(Choice):
    BF16 = "bf16", ""
    FP16 = "fp16", ""
    FP32 = "fp32", ""


class Quantize(Choice):
    """none: the DiT's weights in --dtype (exact); fp8: torchao float8 rowwise (dynamic activation + weight) on its
    Linears."""

    NONE = "none", "exact"
    FP8 = "fp8", "torchao float8 matmuls in the DiT; with compile, on Ada/Hopper/Blackwell GPUs"


class Attention(Choice):
    """The DiT's attention, through diffusers' dispatcher (engine/models.py maps each to a diffusers backend)."""

    SDPA = "sdpa", "torch's scaled_dot_product_attention chooses its kernel"
    FLASH = "sdpa-flash", "FlashAttention forced; takes no mask"
    EFFICIENT = "sdpa-efficient", "the memory-efficient kernel forced"
    CUDNN = "sdpa-cudnn", "cuDNN's kernel forced"
    MATH = "sdpa-math", "the math kernel forced"


OFFLOAD_POLICIES = Offload.values()
DTYPE_NAMES = Dtype.values()
QUANTIZE_MODES = Quantize.values()
ATTENTION_BACKENDS = Attention.values()
# The smallest GPU memory any placement runs the published models in: the encoders run whole on the GPU
# (Qwen3-VL-4B: 8.3 GiB of bf16 weights; --offload sequential peaked at 8.6 GiB with a 768² reference on an H200).
MIN_GPU_MEMORY_GIB = 9.0
TINY_NOTE = "tiny random models — images are noise"
# environment variable -> ModelSpec field
ENVIRONMENT = {"VLBENCH_ZIMAGE": "zimage", "VLBENCH_VL": "vl", "VLBENCH_DEVICE": "device",
               "VLBENCH_DTYPE": "dtype", "VLBENCH_OFFLOAD": "offload", "VLBENCH_COMPILE": "compile",
               "VLBENCH_QUANTIZE": "quantize", "VLBENCH_ATTENTION": "attention", "VLBENCH_GPU_MEMORY": "gpu_memory",
               "VLBENCH_FAST": "fast"}
# --fast (issue 28): what it changes, said in one line at start (engine/models.py: Models.fast_settings)
FAST_NOTE = ("fast mode: the DiT runs fp8 matmuls (torchao) in compiled static graphs, one per caption bucket "
             "(captions padded to 32·2^k / 96·2^k rows, the padding masked), with the fastest mask-taking attention "
             "kernel measured on this GPU; images drift from bf16's (README: Performance)")


@dataclass(frozen=True)
class ModelSpec:
    """Where the models come from and where they run. None means: choose the default for this machine."""

    zimage: str = DEFAULT_ZIMAGE
    vl: str = DEFAULT_VL
    device: str | None = None  # cpu, cuda, cuda:N; None: cuda when available, else cpu
    dtype: str | None = None  # bf16 | fp16 | fp32; None: bf16 on GPU, fp32 on CPU
    offload: str = "none"  # none | cpu | group | sequential (engine/models.py says what each does)
    compile: bool = False  # regional torch.compile of the DiT's repeated blocks
    tiny: bool = False  # the built-in tiny random models: zimage/vl are their directories once built
    quantize: str = "none"  # none | fp8 (the DiT's Linear layers; CUDA with fp8 matmuls, with compile)
    attention: str | None = None  # one of ATTENTION_BACKENDS; None: sdpa (torch picks the kernel)
    gpu_memory: float | None = None  # GiB of GPU memory vlbench may use (a hard cap); None: the whole card
    fast: bool = False  # fp8 + compile (static graphs) + caption buckets + a mask-taking attention kernel (FAST_NOTE)

    def __post_init__(self) -> None:
        if self.fast:  # one flag for the fast settings: it sets compile and quantize fp8 itself
            if self.offload in ("sequential", "group"):
                raise UserError(f"compiles the DiT, which offload {self.offload} cannot (its hooks run inside every "
                                "compiled block)", field="fast", fix="use offload cpu or none, or drop fast")
            if self.dtype not in (None, "bf16"):
                raise UserError("runs fp8 matmuls over bf16 weights", field="fast", fix="use dtype bf16 or drop fast")
            if self.attention == "sdpa-flash":
                raise UserError("takes no key mask, and fast mode masks the padding of its caption buckets",
                                field="attention", value=self.attention,
                                fix="drop it (fast measures the mask-taking kernels) or use sdpa-efficient/-cudnn")
            object.__setattr__(self, "compile", True)
            object.__setattr__(self, "quantize", "fp8")
        if self.offload not in OFFLOAD_POLICIES:
            raise UserError(f"unknown policy; use one of {', '.join(OFFLOAD_POLICIES)}", field="offload",
                            value=self.offload)
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise UserError(f"unknown; use one of {', '.join(DTYPE_NAMES)}", field="dtype", value=self.dtype)
        if self.compile and self.offload in ("sequential", "group"):
            raise UserError(f"cannot be combined with offload {self.offload} (its hooks run inside every "
                            "compiled block); use offload cpu or none", field="compile")
        if self.quantize not in QUANTIZE_MODES:
            raise UserError(f"unknown; use one of {', '.join(QUANTIZE_MODES)}", field="quantize", value=self.quantize)
        if self.quantize == "fp8":
            if not self.compile:
                raise UserError("is slower than bf16 without compile (eager float8 casts cost more than the "
                                "matmuls save)", field="quantize", value="fp8", fix="add compile (--compile)")
            if self.dtype not in (None, "bf16"):
                raise UserError("quantizes bf16 weights", field="quantize", value="fp8", fix="use dtype bf16")
        if self.attention is not None and self.attention not in ATTENTION_BACKENDS:
            raise UserError(f"unknown backend; use one of {', '.join(ATTENTION_BACKENDS)}", field="attention",
                            value=self.attention)
        if self.gpu_memory is not None:
            raw = self.gpu_memory  # messages show what the user wrote
            try:
                gib = float(raw)
            except (TypeError, ValueError):
                raise UserError("not a number of GiB", field="gpu_memory", value=raw) from None
            if not gib > 0:
                raise UserError("must be a positive number of GiB", field="gpu_memory", value=raw)
            if self.device == "cpu":
                raise UserError("caps GPU memory; with device cpu there is none", field="gpu_memory", value=raw,
                                fix="drop it, or use a CUDA device")
            if not self.tiny and gib < MIN_GPU_MEMORY_GIB:
                raise UserError("is below what any placement can do: the encoders run whole on the GPU "
                                "(Qwen3-VL-4B alone holds 8.3 GiB of weights)", field="gpu_memory", value=raw,
                                fix=f"give at least {MIN_GPU_MEMORY_GIB:g} GiB")
            object.__setattr__(self, "gpu_memory", gib)

    def describe(self) -> str:
        """One line for headers and logs: which models, on what."""
        where = f" on {self.device}" if self.device else ""
        if self.tiny:
            return TINY_NOTE + where
        return f"{self.zimage} + {self.vl}{where}"

    def built(self) -> "ModelSpec":
        """The spec with the tiny models' directories filled in (building them once; imports torch)."""
        if not self.tiny:
            return self
        from vlbench.engine.tiny import ensure_tiny_models, is_tiny

        if is_tiny(self.zimage) and is_tiny(self.vl):
            return self
        models = ensure_tiny_models()
        return replace(self, zimage=str(models.zimage), vl=str(models.vl))

    # The engine asks these on the thread that owns the models (they import torch).
    def resolved_device(self):
        import torch

        if self.device is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise UserError("not a device name; use cpu, cuda or cuda:N", field="device", value=self.device) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("no CUDA GPU is visible here; use cpu", field="device", value=self.device)
        return device

    def resolved_dtype(self):
        import torch

        if self.dtype is None:
            return torch.bfloat16 if self.resolved_device().type == "cuda" else torch.float32
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.dtype]

    def resolved_offload(self) -> str:
        """The policy in force: as given on CUDA; "none" on a CPU device (nothing to offload to), except
        group, which is refused there: its point is CUDA streams overlapping copies with compute."""
        if self.resolved_device().type == "cuda":
            return self.offload
        if self.offload == "group":
            raise UserError("needs a CUDA GPU (it streams the DiT's blocks from host memory on CUDA streams)",
                            field="offload", value="group", fix="use offload none on the CPU")
        return "none"

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def resolve_model_spec(config: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
                       flags: Mapping[str, Any] | None = None) -> ModelSpec:
    """config.toml's [models], then the environment, then flags; later sources win, empty values are unset.

    `flags` may hold `tiny` (force the tiny models). Naming a Z-Image or VL model anywhere selects real
    models (the other part defaults to its published id); naming none selects the tiny models.
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    layers = [("config.toml", dict(config or {})),
              ("environment", {f: environ[k] for k, f in ENVIRONMENT.items() if environ.get(k)}),
              ("flags", dict(flags or {}))]
    for source, values in layers:
        for key, value in values.items():
            if value is None or value == "" or (key in ("compile", "tiny", "fast") and value is False):
                continue
            merged[key] = value
            sources[key] = source
    for key in ("compile", "tiny", "fast"):
        if isinstance(merged.get(key), str):
            text = merged[key].strip().lower()
            if text not in ("1", "0", "true", "false", "yes", "no"):
                raise UserError("must be true or false (1 or 0)", field=key, value=merged[key])
            merged[key] = text in ("1", "true", "yes")
    tiny = bool(merged.pop("tiny", False))
    if tiny and sources.get("tiny") == "flags":
        named = [k for k in ("zimage", "vl") if sources.get(k) == "flags"]
        if named:
            raise UserError(f"cannot be combined with {named[0]}; drop one", field="tiny")
        merged.pop("zimage", None)
        merged.pop("vl", None)
    elif not merged.get("zimage") and not merged.get("vl"):
        tiny = True
    if tiny:
        merged.pop("zimage", None)
        merged.pop("vl", None)
        return ModelSpec(tiny=True, zimage="", vl="", **merged)
    return ModelSpec(**merged)
