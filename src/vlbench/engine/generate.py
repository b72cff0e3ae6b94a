"""Generation through diffusers' Z-Image pipeline with precomputed `prompt_embeds`.

The sampler is diffusers' own; we pass embeddings, a CPU generator (so a seed reproduces on any
device) and a step callback for progress.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

import torch

from vlbench.engine.guidance import vl_guidance as three_branch
from vlbench.engine.positions import grid_positions
from vlbench.errors import CaptionTooLong, UserError
from vlbench.recipe import AttendScope


def check_caption(length: int, budget: int) -> None:
    """Refuse a caption the DiT cannot take: on a GPU it would be a device-side assert that kills CUDA."""
    if length > budget:
        raise CaptionTooLong(f"{length} tokens, over the DiT's caption budget of {budget}", field="conditioning",
                             fix="select fewer tokens (e.g. tokens text), lower max_image_tokens, or pool the image "
                                 "tokens (pool_image_tokens)")
    if length < 1:
        raise CaptionTooLong("the sequence is empty", field="conditioning", fix="select some tokens")


CAPTION_PAD = 32  # Z-Image pads captions (and image tokens) to a multiple of 32 inside the transformer


REFINER = "context_refiner"  # Z-Image's caption-only blocks (the caption starts at position 0)
JOINT = "layers"  # Z-Image's joint blocks: [image tokens; caption tokens], each padded to a multiple of 32
# the attend bias's scope (recipe.AttendScope) -> the block groups it biases
SCOPES = {AttendScope.REFINER_JOINT: (REFINER, JOINT), AttendScope.JOINT: (JOINT,)}


def dit_blocks(transformer) -> list[tuple[str, str, object]]:
    """(name, group, module) of every block whose attention sees the caption: the context refiner's
    ("context_refiner.0", …) then the joint blocks' ("layers.0", …)."""
    return [(f"{group}.{i}", group, block) for group in (REFINER, JOINT)
            for i, block in enumerate(getattr(transformer, group))]


class CaptionBias:
    """The additive attention-logit bias on the caption keys of each block, now: `blocks` maps a block's name
    (dit_blocks) to a float [n_caption] tensor (log w; -inf would mask a row) or leaves it out (that block's mask
    untouched). `set(weights)` gives every block of the scope log w; a caller that wants other biases per block (a
    mask per block, say) sets `blocks` itself. A schedule sets the next step's between steps."""

    def __init__(self, weights: torch.Tensor | None, scope: str = "refiner+joint"):
        if scope not in SCOPES:
            raise ValueError(f"unknown attend scope {scope!r}; choose one of {', '.join(SCOPES)}")
        self.scope = scope
        self.set(weights)

    def set(self, weights: torch.Tensor | None) -> None:
        if weights is not None and bool((weights == 1).all()):
            weights = None
        if weights is not None and bool((weights <= 0).any()):
            raise ValueError("caption weights must be > 0 (a source of weight 0 is dropped, not masked)")
        self.rows = None if weights is None else weights.float().log()
        self.blocks: dict[str, torch.Tensor] = {} if self.rows is None else {
            group: self.rows for group in SCOPES[self.scope]}
        self._changed()

    def _changed(self) -> None:
        on_change = getattr(self, "on_change", None)  # caption_attention's: each block's bias onto the block
        if on_change is not None:
            on_change()

    def for_block(self, name: str, group: str) -> torch.Tensor | None:
        return self.blocks.get(name, self.blocks.get(group))

    def hide(self, rows: torch.Tensor, names: list[str]) -> None:
        """issue 27's vl_blocks: in the blocks `names`, -inf on the keys of the caption rows where `rows` ([L] bool)
        is True, on top of any bias the block has."""
        mask = torch.zeros(rows.shape[0], dtype=torch.float32).masked_fill(rows.bool().cpu(), float("-inf"))
        for name in names:
            base = self.for_block(name, name.split(".")[0])
            self.blocks[name] = mask if base is None else base + mask
        self._changed()

    @property
    def active(self) -> bool:
        return bool(self.blocks)


def _biased_mask(hidden: torch.Tensor, mask: torch.Tensor | None, bias: torch.Tensor, group: str) -> torch.Tensor:
    """The float [batch, L] key mask a block takes: 0, -inf where the boolean `mask` hid a key, plus `bias` on the
    conditional item's (the batch's first) caption keys — from position 0 in the context refiner, after the item's
    padded image tokens in a joint block."""
    n_caption = int(bias.shape[0])
    batch, length = hidden.shape[0], hidden.shape[1]
    float_mask = torch.zeros((batch, length), dtype=hidden.dtype, device=hidden.device)
    if mask is not None:
        float_mask = float_mask.masked_fill(~mask.bool(), float("-inf"))
    if group == REFINER:
        start = 0
    else:
        first_len = int(mask[0].sum()) if mask is not None else length
        start = first_len - (n_caption + (-n_caption) % CAPTION_PAD)
    float_mask[0, start:start + n_caption] += bias.to(hidden.device, hidden.dtype)
    return float_mask


@contextmanager
def caption_attention(transformer, weights: torch.Tensor | None, later: tuple[torch.Tensor | None, ...] = (),
                      scope: str = "refiner+joint",
                      hide: tuple[torch.Tensor, list[str]] | None = None) -> Iterator[CaptionBias]:
    """Weight how much the DiT attends to each caption row: an additive attention-logit bias log w on that row's
    key, for the conditional item (the batch's first), in every block of `scope` (recipe.AttendScope): the
    caption-only context-refiner blocks and the joint (image + caption) blocks ("refiner+joint", the default), or
    the joint blocks only ("joint", every biased run before recipe schema 3).

    Each block takes a [batch, L] key mask as its second argument; a forward pre-hook (a documented PyTorch hook)
    replaces it by the float mask holding the biases (-inf where the boolean mask hid a position). With no weights,
    or all 1, nothing is installed: the call is diffusers' own, bit for bit. `later`: the weights of a schedule's
    later captions (engine.generate swaps them in with the captions); the hooks are installed when any is not all
    1, and leave the mask untouched (return None) while the current caption's weights are all 1.
    `hide`: (rows, block names) — issue 27's vl_blocks: those rows' keys masked (-inf) in those blocks.
    """
    state = CaptionBias(weights, scope)
    if hide is not None:
        state.hide(*hide)
    if not state.active and not any(CaptionBias(w, scope).active for w in later):
        yield state
        return

    # One hook function for every block, reading its block's bias from the block itself: under --compile
    # (compile_repeated_blocks, fullgraph) a hook closing over the block's name made dynamo specialise one graph per
    # block and hit its recompile limit at Z-Image's 30 joint blocks; a tensor attribute of the module is a graph
    # input, the same graph for every block of a group.
    blocks = dit_blocks(transformer)

    def push() -> None:
        for name, group, block in blocks:
            block._vlbench_caption_bias = state.for_block(name, group)
            block._vlbench_caption_group = group

    def hook(module, args):
        bias = module._vlbench_caption_bias
        if bias is None:
            return None
        return (args[0], _biased_mask(args[0], args[1], bias, module._vlbench_caption_group), *args[2:])

    push()
    state.on_change = push
    handles = [block.register_forward_pre_hook(hook) for _, _, block in blocks]
    try:
        yield state
    finally:
        state.on_change = None
        for handle in handles:
            handle.remove()
        for _, _, block in blocks:
            for attr in ("_vlbench_caption_bias", "_vlbench_caption_group"):
                if hasattr(block, attr):
                    delattr(block, attr)


def _rope(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Z-Image's rotary embedding, as its attention processor applies it (x [B, L, H, d], freqs [B, L, d/2])."""
    out = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2)) * freqs_cis.unsqueeze(2)
    return torch.view_as_real(out).flatten(3).type_as(x)


class ShareProbe:
    """The realised share: how much of the image tokens' attention to the caption reaches each caption row, measured
    in a few joint blocks of the DiT for the conditional item (the batch's first).

    A forward pre-hook on each chosen block's attention module reads its input (the normalised hidden states, the
    key mask — with the attend bias when one is installed — and the RoPE frequencies) and recomputes, with the
    module's own to_q/to_k/norms, p = softmax(q·kᵀ/√d + mask) for the image queries, fp32, in chunks of queries. It
    adds Σ_heads Σ_image queries p to `mass` ([n_caption]: one total per caption row), summed over blocks and
    steps. The model's own attention is not touched (the hook only reads). Off unless asked (engine.share_probe)."""

    def __init__(self, transformer, n_caption: int, n_image: int, blocks: tuple[int, ...] | None = None,
                 chunk: int = 256):
        layers = transformer.layers
        self.blocks = tuple(sorted({0, len(layers) // 2, len(layers) - 1})) if blocks is None else tuple(blocks)
        self.n_caption, self.n_image, self.chunk = n_caption, n_image, chunk
        self.mass = torch.zeros(n_caption, dtype=torch.float64)
        self.calls = 0
        self._handles = [layers[i].attention.register_forward_pre_hook(self._hook, with_kwargs=True)
                         for i in self.blocks]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @torch.no_grad()
    def _hook(self, attn, args, kwargs):
        hidden = (args[0] if args else kwargs["hidden_states"])[:1]
        mask = kwargs.get("attention_mask")
        freqs = kwargs.get("freqs_cis")
        q = attn.to_q(hidden).unflatten(-1, (attn.heads, -1))
        k = attn.to_k(hidden).unflatten(-1, (attn.heads, -1))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if freqs is not None:
            q, k = _rope(q, freqs[:1]), _rope(k, freqs[:1])
        q, k = q[0].transpose(0, 1).float(), k[0].transpose(0, 1).float()  # [H, L, d]
        length = k.shape[1]
        key_mask = torch.zeros(length, dtype=torch.float32, device=k.device)
        if mask is not None:
            m = mask[0].reshape(-1)[-length:]
            key_mask = key_mask.masked_fill(~m.bool(), float("-inf")) if m.dtype == torch.bool else m.float()
        # the item's caption follows its padded image tokens (counted, not read off the mask: vl_blocks puts -inf
        # on caption keys too)
        start = self.n_image + (-self.n_image) % CAPTION_PAD
        scale = q.shape[-1] ** -0.5
        total = torch.zeros(self.n_caption, dtype=torch.float64, device=k.device)
        for lo in range(0, self.n_image, self.chunk):
            scores = q[:, lo:min(lo + self.chunk, self.n_image)] @ k.transpose(1, 2) * scale + key_mask
            p = scores.softmax(-1)[..., start:start + self.n_caption]
            total += p.sum((0, 1)).double()
        self.mass += total.cpu()
        self.calls += 1
        return None

    def shares(self, sides: torch.Tensor) -> float:
        """The realised share of the rows where `sides` is 1 among the rows where it is 0 or 1 (-1: not in this
        mix): their attention mass over the mix's rows' mass."""
        inside = sides >= 0
        return float(self.mass[sides == 1].sum() / self.mass[inside].sum())


def mix_sides(rows: list[dict], knob: str) -> torch.Tensor:
    """[L] per caption row: 1 from the `knob` mix's other source, 0 from its base, -1 not in that mix."""
    out = []
    for row in rows:
        tag = row.get(f"{knob}_mix")
        out.append(-1 if tag is None else int(tag.get("from") == "other"))
    return torch.tensor(out)


def check_size(width: int, height: int, pipe) -> None:
    """Refuse a size past the DiT's image positions (RoPE axes 1 and 2: one position per 16 pixels; 8192 px for
    Z-Image-Turbo): past them the CPU raises an IndexError and a GPU a device-side assert."""
    check_side(width, height, list(pipe.transformer.config.axes_lens), pipe.vae_scale_factor * 2)


def check_side(width: int, height: int, axes_lens: list[int], pixels_per_token: int) -> None:
    """`check_size` from the DiT's axes_lens and its pixels per image token (VAE downscale × patch 2)."""
    axes, per = axes_lens, pixels_per_token
    for field, value, limit in (("height", height, axes[1] * per), ("width", width, axes[2] * per)):
        if value > limit:
            raise UserError(f"over this DiT's largest image side of {limit} pixels", field=field, value=value,
                            fix=f"use at most {limit}")


# torch.no_grad, as diffusers' own __call__, not inference_mode: on a compiled DiT dynamo guards on the mode, and
# under inference_mode it builds graphs of its own whose images differ from plain compiled diffusers' by up to 6/255
# on an H100 (benchmarks/eager_parity.py, 2026-12-07_h100_eager_parity_compiled_warm_6700fc5.json); eager, the two
# modes give the same pixels. The models' DiT warm-up runs under no_grad for the same graphs.
@torch.no_grad()
def generate(pipe, embeds: torch.Tensor, *, seed: int, steps: int, width: int, height: int, guidance: float,
             negative_embeds: torch.Tensor | None = None, budget: int,
             on_step: Callable[[int, int], None] | None = None, output_type: str = "pil",
             init_image=None, strength: float | None = None, caption_weights: torch.Tensor | None = None,
             schedule: list[tuple[int, torch.Tensor, torch.Tensor | None]] = (), attend_scope: str = "refiner+joint",
             probe: "ShareProbe | None" = None, vl_guidance: tuple[float, torch.Tensor] | None = None,
             caption_grids: list[tuple[int, tuple[int, int]]] | None = None,
             hide: tuple[torch.Tensor, list[str]] | None = None):
    """One image from `embeds` ([L, D]) with diffusers' Z-Image pipeline (txt2img, or img2img when
    `pipe` is a ZImageImg2ImgPipeline and `init_image`/`strength` are given). Returns a PIL image.
    `caption_weights` ([L]): attention weights of the caption rows (see caption_attention), in the blocks of
    `attend_scope`.
    `schedule`: (from step, embeds, caption weights) of later captions: from that step on (counted as the
    sampler runs them, 0 first) the DiT reads that caption with those weights; `embeds` conditions step 0.
    `probe`: a ShareProbe installed on the transformer (removed here when the image is done).
    `hide`: (caption rows, block names) whose keys those blocks mask (issue 27's vl_blocks; caption_attention)."""
    later = {step: weights for step, _, weights in schedule}
    try:
        with caption_attention(pipe.transformer, caption_weights, tuple(later.values()), attend_scope,
                               hide) as bias:
            return generate_batch(pipe, embeds, seeds=[seed], steps=steps, width=width, height=height,
                                  guidance=guidance, negative_embeds=negative_embeds, budget=budget, on_step=on_step,
                                  output_type=output_type, init_image=init_image, strength=strength,
                                  schedule=[(step, e) for step, e, _ in schedule],
                                  on_swap=lambda step: bias.set(later[step]),
                                  vl_guidance=vl_guidance,
                                  caption_grids=caption_grids)[0]
    finally:
        if probe is not None:
            probe.remove()


@torch.no_grad()  # not inference_mode: see generate
def generate_batch(pipe, embeds: torch.Tensor | list[torch.Tensor], *, seeds: list[int], steps: int, width: int,
                   height: int,
                   guidance: float, negative_embeds: torch.Tensor | None = None, budget: int,
                   on_step: Callable[[int, int], None] | None = None, output_type: str = "pil",
                   init_image=None, strength: float | None = None,
                   schedule: list[tuple[int, torch.Tensor]] = (),
                   on_swap: Callable[[int], None] | None = None,
                   vl_guidance: tuple[float, torch.Tensor] | None = None,
                   caption_grids: list[tuple[int, tuple[int, int]]] | None = None) -> list:
    """One image per seed from the same `embeds`, in ONE pipeline call (`num_images_per_prompt`): each sample
    draws its starting noise from its own CPU generator, `torch.Generator("cpu").manual_seed(seed)`, exactly
    as a single run does, so sample i starts where `generate(seed=seeds[i])` starts.

    `schedule`: (from step k, embeds) of later captions. ZImagePipeline re-reads its `prompt_embeds` list at
    every step of its denoising loop and takes a replacement from `callback_on_step_end` (with "prompt_embeds"
    in `callback_on_step_end_tensor_inputs`): the callback after step k-1 hands it the caption of step k.
    `on_swap(k)` runs at that moment (the caption weights change with the caption).

    `embeds` a list (issue 28's batching): one caption per seed, in one call (`prompt_embeds` as a list; the
    DiT masks the shorter captions' padding, or caption buckets pad them to one bucket).

    `vl_guidance`: (scale, Qwen3-4B caption q) — issue 27's three-branch CFG (engine.guidance); None or scale 0:
    diffusers' own call, untouched. `caption_grids`: (first row, (rows, columns)) of each image in `embeds` — issue
    27's image_positions grid (engine.positions); None: diffusers' caption positions."""
    captions = embeds if isinstance(embeds, list) else None
    if captions is not None and (len(captions) != len(seeds) or schedule):
        raise ValueError("a list of captions takes one seed per caption and no schedule")
    if captions is not None and ((vl_guidance is not None and vl_guidance[0] != 0) or caption_grids):
        raise ValueError("a list of captions (issue 28's batching) takes no vl_guidance and no caption_grids")
    for caption in captions or [embeds]:
        check_caption(caption.shape[0], budget)
    check_size(width, height, pipe)
    if negative_embeds is not None:
        check_caption(negative_embeds.shape[0], budget)
    for _, later in schedule:
        check_caption(later.shape[0], budget)
    dtype = pipe.transformer.dtype
    device = pipe._execution_device
    kwargs = {}
    if init_image is not None:
        # diffusers' own resize to the output size; the pipeline's processor does the rest
        kwargs["image"] = pipe.image_processor.resize(init_image, height=height, width=width)
        kwargs["strength"] = strength
    swaps = {step: [later.to(device=device, dtype=dtype)] * len(seeds) for step, later in schedule}

    finite: list[torch.Tensor] = []  # per step, on the device: no host sync until the last step (issue 28)

    def callback(_pipe, i, _t, tensors):
        latents = tensors.get("latents")
        if latents is not None:
            finite.append(torch.isfinite(latents).all())
            if i + 1 == _pipe.num_timesteps:  # before the VAE decodes them: the one sync, at the last step
                ok = torch.stack(finite).tolist()
                if not all(ok):
                    raise FloatingPointError(f"the latents are not finite after denoising step {ok.index(False) + 1}"
                                             f" of {_pipe.num_timesteps}")
        if i + 1 in swaps:  # the caption of the next step
            tensors["prompt_embeds"] = swaps[i + 1]
            if on_swap is not None:
                on_swap(i + 1)
        if on_step is not None:
            on_step(i + 1, _pipe.num_timesteps)  # img2img runs fewer steps than `steps`
        return tensors

    kwargs["callback_on_step_end"] = callback
    if swaps:
        kwargs["callback_on_step_end_tensor_inputs"] = ["latents", "prompt_embeds"]
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    if len(seeds) > 1 and captions is None:
        kwargs["num_images_per_prompt"] = len(seeds)
    prompts = [e.to(device=device, dtype=dtype) for e in captions or [embeds]]
    negative = [negative_embeds.to(device=device, dtype=dtype)] * len(prompts) if guidance > 0 else None
    with ExitStack() as levers:  # issue 27: each lever a context around diffusers' own call; none: the call as is
        if caption_grids:
            levers.enter_context(grid_positions(pipe.transformer, prompts[0], caption_grids))
        pipe_guidance = guidance
        if vl_guidance is not None and vl_guidance[0] != 0:  # the branches batched by transformer hooks

            scale, text = vl_guidance
            check_caption(text.shape[0], budget)
            levers.enter_context(three_branch(pipe.transformer, text.to(device=device, dtype=dtype),
                                              negative[0] if negative else None, guidance, scale))
            pipe_guidance, negative = 0.0, None  # the hooks combine the branches; the pipeline runs one
        result = pipe(
            prompt_embeds=prompts,
            negative_prompt_embeds=negative,
            guidance_scale=pipe_guidance,
            num_inference_steps=steps,
            width=width,
            height=height,
            generator=generators[0] if len(seeds) == 1 else generators,
            output_type=output_type,
            **kwargs,
        )
    return list(result.images)
