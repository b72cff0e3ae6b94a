"""Tiny random twins of every metric model, built offline in the real hub layouts.

They load through the same code as the published models — SigLIP 2 (google/siglip2-base-patch16-224),
CLIP (openai/clip-vit-large-patch14), DINO (facebook/dino-vits16, a ViTModel), DINOv2
(facebook/dinov2-base), PickScore (a CLIPModel with its processor), and VGG-19 in torchvision's
layout as safetensors (timm/vgg19.tv_in1k) — so scoring runs end to end without a download. The VQA
judge is the tiny Qwen3-VL of `vlbench.engine.tiny` (it has an LM head). Their weights are random:
their scores mean nothing. Built into the tiny-model cache beside the Qwen3-VL / Z-Image ones and
rebuilt when the recipe changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vlbench.engine.tiny import build_tokenizer, ensure_tiny_models, install_built, tiny_cache_root
from vlbench.logs import quiet_libraries

TINY_METRICS_VERSION = "2"
IMAGE_SIZE = 32


# A narrow VGG in torchvision's `make_layers` notation: 5 blocks like VGG-19's, so relu1_1 … relu5_1 exist.
TINY_VGG_CFG = [4, "M", 8, "M", 8, 8, "M", 8, "M", 8]


@dataclass(frozen=True)
class TinyMetricModels:
    siglip: Path
    clip: Path
    dino: Path
    dinov2: Path
    vgg: Path
    pickscore: Path
    vqa: Path  # the tiny Qwen3-VL (vlbench.engine.tiny)

    def sources(self) -> dict[str, str]:
        return {"siglip": str(self.siglip), "clip": str(self.clip), "dino": str(self.dino),
                "dinov2": str(self.dinov2), "vgg": str(self.vgg), "pickscore": str(self.pickscore),
                "pickscore_processor": str(self.pickscore), "vqa": str(self.vqa)}


def _stamp() -> str:
    import transformers

    return hashlib.sha256(f"{TINY_METRICS_VERSION}|{transformers.__version__}".encode()).hexdigest()[:16]


_BUILT = ("siglip-tiny", "clip-tiny", "dino-vits-tiny", "dinov2-tiny", "vgg-tiny", "pickscore-tiny")


def ensure_tiny_metric_models(root: Path | None = None, vl: Path | None = None) -> TinyMetricModels:
    """The tiny metric model dirs, built if missing or stale (about a second on CPU). `vl`: the tiny Qwen3-VL
    that judges VQAScore (default: the one `vlbench.engine.tiny.ensure_tiny_models` builds)."""
    root = Path(root) if root is not None else tiny_cache_root() / "metrics"
    vl = Path(vl) if vl is not None else ensure_tiny_models().vl
    models = TinyMetricModels(*(root / name for name in _BUILT), vqa=vl)
    stamp, stamp_file = _stamp(), root / "STAMP"
    if stamp_file.exists() and stamp_file.read_text() == stamp and all((root / n).is_dir() for n in _BUILT):
        return models

    quiet_libraries()  # transformers' "Writing model shards" bars are not the user's business
    # Build into a temporary sibling and rename, so a killed build never leaves a half model.
    tmp = root.with_name(root.name + f".building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build_tiny_siglip(tmp / "siglip-tiny")
    build_tiny_clip(tmp / "clip-tiny")
    build_tiny_dino(tmp / "dino-vits-tiny")
    build_tiny_dinov2(tmp / "dinov2-tiny")
    build_tiny_vgg(tmp / "vgg-tiny")
    build_tiny_clip(tmp / "pickscore-tiny", seed=3, logit_scale=3.0)
    (tmp / "STAMP").write_text(stamp)
    install_built(tmp, root, (*_BUILT, "STAMP"))
    return models


def _small(**extra) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, **extra)


def build_tiny_siglip(out: Path) -> None:
    """SigLIP: 64 text positions (the padding SigLIP needs), 32x32 images; a fast BPE tokenizer."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

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


def build_tiny_clip(out: Path, seed: int = 1, logit_scale: float | None = None) -> None:
    """CLIP (and PickScore, a CLIP-H fine-tune: the same classes, another logit scale)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tok = _clip_tokenizer()
    config = CLIPConfig(
        text_config=_small(vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=_small(image_size=IMAGE_SIZE, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(logit_scale)
    model.save_pretrained(out)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    CLIPProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(out)


def build_tiny_dinov2(out: Path) -> None:
    """DINOv2 with its published preprocessing (BitImageProcessor: resize, centre crop, ImageNet stats)."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(2)
    Dinov2Model(Dinov2Config(**_small(image_size=28, patch_size=7))).eval().save_pretrained(out)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}, do_center_crop=True,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                      do_convert_rgb=True).save_pretrained(out)


def build_tiny_dino(out: Path) -> None:
    """DINO ViT (facebook/dino-vits16 is a ViTModel): 224 input like the protocol's crop, 32-pixel patches.
    No preprocessor is saved: the `dino` metric's preprocessing is the protocol's, not the repo's."""
    import torch
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(4)
    ViTModel(ViTConfig(**_small(image_size=224, patch_size=32)), add_pooling_layer=False).eval().save_pretrained(out)


def build_tiny_vgg(out: Path) -> None:
    """A narrow VGG in torchvision's layout (`features.N.weight|bias`), saved as model.safetensors."""
    import torch
    from safetensors.torch import save_file
    from torchvision.models.vgg import make_layers

    torch.manual_seed(5)
    features = make_layers(TINY_VGG_CFG)
    for m in features.modules():  # torchvision's own VGG init: kaiming normal, zero bias
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            torch.nn.init.zeros_(m.bias)
    out.mkdir(parents=True, exist_ok=True)
    state = {f"features.{k}": v.contiguous() for k, v in features.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
