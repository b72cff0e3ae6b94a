"""Load Qwen3-VL and Z-Image from a hub id or a local directory, exactly as a user would.

`Models` loads each part lazily and once: the VL model only when a recipe reads it, Qwen3-4B
(Z-Image's text encoder) only when a recipe mixes it in or needs a negative prompt.

`ModelSpec.quantize = "fp8"` (`--quantize fp8`, with `--compile`): torchao's float8 dynamic activation +
weight quantisation with rowwise scales on the Linear layers of the DiT's transformer blocks (the
embedders and the final layer stay bf16, as diffusers keeps them out of layerwise casting). Needs a
card with fp8 matmuls (compute capability 8.9+: Ada, Hopper, Blackwell) and torchao. Not exact: the
images drift from bf16's (benchmarks/results/README.md gives the measured difference).

`ModelSpec.attention` (`--attention`): diffusers' attention backend for the DiT (`set_attention_backend`):
sdpa = torch's scaled_dot_product_attention choosing its kernel (the default), sdpa-flash / -efficient /
-cudnn / -math = one kernel forced.

First use (`Models.warm_up`, on CUDA): a fresh process pays one-off costs the first time each model
runs (cuBLAS and cuDNN set-up, cuDNN attention graphs, lazy kernel loading: ~1.1 s on the first Qwen3-VL
forward, ~0.4 s on the first generation, measured on an H200) and the first time it imports the model
code. Loading Qwen3-VL therefore ends with one small forward through extract's path, loading Z-Image with
a 1-step 256² generation (not under sequential: that is a full pass over the weights), and the model
code's imports are timed as part of the load: the costs fall where the user already waits, not in the
first job (benchmarks/results/README.md, issue 16).

`ModelSpec.fast` (`--fast`, issue 28): fp8 (as above) + compile with static graphs (FAST_COMPILE_OPTIONS) + caption
buckets (engine/buckets.py: at most one graph shape per bucket) + the fastest attention kernel that takes a key mask,
timed on the card at load (`time_attention`; `--attention` overrides). What it chose is `Models.fast_settings`,
recorded in every run's environment. The load's warm-up runs eager under it (static graphs are per image size).

`ModelSpec.compile` (`--compile`): regional compilation of the DiT's repeated blocks
(`compile_repeated_blocks(fullgraph=True, dynamic=True)`): the sequence dimension is dynamic from the
start, so caption lengths never need padding by us (Z-Image pads to multiples of 32 itself). Measured on
an H200: graphs built for caption lengths 32, 77, 200, 605, 64 in turn: 2, 1, 0, 0, 0 (the one
recompile is a stride guard on the caption's RoPE slice); 1.48x faster than eager per 1024² image.

Placement (the offload policies) is engine/models/placement.py; the device checks are engine/models/devices.py.
"""

from __future__ import annotations

import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from vlbench.engine import buckets
from vlbench.engine.extract import forward, prepare
from vlbench.engine.models.devices import (ATTENTION_DIFFUSERS, FAST_ATTENTION_CANDIDATES, _quiet_diffusers,
                                           check_settings, cpu_fallback_warning, time_attention)
from vlbench.engine.models.placement import GROUP_ACTIVATION_RESERVE, Placement, _dit_blocks
from vlbench.errors import UserError
from vlbench.modelspec import ModelSpec

# Z-Image pads captions to a multiple of 32 inside the first RoPE axis: budget = axes_lens[0] - 32.
CAPTION_PAD = 32
# torch.compile options for the DiT's repeated blocks. dynamic=True: one graph per block variant for any
# sequence length (sweeps mix caption lengths); the benchmark compares it with dynamo's automatic dynamic.
COMPILE_OPTIONS: dict[str, Any] = {"fullgraph": True, "dynamic": True}
# --fast: static graphs, one per (block variant, image size, caption bucket): the caption buckets bound how many
# (engine/buckets.py); dynamo's per-function recompile limit (8) is raised to hold them
FAST_COMPILE_OPTIONS: dict[str, Any] = {"fullgraph": True, "dynamic": False}
FAST_RECOMPILE_LIMIT = 128
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FP8_ACTIVATION_LB = 1e-12  # lower bound of an activation row's max |x| when its fp8 scale is computed


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
class Models(Placement):
    """The loaded models of one process. Parts load on first use; `load_seconds` records each.

    `moves` records every placement change the offload policy made: (part, "device" | "host", seconds);
    part is "vl", "text_encoder" or (offload group) "dit", the DiT's resident blocks.
    `warm_up`: on CUDA, end each load with one small forward (module docstring). `group_budget` (bytes) and
    `group_reserve` override offload group's memory budget and activation reserve (tests; None: measured).
    `warnings`: one line each, for the front ends to show at start (CUDA unusable, so the CPU runs the models).
    """

    spec: ModelSpec
    on_status: Callable[[str], None] | None = None
    load_seconds: dict[str, float] = field(default_factory=dict)
    moves: list[tuple[str, str, float]] = field(default_factory=list)
    warm_up: bool = True
    group_budget: int | None = None
    group_reserve: int = GROUP_ACTIVATION_RESERVE
    files: Any = None  # vlbench.engine.precheck.ModelFiles read before loading: its processor and tokenizer are reused
    _vl: VLModel | None = None
    _vl_processor: Any = None  # loaded alone before the model when an input check needs the tokenizer first
    _pipe: Any = None
    _text_encoder_loaded: bool = False

    def __post_init__(self) -> None:
        self.spec = self.spec.built()  # the tiny models' directories, built once
        if self.files is not None:
            self._vl_processor = self.files.vl_processor
        self.device = self.spec.resolved_device()
        self.dtype = self.spec.resolved_dtype()
        self.offload = self.spec.resolved_offload()  # tests may set it on a CPU device to run the code paths
        self.offload_device = torch.device("cpu")
        self.compiled = False
        self.fast_settings: dict[str, Any] | None = None  # --fast: what it set (Models._fast)
        self.warnings: list[str] = []
        self.warm_up_seconds: dict[str, float] = {}
        self.group_plan: dict[str, Any] | None = None  # offload group: what stays resident, what streams
        self._dit_resident: list[tuple[str, torch.Tensor]] | None = None  # offload group: tensors "dit" moves
        self._where: dict[str, str] = {}  # part -> "device" | "host" (absent: where it loaded, the device)
        self._host: dict[str, dict[str, torch.Tensor]] = {}  # part -> its weights' host copy (offload)
        check_settings(self.spec, self.device)
        warning = cpu_fallback_warning(self.spec, self.device)
        if warning:
            self.warnings.append(warning)

    def _status(self, text: str) -> None:
        if self.on_status:
            self.on_status(text)

    def _quantize_fp8(self, transformer) -> None:
        """torchao float8 (dynamic activation + weight, rowwise scales) on the blocks' large Linear layers."""
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

        roots = {name.split(".")[0] for name, _ in _dit_blocks(transformer)}

        def wanted(module, fqn: str) -> bool:
            return (isinstance(module, torch.nn.Linear) and fqn.split(".")[0] in roots
                    and min(module.in_features, module.out_features) >= 1024
                    and module.in_features % 16 == 0 and module.out_features % 16 == 0)

        # set_inductor_config=False: torchao's recommended inductor settings are process-wide (autotuning,
        # fp32 matmul precision); vlbench's compile options stay the ones it measured.
        # activation_value_lb: a row of zeros (Z-Image pads captions to a multiple of 32 with a pad token, zero in
        # an untrained DiT) would get a zero scale and turn into NaN (0/0); the bound keeps such rows at zero and
        # changes no other row's scale
        config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False,
                                                           activation_value_lb=FP8_ACTIVATION_LB)
        quantize_(transformer, config, filter_fn=wanted)

    def _warm_up_vl(self) -> None:
        """One small forward through extract's own path: the process's first-use costs fall in the load."""
        from PIL import Image

        start = time.perf_counter()
        image = Image.new("RGB", (64, 64), (128, 128, 128))
        with torch.inference_mode():
            forward(self._vl, prepare(self._vl, [image], "warm up", 10**6))
        torch.cuda.synchronize(self.device)
        self.warm_up_seconds["vl"] = time.perf_counter() - start

    def _warm_up_dit(self, pipe) -> None:
        """One 1-step 256² generation with its VAE decode (and, under group, diffusers' execution-order trace)."""
        start = time.perf_counter()
        width = int(pipe.transformer.config.cap_feat_dim)
        # --fast: static graphs are per image size; compiling the warm-up's 256² would only cost time
        eager = torch.compiler.set_stance("force_eager") if self.spec.fast else nullcontext()
        with torch.no_grad(), eager:  # generate's mode: the graphs compiled here are the ones it runs
            pipe(prompt_embeds=[torch.zeros(32, width, device=self.device, dtype=pipe.transformer.dtype)],
                 guidance_scale=0.0, num_inference_steps=1, width=256, height=256,
                 generator=torch.Generator("cpu").manual_seed(0), output_type="pt")
        torch.cuda.synchronize(self.device)
        self.warm_up_seconds["dit"] = time.perf_counter() - start

    # ---- the parts ----
    @property
    def vl_processor(self):
        """Qwen3-VL's processor, without loading or moving the model (input checks read its tokenizer)."""
        if self._vl is not None:
            return self._vl.processor
        if self._vl_processor is None:
            from transformers import AutoProcessor

            self._status(f"loading Qwen3-VL's processor from {self.spec.vl}")
            _check_not_file("vl", self.spec.vl)
            try:
                processor = AutoProcessor.from_pretrained(self.spec.vl)
            except (OSError, ValueError, KeyError) as exc:
                raise _load_error("vl", self.spec.vl, exc) from exc
            if not hasattr(processor, "image_processor"):  # not a vision-language model: the load says what it is
                return self.vl.processor
            self._vl_processor = processor
        return self._vl_processor

    @property
    def vl(self) -> VLModel:
        if self._vl is None:
            self._status(f"loading Qwen3-VL from {self.spec.vl}")
            self.use("vl")  # offload cpu: make room before the weights arrive
            start = time.perf_counter()  # the model code's first import is part of the load (seconds, once)
            from transformers import AutoModelForImageTextToText, AutoProcessor

            _check_not_file("vl", self.spec.vl)
            try:
                processor = self._vl_processor or AutoProcessor.from_pretrained(self.spec.vl)
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
            if self.warm_up and self.device.type == "cuda":
                self._warm_up_vl()
            self.load_seconds["vl"] = time.perf_counter() - start
            self._check_widths()
        else:
            self.use("vl")
        return self._vl

    @property
    def pipe(self):
        """Z-Image's pipeline: DiT, VAE and scheduler (Qwen3-4B is attached only when needed)."""
        if self._pipe is None:
            self._status(f"loading Z-Image from {self.spec.zimage}")
            start = time.perf_counter()
            from diffusers import ZImagePipeline

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
            elif self.offload == "group":
                self.use("dit")  # the encoders leave before the plan measures what is free
                pipe.vae.to(self.device)
                self._group_offload(pipe.transformer)
            elif not kwargs:
                pipe.to(self.device)
            pipe.set_progress_bar_config(disable=True)
            if self.spec.attention is not None:
                with warnings.catch_warnings(), _quiet_diffusers():  # "an experimental feature": the flag says so
                    pipe.transformer.set_attention_backend(ATTENTION_DIFFUSERS[self.spec.attention])
            if self.spec.fast:
                self._fast(pipe.transformer)
            if self.spec.quantize == "fp8":
                self._quantize_fp8(pipe.transformer)
            self._pipe = pipe
            if self.spec.compile:
                self.compile_dit()
            if self.warm_up and self.device.type == "cuda" and not self._hooks():  # sequential: a full weight pass
                self._warm_up_dit(pipe)
            self.load_seconds["zimage"] = time.perf_counter() - start
            self._check_widths()
        return self._pipe

    @property
    def text_pipe(self):
        """The Z-Image pipeline with its own Qwen3-4B text encoder and tokenizer attached."""
        pipe = self.pipe
        if not self._text_encoder_loaded:
            self._status(f"loading Qwen3-4B from {self.spec.zimage}/text_encoder")
            self.use("text_encoder")
            start = time.perf_counter()
            from transformers import AutoModel, AutoTokenizer

            try:
                tokenizer = (self.files.qwen3_tokenizer if self.files is not None else
                             AutoTokenizer.from_pretrained(self.spec.zimage, subfolder="tokenizer"))
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
        base = COMPILE_OPTIONS
        if self.spec.fast:
            import torch._dynamo

            base = FAST_COMPILE_OPTIONS
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, FAST_RECOMPILE_LIMIT)
        transformer.compile_repeated_blocks(**{**base, **options})
        self.compiled = True

    def _fast(self, transformer) -> None:
        """The fast mode: caption buckets on the DiT (engine/buckets.py) and, unless `attention` names one, the fastest
        mask-taking attention kernel timed here on this card. What was chosen is in `fast_settings`."""
        installed = buckets.install(transformer, int(transformer.config.axes_lens[0]) - CAPTION_PAD)
        timings = {}
        attention = self.spec.attention
        if attention is None:
            timings = time_attention(transformer, self.device, FAST_ATTENTION_CANDIDATES)
            attention = min(timings, key=timings.get) if timings else "sdpa"
            with warnings.catch_warnings(), _quiet_diffusers():
                transformer.set_attention_backend(ATTENTION_DIFFUSERS[attention])
        self.fast_settings = {"quantize": self.spec.quantize, "compile": "static graphs per caption bucket",
                              "buckets": installed.lengths, "attention": attention,
                              "attention_ms": {k: round(v, 3) for k, v in timings.items()}}
        self._status(f"fast: attention {attention}" + (
            " (" + ", ".join(f"{k} {v:.2f} ms" for k, v in timings.items()) + " per joint attention, timed here)"
            if timings else ""))

    def uncompile_dit(self) -> None:
        """Back to eager blocks (the benchmark compares both in one process)."""
        import torch._dynamo

        for module in self.pipe.transformer.modules():
            if getattr(module, "_compiled_call_impl", None) is not None:
                module._compiled_call_impl = None
        torch._dynamo.reset()
        self.compiled = False

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
