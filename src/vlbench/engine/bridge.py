"""The text bridge: Qwen3-VL describes the reference's style in words; Z-Image reads prompt + description.

The honest baseline for every zero-shot hidden-state recipe: the VL's knowledge of the reference reaches
Z-Image only through text, on Z-Image's own Qwen3-4B path. Qwen3-VL (the loaded
Qwen3VLForConditionalGeneration, its lm_head included) answers INSTRUCTION about the one reference with
transformers' `generate`, greedy (`do_sample=False`), at most MAX_NEW_TOKENS new tokens. The reference is read
as an extraction reads it (the same chat template and processor, the same pixel cap from the caption budget).
Every added token (special or not: <|im_end|>, <think>, …) is dropped from the generated ids before decoding,
so the description holds no token the Qwen3-4B template would read as structure; the rest is decoded with
`skip_special_tokens=True` and stripped of surrounding whitespace. Qwen3-4B then encodes
JOIN.format(prompt=prompt, description=description). docs/schedules.md states the same.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import torch

from vlbench.engine.extract import _to_device, prepare

INSTRUCTION = ("Describe the visual style of this image (medium, palette, lighting, texture, composition) in one "
               "sentence. Do not describe the subject.")
MAX_NEW_TOKENS = 60
JOIN = "{prompt}\n\nStyle: {description}"
FORMAT = "vlbench-text-bridge-1"


@dataclass
class Description:
    """What Qwen3-VL said about one reference, verbatim, with the input that produced it."""

    text: str  # the description as joined to the prompt
    generated_ids: list[int]  # every new token generate() returned, before any was dropped
    token_ids: list[int]  # the ids decoded into `text` (added tokens dropped)
    input_ids: list[int]  # the VL input (chat template + image pads + INSTRUCTION)
    instruction: str
    max_new_tokens: int
    image_sizes: list[tuple[int, int]]  # (width, height) the vision tower read
    reference_sha256: str

    def joined(self, prompt: str) -> str:
        return JOIN.format(prompt=prompt, description=self.text)

    def to_dict(self) -> dict:
        return {**asdict(self), "join": JOIN, "sampling": "greedy (do_sample=False)"}


def description_key(vl, sha256: str, budget: int) -> str:
    """The cache key: the VL model (source, config, chat template, dtype), the reference's bytes, the instruction,
    the token cap and the caption budget (which fixes the reference's resize)."""
    parts = {
        "format": FORMAT, "model": vl.source,
        "config": hashlib.sha256(vl.model.config.to_json_string().encode()).hexdigest(),
        "template": hashlib.sha256((vl.processor.chat_template or "").encode()).hexdigest(),
        "image": sha256, "instruction": INSTRUCTION, "max_new_tokens": MAX_NEW_TOKENS, "budget": budget,
        "dtype": str(vl.dtype),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@torch.inference_mode()
def describe(vl, image, sha256: str, budget: int) -> Description:
    """Qwen3-VL's greedy description of one reference's style (see the module docstring)."""
    prep = prepare(vl, [image], INSTRUCTION, budget)
    out = vl.model.generate(**_to_device(vl, prep.inputs), do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
    generated = out[0, prep.length:].tolist()
    tokenizer = vl.processor.tokenizer
    added = set(tokenizer.added_tokens_decoder)
    kept = [t for t in generated if t not in added]
    text = tokenizer.decode(kept, skip_special_tokens=True).strip()
    patch = vl.processor.image_processor.patch_size
    sizes = [(int(w) * patch, int(h) * patch) for (_, h, w) in prep.inputs["image_grid_thw"].tolist()]
    return Description(text=text, generated_ids=generated, token_ids=kept, input_ids=prep.input_ids,
                       instruction=INSTRUCTION, max_new_tokens=MAX_NEW_TOKENS, image_sizes=sizes,
                       reference_sha256=sha256)


def from_dict(data: dict) -> Description:
    fields = {k: data[k] for k in Description.__dataclass_fields__}
    fields["image_sizes"] = [tuple(s) for s in fields["image_sizes"]]
    return Description(**fields)
