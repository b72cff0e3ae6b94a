"""Tiny random SigLIP, CLIP and DINOv2 models, built offline in the real hub layouts.

They load through the same AutoModel / AutoProcessor code as google/siglip2-base-patch16-224,
openai/clip-vit-large-patch14 and facebook/dinov2-base, so scoring runs end to end without a
download. Their weights are random: their scores mean nothing. Built into the tiny-model cache
beside the Qwen3-VL / Z-Image ones (`vlbench.engine.tiny`) and rebuilt when the recipe changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

TINY_METRICS_VERSION = "1"
IMAGE_SIZE = 32


@dataclass(frozen=True)
class TinyMetricModels:
    siglip: Path
    clip: Path
    dino: Path

    def sources(self) -> dict[str, str]:
        return {"siglip": str(self.siglip), "clip": str(self.clip), "dino": str(self.dino)}


def _stamp() -> str:
    import transformers

    return hashlib.sha256(f"{TINY_METRICS_VERSION}|{transformers.__version__}".encode()).hexdigest()[:16]


def ensure_tiny_metric_models(root: Path | None = None) -> TinyMetricModels:
    """The tiny metric model dirs, built if missing or stale (about a second on CPU)."""
    from vlbench.engine.tiny import install_built, tiny_cache_root

    root = Path(root) if root is not None else tiny_cache_root() / "metrics"
    models = TinyMetricModels(siglip=root / "siglip-tiny", clip=root / "clip-tiny", dino=root / "dinov2-tiny")
    stamp, stamp_file = _stamp(), root / "STAMP"
    if stamp_file.exists() and stamp_file.read_text() == stamp and all(
            p.is_dir() for p in (models.siglip, models.clip, models.dino)):
        return models
    # Build into a temporary sibling and rename, so a killed build never leaves a half model.
    tmp = root.with_name(root.name + f".building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build_tiny_siglip(tmp / models.siglip.name)
    build_tiny_clip(tmp / models.clip.name)
    build_tiny_dino(tmp / models.dino.name)
    (tmp / "STAMP").write_text(stamp)
    install_built(tmp, root, (models.siglip.name, models.clip.name, models.dino.name, "STAMP"))
    return models


def _small(**extra) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, **extra)


def build_tiny_siglip(out: Path) -> None:
    """SigLIP: 64 text positions (the padding SigLIP needs), 32x32 images; a fast BPE tokenizer."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    from vlbench.engine.tiny import build_tokenizer

    tok = build_tokenizer("")
    tok.chat_template = None
    pad = tok.pad_token_id
    config = SiglipConfig(
        text_config=_small(vocab_size=len(tok), max_position_embeddings=64, pad_token_id=pad, bos_token_id=pad,
                           eos_token_id=pad, projection_size=32),
        vision_config=_small(image_size=IMAGE_SIZE, patch_size=8),
    )
    torch.manual_seed(0)
    model = SiglipModel(config).eval()
    with torch.no_grad():  # the published checkpoints' values, roughly: scale exp(4.7) ~ 110, bias ~ -16
        model.logit_scale.fill_(2.0)
        model.logit_bias.fill_(-1.0)
    model.save_pretrained(out)
    image_processor = SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                           image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    SiglipProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(out)


def _clip_tokenizer():
    """A CLIPTokenizer over the byte-level alphabet (no merges): every text tokenizes, byte by byte."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    tok.model_max_length = 77
    return tok


def build_tiny_clip(out: Path) -> None:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = _clip_tokenizer()
    config = CLIPConfig(
        text_config=_small(vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=_small(image_size=IMAGE_SIZE, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(1)
    CLIPModel(config).eval().save_pretrained(out)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(out)


def build_tiny_dino(out: Path) -> None:
    """DINOv2 with its published preprocessing (BitImageProcessor: resize, centre crop, ImageNet stats)."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(2)
    Dinov2Model(Dinov2Config(**_small(image_size=28, patch_size=7))).eval().save_pretrained(out)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}, do_center_crop=True,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                      do_convert_rgb=True).save_pretrained(out)
