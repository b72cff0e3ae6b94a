"""Z-Image's own text path: Qwen3-4B through `ZImagePipeline.encode_prompt`, called as is.

Calling the pipeline's method (rather than re-implementing its template, padding and layer)
keeps `alpha = 0` identical to `ZImagePipeline(prompt=...)`. We only add the check that the
prompt is not silently truncated at `max_sequence_length`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlbench.engine.extract import check_special_tokens, check_text
from vlbench.engine.precheck import QWEN3, check_text_bound, max_token_chars
from vlbench.errors import UserError

MAX_SEQUENCE_LENGTH = 512  # ZImagePipeline's default


@dataclass
class TextEncoding:
    embeds: torch.Tensor  # [L, D], padding rows dropped
    input_ids: list[int]
    decoded: str


def template_ids(tokenizer, prompt: str) -> tuple[list[int], str]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    return tokenizer(text)["input_ids"], text


@torch.inference_mode()
def encode_text(pipe, prompt: str, field: str = "prompt") -> TextEncoding:
    """Qwen3-4B hidden_states[-2] of the prompt in Z-Image's chat template, exactly as Z-Image encodes it."""
    check_text_bound(prompt, field, MAX_SEQUENCE_LENGTH, max_token_chars(pipe.tokenizer), QWEN3)  # before reading it
    check_text(prompt, field)
    check_special_tokens(pipe.tokenizer, prompt, field, "Qwen3-4B (Z-Image's text encoder)")
    ids, text = template_ids(pipe.tokenizer, prompt)
    if len(ids) > MAX_SEQUENCE_LENGTH:
        raise UserError(f"{len(ids)} tokens in Z-Image's template, over its {MAX_SEQUENCE_LENGTH}-token text limit "
                        "(it would be cut silently)", field=field, fix="shorten it")
    embeds, _ = pipe.encode_prompt(prompt, device=pipe._execution_device, do_classifier_free_guidance=False,
                                   max_sequence_length=MAX_SEQUENCE_LENGTH)
    return TextEncoding(embeds=embeds[0], input_ids=ids, decoded=text)
