"""The metric models, loaded by hub id or local directory, and the embeddings each metric compares.

Every model and processor is transformers' own class (AutoModel, AutoProcessor), preprocessing is the
processor's, and the formulas are the ones the models' own `forward` uses: SigLIP's probability is
`sigmoid(exp(logit_scale) * cos + logit_bias)` as in `SiglipModel.forward`, CLIP compares the
projected `image_embeds` / `text_embeds`, DINOv2 its `pooler_output` (the layer-normed CLS token).
Embeddings come back as float32 on the CPU; comparisons run in float32.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from vlbench.errors import UserError
from vlbench.metrics import DEFAULT_MODELS, FAMILY_FLAGS, IMAGEREWARD_INSTALL

# SigLIP was trained on text padded to 64 tokens; its text tower pools the last position, so the
# padding must be exactly this (transformers' docs: padding="max_length").
SIGLIP_TEXT_LENGTH = 64
MODEL_TYPES = {"siglip": ("siglip", "siglip2"), "clip": ("clip",), "dino": ("dinov2", "dinov2_with_registers")}


@dataclass
class Loaded:
    family: str
    source: str
    model: Any
    processor: Any


def load_family(family: str, source: str, device: torch.device, dtype: torch.dtype) -> Loaded:
    """One metric model and its processor, as a user's from_pretrained would load them."""
    if family == "imagereward":
        return _load_imagereward(source, device)
    from transformers import AutoImageProcessor, AutoModel, AutoProcessor

    from vlbench.engine.models import _check_not_file, _load_error

    flag = FAMILY_FLAGS[family]
    _check_not_file(flag, source)
    try:
        # DINOv2 has no text side: its "processor" is the image processor.
        processor = (AutoImageProcessor if family == "dino" else AutoProcessor).from_pretrained(source)
        model = AutoModel.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(flag, source, exc) from exc
    model_type = str(model.config.model_type)
    if model_type not in MODEL_TYPES[family]:
        raise UserError(f"{flag} {source}: is a {model_type} model; {flag} needs a "
                        f"{' or '.join(MODEL_TYPES[family])} model (default {DEFAULT_MODELS[family]})")
    model.to(device).eval()
    return Loaded(family, source, model, processor)


def _load_imagereward(source: str, device: torch.device) -> Loaded:
    try:
        import ImageReward as RM  # the optional extra; its checkpoint is a pickle, loaded only when asked
    except ImportError:
        raise UserError(f"--metrics imagereward: the ImageReward package is not installed; {IMAGEREWARD_INSTALL}") from None
    model = RM.load(source, device=str(device))
    model.eval()
    return Loaded("imagereward", source, model, None)


class MetricModels:
    """Each family's model loaded on first use, once; `load_seconds` records each load."""

    def __init__(self, sources: dict[str, str] | None = None, device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.float32, on_status: Callable[[str], None] | None = None):
        self.sources = {**DEFAULT_MODELS, **{k: v for k, v in (sources or {}).items() if v}}
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype
        self.on_status = on_status
        self.load_seconds: dict[str, float] = {}
        self._loaded: dict[str, Loaded] = {}

    def __getitem__(self, family: str) -> Loaded:
        if family not in self._loaded:
            if self.on_status:
                self.on_status(f"loading {family} metric model from {self.sources[family]}")
            start = time.perf_counter()
            self._loaded[family] = load_family(family, self.sources[family], self.device, self.dtype)
            self.load_seconds[family] = time.perf_counter() - start
        return self._loaded[family]


# ---- embeddings: batches of PIL images / texts -> float32 [B, E] on the CPU ----
def _to(inputs, loaded: Loaded) -> dict:
    out = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor):
            v = v.to(loaded.model.device)
            if v.is_floating_point():
                v = v.to(loaded.model.dtype)
        out[k] = v
    return out


def text_inputs(loaded: Loaded, texts: list[str]) -> dict:
    """The processor's text inputs: SigLIP padded to exactly 64 tokens, CLIP to the batch, both truncated."""
    if loaded.family == "siglip":
        return loaded.processor(text=texts, padding="max_length", max_length=SIGLIP_TEXT_LENGTH, truncation=True,
                                return_tensors="pt")
    if loaded.family == "clip":
        limit = loaded.model.config.text_config.max_position_embeddings  # 77
        return loaded.processor(text=texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    raise ValueError(f"{loaded.family} has no text side")


def text_limit(loaded: Loaded) -> int:
    return SIGLIP_TEXT_LENGTH if loaded.family == "siglip" else loaded.model.config.text_config.max_position_embeddings


def truncated(loaded: Loaded, texts: list[str]) -> list[str]:
    """The texts longer than the model reads (they are scored on their first tokens only)."""
    tokenizer = loaded.processor.tokenizer
    limit = text_limit(loaded)
    return [t for t, ids in zip(texts, tokenizer(texts)["input_ids"]) if len(ids) > limit]


@torch.inference_mode()
def text_embeds(loaded: Loaded, texts: list[str]) -> torch.Tensor:
    """SigLIP / CLIP text embeddings (the towers' pooler_output after any projection) -> [B, E]."""
    out = loaded.model.get_text_features(**_to(text_inputs(loaded, texts), loaded))
    return out.pooler_output.float().cpu()


@torch.inference_mode()
def image_embeds(loaded: Loaded, images: list) -> torch.Tensor:
    """SigLIP / CLIP image embeddings, or DINOv2's pooler_output (layer-normed CLS token) -> [B, E]."""
    inputs = _to(loaded.processor(images=images, return_tensors="pt"), loaded)
    if loaded.family == "dino":
        return loaded.model(**inputs).pooler_output.float().cpu()
    return loaded.model.get_image_features(**inputs).pooler_output.float().cpu()


# ---- comparisons ----
def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of a [B, E] and b [B, E] -> float32 [B]."""
    a, b = a.float(), b.float()
    return (a / a.norm(dim=-1, keepdim=True) * (b / b.norm(dim=-1, keepdim=True))).sum(-1)


def siglip_probability(loaded: Loaded, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """SigLIP's own probability that each text describes its image -> float32 [B] in (0, 1)."""
    scale = loaded.model.logit_scale.detach().float().cpu().exp()
    bias = loaded.model.logit_bias.detach().float().cpu()
    return torch.sigmoid(cosine(image, text) * scale + bias)


@torch.inference_mode()
def imagereward_scores(loaded: Loaded, prompt: str, paths: list[str]) -> list[float]:
    """ImageReward's reward of each image for one prompt."""
    value = loaded.model.score(prompt, list(paths))
    values = value if isinstance(value, (list, tuple)) else [value]
    return [float(v) for v in values]
