"""VQAScore and content leakage with the Qwen3-VL that vlbench already loads: the model's probability of
answering "Yes" to a yes/no question about one or two images.

VQAScore (Lin et al. 2024, "Evaluating Text-to-Visual Generation with Image-to-Text Generation"): the
question is `Does this figure show "{prompt}"? Please answer yes or no.`, rendered by the model's own
chat template with the generation prompt (`<|im_start|>assistant\\n`), and the score is the probability
of the answer "Yes" — as the authors' t2v_metrics does for Qwen-VL models: the softmax over the whole
vocabulary of the next-token logits, read at `tokenizer.encode("Yes")[0]` ("Yes" without a leading
space: it follows a newline). The full model runs (its LM head is needed), with `logits_to_keep`
so only the answer positions are projected onto the 151k-token vocabulary. An answer of several
tokens (only the tiny test tokenizer splits "Yes") scores exp(mean log p) over its tokens, teacher-forced,
as t2v_metrics' CLIP-FlanT5 path does.

Items of a batch are padded on the right (`vlbench.engine.extract.collate`): each keeps the positions of
its own unbatched forward. Each image is capped at VQA_IMAGE_TOKENS tokens by the processor's own smart
resize (aspect ratio kept; smaller images untouched).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlbench.engine.extract import _messages, _to_device, collate, fit_size
from vlbench.metrics import LEAK_QUESTION, VQA_ANSWER, VQA_QUESTION

VQA_IMAGE_TOKENS = 1024  # a 1024² image: what Z-Image outputs at its default size, uncapped


@dataclass
class _Item:
    inputs: dict
    input_ids: list[int]

    @property
    def length(self) -> int:
        return len(self.input_ids)


def answer_ids(processor, answer: str = VQA_ANSWER) -> list[int]:
    """The answer's token ids as the model would write them right after `<|im_start|>assistant\\n`."""
    return processor.tokenizer.encode(answer, add_special_tokens=False)


def vqa_question(prompt: str) -> str:
    return VQA_QUESTION.format(prompt)


def prepare(processor, images: list, question: str, answer: list[int],
            image_tokens: int = VQA_IMAGE_TOKENS) -> _Item:
    """The processor's inputs for (images, question) + the answer tokens appended (batch of 1, CPU)."""
    rendered = processor.apply_chat_template(_messages(len(images), question), add_generation_prompt=True,
                                             tokenize=False)
    kwargs = {}
    if images:
        kwargs["images"] = images
        size = fit_size(processor.image_processor, [img.size for img in images], image_tokens * len(images))
        if size is not None:
            kwargs["size"] = size
    inputs = dict(processor(text=[rendered], return_tensors="pt", **kwargs))
    extra = torch.tensor([answer], dtype=inputs["input_ids"].dtype)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(extra)], dim=1)
    if "mm_token_type_ids" in inputs:
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(extra)], dim=1)
    return _Item(inputs, inputs["input_ids"][0].tolist())


@torch.inference_mode()
def answer_probability(vl, batch: list[tuple[list, str]], answer: str = VQA_ANSWER,
                       image_tokens: int = VQA_IMAGE_TOKENS) -> list[float]:
    """P(answer | images, question) for each (images, question) of `batch`, in one forward of the full model.

    `vl` is a loaded Qwen3-VL (`VLModel`: `.model` a Qwen3VLForConditionalGeneration, `.processor`)."""
    if not batch:
        return []
    ids = answer_ids(vl.processor, answer)
    items = [prepare(vl.processor, images, question, ids, image_tokens) for images, question in batch]
    inputs = items[0].inputs if len(items) == 1 else collate(vl, items)
    a = len(ids)
    # position t's logits predict token t + 1: the answer's tokens are predicted from the A positions before them
    keep = torch.tensor([[it.length - a - 1 + j for j in range(a)] for it in items], device=vl.device)
    out = vl.model.model(**_to_device(vl, inputs), use_cache=False, return_dict=True)  # the base model: hidden states
    rows = out.last_hidden_state[torch.arange(len(items), device=vl.device)[:, None], keep]  # [B, A, D], items right-padded
    logits = vl.model.lm_head(rows)  # the vocabulary only where an answer token is predicted
    logp = torch.log_softmax(logits.float(), dim=-1)  # [B, A, V]
    target = torch.tensor(ids, device=logp.device).expand(len(items), a)
    return torch.exp(logp.gather(-1, target[..., None])[..., 0].mean(-1)).cpu().tolist()


def vqascore(vl, images: list, prompts: list[str], **kw) -> list[float]:
    """VQAScore of each output image for its prompt."""
    return answer_probability(vl, [([img], vqa_question(p)) for img, p in zip(images, prompts)], **kw)


def content_leak(vl, references: list, images: list, **kw) -> list[float]:
    """P("Yes") that reference (first image) and output (second) show the same subject, style aside."""
    return answer_probability(vl, [([ref, img], LEAK_QUESTION) for ref, img in zip(references, images)], **kw)
