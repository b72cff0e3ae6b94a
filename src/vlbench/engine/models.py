"""Load Qwen3-VL and Z-Image from a hub id or a local directory, exactly as a user would.

`Models` loads each part lazily and once: the VL model only when a recipe reads it, Qwen3-4B
(Z-Image's text encoder) only when a recipe mixes it in or needs a negative prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from vlbench.engine.recipe import DEFAULT_VL, DEFAULT_ZIMAGE
from vlbench.errors import UserError

# Z-Image pads captions to a multiple of 32 inside the first RoPE axis: budget = axes_lens[0] - 32.
CAPTION_PAD = 32
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


@dataclass(frozen=True)
class ModelSpec:
    """Where the models come from and where they run. None means: choose the default for this machine."""

    zimage: str = DEFAULT_ZIMAGE
    vl: str = DEFAULT_VL
    device: str | None = None
    dtype: str | None = None

    def resolved_device(self) -> torch.device:
        if self.device is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise UserError(f"--device {self.device}: not a device name; use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {self.device}: no CUDA GPU is visible here; use --device cpu")
        return device

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype is None:
            return torch.bfloat16 if self.resolved_device().type == "cuda" else torch.float32
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype {self.dtype}: unknown; use one of bf16, fp16, fp32")
        return DTYPES[self.dtype]


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


def _check_not_file(flag: str, source: str) -> None:
    """A file is neither a model directory nor a hub id (the hub client would try the network with it)."""
    if Path(source).is_file():
        raise UserError(f"{flag} {source}: is a file; give a model directory or a hub id, "
                        "or --tiny for the built-in random models")


def _load_error(flag: str, source: str, exc: BaseException) -> UserError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    if len(reason) > 160:
        reason = reason[:157] + "..."
    hint = "pass a local model directory" if not Path(source).exists() else "check the directory is a complete model"
    return UserError(f"{flag} {source}: cannot load it ({reason}); {hint}, or --tiny for the built-in random models")


@dataclass
class Models:
    """The loaded models of one process. Parts load on first use; `load_seconds` records each."""

    spec: ModelSpec
    on_status: Callable[[str], None] | None = None
    load_seconds: dict[str, float] = field(default_factory=dict)
    _vl: VLModel | None = None
    _pipe: Any = None
    _text_encoder_loaded: bool = False

    def __post_init__(self) -> None:
        self.device = self.spec.resolved_device()
        self.dtype = self.spec.resolved_dtype()

    def _status(self, text: str) -> None:
        if self.on_status:
            self.on_status(text)

    @property
    def vl(self) -> VLModel:
        if self._vl is None:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            self._status(f"loading Qwen3-VL from {self.spec.vl}")
            start = time.perf_counter()
            _check_not_file("--vl", self.spec.vl)
            try:
                processor = AutoProcessor.from_pretrained(self.spec.vl)
                model = AutoModelForImageTextToText.from_pretrained(self.spec.vl, dtype=self.dtype)
            except (OSError, ValueError, KeyError) as exc:
                raise _load_error("--vl", self.spec.vl, exc) from exc
            if not str(model.config.model_type).startswith("qwen3_vl"):
                raise UserError(f"--vl {self.spec.vl}: is a {model.config.model_type} model; vlbench needs a Qwen3-VL model")
            model.to(self.device).eval()
            self._vl = VLModel(model, processor, self.spec.vl, self.device, self.dtype)
            self.load_seconds["vl"] = time.perf_counter() - start
            self._check_widths()
        return self._vl

    @property
    def pipe(self):
        """Z-Image's pipeline: DiT, VAE and scheduler (Qwen3-4B is attached only when needed)."""
        if self._pipe is None:
            from diffusers import ZImagePipeline

            self._status(f"loading Z-Image from {self.spec.zimage}")
            start = time.perf_counter()
            _check_not_file("--zimage", self.spec.zimage)
            try:
                pipe = ZImagePipeline.from_pretrained(
                    self.spec.zimage, text_encoder=None, tokenizer=None, dtype=self.dtype
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise _load_error("--zimage", self.spec.zimage, exc) from exc
            pipe.to(self.device)
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe
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
            start = time.perf_counter()
            try:
                tokenizer = AutoTokenizer.from_pretrained(self.spec.zimage, subfolder="tokenizer")
                text_encoder = AutoModel.from_pretrained(self.spec.zimage, subfolder="text_encoder", dtype=self.dtype)
            except (OSError, ValueError, KeyError) as exc:
                raise _load_error("--zimage", self.spec.zimage, exc) from exc
            text_encoder.to(self.device).eval()
            pipe.register_modules(text_encoder=text_encoder, tokenizer=tokenizer)
            self._text_encoder_loaded = True
            self.load_seconds["text_encoder"] = time.perf_counter() - start
        return pipe

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
                f"--vl {self.spec.vl}: its text width is {self._vl.hidden_size} but the Z-Image DiT at "
                f"{self.spec.zimage} takes captions of width {self.caption_width}; use a Qwen3-VL of the same width "
                "(Qwen3-VL-4B for Z-Image-Turbo)"
            )
