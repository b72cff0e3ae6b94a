"""The engine: recipe + inputs -> conditioning tensor -> image, with every model loaded once.

An `Engine` owns the loaded models and the extraction cache; the CLI, the experiment runner and
the workbench's worker all drive one. It knows nothing about Textual, SQLite or the command line.
"""

from __future__ import annotations

import hashlib
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from vlbench.engine.cache import ExtractionCache, extraction_key
from vlbench.engine.encode import TextEncoding, encode_text
from vlbench.engine import blend
from vlbench.engine.extract import (IMAGE, VISION_END, VISION_START, Extraction, batch_memory_bytes, forward,
                                    forward_batch, load_image, prepare)
from vlbench.engine.generate import check_caption, generate
from vlbench.engine.models import Models
from vlbench.recipe import Recipe
from vlbench.errors import UserError


@dataclass
class Reference:
    """A reference image read once: its path, pixels and content hash (the cache key)."""

    path: str
    image: Any  # PIL.Image, RGB
    sha256: str

    @classmethod
    def open(cls, path: str | Path) -> "Reference":
        image = load_image(path)
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return cls(str(path), image, digest)


@dataclass
class Conditioning:
    """The exact tensor Z-Image receives, and where each of its rows came from."""

    embeds: torch.Tensor  # [L, D]
    rows: list[dict]  # per row: source ("vl" | "qwen3") or the mix it came from, position(s), layer, weight(s)
    extractions: list[Extraction] = field(default_factory=list)  # dual recipes: [content, style]
    text: TextEncoding | None = None
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def extraction(self) -> Extraction | None:
        return self.extractions[0] if self.extractions else None

    def describe(self) -> dict:
        """JSON-ready account of the conditioning (the embed sidecar and every run record carry it)."""
        out: dict[str, Any] = {"length": int(self.embeds.shape[0]), "width": int(self.embeds.shape[1]),
                               "rows": self.rows, "warnings": self.warnings}
        for name, ex in zip(("vl", "vl_style"), self.extractions):
            out[name] = {
                "input_ids": ex.input_ids,
                "decoded": ex.decoded,
                "roles": ex.roles,
                "vl_text": ex.vl_text,
                "image_sizes": ex.image_sizes,
                "source_sizes": ex.source_sizes,
                "image_token_counts": ex.image_token_counts,
                "resized": ex.image_sizes != [tuple(s) for s in ex.source_sizes],
            }
        if self.text is not None:
            out["qwen3"] = {"input_ids": self.text.input_ids, "decoded": self.text.decoded}
        return out


@dataclass
class Result:
    image: Any  # PIL.Image
    conditioning: Conditioning
    timings: dict[str, float]
    peak_memory_bytes: int | None


IMAGE_ROLES = frozenset({IMAGE, VISION_START, VISION_END})


@dataclass
class _Seq:
    """A conditioning sequence under construction: rows and where each came from."""

    embeds: torch.Tensor  # [L, D]
    rows: list[dict]

    @property
    def length(self) -> int:
        return int(self.embeds.shape[0])


def _tag(seq: _Seq, name: str) -> _Seq:
    return _Seq(seq.embeds, [dict(r, pass_=name) for r in seq.rows])


def _mix(base: _Seq, other: _Seq, ratio, policy: str, knob: str) -> _Seq:
    """blend.mix_sequences with provenance: which rows of base and other each output row holds."""
    if other.embeds.device != base.embeds.device or other.embeds.dtype != base.embeds.dtype:
        other = _Seq(other.embeds.to(base.embeds.device, base.embeds.dtype), other.rows)
    embeds, info = blend.mix_sequences(base.embeds, other.embeds, ratio, policy)
    r = ratio if isinstance(ratio, float) else None
    if policy == "concat":
        kb, ko = info["base_kept"], info["other_kept"]
        rows = [{"mix": knob, "policy": policy, "from": "base", "pooled": [base.length, kb], "first": base.rows[0]}
                for _ in range(kb)]
        rows += [{"mix": knob, "policy": policy, "from": "other", "pooled": [other.length, ko], "first": other.rows[0]}
                 for _ in range(ko)]
        return _Seq(embeds, rows)
    n_base, n_other = base.length, other.length
    rows = []
    for j, b in enumerate(base.rows):
        lo, hi = j * n_other // n_base, max(j * n_other // n_base + 1, -(-(j + 1) * n_other // n_base))
        w = r if r is not None else float(ratio[j])
        if policy == "truncate":
            lo, hi = (j, j + 1) if j < n_other else (0, 0)
        rows.append({"mix": knob, "policy": policy, "weight_other": w, "base": b,
                     "other_positions": [other.rows[k].get("position") for k in (lo, min(hi, n_other) - 1)]
                     if hi > lo else []})
    return _Seq(embeds, rows)


def _first(value, default):
    return default if value is None else value


def _weighted(seqs: list[_Seq], weights, policy: str) -> _Seq:
    """Weighted average of several references' sequences, each mapped onto the first one's length."""
    base = seqs[0]
    total = float(sum(weights))
    acc = torch.zeros_like(base.embeds, dtype=torch.float32)
    for seq, w in zip(seqs, weights):
        mapped = blend.map_length(seq.embeds.to(base.embeds.device), base.length, policy, base=base.embeds)
        acc += (w / total) * mapped.float()
    rows = [dict(r, image_weights=[w / total for w in weights]) for r in base.rows]
    return _Seq(acc.to(base.embeds.dtype), rows)


class Engine:
    def __init__(self, models: Models, cache_dir: str | Path | None = None):
        """`cache_dir`: keep extractions on disk there too (content-addressed, verified on read)."""
        self.models = models
        self.disk_cache = ExtractionCache(cache_dir) if cache_dir is not None else None
        self._extractions: dict[tuple, Extraction] = {}
        self._texts: dict[str, TextEncoding] = {}
        self.vl_forwards = 0  # distinct (images, VL text) inputs run through the VL model (the cache serves the rest)
        self.vl_batched_calls = 0  # actual VL model calls: a batched call over several inputs counts once
        self.batch_dual = True  # a dual recipe's two uncached passes run as one batched call when they fit
        self._img2img = None
        self._environment: dict | None = None

    def environment(self) -> dict[str, Any]:
        """Library versions, device, dtype and models of this engine (recorded with every run)."""
        if self._environment is None:
            self._environment = environment(self.models)
        return self._environment

    # ---- building blocks, each cached ----
    def extraction(self, refs: list[Reference], text: str | None, max_image_tokens: int | None) -> Extraction:
        return self.extractions([(refs, text, max_image_tokens)])[0]

    def extractions(self, requests: list[tuple[list[Reference], str | None, int | None]],
                    batch: bool = True) -> list[Extraction]:
        """One Extraction per (refs, VL text, max_image_tokens), each distinct input forwarded at most once.

        Inputs served by neither cache (memory, then disk) run together as ONE batched model call when
        `batch` and the batch fits in device memory (`_batch_fits`), else one call each; results are
        cached exactly as single runs are. `vl_forwards` counts the inputs forwarded, `vl_batched_calls`
        the model calls made.
        """
        budget = self.models.caption_budget
        keys = [(tuple(r.sha256 for r in refs), text, budget, mit, self.models.spec.vl)
                for refs, text, mit in requests]
        missing: list[tuple] = []  # (key, disk key, request) of each distinct uncached input, in request order
        for key, request in zip(keys, requests):
            if key in self._extractions or any(key == m[0] for m in missing):
                continue
            refs, text, mit = request
            disk_key = ex = None
            if self.disk_cache is not None:
                vl = self.models.vl
                disk_key = extraction_key(vl, [r.sha256 for r in refs], text, budget, mit)
                ex = self.disk_cache.get(disk_key, vl.device)
            if ex is not None:
                self._extractions[key] = ex
            else:
                missing.append((key, disk_key, request))
        if missing:
            vl = self.models.vl
            preps = [prepare(vl, [r.image for r in refs], text, budget, mit) for _, _, (refs, text, mit) in missing]
            for (key, disk_key, _), ex in zip(missing, self._forward(preps, batch)):
                self.vl_forwards += 1
                if self.disk_cache is not None:
                    self.disk_cache.put(disk_key, ex)
                self._extractions[key] = ex
        return [self._extractions[key] for key in keys]

    def _forward(self, preps: list, batch: bool) -> list[Extraction]:
        """Run prepared inputs: one batched call when allowed and it fits, else one call each."""
        vl = self.models.vl
        if batch and len(preps) > 1 and self._batch_fits(preps):
            try:
                out = forward_batch(vl, preps)
                self.vl_batched_calls += 1
                return out
            except torch.OutOfMemoryError:  # the estimate was short: recoverable, unlike a device assert
                if vl.device.type == "cuda":
                    torch.cuda.empty_cache()
        out = []
        for prep in preps:
            out.append(forward(vl, prep))
            self.vl_batched_calls += 1
        return out

    def _batch_fits(self, preps: list) -> bool:
        """On CUDA: the batched forward's estimated activations fit in free memory (the allocator's cached
        blocks included). Elsewhere: always (host memory; the tensors are small beside the weights)."""
        vl = self.models.vl
        if vl.device.type != "cuda":
            return True
        free, _ = torch.cuda.mem_get_info(vl.device)
        free += torch.cuda.memory_reserved(vl.device) - torch.cuda.memory_allocated(vl.device)
        return batch_memory_bytes(vl, preps) <= free

    def release_extraction_by_sha(self, shas: tuple[str, ...], text: str | None) -> int:
        """Drop in-memory extractions of these inputs (a sweep is done with them); returns how many."""
        keys = [k for k in self._extractions if k[0] == shas and k[1] == text]
        for k in keys:
            del self._extractions[k]
        return len(keys)

    def text_encoding(self, prompt: str, field: str = "prompt") -> TextEncoding:
        if prompt not in self._texts:
            self._texts[prompt] = encode_text(self.models.text_pipe, prompt, field)
        return self._texts[prompt]

    # ---- recipe -> conditioning ----
    def condition(self, recipe: Recipe, prompt: str, refs: list[Reference]) -> Conditioning:
        """Build the exact [L, D] tensor the DiT receives, from as few model forwards as the cache allows."""
        if not isinstance(prompt, str):
            raise UserError("must be text", field="prompt")
        self._check_inputs(recipe, refs)
        timings: dict[str, float] = {}
        vl = qwen3 = None
        extractions: list[Extraction] = []
        start = time.perf_counter()
        if recipe.uses_vl:
            vl, extractions = self._vl_sequence(recipe, prompt, refs)
            timings["extraction"] = time.perf_counter() - start
        text = None
        if recipe.uses_qwen3:
            t0 = time.perf_counter()
            text = self.text_encoding(prompt)
            qwen3 = _Seq(text.embeds, [{"source": "qwen3", "position": i, "layer": -2}
                                       for i in range(text.embeds.shape[0])])
            timings["text_encoding"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if qwen3 is None:
            out = vl
        elif vl is None:
            out = qwen3
        else:
            ratio = self._ratio(recipe.alpha, recipe.alpha_end, recipe.curve, qwen3.length)
            out = _mix(qwen3, vl, ratio, recipe.length_policy, "alpha")
        timings["blend"] = time.perf_counter() - t0
        warnings = []
        mixes = recipe.dual or recipe.intra_ratio is not None or (vl is not None and qwen3 is not None)
        if recipe.length_policy == "truncate" and mixes:
            warnings.append("length_policy truncate keeps only the first rows of the longer sequence: for image "
                            "tokens, the TOP-LEFT patches of the reference (legacy; use pool)")
        return Conditioning(embeds=out.embeds, rows=out.rows, extractions=extractions, text=text, timings=timings,
                            warnings=warnings)

    def _check_inputs(self, recipe: Recipe, refs: list[Reference]) -> None:
        recipe.check_inputs(len(refs))

    def _select(self, ex: Extraction, tokens: str, recipe: Recipe, layer: int | None = None) -> "_Seq":
        """Rows of one selection; image-role rows from image_layer, text rows from text_layer (one forward)."""
        positions = ex.positions(tokens)
        if layer is not None:
            layers = [ex.check_layer(layer)] * len(positions)
        else:
            img_layer = ex.check_layer(recipe.layer_for(True), "image_layer" if recipe.image_layer is not None else "layer")
            txt_layer = ex.check_layer(recipe.layer_for(False), "text_layer" if recipe.text_layer is not None else "layer")
            layers = [img_layer if ex.roles[p] in IMAGE_ROLES else txt_layer for p in positions]
        hs = ex.hidden_states
        embeds = hs[torch.tensor(layers, device=hs.device), torch.tensor(positions, device=hs.device)]
        rows = [{"source": "vl", "role": ex.roles[p], "position": p, "layer": l} for p, l in zip(positions, layers)]
        seq = _Seq(embeds, rows)
        return seq if recipe.normalization == "none" else self._normalize(seq, recipe)

    def _vl_sequence(self, recipe: Recipe, prompt: str, refs: list[Reference]) -> tuple["_Seq", list[Extraction]]:
        policy = recipe.length_policy
        if recipe.dual:
            style_ex, content_ex = self.extractions(  # two passes, one batched model call when neither is cached
                [(refs, recipe.resolve_vl_text(prompt, recipe.style_vl_text), recipe.max_image_tokens),
                 (refs, recipe.resolve_vl_text(prompt, recipe.content_vl_text), recipe.max_image_tokens)],
                batch=self.batch_dual)
            style = self._select(style_ex, recipe.style_tokens, recipe, _first(recipe.style_layer, recipe.layer))
            content = self._select(content_ex, recipe.content_tokens, recipe, _first(recipe.content_layer, recipe.layer))
            mixed = _mix(_tag(content, "content"), _tag(style, "style"), recipe.dual_ratio, policy, "dual_ratio")
            return mixed, [content_ex, style_ex]
        text = recipe.resolve_vl_text(prompt)
        if recipe.multi_image == "separate" and len(refs) > 1:
            pairs = [self._single(recipe, text, [r]) for r in refs]
            weights = recipe.image_weights or tuple(1.0 for _ in refs)
            return _weighted([seq for seq, _ in pairs], weights, policy), [ex for _, ex in pairs]
        seq, ex = self._single(recipe, text, refs)
        return seq, [ex]

    def _single(self, recipe: Recipe, text: str | None, refs: list[Reference]) -> tuple["_Seq", Extraction]:
        ex = self.extraction(refs, text, recipe.max_image_tokens)
        if recipe.intra_ratio is None:
            return self._select(ex, recipe.tokens, recipe), ex
        text_seq = self._select(ex, "text", recipe)
        image_seq = self._select(ex, "image", recipe)
        ratio = self._ratio(recipe.intra_ratio, recipe.intra_ratio_end, recipe.curve, text_seq.length)
        return _mix(text_seq, image_seq, ratio, recipe.length_policy, "intra_ratio"), ex

    @staticmethod
    def _ratio(start: float, end: float | None, curve: str, length: int):
        if end is None or curve == "constant":
            return float(start)
        return blend.ratio_curve(length, start, end, curve)

    def _normalize(self, seq: "_Seq", recipe: Recipe) -> "_Seq":
        """Match one VL selection's statistics to Qwen3-4B's layer -2 text tokens (sinks untouched).

        Runs on selections, before any mix, so every row still knows its role and layer.
        """
        from vlbench.engine.calibrate import load_stats

        stats = load_stats(recipe.calibration, self.models)
        x = seq.embeds.float()
        sinks = set(blend.sink_positions(x))
        ref = stats.get("qwen3", -2, "text", x.device)
        groups: dict[tuple[bool, int], list[int]] = {}
        for i, row in enumerate(seq.rows):
            if i not in sinks:  # global: one scale for the whole selection; per-dim: per role and layer
                key = (False, 0) if recipe.normalization == "global" else (row["role"] in IMAGE_ROLES, row["layer"])
                groups.setdefault(key, []).append(i)
        out = x.clone()
        for (is_image, layer), keep in groups.items():
            idx = torch.tensor(keep, device=x.device)
            rows = x.index_select(0, idx)
            if recipe.normalization == "global":
                rows = blend.normalize_global(rows, ref["rms"])
            elif is_image:  # image rows: from their own statistics (hundreds of rows)
                mean, std = blend.dim_stats(rows)
                rows = blend.normalize_per_dim(rows, mean, std, ref["mean"], ref["std"])
            else:  # text rows: from the VL's calibrated text statistics at this layer
                src = stats.get("vl", layer, "text", x.device)
                rows = blend.normalize_per_dim(rows, src["mean"], src["std"], ref["mean"], ref["std"])
            out.index_copy_(0, idx, rows)
        return _Seq(out.to(seq.embeds.dtype), [dict(r, normalized="sink, untouched" if i in sinks else
                                                     recipe.normalization) for i, r in enumerate(seq.rows)])

    def negative(self, recipe: Recipe) -> torch.Tensor | None:
        if recipe.guidance <= 0:
            return None
        return self.text_encoding(recipe.negative_prompt, "negative_prompt").embeds

    # ---- recipe -> image ----
    def run(self, recipe: Recipe, prompt: str, refs: list[Reference],
            on_step: Callable[[int, int], None] | None = None) -> Result:
        cuda = self.models.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.models.device)
        cond = self.condition(recipe, prompt, refs)
        negative = self.negative(recipe)
        budget = self.models.caption_budget
        check_caption(cond.embeds.shape[0], budget)
        self.models.prepare_generation()  # --offload cpu: the encoders leave the GPU before the DiT runs
        start = time.perf_counter()
        common = dict(seed=recipe.seed, steps=recipe.steps, width=recipe.width, height=recipe.height,
                      guidance=recipe.guidance, negative_embeds=negative, budget=budget, on_step=on_step)
        if recipe.strength is None:
            image = generate(self.models.pipe, cond.embeds, **common)
        else:
            image = generate(self.img2img_pipe, cond.embeds, init_image=refs[0].image, strength=recipe.strength,
                             **common)
        timings = dict(cond.timings, generation=time.perf_counter() - start)
        peak = int(torch.cuda.max_memory_allocated(self.models.device)) if cuda else None
        return Result(image=image, conditioning=cond, timings=timings, peak_memory_bytes=peak)

    @property
    def img2img_pipe(self):
        """diffusers' Z-Image img2img pipeline over the same loaded components (no second copy)."""
        if self._img2img is None:
            from diffusers import ZImageImg2ImgPipeline

            pipe = self.models.pipe
            self._img2img = ZImageImg2ImgPipeline(
                scheduler=pipe.scheduler, vae=pipe.vae, text_encoder=pipe.text_encoder,
                tokenizer=pipe.tokenizer, transformer=pipe.transformer)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img


def environment(models: Models | None = None) -> dict[str, Any]:
    """Library versions, device and dtype: recorded with every run."""
    import diffusers
    import transformers

    import vlbench

    env: dict[str, Any] = {
        "vlbench": vlbench.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "diffusers": diffusers.__version__,
    }
    if models is not None:
        env.update(device=str(models.device), dtype=str(models.dtype).removeprefix("torch."),
                   zimage=models.spec.zimage, vl=models.spec.vl)
        if models.device.type == "cuda":
            env["gpu"] = torch.cuda.get_device_name(models.device)
    return env
