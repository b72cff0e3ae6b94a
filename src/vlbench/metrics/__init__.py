"""Image metrics of a run's outputs, each following its published protocol (docs/metrics.md has one row per
metric: model id, preprocessing, prompt template, aggregation).

- prompt adherence: SigLIP 2 (logit and probability, lowercased text), CLIP-T, VQAScore (Qwen3-VL's P("Yes"))
- reference similarity: CLIP-I and DINO ViT-S/16 (DreamBench's), DINOv2 as an extra
- style vs content: Gram-matrix style similarity of VGG-19, content leakage judged by Qwen3-VL
- human preference: PickScore; ImageReward as an optional extra

This module is the metrics' vocabulary only (names, default model ids, parsing), standard library
only, so the report, the store, `vlbench.analysis.stats` and the workbench can name metrics without importing
torch. The computations are in `vlbench.metrics.models` (and `vqa`, `style`); the scoring pass over a
run folder in `vlbench.metrics.score`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from vlbench.errors import UserError


@dataclass(frozen=True)
class Metric:
    name: str
    family: str  # which loaded model computes it: siglip | clip | dino | dinov2 | vgg | vqa | pickscore | imagereward
    kind: str  # "adherence" (image vs prompt) | "similarity" | "style" | "leakage" (image vs reference) | "preference"
    label: str  # a short column heading
    description: str
    higher_is_better: bool = True
    # The protocol's version: a value recorded under another version is recomputed, never shown under this name.
    protocol: str = "1"

    @property
    def needs_reference(self) -> bool:
        return self.kind in ("similarity", "style", "leakage")


VQA_QUESTION = 'Does this figure show "{}"? Please answer yes or no.'  # VQAScore's template (Lin et al. 2024)
LEAK_QUESTION = ("Ignore colours, textures and artistic style. Do the first and the second image show the same "
                 "subject? Please answer yes or no.")
VQA_ANSWER = "Yes"

METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("siglip", "siglip", "adherence", "SigLIP",
           "SigLIP 2 image-text logit exp(logit_scale)·cos + logit_bias, prompt lowercased, padded to 64 tokens",
           protocol="2"),
    Metric("siglip_p", "siglip", "adherence", "SigLIP p",
           "sigmoid of the SigLIP 2 logit: the model's probability that the prompt describes the image",
           protocol="2"),
    Metric("clip_t", "clip", "adherence", "CLIP-T", "CLIP image-text cosine of the projected embeddings"),
    Metric("vqascore", "vqa", "adherence", "VQAScore",
           f"Qwen3-VL's probability of {VQA_ANSWER!r} to {VQA_QUESTION.format('{prompt}')!r}"),
    Metric("clip_i", "clip", "similarity", "CLIP-I", "CLIP image-image cosine between output and reference"),
    Metric("dino", "dino", "similarity", "DINO",
           "DINO ViT-S/16 image-image cosine of the CLS token (DreamBench), output vs reference", protocol="2"),
    Metric("dinov2", "dinov2", "similarity", "DINOv2",
           "DINOv2 image-image cosine of pooler_output (the layer-normed CLS token), output vs reference (extra)"),
    Metric("style_gram", "vgg", "style", "Style (VGG Gram)",
           "mean over VGG-19 relu1_1…relu5_1 of the cosine of the Gram matrices of output and reference"),
    Metric("content_leak", "vqa", "leakage", "Content leak",
           "Qwen3-VL's probability of 'Yes' when asked whether reference and output show the same subject, "
           "style aside (lower: less of the reference's content copied)", higher_is_better=False),
    Metric("pickscore", "pickscore", "preference", "PickScore",
           "PickScore v1 human-preference score: exp(logit_scale)·cos of its CLIP-H image and text embeddings"),
    Metric("imagereward", "imagereward", "preference", "ImageReward",
           "ImageReward-v1.0 human-preference reward of the output for the prompt (optional extra)"),
]}
# Every metric of the published protocols; dinov2 and imagereward are extras, asked for by name.
DEFAULT_METRICS = ("siglip", "siglip_p", "clip_t", "vqascore", "clip_i", "dino", "style_gram", "content_leak",
                   "pickscore")

# Hub ids (or local directories) of each family's model; the options named as in SOURCE_FLAGS override them.
DEFAULT_MODELS = {
    "siglip": "google/siglip2-base-patch16-224",
    "clip": "openai/clip-vit-large-patch14",
    "dino": "facebook/dino-vits16",
    "dinov2": "facebook/dinov2-base",
    "vgg": "timm/vgg19.tv_in1k",
    "vqa": "Qwen/Qwen3-VL-4B-Instruct",
    "pickscore": "yuvalkirstain/PickScore_v1",
    "pickscore_processor": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "imagereward": "ImageReward-v1.0",
}
# The families a user can point at another model, by name (the flag --pickscore-processor sets pickscore_processor).
SOURCE_FLAGS = ("siglip", "clip", "dino", "dinov2", "vgg", "vqa", "pickscore", "pickscore_processor")

IMAGEREWARD_INSTALL = "pip install 'vlbench[imagereward]'"


def parse_metrics(text: str | None, field: str = "metrics") -> tuple[str, ...]:
    """'siglip,clip_t' -> ('siglip', 'clip_t'); None -> the defaults; unknown names are a one-line error."""
    if text is None:
        return DEFAULT_METRICS
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError("give metric names separated by commas", field=field, fix=f"e.g. {','.join(DEFAULT_METRICS)}")
    for name in names:
        if name not in METRICS:
            raise UserError(f"unknown metric {name!r}", field=field, value=text, fix=f"choose from {', '.join(METRICS)}")
    return tuple(dict.fromkeys(names))


def families(metrics: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(METRICS[m].family for m in metrics))


def imagereward_problem() -> str | None:
    """Why ImageReward cannot be used here (None when it imports). Importing it is the only honest check:
    image-reward 1.5 is often installed yet unimportable (it needs transformers < 5 and OpenAI's `clip`)."""
    if importlib.util.find_spec("ImageReward") is None:
        return f"the ImageReward package is not installed; {IMAGEREWARD_INSTALL}"
    try:
        import ImageReward  # noqa: F401
    except Exception as exc:  # noqa: BLE001 — any failure inside the package's import is the answer
        import transformers

        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return (f"the ImageReward package is installed but cannot be imported ({exc.__class__.__name__}: {reason}); "
                f"image-reward 1.5 was written for transformers 4 (this environment has {transformers.__version__}) "
                "and imports OpenAI's `clip` package: install it in a separate environment, or use pickscore")
    return None


def check_available(metrics: tuple[str, ...]) -> None:
    """Refuse, before any model loads, a metric whose optional package is missing or cannot be imported."""
    if "imagereward" in metrics:
        problem = imagereward_problem()
        if problem:
            raise UserError(problem, field="metrics", value="imagereward")


def format_value(value) -> str:
    """How a metric value is shown in tables: 3 significant digits (probabilities can be small)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "—"
    return f"{value:.3g}" if abs(value) < 0.01 and value != 0 else f"{value:.3f}"
