"""On-disk extraction cache: every hidden state of one VL forward, as safetensors, content-addressed.

The key covers what determines the forward: the VL model (source and config), the reference
images' bytes, the VL text, the chat template, the caption budget and image-token cap (which fix
the resize) and the dtype; an extraction that also carries one layer's VL-text -> image attention
(issue 17) has that layer in its key, so entries without attention keep their keys; so does a VL system turn
(issue 27). A checksum of the tensor and of the token ids and roles stored beside
it is verified on read; a damaged entry is dropped and recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from vlbench.engine.extract import Extraction
from vlbench.files import atomic_write

FORMAT = "vlbench-extraction-2"  # 2: the checksum covers the stored fields too


def extraction_key(vl, image_shas: list[str], text: str | None, budget: int, max_image_tokens: int | None,
                   attention_layer: int | None = None, system: str | None = None,
                   image_budget: int | None = None) -> str:
    parts = {
        "format": FORMAT,
        "model": vl.source,
        "config": hashlib.sha256(vl.model.config.to_json_string().encode()).hexdigest(),
        "template": hashlib.sha256((vl.processor.chat_template or "").encode()).hexdigest(),
        "images": image_shas,
        "text": text,
        "budget": budget,
        "max_image_tokens": max_image_tokens,
        "dtype": str(vl.dtype),
    }
    if attention_layer is not None:
        parts["attention_layer"] = attention_layer
    if system is not None:  # issue 27: a system turn; entries without one keep their keys
        parts["system"] = system
    if image_budget is not None:  # issue 23: the image tokens the caption's plan left the references (sizes them)
        parts["image_budget"] = image_budget
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _checksum(t: torch.Tensor, fields: dict, attention: torch.Tensor | None = None) -> str:
    digest = hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes())
    if attention is not None:
        digest.update(attention.contiguous().view(torch.uint8).numpy().tobytes())
    digest.update(json.dumps(fields, sort_keys=True).encode())  # a changed token id or role still parses
    return digest.hexdigest()


class ExtractionCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits = self.misses = self.rejected = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str, device) -> Extraction | None:
        from safetensors import safe_open

        path = self._path(key)
        if not path.exists():
            self.misses += 1
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads(f.metadata()["vlbench"])
                hidden = f.get_tensor("hidden_states")
                attention = f.get_tensor("image_attention") if "image_attention" in f.keys() else None
            if meta["format"] != FORMAT or meta["key"] != key:
                raise ValueError("key mismatch")
            if _checksum(hidden, meta["extraction"], attention) != meta["checksum"]:
                raise ValueError("checksum mismatch")
        except Exception:
            self.rejected += 1
            path.unlink(missing_ok=True)
            return None
        self.hits += 1
        fields = meta["extraction"]
        fields["image_sizes"] = [tuple(s) for s in fields["image_sizes"]]
        fields["source_sizes"] = [tuple(s) for s in fields["source_sizes"]]
        return Extraction(hidden_states=hidden.to(device), image_attention=attention, **fields)

    def put(self, key: str, ex: Extraction) -> None:
        from safetensors.torch import save_file

        hidden = ex.hidden_states.detach().to("cpu").contiguous()
        fields = {k: getattr(ex, k) for k in ("input_ids", "roles", "decoded", "vl_text", "image_sizes",
                                               "source_sizes", "image_token_counts")}
        if ex.vl_system is not None:
            fields["vl_system"] = ex.vl_system
        tensors = {"hidden_states": hidden}
        attention = None
        if ex.image_attention is not None:
            attention = tensors["image_attention"] = ex.image_attention.detach().to("cpu", torch.float32).contiguous()
            fields["attention_layer"] = ex.attention_layer
        meta = {"format": FORMAT, "key": key, "checksum": _checksum(hidden, fields, attention), "extraction": fields}
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # readers never see a half-written entry
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp),
                                                 metadata={"vlbench": json.dumps(meta)}))
