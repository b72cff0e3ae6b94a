"""Load Qwen3-VL and Z-Image from a hub id or a local directory, exactly as a user would.

`Models` loads each part lazily and once: the VL model only when a recipe reads it, Qwen3-4B
(Z-Image's text encoder) only when a recipe mixes it in or needs a negative prompt.

Placement (`ModelSpec.offload`, the `--offload` flag):
  none        everything resident on the device; on CUDA each part loads straight onto the GPU
              (`device_map`), with no CPU copy and no second `.to()` pass
  cpu         only the model in use sits on the GPU: Qwen3-VL and Qwen3-4B go back to host memory
              after encoding and return when needed; the DiT and VAE stay
  sequential  the DiT and VAE run through accelerate's offload hooks (diffusers'
              `enable_sequential_cpu_offload`): every layer's weights come from host memory at its
              forward. The encoders are handled as under cpu (on the GPU, whole, only while they
              encode): transformers' Qwen3-VL vision tower builds tensors on its position-embedding
              weight's device, which those hooks leave on "meta". Smallest footprint, slowest.
On `--device cpu` the policies are accepted and change nothing: every weight already lives in host
memory (cpu's moves are moves to where the weights are; sequential installs no hooks).

`ModelSpec.compile` (`--compile`): regional compilation of the DiT's repeated blocks
(`compile_repeated_blocks(fullgraph=True, dynamic=True)`): the sequence dimension is dynamic from the
start, so caption lengths never need padding by us (Z-Image pads to multiples of 32 itself). Measured on
an H200: graphs built for caption lengths 32, 77, 200, 605, 64 in turn: 2, 1, 0, 0, 0 (the one
recompile is a stride guard on the caption's RoPE slice); 1.48x faster than eager per 1024² image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from vlbench.errors import UserError
from vlbench.modelspec import ModelSpec

# Z-Image pads captions to a multiple of 32 inside the first RoPE axis: budget = axes_lens[0] - 32.
CAPTION_PAD = 32
# torch.compile options for the DiT's repeated blocks. dynamic=True: one graph per block variant for any
# sequence length (sweeps mix caption lengths); the benchmark compares it with dynamo's automatic dynamic.
COMPILE_OPTIONS: dict[str, Any] = {"fullgraph": True, "dynamic": True}
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class VLModel:
    """Qwen3-VL: the model (its base `model.model` is what runs) and its processor."""

    model: Any
    processor: Any
    source: str
    device: torch.device
    dtype: torch.dtype

    @property
    def hidden_size(self) -> int:
        return self.model.config.text_config.hidden_size

    @property
    def num_hidden_layers(self) -> int:
        return self.model.config.text_config.num_hidden_layers


def _check_not_file(field: str, source: str) -> None:
    """A file is neither a model directory nor a hub id (the hub client would try the network with it)."""
    if Path(source).is_file():
        raise UserError("is a file", field=field, value=source,
                        fix="give a model directory or a hub id, or tiny for the built-in random models")


def _load_error(field: str, source: str, exc: BaseException) -> UserError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    if len(reason) > 160:
        reason = reason[:157] + "..."
    hint = "pass a local model directory" if not Path(source).exists() else "check the directory is a complete model"
    return UserError(f"cannot load it ({reason})", field=field, value=source,
                     fix=f"{hint}, or tiny for the built-in random models")


@dataclass
class Models:
    """The loaded models of one process. Parts load on first use; `load_seconds` records each.

    `moves` records every placement change the offload policy made: (part, "device" | "host", seconds).
    """

    spec: ModelSpec
    on_status: Callable[[str], None] | None = None
    load_seconds: dict[str, float] = field(default_factory=dict)
    moves: list[tuple[str, str, float]] = field(default_factory=list)
    _vl: VLModel | None = None
    _pipe: Any = None
    _text_encoder_loaded: bool = False

    def __post_init__(self) -> None:
        self.spec = self.spec.built()  # the tiny models' directories, built once
        self.device = self.spec.resolved_device()
        self.dtype = self.spec.resolved_dtype()
        self.offload = self.spec.resolved_offload()  # tests may set it on a CPU device to run the code paths
        self.offload_device = torch.device("cpu")
        self.compiled = False
        self._where: dict[str, str] = {}  # encoder -> "device" | "host" (absent: where it loaded, the device)
        self._host: dict[str, dict[str, torch.Tensor]] = {}  # encoder -> its weights' host copy (offload)

    def _status(self, text: str) -> None:
        if self.on_status:
            self.on_status(text)

    # ---- placement ----
    def _hooks(self) -> bool:
        """DiT and VAE through accelerate's sequential offload hooks (CUDA only: nothing to gain on CPU)."""
        return self.offload == "sequential" and self.device.type == "cuda"

    def _transformers_kwargs(self) -> dict:
        """The encoders load straight onto the GPU (no CPU copy, no .to() pass) under every policy."""
        return {"device_map": {"": self.device}} if self.device.type == "cuda" else {}

    def _diffusers_kwargs(self) -> dict:
        # diffusers 0.42 takes a device-type string for a pipeline ("cuda": the current device), not "cuda:N"
        if self.device.type == "cuda" and not self._hooks() and self.device.index in (None, torch.cuda.current_device()):
            return {"device_map": self.device.type}
        return {}

    def _encoder(self, part: str):
        if part == "vl":
            return self._vl.model if self._vl is not None else None
        return self._pipe.text_encoder if self._text_encoder_loaded and self._pipe is not None else None

    def _move(self, part: str, where: str) -> None:
        """Put an encoder on the device (where="device") or in host memory (where="host"), if not there yet.

        The first move to host copies the weights into host memory and keeps that copy: the weights never
        change, so every later move to host only drops the device copy (free), and a move back is one
        host-to-device copy. On a CPU device both places are host memory."""
        module = self._encoder(part)
        if module is None or self._where.get(part, "device") == where:
            return
        start = time.perf_counter()
        with torch.inference_mode(False), torch.no_grad():
            tensors = _module_tensors(module)
            host = self._host.get(part)
            if where == "host":
                if host is None:
                    host = self._host[part] = {name: t.to(self.offload_device, copy=True) for name, t in tensors}
                for name, t in tensors:
                    t.data = host[name]
            else:
                for name, t in tensors:
                    t.data = host[name].to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._where[part] = where
        self.moves.append((part, where, time.perf_counter() - start))

    def use(self, part: str) -> None:
        """offload cpu/sequential: `part` ("vl", "text_encoder" or "dit") is about to run; the other encoders
        leave the GPU."""
        if self.offload not in ("cpu", "sequential"):
            return
        for other in ("vl", "text_encoder"):
            if other != part:
                self._move(other, "host")
        if part != "dit":
            self._move(part, "device")

    def prepare_generation(self) -> None:
        """Called before each DiT call: under offload cpu/sequential, the encoders leave the GPU."""
        self.use("dit")

    # ---- the parts ----
    @property
    def vl(self) -> VLModel:
        if self._vl is None:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            self._status(f"loading Qwen3-VL from {self.spec.vl}")
            self.use("vl")  # offload cpu: make room before the weights arrive
            start = time.perf_counter()
            _check_not_file("vl", self.spec.vl)
            try:
                processor = AutoProcessor.from_pretrained(self.spec.vl)
                model = AutoModelForImageTextToText.from_pretrained(self.spec.vl, dtype=self.dtype,
                                                                    **self._transformers_kwargs())
            except (OSError, ValueError, KeyError) as exc:
                raise _load_error("vl", self.spec.vl, exc) from exc
            if not str(model.config.model_type).startswith("qwen3_vl"):
                raise UserError(f"is a {model.config.model_type} model; vlbench needs a Qwen3-VL model", field="vl",
                                value=self.spec.vl)
            model.eval()
            if not self._transformers_kwargs():
                model.to(self.device)
            self._vl = VLModel(model, processor, self.spec.vl, self.device, self.dtype)
            self.load_seconds["vl"] = time.perf_counter() - start
            self._check_widths()
        else:
            self.use("vl")
        return self._vl

    @property
    def pipe(self):
        """Z-Image's pipeline: DiT, VAE and scheduler (Qwen3-4B is attached only when needed)."""
        if self._pipe is None:
            from diffusers import ZImagePipeline

            self._status(f"loading Z-Image from {self.spec.zimage}")
            start = time.perf_counter()
            _check_not_file("zimage", self.spec.zimage)
            kwargs = self._diffusers_kwargs()
            try:
                pipe = ZImagePipeline.from_pretrained(
                    self.spec.zimage, text_encoder=None, tokenizer=None, dtype=self.dtype, **kwargs
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise _load_error("zimage", self.spec.zimage, exc) from exc
            if self._hooks():
                pipe.enable_sequential_cpu_offload(device=self.device)
            elif not kwargs:
                pipe.to(self.device)
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe
            if self.spec.compile:
                self.compile_dit()
            self.load_seconds["zimage"] = time.perf_counter() - start
            self._check_widths()
        return self._pipe

    @property
    def text_pipe(self):
        """The Z-Image pipeline with its own Qwen3-4B text encoder and tokenizer attached."""
        pipe = self.pipe
        if not self._text_encoder_loaded:
            from transformers import AutoModel, AutoTokenizer

            self._status(f"loading Qwen3-4B from {self.spec.zimage}/text_encoder")
            self.use("text_encoder")
            start = time.perf_counter()
            try:
                tokenizer = AutoTokenizer.from_pretrained(self.spec.zimage, subfolder="tokenizer")
                text_encoder = AutoModel.from_pretrained(self.spec.zimage, subfolder="text_encoder", dtype=self.dtype,
                                                         **self._transformers_kwargs())
            except (OSError, ValueError, KeyError) as exc:
                raise _load_error("zimage", self.spec.zimage, exc) from exc
            text_encoder.eval()
            if not self._transformers_kwargs():
                text_encoder.to(self.device)
            pipe.register_modules(text_encoder=text_encoder, tokenizer=tokenizer)
            self._text_encoder_loaded = True
            self.load_seconds["text_encoder"] = time.perf_counter() - start
        else:
            self.use("text_encoder")
        return pipe

    def compile_dit(self, **options) -> None:
        """Regional compilation of the DiT's repeated blocks (`--compile`); `options` override COMPILE_OPTIONS.

        Compilation happens at the first call of each block variant, not here."""
        transformer = self.pipe.transformer
        transformer.compile_repeated_blocks(**{**COMPILE_OPTIONS, **options})
        self.compiled = True

    def uncompile_dit(self) -> None:
        """Back to eager blocks (the benchmark compares both in one process)."""
        import torch._dynamo

        for module in self.pipe.transformer.modules():
            if getattr(module, "_compiled_call_impl", None) is not None:
                module._compiled_call_impl = None
        torch._dynamo.reset()
        self.compiled = False

    def placement(self) -> dict:
        """Where each loaded part is now (for records and tests)."""
        out: dict[str, str] = {"offload": self.offload, "compiled": str(self.compiled)}
        for part in ("vl", "text_encoder"):
            module = self._encoder(part)
            if module is not None:
                out[part] = str(next(module.parameters()).device)
        if self._pipe is not None:
            out["dit"] = str(next(self._pipe.transformer.parameters()).device)
        return out

    @property
    def caption_budget(self) -> int:
        """Longest caption the loaded DiT accepts: axes_lens[0] - 32 (1504 for Z-Image-Turbo)."""
        return int(self.pipe.transformer.config.axes_lens[0]) - CAPTION_PAD

    @property
    def caption_width(self) -> int:
        return int(self.pipe.transformer.config.cap_feat_dim)

    def _check_widths(self) -> None:
        if self._vl is not None and self._pipe is not None and self._vl.hidden_size != self.caption_width:
            raise UserError(
                f"its text width is {self._vl.hidden_size} but the Z-Image DiT at {self.spec.zimage} takes captions "
                f"of width {self.caption_width}", field="vl", value=self.spec.vl, fix="use a Qwen3-VL of the same width "
                "(Qwen3-VL-4B for Z-Image-Turbo)"
            )


def compiled_graphs() -> int:
    """Graphs torch.compile has built in this process (each new one is a compile or a recompile)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover
        return 0
    return int(counters["stats"]["unique_graphs"])


def _module_tensors(module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer of `module` once (tied weights are one Parameter object)."""
    return list(module.named_parameters()) + list(module.named_buffers())
