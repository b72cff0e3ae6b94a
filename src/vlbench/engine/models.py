"""Load Qwen3-VL and Z-Image from a hub id or a local directory, exactly as a user would.

`Models` loads each part lazily and once: the VL model only when a recipe reads it, Qwen3-4B
(Z-Image's text encoder) only when a recipe mixes it in or needs a negative prompt.

Placement (`ModelSpec.offload`, the `--offload` flag):
  none        everything resident on the device; on CUDA each part loads straight onto the GPU
              (`device_map`), with no CPU copy and no second `.to()` pass
  cpu         only the model in use sits on the GPU: Qwen3-VL and Qwen3-4B go back to host memory
              after encoding and return when needed; the DiT and VAE stay
  group       for cards the DiT and VAE do not fit beside the encoders (16 and 12 GB): the encoders as
              under cpu; the DiT keeps as many of its transformer blocks resident as the memory budget
              (`--gpu-memory`, else the card's free memory) leaves beside the VAE decode's activations
              (GROUP_ACTIVATION_RESERVE) and streams the rest from pinned host memory with diffusers'
              group offloading (block level, one block per group, a CUDA stream with record_stream:
              the next streamed block copies while the blocks before it compute). The streamed blocks
              are spread evenly over the main layers, so each copy overlaps resident blocks' compute.
              The resident blocks leave the GPU while an encoder runs and return for the next image
              (pinned host copy, kept). The VAE stays resident (0.16 GiB of weights: streaming it saves
              nothing; its decode's activations are what the reserve is for). CUDA only.
  sequential  the DiT and VAE run through accelerate's offload hooks (diffusers'
              `enable_sequential_cpu_offload`): every layer's weights come from host memory at its
              forward. The encoders are handled as under cpu (on the GPU, whole, only while they
              encode): transformers' Qwen3-VL vision tower builds tensors on its position-embedding
              weight's device, which those hooks leave on "meta". Smallest footprint, slowest.
On `--device cpu` the policies cpu and sequential are accepted and change nothing: every weight already
lives in host memory (cpu's moves are moves to where the weights are; sequential installs no hooks);
group is refused there (ModelSpec.resolved_offload).

`ModelSpec.gpu_memory` (`--gpu-memory GIB`): a hard cap on what this process allocates on the GPU
(`torch.cuda.set_per_process_memory_fraction`), and the budget offload group plans with.

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
"""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from vlbench.engine import buckets
from vlbench.engine.extract import forward, prepare
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
# --fast: the attention kernels that take a key mask, timed on the card at load (sdpa-flash takes none)
FAST_ATTENTION_CANDIDATES = ("sdpa-cudnn", "sdpa-efficient", "sdpa")
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# ModelSpec.attention -> diffusers' attention backend name (diffusers.models.attention_dispatch.AttentionBackendName)
ATTENTION_DIFFUSERS = {"sdpa": "native", "sdpa-flash": "_native_flash", "sdpa-efficient": "_native_efficient",
                       "sdpa-cudnn": "_native_cudnn", "sdpa-math": "_native_math"}
ATTENTION_ON_CPU = ("sdpa", "sdpa-math")
# offload group: GPU memory left free beside the DiT's resident blocks and the VAE for a 1024² generation's
# activations (measured on an H200: 14.15 GiB peak - 11.7 GiB resident = 2.45 GiB with a 605-token caption,
# the VAE decode's), rounded up. Larger images need more: give a lower gpu_memory.
GROUP_ACTIVATION_RESERVE = 3 * 2**30
# blocks of a streamed DiT on the GPU at once: the one computing, the next one copying, and one whose memory
# record_stream holds until the compute stream has passed it
GROUP_STREAM_SLOTS = 3
FP8_MIN_CAPABILITY = (8, 9)  # float8 matmuls (torch._scaled_mm): Ada, Hopper, Blackwell
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
class Models:
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
        self._check_settings()
        warning = cpu_fallback_warning(self.spec, self.device)
        if warning:
            self.warnings.append(warning)

    def _check_settings(self) -> None:
        """The checks that need torch: CUDA for the GPU-only settings, fp8 matmuls, the memory cap (set here)."""
        spec, cuda = self.spec, self.device.type == "cuda"
        if spec.fast:  # before quantize's checks: the user asked for fast, not for fp8
            if not cuda:
                raise UserError("needs a CUDA GPU with fp8 matmuls (compute capability 8.9+); this run is on the CPU",
                                field="fast", fix="drop it")
            if torch.cuda.get_device_capability(self.device) < FP8_MIN_CAPABILITY:
                raise UserError(f"needs fp8 matmuls (compute capability 8.9+: Ada, Hopper, Blackwell); "
                                f"{torch.cuda.get_device_name(self.device)} is not one", field="fast",
                                fix="use compile (bf16) instead")
        if spec.attention is not None and spec.attention not in ATTENTION_ON_CPU and not cuda:
            raise UserError(f"runs on CUDA only; on the CPU use {' or '.join(ATTENTION_ON_CPU)}", field="attention",
                            value=spec.attention)
        if spec.quantize == "fp8":
            if not cuda:
                raise UserError("needs a CUDA GPU with fp8 matmuls (compute capability 8.9+)", field="quantize",
                                value="fp8", fix="drop it: bf16 is the default")
            major, minor = torch.cuda.get_device_capability(self.device)
            if (major, minor) < FP8_MIN_CAPABILITY:
                raise UserError(f"needs fp8 matmuls (compute capability 8.9+: Ada, Hopper, Blackwell); "
                                f"{torch.cuda.get_device_name(self.device)} is {major}.{minor}", field="quantize",
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
            cap_gpu_memory(self.device, spec.gpu_memory)

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
        # diffusers 0.42 takes a device-type string for a pipeline ("cuda": the current device), not "cuda:N";
        # offload group loads into host memory: most of the DiT may never fit on the card
        if (self.device.type == "cuda" and not self._hooks() and self.offload != "group"
                and self.device.index in (None, torch.cuda.current_device())):
            return {"device_map": self.device.type}
        return {}

    def _part_tensors(self, part: str) -> list[tuple[str, torch.Tensor]] | None:
        if part == "dit":
            return self._dit_resident
        if part == "vl":
            module = self._vl.model if self._vl is not None else None
        else:
            module = self._pipe.text_encoder if self._text_encoder_loaded and self._pipe is not None else None
        return None if module is None else _module_tensors(module)

    def _move(self, part: str, where: str) -> None:
        """Put a part on the device (where="device") or in host memory (where="host"), if not there yet.

        The first move to host copies the weights into host memory and keeps that copy: the weights never
        change, so every later move to host only drops the device copy (free), and a move back is one
        host-to-device copy (from pinned memory for the DiT's blocks). On a CPU device both places are host
        memory."""
        tensors = self._part_tensors(part)
        if tensors is None or self._where.get(part, "device") == where:
            return
        start = time.perf_counter()
        pin = part == "dit" and self.device.type == "cuda"
        with torch.inference_mode(False), torch.no_grad():
            host = self._host.get(part)
            if where == "host":
                if host is None:
                    host = self._host[part] = {name: _host_copy(t, self.offload_device, pin) for name, t in tensors}
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
        """offload cpu/group/sequential: `part` ("vl", "text_encoder" or "dit") is about to run; the other
        encoders leave the GPU (under group, the DiT's resident blocks too while an encoder runs)."""
        if self.offload not in ("cpu", "group", "sequential"):
            return
        moved = len(self.moves)
        for other in ("vl", "text_encoder"):
            if other != part:
                self._move(other, "host")
        if self.offload == "group":
            if part != "dit":
                self._move("dit", "host")
            if len(self.moves) > moved and self.device.type == "cuda":
                # the parts that left freed whole segments: give them back, so that the part arriving gets fresh
                # ones. Under a memory cap, blocks split between the last part's tensor sizes and this one's leave
                # free memory no allocation fits (seen on an H200 under a 12 GiB cap: 3.5 GiB reserved but
                # unusable, then out of memory when a streamed block was prefetched)
                torch.cuda.empty_cache()
            if part == "dit":
                self._move("dit", "device")
        if part != "dit":
            self._move(part, "device")

    def prepare_generation(self) -> None:
        """Called before each DiT call: under offload cpu/group/sequential, the encoders leave the GPU."""
        self.use("dit")

    def _group_offload(self, transformer) -> None:
        """offload group: keep the blocks the budget allows resident, stream the rest with diffusers' group
        offloading (module docstring). Called with the DiT in host memory and the VAE already on the device."""
        from diffusers.hooks import apply_group_offloading

        cuda = self.device.type == "cuda"
        blocks = _dit_blocks(transformer)
        block_ids = {id(m) for _, m in blocks}
        fixed = sum(t.numel() * t.element_size() for m in _non_block_modules(transformer, block_ids)
                    for _, t in _module_tensors(m))
        budget = self.group_budget
        if budget is None and cuda:
            torch.cuda.empty_cache()
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = free + torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
            if self.spec.gpu_memory is not None:
                budget = min(budget, int(self.spec.gpu_memory * 2**30) - torch.cuda.memory_allocated(self.device))
        sizes = [sum(t.numel() * t.element_size() for _, t in _module_tensors(m)) for _, m in blocks]
        streamed = plan_group([n for n, _ in blocks], sizes, fixed, budget, self.group_reserve)
        if streamed is None:
            need = fixed + self.group_reserve + GROUP_STREAM_SLOTS * max(sizes)
            where = ("gpu_memory", self.spec.gpu_memory) if self.spec.gpu_memory is not None else ("offload", "group")
            raise UserError(f"leaves {max(budget, 0) / 2**30:.1f} GiB for the DiT: too little for offload group "
                            f"(its unstreamed parts, {GROUP_STREAM_SLOTS} streamed blocks and 1024² activations need "
                            f"{need / 2**30:.1f} GiB)", field=where[0], value=where[1],
                            fix="use offload sequential (smallest, slowest)")
        names = set(streamed)
        stream_modules = [m for n, m in blocks if n in names]
        stream_ids = {id(t) for m in stream_modules for _, t in _module_tensors(m)}
        with torch.inference_mode(False), torch.no_grad():
            for _, t in _module_tensors(transformer):
                if id(t) not in stream_ids:
                    t.data = t.data.to(self.device)
        if stream_modules:
            # diffusers 0.42's block-level group offloading streams every ModuleList child of the module it is
            # given; applied to a view of the DiT that lists only the blocks to stream, it hooks exactly those
            # (plus the DiT's own two pad-token parameters, its "unmatched group", onloaded at each forward)
            with _only_children(transformer, {"streamed": torch.nn.ModuleList(stream_modules)}):
                apply_group_offloading(transformer, onload_device=self.device, offload_device=self.offload_device,
                                       offload_type="block_level", num_blocks_per_group=1, use_stream=cuda,
                                       record_stream=cuda, low_cpu_mem_usage=False)
        hooked = stream_ids | ({id(t) for t in transformer._parameters.values() if t is not None} if stream_modules
                               else set())
        self._dit_resident = [(n, t) for n, t in _module_tensors(transformer) if id(t) not in hooked]
        resident_bytes = sum(t.numel() * t.element_size() for _, t in self._dit_resident)
        self.group_plan = {"budget_GiB": None if budget is None else round(budget / 2**30, 2),
                           "reserve_GiB": round(self.group_reserve / 2**30, 2),
                           "blocks": len(blocks), "streamed": streamed,
                           "resident_GiB": round(resident_bytes / 2**30, 2),
                           "streamed_GiB": round(sum(s for (n, _), s in zip(blocks, sizes) if n in names) / 2**30, 2)}

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
        with torch.inference_mode(), eager:
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

    def placement(self) -> dict:
        """Where each loaded part is now (for records and tests)."""
        out: dict[str, str] = {"offload": self.offload, "compiled": str(self.compiled)}
        for part in ("vl", "text_encoder"):
            tensors = self._part_tensors(part)
            if tensors:
                out[part] = str(tensors[0][1].device)
        if self._pipe is not None:
            if self.group_plan is not None:
                out["dit"] = (f"{self.group_plan['blocks'] - len(self.group_plan['streamed'])} blocks resident "
                              f"({self._where.get('dit', 'device')}), {len(self.group_plan['streamed'])} streamed")
            else:
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


def _host_copy(t: torch.Tensor, device: torch.device, pin: bool) -> torch.Tensor:
    if pin:
        return torch.empty(t.shape, dtype=t.dtype, device=device, pin_memory=True).copy_(t)
    return t.to(device, copy=True)


# The DiT's lists of transformer blocks, in the order its forward runs them.
DIT_BLOCK_LISTS = ("noise_refiner", "context_refiner", "siglip_refiner", "layers")


def _dit_blocks(transformer) -> list[tuple[str, torch.nn.Module]]:
    out = []
    for name in DIT_BLOCK_LISTS:
        blocks = getattr(transformer, name, None)
        if blocks is not None:
            out += [(f"{name}.{i}", block) for i, block in enumerate(blocks)]
    return out


def _non_block_modules(transformer, block_ids: set[int]) -> list[torch.nn.Module]:
    """The DiT's children that are not block lists (embedders, final layer), as modules with no blocks inside."""
    return [m for name, m in transformer.named_children() if name not in DIT_BLOCK_LISTS and id(m) not in block_ids]


def plan_group(names: list[str], sizes: list[int], fixed: int, budget: int | None,
               reserve: int) -> list[str] | None:
    """offload group: the names of the blocks to stream, so that what stays resident (`fixed` bytes beside the
    blocks, the resident blocks, GROUP_STREAM_SLOTS streamed blocks in flight) fits `budget` bytes beside
    `reserve` for activations. The fewest blocks that make it fit, spread evenly over the main layers (each
    copy then overlaps resident blocks' compute), the refiners last. [] when everything fits (budget None: no
    limit); None when not even the streaming working set fits."""
    if budget is None:
        return []
    room = budget - reserve - fixed
    total = sum(sizes)
    if room >= total:
        return []
    slots = GROUP_STREAM_SLOTS * max(sizes)
    if room < slots:
        return None
    main = [i for i, n in enumerate(names) if n.startswith("layers.")]
    others = [i for i, n in enumerate(names) if not n.startswith("layers.")]
    for k in range(1, len(names) + 1):
        if k <= len(main):
            chosen = {main[int((j + 0.5) * len(main) / k)] for j in range(k)}
        else:
            chosen = set(main) | set(others[:k - len(main)])
        if total - sum(sizes[i] for i in chosen) + slots <= room:
            return [names[i] for i in sorted(chosen)]
    return list(names)


@contextmanager
def _only_children(module: torch.nn.Module, children: dict[str, torch.nn.Module]):
    """`module` with only `children` as submodules for the duration (its forward is not called meanwhile)."""
    saved = module._modules
    module._modules = OrderedDict(children)
    try:
        yield module
    finally:
        module._modules = saved


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
