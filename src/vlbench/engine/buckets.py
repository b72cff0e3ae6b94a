"""Caption-length buckets: every caption reaches the DiT's blocks at one of a few lengths, so compiled (and fp8)
graphs can be static per bucket instead of one per caption length (or one slower dynamic graph).

Two facts of diffusers' Z-Image transformer (diffusers 0.42, transformer_z_image.py) decide how:

1. `patchify_and_embed` pads each caption to a multiple of 32 (`_pad_with_ids`, SEQ_MULTI_OF); the padding rows
   become the learned `cap_pad_token` (`_prepare_sequence`) and they ARE attended: with one caption length in the
   batch the key mask is None. Their RoPE positions continue the caption's (1 .. Lp on the first axis).
2. The image tokens' first RoPE axis starts right after the PADDED caption: `pos_start=(cap_len + 1, 0, 0)` with
   `cap_len` the 32-aligned length Lp. Padding further therefore moves every image position: a key mask alone
   does not reproduce the output.

So a bucket of B >= Lp rows is made in the transformer's own forward, by a thin wrapper around its
`patchify_and_embed` (an instance attribute: diffusers' method runs first, on the real caption): the caption keeps
its Lp rows, positions and pad mask exactly as diffusers made them (so do the image's positions, which start at
Lp + 1), and B - Lp extra rows are appended, marked as padding (they become `cap_pad_token`) at position (0, 0, 0).
Forward pre-hooks (documented PyTorch hooks) on the caption refiner and on the joint blocks replace their key mask
by one that hides the extra rows; every real query then sees exactly the keys it sees without the bucket, the
extra rows' own outputs are never read (the final layer keeps only image tokens). Nothing of the transformer is
copied. The hooks are registered with prepend=True: any other mask hook (engine.generate's caption weights) sees
the bucket's boolean mask, in which the conditional caption's keys end at mask.sum() as without the bucket.

Equal, not bit-identical: the image equals the unbucketed one within float rounding (tests/test_buckets.py states
the tolerance), but a key mask changes how attention reduces (and on CUDA which kernel sdpa picks: flash takes no
mask), so bf16 and even fp32 eager images are not bit-identical to the unbucketed ones. Buckets therefore apply
only to the fast mode (ModelSpec.fast), never to the default path, which stays diffusers' own bit for bit.

Bucket lengths: 32 · 2^k and 96 · 2^k (32, 64, 96, 128, 192, 256, 384, 512, 768, 1024 for Z-Image-Turbo) below
the caption budget, and the budget itself (1504): all multiples of 32, as diffusers' own lengths are. A caption's
bucket holds at most 1.5× its 32-aligned length (past 1024: the budget), and a sweep over any caption lengths
builds at most len(bucket_lengths(budget)) caption shapes (11 for Z-Image-Turbo).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SEQ_MULTI_OF = 32  # diffusers' Z-Image pads captions and image tokens to a multiple of 32


def bucket_lengths(budget: int) -> list[int]:
    """The bucket lengths for a DiT whose caption budget is `budget` rows (a multiple of 32)."""
    out = set()
    for base in (32, 96):
        length = base
        while length < budget:
            out.add(length)
            length *= 2
    top = budget + (-budget) % SEQ_MULTI_OF
    out.add(top)
    return sorted(x for x in out if x <= top)


def bucket_for(length: int, budget: int, lengths: list[int] | None = None) -> int:
    """The bucket of a caption of `length` rows: the smallest bucket length >= its 32-aligned length."""
    aligned = length + (-length) % SEQ_MULTI_OF
    for b in lengths or bucket_lengths(budget):
        if b >= aligned:
            return b
    raise ValueError(f"a caption of {length} rows is over the budget of {budget}")


@dataclass
class BucketState:
    """What the current forward's hooks apply, and what the buckets have done in this process."""

    refiner_mask: torch.Tensor | None = None  # [batch, B] bool: the caption refiner's keys (True: attend)
    joint_mask: torch.Tensor | None = None  # [batch, image + B] bool: the joint blocks' keys
    last: int | None = None  # the bucket length of the last forward
    used: dict[int, int] = field(default_factory=dict)  # bucket length -> DiT forwards at it


class CaptionBuckets:
    """Caption-length buckets installed on one Z-Image transformer (module docstring). `remove()` undoes it."""

    def __init__(self, transformer, budget: int, lengths: list[int] | None = None):
        self.transformer = transformer
        self.budget = int(budget)
        self.lengths = sorted(lengths) if lengths else bucket_lengths(self.budget)  # lengths: tests force a bucket
        if any(b % SEQ_MULTI_OF for b in self.lengths):
            raise ValueError(f"bucket lengths must be multiples of {SEQ_MULTI_OF}: {self.lengths}")
        self.state = BucketState()
        self._masks: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # the masks of one shape, reused each step
        self._original = transformer.patchify_and_embed  # the bound method diffusers defines
        transformer.patchify_and_embed = self._patchify_and_embed
        state = self.state

        def refiner_hook(module, args):
            if state.refiner_mask is None:
                return None
            return (args[0], state.refiner_mask, *args[2:])

        def joint_hook(module, args):
            if state.joint_mask is None:
                return None
            return (args[0], state.joint_mask, *args[2:])

        self._handles = [layer.register_forward_pre_hook(refiner_hook, prepend=True)
                         for layer in transformer.context_refiner]
        self._handles += [layer.register_forward_pre_hook(joint_hook, prepend=True) for layer in transformer.layers]

    def bucket(self, length: int) -> int:
        """The bucket of a caption of `length` rows."""
        return bucket_for(length, self.budget, self.lengths)

    def _patchify_and_embed(self, all_image, all_cap_feats, patch_size, f_patch_size):
        (img_out, cap_out, img_size, img_pos_ids, cap_pos_ids, img_pad_mask,
         cap_pad_mask) = self._original(all_image, all_cap_feats, patch_size, f_patch_size)
        padded = [len(c) for c in cap_out]  # Lp of each item (diffusers' 32-aligned length)
        bucket = bucket_for(max(len(c) for c in all_cap_feats), self.budget, self.lengths)
        device = cap_out[0].device
        for i, lp in enumerate(padded):
            extra = bucket - lp
            if extra == 0:
                cap_pos_ids[i] = cap_pos_ids[i][:lp]
                continue
            # rows become cap_pad_token (pad mask True); their position (0, 0, 0) is diffusers' own pad position
            cap_out[i] = torch.cat([cap_out[i], cap_out[i][-1:].expand(extra, -1)])
            cap_pos_ids[i] = torch.cat([cap_pos_ids[i][:lp], cap_pos_ids[i].new_zeros(extra, cap_pos_ids[i].shape[1])])
            cap_pad_mask[i] = torch.cat([cap_pad_mask[i], cap_pad_mask[i].new_ones(extra)])
        image_lens = [len(x) for x in img_out]
        if len(set(image_lens)) != 1:  # pragma: no cover - one pipeline call has one image size
            raise ValueError("caption buckets need one image size per DiT call")
        key = (bucket, image_lens[0], tuple(padded), str(device))
        masks = self._masks.get(key)
        if masks is None:  # built on the device from Python ints: no host-to-device copy, no sync (every step)
            refiner, joint = torch.arange(bucket, device=device), torch.arange(image_lens[0] + bucket, device=device)
            masks = (torch.stack([refiner < lp for lp in padded]),
                     torch.stack([joint < image_lens[0] + lp for lp in padded]))
            if len(self._masks) >= 64:
                self._masks.clear()
            self._masks[key] = masks
        self.state.refiner_mask, self.state.joint_mask = masks
        self.state.last = bucket
        self.state.used[bucket] = self.state.used.get(bucket, 0) + 1
        return img_out, cap_out, img_size, img_pos_ids, cap_pos_ids, img_pad_mask, cap_pad_mask

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.transformer.__dict__.get("patchify_and_embed") == self._patchify_and_embed:
            del self.transformer.__dict__["patchify_and_embed"]
        self.state.refiner_mask = self.state.joint_mask = None


def install(transformer, budget: int, lengths: list[int] | None = None) -> CaptionBuckets:
    """Caption buckets on `transformer` (idempotent: an installed instance is returned as is)."""
    current = getattr(transformer, "_vlbench_buckets", None)
    if current is not None:
        return current
    buckets = CaptionBuckets(transformer, budget, lengths)
    transformer._vlbench_buckets = buckets
    return buckets


def uninstall(transformer) -> None:
    buckets = getattr(transformer, "_vlbench_buckets", None)
    if buckets is not None:
        buckets.remove()
        del transformer._vlbench_buckets
