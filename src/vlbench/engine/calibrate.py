"""Reference statistics for normalisation, from the user's own models (never a hard-coded constant).

`calibrate` encodes a prompt set with Qwen3-4B (Z-Image's text path, every layer) and with Qwen3-VL, text
only and with a calibration reference image, every layer, and stores per layer and per token role the
per-dimension mean and std and the RMS. Qwen3-VL's roles: `text`/`template`/`prompt` (text-only input),
`image` (the image rows of image + prompt inputs) and `image_text` (the text rows of those inputs: text
that has attended an image). Attention-sink positions (massive activations) are detected per layer and
kept in a role of their own, so they do not swamp the statistics of ordinary tokens (DESIGN §4).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from vlbench.engine import blend
from vlbench.engine.encode import template_ids
from vlbench.engine.extract import _SENTINEL
from vlbench.errors import UserError
from vlbench.files import NotAFile, atomic_write, check_regular_file
from vlbench.paths import data_dir

ROLES = ("text", "template", "prompt", "sink")  # "text" = template + prompt, sinks excluded
FORMAT = "vlbench-calibration-2"  # 2: Qwen3-VL's image and image_text roles


class _Acc:
    """Running per-dimension sums in float64, so a large prompt set is exact enough."""

    def __init__(self):
        self.n = 0
        self.sum = None
        self.sumsq = None

    def add(self, rows: torch.Tensor) -> None:
        if rows.shape[0] == 0:
            return
        rows = rows.double().cpu()
        s, q = rows.sum(0), (rows * rows).sum(0)
        self.sum = s if self.sum is None else self.sum + s
        self.sumsq = q if self.sumsq is None else self.sumsq + q
        self.n += rows.shape[0]

    def finish(self) -> dict[str, torch.Tensor]:
        mean = self.sum / self.n
        var = (self.sumsq / self.n - mean * mean).clamp_min(0)
        return {"mean": mean.float(), "std": var.sqrt().float(),
                "rms": (self.sumsq.sum() / (self.n * mean.numel())).sqrt().float().reshape(1),
                "count": torch.tensor([self.n], dtype=torch.int64)}


def _role_rows(hidden: torch.Tensor, roles: list[str], with_image: bool = False) -> dict[str, torch.Tensor]:
    """Split one layer's rows [L, D] by role, sinks apart. With an image in the input: its rows ("image") and
    the text rows that attended it ("image_text")."""
    sinks = set(blend.sink_positions(hidden.float()))
    if with_image:
        return {"image": hidden[[i for i, r in enumerate(roles) if r == "image" and i not in sinks]],
                "image_text": hidden[[i for i, r in enumerate(roles) if r in ("template", "prompt") and i not in sinks]]}
    out = {}
    for role in ROLES:
        if role == "sink":
            keep = sorted(sinks)
        elif role == "text":
            keep = [i for i, r in enumerate(roles) if r in ("template", "prompt") and i not in sinks]
        else:
            keep = [i for i, r in enumerate(roles) if r == role and i not in sinks]
        out[role] = hidden[keep]
    return out


def qwen3_hidden_states(pipe, prompt: str) -> tuple[torch.Tensor, list[str]]:
    """Every hidden layer of Qwen3-4B for `prompt` in Z-Image's template, and a role per position."""
    tok = pipe.tokenizer
    ids, text = template_ids(tok, prompt)
    enc = tok(text, return_offsets_mapping=True)
    _, marked = template_ids(tok, _SENTINEL)
    start = marked.index(_SENTINEL)  # where the prompt begins in the template
    roles = ["prompt" if (a < start + len(prompt) and b > start) else "template" for a, b in enc["offset_mapping"]]
    input_ids = torch.tensor([ids], device=pipe.text_encoder.device)
    with torch.inference_mode():
        out = pipe.text_encoder(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                output_hidden_states=True)
    return torch.stack([h[0] for h in out.hidden_states]), roles


def calibrate(engine, prompts: list[str], references: list | None = None,
              on_progress=None) -> tuple[dict[str, torch.Tensor], dict]:
    """Statistics of both models over `prompts` (each prompt also read by Qwen3-VL with one of `references`,
    in turn). Returns (tensors, metadata) as stored on disk."""
    if not prompts:
        raise UserError("no prompts to calibrate on", field="prompts_file")
    if not references:
        raise UserError("no reference images to calibrate image tokens on", field="references")
    accs: dict[tuple[str, int, str], _Acc] = {}
    layers: dict[str, int] = {}
    for i, prompt in enumerate(prompts):
        qwen3, q_roles = qwen3_hidden_states(engine.models.text_pipe, prompt)
        ex = engine.extraction([], prompt, None)
        with_image = engine.extraction([references[i % len(references)]], prompt, None)
        for model, hidden, roles, image in (("qwen3", qwen3, q_roles, False), ("vl", ex.hidden_states, ex.roles, False),
                                            ("vl", with_image.hidden_states, with_image.roles, True)):
            layers[model] = hidden.shape[0]
            for layer in range(hidden.shape[0]):
                for role, rows in _role_rows(hidden[layer], roles, image).items():
                    accs.setdefault((model, layer, role), _Acc()).add(rows)
        if on_progress:
            on_progress(i + 1, len(prompts))
    tensors = {}
    for (model, layer, role), acc in accs.items():
        if acc.n:
            for name, value in acc.finish().items():
                tensors[f"{model}.{layer}.{role}.{name}"] = value
    meta = {"format": FORMAT, "prompts": len(prompts), "layers": layers,
            "references": [r.sha256 for r in references],
            "zimage": engine.models.spec.zimage, "vl": engine.models.spec.vl}
    return tensors, meta


def default_path(models) -> Path:
    key = hashlib.sha256(f"{models.spec.zimage}|{models.spec.vl}".encode()).hexdigest()[:16]
    return data_dir() / "calibration" / f"{key}.safetensors"


def save_stats(tensors: dict, meta: dict, path: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"vlbench": json.dumps(meta)}))
    _loaded.pop(str(path), None)  # a re-calibration in this process must not keep serving the old stats
    return path


class Stats:
    """Calibration statistics: `get(model, layer, role)` -> {"mean", "std", "rms"} at that layer."""

    def __init__(self, tensors: dict[str, torch.Tensor], meta: dict, path: Path):
        self.tensors, self.meta, self.path = tensors, meta, path

    def get(self, model: str, layer: int, role: str, device=None) -> dict[str, torch.Tensor]:
        n = self.meta["layers"].get(model)
        if n is None:
            raise UserError(f"has no statistics for {model}", field="calibration", value=str(self.path),
                            fix="re-run vlbench calibrate")
        index = layer % n if -n <= layer < n else None
        key = f"{model}.{index}.{role}"
        if index is None or f"{key}.mean" not in self.tensors:
            raise UserError(f"no {role} statistics for {model} layer {layer}", field="calibration",
                            value=str(self.path))
        out = {name: self.tensors[f"{key}.{name}"].to(device) for name in ("mean", "std", "rms")}
        out["rms"] = out["rms"].reshape(())
        return out


_loaded: dict[str, tuple[tuple[int, int], Stats]] = {}  # path -> ((mtime_ns, size) when read, stats)


def load_stats(path: str | Path | None, models) -> Stats:
    """The stats file named by a recipe, or the default one for these models; a clear error if missing."""
    from safetensors import safe_open

    path = Path(path) if path else default_path(models)
    try:
        stat = check_regular_file(path).stat()  # a FIFO would block safetensors' open forever
    except NotAFile as exc:
        raise UserError(str(exc), field="calibration", value=str(path)) from None
    except (OSError, ValueError) as exc:  # missing, a name too long, a NUL inside
        if isinstance(exc, FileNotFoundError) or isinstance(exc, ValueError):
            raise UserError("not found", field="calibration", value=str(path),
                            fix="run `vlbench calibrate` with the same models first (or set normalization none)") from None
        raise UserError(f"cannot read it ({exc.strerror or type(exc).__name__})", field="calibration",
                        value=str(path)) from None
    version = (stat.st_mtime_ns, stat.st_size)  # rewritten by another process: read it again
    if str(path) in _loaded and _loaded[str(path)][0] == version:
        return _loaded[str(path)][1]
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("vlbench", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # a damaged file of any kind
        raise UserError(f"unreadable ({exc})", field="calibration", value=str(path),
                        fix="re-run vlbench calibrate") from None
    if meta.get("format") != FORMAT:
        if str(meta.get("format", "")).startswith("vlbench-calibration"):
            raise UserError("was written by an earlier vlbench, without image-token statistics", field="calibration",
                            value=str(path), fix="re-run vlbench calibrate")
        raise UserError("not a vlbench calibration file", field="calibration", value=str(path))
    stats = Stats(tensors, meta, path)
    _loaded[str(path)] = (version, stats)
    return stats
