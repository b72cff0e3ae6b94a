"""Image metrics of a run's outputs: prompt adherence (SigLIP 2, CLIP-T), reference similarity (CLIP-I,
DINOv2) and, as an optional extra, ImageReward.

This module is the metrics' vocabulary only (names, default model ids, parsing), standard library
only, so the report, the store and the workbench can name metrics without importing torch. The
computations are in `vlbench.metrics.models`; the scoring pass over a run folder in
`vlbench.metrics.score`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlbench.errors import UserError


@dataclass(frozen=True)
class Metric:
    name: str
    family: str  # which loaded model computes it: siglip | clip | dino | imagereward
    kind: str  # "adherence" (image vs prompt) | "similarity" (image vs reference) | "preference"
    label: str  # a short column heading
    description: str


METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("siglip", "siglip", "adherence", "SigLIP",
           "SigLIP 2 image-text probability: sigmoid(exp(logit_scale)·cos + logit_bias), text padded to 64 tokens"),
    Metric("clip_t", "clip", "adherence", "CLIP-T", "CLIP image-text cosine of the projected embeddings"),
    Metric("clip_i", "clip", "similarity", "CLIP-I", "CLIP image-image cosine between output and reference"),
    Metric("dino", "dino", "similarity", "DINOv2",
           "DINOv2 image-image cosine of pooler_output (the layer-normed CLS token), output vs reference"),
    Metric("imagereward", "imagereward", "preference", "ImageReward",
           "ImageReward-v1.0 human-preference reward of the output for the prompt (optional extra)"),
]}
DEFAULT_METRICS = ("siglip", "clip_t", "clip_i", "dino")

# Hub ids (or local directories) of each family's model; --siglip / --clip / --dino override them.
DEFAULT_MODELS = {
    "siglip": "google/siglip2-base-patch16-224",
    "clip": "openai/clip-vit-large-patch14",
    "dino": "facebook/dinov2-base",
    "imagereward": "ImageReward-v1.0",
}
FAMILY_FLAGS = {"siglip": "--siglip", "clip": "--clip", "dino": "--dino", "imagereward": "--metrics imagereward"}

IMAGEREWARD_INSTALL = "pip install 'vlbench[imagereward]'"


def parse_metrics(text: str | None, flag: str = "--metrics") -> tuple[str, ...]:
    """'siglip,clip_t' -> ('siglip', 'clip_t'); None -> the defaults; unknown names are a one-line error."""
    if text is None:
        return DEFAULT_METRICS
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"{flag}: give metric names separated by commas, e.g. {','.join(DEFAULT_METRICS)}")
    for name in names:
        if name not in METRICS:
            raise UserError(f"{flag} {text}: unknown metric {name!r}; choose from {', '.join(METRICS)}")
    return tuple(dict.fromkeys(names))


def check_available(metrics: tuple[str, ...]) -> None:
    """Refuse, before any model loads, a metric whose optional package is missing."""
    if "imagereward" in metrics:
        import importlib.util

        if importlib.util.find_spec("ImageReward") is None:
            raise UserError(f"--metrics imagereward: the ImageReward package is not installed; {IMAGEREWARD_INSTALL}")


def format_value(value) -> str:
    """How a metric value is shown in tables: 3 significant digits (SigLIP probabilities can be small)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "—"
    return f"{value:.3g}" if abs(value) < 0.01 and value != 0 else f"{value:.3f}"
