"""Style similarity from Gram matrices of VGG-19 features (Gatys, Ecker & Bethge 2016), named as such.

CSD (Somepalli et al. 2024) would be the learned alternative, but its checkpoint is a pickle and its
model needs its authors' code, so vlbench uses the classic statistic instead:

  features   torchvision's VGG-19 convolutional stack (`features`), ImageNet weights; the default
             `timm/vgg19.tv_in1k` is torchvision's IMAGENET1K_V1 weights re-published as safetensors
             (keys `features.N.weight|bias`, torchvision's own layout), so no pickle is ever loaded
  layers     relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 — the first ReLU of each block (Gatys' style layers)
  preprocess torchvision's ImageNet eval transform for these weights: resize the shorter side to 256
             (bilinear, antialiased), centre-crop 224, scale to [0, 1], normalise with ImageNet mean/std
  Gram       G = F Fᵀ / (H·W) per layer, F the [C, H·W] activations, in float32
  value      the mean over the layers of the cosine of vec(G_output) and vec(G_reference)

The network is rebuilt from the checkpoint itself (conv widths from the weights' shapes, a max-pool
wherever the layer index skips one), so a VGG of any depth/width in torchvision's layout loads — the
tests use a tiny one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

STYLE_LAYERS = 5  # relu1_1 … relu5_1
RESIZE, CROP = 256, 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_FILE = "model.safetensors"


class VGGFeatures(nn.Module):
    """torchvision's VGG `features` Sequential (conv 3×3 pad 1, ReLU, max-pool 2×2), truncated after the last
    style layer; `style_indices` are the Sequential indices of relu1_1, relu2_1, …"""

    def __init__(self, layers: list[nn.Module], style_indices: list[int]):
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.style_indices = style_indices

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.style_indices:
                out.append(x)
                if len(out) == len(self.style_indices):
                    break
        return out


def vgg_from_state_dict(state: dict[str, torch.Tensor]) -> VGGFeatures:
    """Rebuild torchvision's VGG `features` from a checkpoint's `features.*` tensors (no batch norm)."""
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    convs = sorted({int(k.split(".")[0]) for k in feats})
    if not convs or convs[0] != 0:
        raise ValueError("no VGG `features.0.weight` in the checkpoint")
    layers: list[nn.Module] = []
    firsts = [0]  # the first conv of each block
    for i in convs:
        gap = i - len(layers)
        if gap == 1:  # a max-pool sits between two conv+ReLU pairs: a new block
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            firsts.append(i)
        elif gap != 0:
            raise ValueError(f"features.{i}: not torchvision's VGG layout (conv, ReLU, optional max-pool)")
        w = feats.get(f"{i}.weight")
        if w is None or w.ndim != 4 or tuple(w.shape[2:]) != (3, 3):
            raise ValueError(f"features.{i}.weight: not a 3×3 convolution")
        layers += [nn.Conv2d(w.shape[1], w.shape[0], kernel_size=3, padding=1), nn.ReLU(inplace=False)]
    style = [f + 1 for f in firsts[:STYLE_LAYERS]]  # the ReLU after each block's first conv
    model = VGGFeatures(layers[:style[-1] + 1], style)
    wanted = {f"features.{k}": v for k, v in feats.items() if int(k.split(".")[0]) <= style[-1]}
    model.load_state_dict(wanted, strict=True)
    return model


def load_vgg(source: str, device: torch.device, dtype: torch.dtype) -> VGGFeatures:
    """A local directory holding model.safetensors, or a hub id (its model.safetensors is downloaded)."""
    from safetensors.torch import load_file

    path = Path(source)
    if path.is_dir():
        file = path / WEIGHTS_FILE
        if not file.is_file():
            raise OSError(f"no {WEIGHTS_FILE} in {path}")
    else:
        from huggingface_hub import hf_hub_download

        file = Path(hf_hub_download(source, WEIGHTS_FILE))
    model = vgg_from_state_dict(load_file(str(file)))
    return model.to(device=device, dtype=dtype).eval()


def preprocess(images: list) -> torch.Tensor:
    """PIL images -> [B, 3, 224, 224] float32, torchvision's ImageNet eval transform."""
    from torchvision.transforms.v2 import functional as TF

    out = []
    for img in images:
        t = TF.pil_to_tensor(img.convert("RGB"))
        t = TF.resize(t, [RESIZE], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        t = TF.center_crop(t, [CROP, CROP])
        t = TF.normalize(t.float() / 255.0, IMAGENET_MEAN, IMAGENET_STD)
        out.append(t)
    return torch.stack(out)


def gram(features: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, C] Gram matrices F Fᵀ / (H·W), float32."""
    b, c, h, w = features.shape
    f = features.float().reshape(b, c, h * w)
    return f @ f.transpose(1, 2) / (h * w)


@torch.inference_mode()
def grams(model: VGGFeatures, images: list) -> list[torch.Tensor]:
    """Per style layer, the [B, C*C] flattened Gram matrices of `images` (float32, CPU)."""
    p = next(model.parameters())
    x = preprocess(images).to(device=p.device, dtype=p.dtype)
    return [gram(f).flatten(1).cpu() for f in model(x)]


def style_similarity(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the cosine of flattened Gram matrices: a, b from `grams` -> [B]."""
    cos = [torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1) for x, y in zip(a, b)]
    return torch.stack(cos).mean(0)
