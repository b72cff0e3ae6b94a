"""Where the loaded parts live: the offload policies, moves between the device and host memory, and offload group's
plan of which DiT blocks stay resident. `Models` (engine/models/loading.py) is a `Placement`.

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
"""

from __future__ import annotations

import time
from collections import OrderedDict
from contextlib import contextmanager

import torch

from vlbench.errors import UserError

# offload group: GPU memory left free beside the DiT's resident blocks and the VAE for a 1024² generation's
# activations (measured on an H200: 14.15 GiB peak - 11.7 GiB resident = 2.45 GiB with a 605-token caption,
# the VAE decode's), rounded up. Larger images need more: give a lower gpu_memory.
GROUP_ACTIVATION_RESERVE = 3 * 2**30
# blocks of a streamed DiT on the GPU at once: the one computing, the next one copying, and one whose memory
# record_stream holds until the compute stream has passed it
GROUP_STREAM_SLOTS = 3


class Placement:
    """The placement half of `Models`: the offload policy's moves (`use`, `prepare_generation`), offload group's
    streamed DiT (`_group_offload`) and where each part is now (`placement`)."""

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
