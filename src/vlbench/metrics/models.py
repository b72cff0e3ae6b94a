"""The metric models, loaded by hub id or local directory, and the embeddings each metric compares.

Every transformers model and processor is loaded with its own Auto class; the formulas are the ones the
models' own `forward` uses: SigLIP's logit is `exp(logit_scale) * cos + logit_bias` as in
`SiglipModel.forward` (the text lowercased, as SigLIP 2 was trained), CLIP and PickScore compare the
projected `image_embeds` / `text_embeds` (PickScore scaled by its `logit_scale.exp()`, as its model card
does), DINOv2 its `pooler_output` (the layer-normed CLS token), DINO ViT-S/16 its last layer's CLS token
after the final LayerNorm with DreamBench's preprocessing (`dino_processor`). VGG-19 Gram matrices are in
`vlbench.metrics.style`, the Qwen3-VL judge in `vlbench.metrics.vqa`. Embeddings come back as float32 on
the CPU; comparisons run in float32.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from vlbench.engine.models import VLModel, _check_not_file, _load_error
from vlbench.errors import UserError
from vlbench.metrics import DEFAULT_MODELS, imagereward_problem
from vlbench.metrics.style import load_vgg

# SigLIP was trained on lowercased text padded to 64 tokens; its text tower pools the last position, so
# the padding must be exactly this (transformers' docs: padding="max_length", max_length=64).
SIGLIP_TEXT_LENGTH = 64
MODEL_TYPES = {"siglip": ("siglip", "siglip2"), "clip": ("clip",), "pickscore": ("clip",), "dino": ("vit",),
               "dinov2": ("dinov2", "dinov2_with_registers"), "vqa": ("qwen3_vl", "qwen3_vl_moe")}
# DreamBench's DINO preprocessing (the DINO authors' evaluation transform): shorter side to 256, bicubic,
# centre crop 224, ImageNet mean/std. The hub repo's own preprocessor (resize to 224×224) is NOT used.
DINO_RESIZE, DINO_CROP = 256, 224


def dino_processor():
    """The image processor of the `dino` metric, whatever checkpoint it runs (the protocol fixes it)."""
    from transformers import BitImageProcessor
    from transformers.image_utils import PILImageResampling

    return BitImageProcessor(do_resize=True, size={"shortest_edge": DINO_RESIZE}, resample=PILImageResampling.BICUBIC,
                             do_center_crop=True, crop_size={"height": DINO_CROP, "width": DINO_CROP},
                             do_rescale=True, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
                             image_std=[0.229, 0.224, 0.225], do_convert_rgb=True)


@dataclass
class Loaded:
    family: str
    source: str
    model: Any
    processor: Any


def load_family(family: str, source: str, device: torch.device, dtype: torch.dtype,
                sources: dict[str, str] | None = None) -> Loaded:
    """One metric model and its processor, as a user's from_pretrained would load them."""
    if family == "imagereward":
        return _load_imagereward(source, device)

    flag = family  # the option that names this family's model (--siglip, --pickscore, …)
    if family == "vgg":
        _check_not_file(flag, source)
        try:
            return Loaded(family, source, load_vgg(source, device, dtype), None)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise _load_error(flag, source, exc) from exc
    from transformers import AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor

    _check_not_file(flag, source)
    processor_source = (sources or DEFAULT_MODELS).get("pickscore_processor", DEFAULT_MODELS["pickscore_processor"]) \
        if family == "pickscore" else source
    try:
        if family == "dino":
            from transformers import ViTModel

            processor = dino_processor()
            model = ViTModel.from_pretrained(source, dtype=dtype, add_pooling_layer=False)
        elif family == "vqa":
            processor = AutoProcessor.from_pretrained(source)
            model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
        else:
            # DINOv2 has no text side: its "processor" is the image processor.
            processor = (AutoImageProcessor if family == "dinov2" else AutoProcessor).from_pretrained(processor_source)
            model = AutoModel.from_pretrained(source, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        failed = "pickscore_processor" if processor_source != source else flag
        raise _load_error(failed, processor_source if failed != flag else source, exc) from exc
    model_type = str(model.config.model_type)
    if model_type not in MODEL_TYPES[family]:
        raise UserError(f"is a {model_type} model; it needs a {' or '.join(MODEL_TYPES[family])} model", field=flag,
                        value=source, fix=f"the default is {DEFAULT_MODELS[family]}")
    model.to(device).eval()
    if family == "vqa":
        return Loaded(family, source, VLModel(model, processor, source, device, dtype), processor)
    return Loaded(family, source, model, processor)


def _load_imagereward(source: str, device: torch.device) -> Loaded:
    problem = imagereward_problem()
    if problem:
        raise UserError(problem, field="metrics", value="imagereward")
    import ImageReward as RM  # the optional extra; its checkpoint is a pickle, loaded only when asked

    model = RM.load(source, device=str(device))
    model.eval()
    return Loaded("imagereward", source, model, None)


class MetricModels:
    """Each family's model loaded on first use, once; `load_seconds` records each.

    `shared` maps a family to a function returning a model that is already loaded elsewhere — `vlbench run`
    passes its own Qwen3-VL as the "vqa" judge, so VQAScore costs no extra model. It is used only when
    its source is the one asked for (`shared_sources`)."""

    def __init__(self, sources: dict[str, str] | None = None, device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.float32, on_status: Callable[[str], None] | None = None,
                 shared: dict[str, Callable[[], Any]] | None = None, shared_sources: dict[str, str] | None = None,
                 judge_dtype: torch.dtype | None = None):
        self.sources = {**DEFAULT_MODELS, **{k: v for k, v in (sources or {}).items() if v}}
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype
        # The Qwen3-VL judge is 4B parameters: bf16 on a GPU (as vlbench runs it) unless told otherwise.
        self.judge_dtype = judge_dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.on_status = on_status
        self.load_seconds: dict[str, float] = {}
        self._loaded: dict[str, Loaded] = {}
        self._shared = {f: fn for f, fn in (shared or {}).items()
                        if (shared_sources or {}).get(f) == self.sources.get(f)}

    def __getitem__(self, family: str) -> Loaded:
        if family in self._shared:  # the owner's placement policy may move it: ask every time
            model = self._shared[family]()
            return Loaded(family, self.sources[family], model, getattr(model, "processor", None))
        if family not in self._loaded:
            if self.on_status:
                self.on_status(f"loading {family} metric model from {self.sources[family]}")
            start = time.perf_counter()
            dtype = self.judge_dtype if family == "vqa" else self.dtype
            self._loaded[family] = load_family(family, self.sources[family], self.device, dtype, self.sources)
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


def prompt_text(family: str, text: str) -> str:
    """The text a model reads for a prompt: SigLIP 2 was trained on lowercased text (its model card and
    transformers' docs: lowercase the labels); CLIP and PickScore read it as written."""
    return text.lower() if family == "siglip" else text


def text_inputs(loaded: Loaded, texts: list[str]) -> dict:
    """The processor's text inputs: SigLIP lowercased and padded to exactly 64 tokens; CLIP and PickScore
    padded to the batch; all truncated at the model's text length (64, 77)."""
    texts = [prompt_text(loaded.family, t) for t in texts]
    if loaded.family == "siglip":
        return loaded.processor(text=texts, padding="max_length", max_length=SIGLIP_TEXT_LENGTH, truncation=True,
                                return_tensors="pt")
    if loaded.family in ("clip", "pickscore"):
        limit = loaded.model.config.text_config.max_position_embeddings  # 77
        return loaded.processor(text=texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    raise ValueError(f"{loaded.family} has no text side")


def text_limit(loaded: Loaded) -> int:
    return SIGLIP_TEXT_LENGTH if loaded.family == "siglip" else loaded.model.config.text_config.max_position_embeddings


def truncated(loaded: Loaded, texts: list[str]) -> list[str]:
    """The texts longer than the model reads (they are scored on their first tokens only)."""
    tokenizer = loaded.processor.tokenizer
    limit = text_limit(loaded)
    ids = tokenizer([prompt_text(loaded.family, t) for t in texts])["input_ids"]
    return [t for t, row in zip(texts, ids) if len(row) > limit]


@torch.inference_mode()
def text_embeds(loaded: Loaded, texts: list[str]) -> torch.Tensor:
    """SigLIP / CLIP / PickScore text embeddings (the towers' pooler_output after any projection) -> [B, E]."""
    out = loaded.model.get_text_features(**_to(text_inputs(loaded, texts), loaded))
    return out.pooler_output.float().cpu()


@torch.inference_mode()
def image_embeds(loaded: Loaded, images: list) -> torch.Tensor:
    """SigLIP / CLIP / PickScore projected image embeddings; DINOv2's pooler_output (layer-normed CLS token);
    DINO's last-layer CLS token after the final LayerNorm (`last_hidden_state[:, 0]`) -> [B, E]."""
    inputs = _to(loaded.processor(images=images, return_tensors="pt"), loaded)
    if loaded.family == "dinov2":
        return loaded.model(**inputs).pooler_output.float().cpu()
    if loaded.family == "dino":
        return loaded.model(**inputs).last_hidden_state[:, 0].float().cpu()
    return loaded.model.get_image_features(**inputs).pooler_output.float().cpu()


# ---- comparisons ----
def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of a [B, E] and b [B, E] -> float32 [B]."""
    a, b = a.float(), b.float()
    return (a / a.norm(dim=-1, keepdim=True) * (b / b.norm(dim=-1, keepdim=True))).sum(-1)


def siglip_logit(loaded: Loaded, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """SigLIP's own logit that each text describes its image: exp(logit_scale)·cos + logit_bias -> float32 [B].
    Averages and statistics are taken over this logit; its sigmoid is the probability (`siglip_p`)."""
    scale = loaded.model.logit_scale.detach().float().cpu().exp()
    bias = loaded.model.logit_bias.detach().float().cpu()
    return cosine(image, text) * scale + bias


def pickscore(loaded: Loaded, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """PickScore: exp(logit_scale)·cos of the projected image and text embeddings -> float32 [B]."""
    return cosine(image, text) * loaded.model.logit_scale.detach().float().cpu().exp()


@torch.inference_mode()
def imagereward_scores(loaded: Loaded, prompt: str, paths: list[str]) -> list[float]:
    """ImageReward's reward of each image for one prompt."""
    value = loaded.model.score(prompt, list(paths))
    values = value if isinstance(value, (list, tuple)) else [value]
    return [float(v) for v in values]
