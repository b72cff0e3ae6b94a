"""Caption-length buckets (engine/buckets.py, issue 28): the bucketed image equals the unbucketed one within a
stated tolerance on the tiny DiT, with its learned pad tokens made non-zero so that attended extra rows would show;
a key mask alone (image positions moved by the padding) does not; a 20-length sweep builds graphs per bucket.
"""

from __future__ import annotations

import pytest
import torch

from vlbench.engine import buckets as B

# Largest |difference| of a bucketed image (diffusers' output_type "pt", values in [0, 1]) from the unbucketed
# one, fp32 on the CPU. Measured: 0 (bit-identical) for captions whose padding is all bucket rows added to a
# 32-row caption, up to 1.8e-6 otherwise — float rounding of attention over more (masked) keys.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def pipe(tiny_dirs):
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(tiny_dirs.zimage, dtype=torch.float32).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(1)
    with torch.no_grad():  # the tiny DiT's pad tokens are zero: make them count, as trained ones do
        pipe.transformer.cap_pad_token.normal_()
        pipe.transformer.x_pad_token.normal_()
    return pipe


def budget(pipe) -> int:
    return int(pipe.transformer.config.axes_lens[0]) - B.SEQ_MULTI_OF


def image(pipe, embeds, negative=None, guidance=0.0, size=64, steps=2):
    with torch.inference_mode():
        out = pipe(prompt_embeds=[embeds], negative_prompt_embeds=None if negative is None else [negative],
                   guidance_scale=guidance, num_inference_steps=steps, width=size, height=size,
                   generator=torch.Generator("cpu").manual_seed(0), output_type="pt")
    return out.images


def caption(pipe, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(length, pipe.transformer.config.cap_feat_dim, generator=g)


def test_bucket_lengths_are_multiples_of_32_up_to_the_budget():
    assert B.bucket_lengths(1504) == [32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1504]
    assert B.bucket_lengths(224) == [32, 64, 96, 128, 192, 224]
    for length in range(1, 1505):
        bucket = B.bucket_for(length, 1504)
        aligned = length + (-length) % 32
        assert bucket % 32 == 0 and aligned <= bucket <= max(1.5 * aligned, 1504 if aligned > 1024 else 0)
    with pytest.raises(ValueError):
        B.bucket_for(1505, 1504)


@pytest.mark.parametrize("length", [5, 40, 150])
@pytest.mark.parametrize("guided", [False, True])
def test_a_bucketed_caption_gives_the_unbucketed_image(pipe, length, guided):
    embeds = caption(pipe, length)
    negative = caption(pipe, 11, seed=1) if guided else None
    guidance = 2.0 if guided else 0.0
    plain = image(pipe, embeds, negative, guidance)
    buckets = B.install(pipe.transformer, budget(pipe), lengths=[224])  # every caption padded to 224 rows
    try:
        bucketed = image(pipe, embeds, negative, guidance)
        assert buckets.state.last == 224
        assert buckets.state.joint_mask is not None and not bool(buckets.state.joint_mask.all())
    finally:
        B.uninstall(pipe.transformer)
    assert (bucketed - plain).abs().max().item() <= TOLERANCE
    assert image(pipe, embeds, negative, guidance).equal(plain)  # uninstalled: diffusers' own again


def test_a_key_mask_alone_does_not_reproduce_the_image(pipe):
    """The reason for the position fix: padding the caption to 224 rows before diffusers pads it moves the image
    tokens' first RoPE axis to 225; hiding the extra rows from attention is then not enough."""
    embeds = caption(pipe, 40)
    plain = image(pipe, embeds)

    class MaskOnly(B.CaptionBuckets):
        def _patchify_and_embed(self, all_image, all_cap_feats, patch_size, f_patch_size):
            real = [len(c) + (-len(c)) % 32 for c in all_cap_feats]
            padded = [torch.cat([c, c[-1:].expand(224 - len(c), -1)]) for c in all_cap_feats]
            out = self._original(all_image, padded, patch_size, f_patch_size)
            image_len = len(out[0][0])
            length = torch.tensor(real)[:, None]
            self.state.refiner_mask = torch.arange(224)[None, :] < length
            self.state.joint_mask = torch.arange(image_len + 224)[None, :] < image_len + length
            return out

    mask_only = MaskOnly(pipe.transformer, budget(pipe), lengths=[224])
    try:
        moved = image(pipe, embeds)
    finally:
        mask_only.remove()
    assert (moved - plain).abs().max().item() > 100 * TOLERANCE
    assert image(pipe, embeds).equal(plain)


def test_a_20_length_sweep_builds_graphs_per_bucket_not_per_length(tiny_dirs):
    """torch.compile with dynamo's eager backend (graphs are counted by dynamo whatever the backend): static
    graphs (dynamic=False) over 20 caption lengths. Per bucket: one caption-refiner graph and one joint-block
    graph; plus the image refiner's one."""
    import torch._dynamo
    from diffusers import ZImagePipeline
    from torch._dynamo.utils import counters

    pipe = ZImagePipeline.from_pretrained(tiny_dirs.zimage, dtype=torch.float32).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.reset()
    counters.clear()
    buckets = B.install(pipe.transformer, budget(pipe))
    try:
        pipe.transformer.compile_repeated_blocks(backend="eager", fullgraph=True, dynamic=False)
        lengths = [3 + 11 * i for i in range(20)]
        for length in lengths:
            image(pipe, caption(pipe, length), size=32, steps=1)
        graphs = int(counters["stats"]["unique_graphs"])
        used = set(buckets.state.used)
    finally:
        B.uninstall(pipe.transformer)
        torch._dynamo.config.recompile_limit = limit
        torch._dynamo.reset()
    assert used == {B.bucket_for(n, budget(pipe)) for n in lengths}
    assert len(used) <= len(B.bucket_lengths(budget(pipe))) < len(lengths)
    assert graphs <= 1 + 2 * len(used), (graphs, sorted(used))
