"""The engine: recipe + inputs -> conditioning tensor -> image, with every model loaded once.

An `Engine` owns the loaded models and the extraction cache; the CLI, the experiment runner and
the workbench's worker all drive one. It knows nothing about Textual, SQLite or the command line.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

import vlbench
from vlbench.engine import bridge
from vlbench.engine.blocks import masked, resolve
from vlbench.engine.cache import ExtractionCache, extraction_key
from vlbench.engine.calibrate import load_stats
from vlbench.engine.caption_plan import plan_caption, vl_inputs
from vlbench.engine.encode import TextEncoding, encode_text, template_ids
from vlbench.engine import blend
from vlbench.engine.extract import (IMAGE, PROMPT, Extraction, batch_memory_bytes, check_special_tokens, check_vl_text,
                                    decoder_layer_for, fitted_tokens, forward, forward_batch, image_token_count,
                                    load_reference, min_image_tokens, prepare, vl_counts)
from vlbench.engine.generate import ShareProbe, check_caption, generate, mix_sides
from vlbench.engine.models import Models
from vlbench.engine import condition as C
from vlbench.recipe import (ALPHA_SOURCE, NATURAL, Curve, ImageAttention, ImagePositions, MixPolicy, MultiImage, Normalization,
                            Recipe, Source, VLText, schedule_alpha)
from vlbench.engine.precheck import ModelFiles, _check_top_k, check_qwen3_length, check_text_bound, max_token_chars
from vlbench.errors import UserError
from vlbench.records import extraction_names
from vlbench.files import atomic_write_text, read_bytes_file, read_text_file
from vlbench.pixels import READING


@dataclass
class Reference:
    """A reference image read once: its path, pixels and content hash (the cache key)."""

    path: str
    image: Any  # PIL.Image, RGB: upright per EXIF, 8-bit from the file's nominal range (vlbench.pixels)
    sha256: str
    notes: list[str] = field(default_factory=list)  # how it was read ("rotated 90° per EXIF (clockwise)"), if not as stored

    @classmethod
    def open(cls, path: str | Path) -> "Reference":
        image, notes = load_reference(path)
        digest = hashlib.sha256(read_bytes_file(path)).hexdigest()
        return cls(str(path), image, digest, notes)

    @property
    def cache_id(self) -> str:
        """The bytes' hash, plus how they are read when that is not as stored: cache entries made from an image
        read before vlbench.pixels (sideways, two-valued) are never reused for it."""
        return self.sha256 if not self.notes else f"{self.sha256};read:{READING}"


@dataclass
class Scheduled:
    """One entry of a recipe's schedule: the caption the DiT reads from `from_step` to `to_step` (exclusive)."""

    from_step: int
    to_step: int
    source: str  # recipe | vl | qwen3 (vlbench.recipe.Source)
    embeds: torch.Tensor  # [L, D]
    rows: list[dict]
    weights: torch.Tensor | None = None

    def describe(self) -> dict:
        out = {"from_step": self.from_step, "to_step": self.to_step, "source": self.source,
               "length": int(self.embeds.shape[0]), "width": int(self.embeds.shape[1]), "rows": self.rows}
        if self.weights is not None:
            out["attention_weights"] = _weight_counts(self.weights)
        return out


def _weight_counts(weights: torch.Tensor) -> dict[str, int]:
    values, counts = torch.unique(weights, return_counts=True)
    return {f"{float(v):.6g}": int(c) for v, c in zip(values, counts)}


@dataclass
class Conditioning:
    """The exact tensor Z-Image receives, and where each of its rows came from. With a schedule, `embeds`,
    `rows` and `weights` are step 0's caption and `schedule` holds every entry's (step 0's first)."""

    embeds: torch.Tensor  # [L, D]
    rows: list[dict]  # per row: source ("vl" | "qwen3") or the mix it came from, position(s), layer, weight(s)
    weights: torch.Tensor | None = None  # [L] attention weight of each row (attend mixes); None: all 1
    extractions: list[Extraction] = field(default_factory=list)  # dual recipes: [content, style]; separate: one each
    dual: bool = False  # the extractions are a dual recipe's [content, style] passes
    text: TextEncoding | None = None
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    schedule: list[Scheduled] = field(default_factory=list)  # empty: one caption at every step
    bridge: bridge.Description | None = None  # text_bridge: what Qwen3-VL said (Qwen3-4B read prompt + it)
    text_branch: torch.Tensor | None = None  # issue 27 vl_guidance: Qwen3-4B's caption q, the text-only branch
    grids: list[tuple[int, tuple[int, int]]] | None = None  # issue 27 image_positions grid: (first row, grid) each
    negative: dict | None = None  # issue 27 negative_vl_text: the negative caption's VL account (Engine.run sets it)
    blocks: dict | None = None  # issue 27 vl_blocks: read / masked block names, the VL rows ([L] bool under "rows")
    vl_guidance: float = 0.0
    mixes: list[dict] = field(default_factory=list)  # step 0's attend mixes: ratio, meaning, rows, weights, shares
    # issue 23: where the caption's plan limited a reference's image tokens (caption_plan); None: every reference was
    # sized to the whole budget less its VL input's text, the rule before the plan
    caption_plan: dict | None = None

    @property
    def captions(self) -> list[torch.Tensor]:
        """Every caption the DiT reads during the run."""
        return [s.embeds for s in self.schedule] or [self.embeds]

    @property
    def extraction(self) -> Extraction | None:
        return self.extractions[0] if self.extractions else None

    def describe(self) -> dict:
        """JSON-ready account of the conditioning (the embed sidecar and every run record carry it)."""
        out: dict[str, Any] = {"length": int(self.embeds.shape[0]), "width": int(self.embeds.shape[1]),
                               "rows": self.rows, "warnings": self.warnings}
        if self.weights is not None:
            out["attention_weights"] = _weight_counts(self.weights)
        if self.schedule:
            out["schedule"] = [s.describe() for s in self.schedule]
        if self.bridge is not None:
            out["text_bridge"] = self.bridge.to_dict()
        if self.negative is not None:  # issue 27: the negative branch read from the VL
            out["negative"] = self.negative
        if self.blocks is not None:  # issue 27: which blocks read the VL rows
            out["vl_blocks"] = {k: v for k, v in self.blocks.items() if k != "rows"}
        if self.grids is not None:  # issue 27: which caption rows the DiT reads on a 2-D grid
            out["image_positions"] = {"mode": "grid", "formula": GRID_FORMULA,
                                      "images": [{"first_row": s, "grid": list(g), "rope_axis0": 1 + s}
                                                 for s, g in self.grids]}
        if self.text_branch is not None:  # issue 27: what the three-branch CFG compared the caption with
            out["vl_guidance"] = {"scale": self.vl_guidance, "formula": VL_GUIDANCE_FORMULA,
                                  "text_branch": {"source": "qwen3", "length": int(self.text_branch.shape[0])}}
        if self.mixes:
            out["attend_mixes"] = self.mixes
        if self.caption_plan is not None:
            out["caption_plan"] = self.caption_plan
        for name, ex in zip(extraction_names(len(self.extractions), self.dual), self.extractions):
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
            if ex.vl_system is not None:  # issue 27: the system turn the VL read (its tokens are in input_ids)
                out[name]["vl_system"] = ex.vl_system
            if ex.image_attention is not None:
                out[name]["image_attention"] = image_attention_record(ex)
        if self.text is not None:
            out["qwen3"] = {"input_ids": self.text.input_ids, "decoded": self.text.decoded}
        return out


CAPTION_PLAN_RULE = ("each VL input's image tokens <= min(budget - its text tokens, max_image_tokens, image_budget), "
                     "image_budget the most that leaves every caption of the job within the budget")
VL_GUIDANCE_FORMULA = "pred = P(c) + guidance*(P(c) - P(neg)) + vl_guidance*(P(c) - P(q)); neg only with guidance > 0"
GRID_FORMULA = ("caption row s + r*C + c of an image on an R x C grid starting at row s -> RoPE ids (1 + s, r, c); "
                "every other caption row i -> (1 + i, 0, 0), as diffusers gives it")
ATTENTION_FORMULA = ("w_j = a_j / sum_j' a_j', a_j = mean over heads and VL-text (prompt-role) positions i of the "
                     "softmax attention probability from i to image position j in decoder layer `decoder_layer`")


def image_attention_record(ex: Extraction) -> dict:
    """issue 17: the compact record of an extraction's VL-text -> image attention: per image its token grid (rows,
    columns, raster order) and weights (4 significant digits; all images' weights together sum to 1)."""
    weights = [float(f"{float(w):.4g}") for w in ex.image_attention.tolist()]
    per_image, at = [], 0
    for grid, n in zip(ex.image_grids, ex.image_token_counts):
        per_image.append({"grid": list(grid), "weights": weights[at:at + n]})
        at += n
    return {"decoder_layer": ex.attention_layer, "hidden_index": ex.attention_layer + 1,
            "formula": ATTENTION_FORMULA, "images": per_image}


@dataclass
class Result:
    image: Any  # PIL.Image
    conditioning: Conditioning
    timings: dict[str, float]
    peak_memory_bytes: int | None
    batch: dict | None = None  # --batch (engine/batching.py): {"size": images in the DiT call, "position": this one's}


def _first(value, default):
    return default if value is None else value


class Engine:
    def __init__(self, models: Models, cache_dir: str | Path | None = None):
        """`cache_dir`: keep extractions on disk there too (content-addressed, verified on read)."""
        self.models = models
        self.disk_cache = ExtractionCache(cache_dir) if cache_dir is not None else None
        self._extractions: dict[tuple, Extraction] = {}
        self._texts: dict[str, TextEncoding] = {}
        self._descriptions: dict[str, bridge.Description] = {}
        self.vl_generations = 0  # text-bridge descriptions generated (the caches serve the rest)
        self.vl_forwards = 0  # distinct (images, VL text) inputs run through the VL model (the cache serves the rest)
        self.vl_batched_calls = 0  # actual VL model calls: a batched call over several inputs counts once
        self.batch_dual = True  # a dual recipe's two uncached passes run as one batched call when they fit
        self.last_plan = None  # the last job's caption plan (issue 23; caption_plan.CaptionPlan), for tests and tools
        self.share_probe = False  # measure each attend mix's realised share in the DiT (generate.ShareProbe)
        self._img2img = None
        self._environment: dict | None = None

    def environment(self) -> dict[str, Any]:
        """Library versions, device, dtype and models of this engine (recorded with every run)."""
        if self._environment is None:
            self._environment = environment(self.models)
        return self._environment

    # ---- building blocks, each cached ----
    def extraction(self, refs: list[Reference], text: str | None, max_image_tokens: int | None,
                   attention_layer: int | None = None, system: str | None = None,
                   image_budget: int | None = None) -> Extraction:
        return self.extractions([(refs, text, max_image_tokens, attention_layer, system, image_budget)])[0]

    def extractions(self, requests: list[tuple], batch: bool = True) -> list[Extraction]:
        """One Extraction per (refs, VL text, max_image_tokens), each distinct input forwarded at most once.

        Inputs served by neither cache (memory, then disk) run together as ONE batched model call when
        `batch` and the batch fits in device memory (`_batch_fits`), else one call each; results are
        cached exactly as single runs are. `vl_forwards` counts the inputs forwarded, `vl_batched_calls`
        the model calls made. A request is (refs, VL text, max_image_tokens) or, to also read one decoder layer's
        VL-text -> image attention in the same forward (issue 17), (refs, VL text, max_image_tokens, that layer):
        its own cache entry, so extractions without attention stay as fast as ever. A fifth item is the VL system
        turn's text (issue 27's vl_system; None: the stock template), also part of both cache keys. A sixth is the
        image tokens the caption's plan leaves the input (issue 23, caption_plan; None: no limit but the budget's),
        part of both keys when set: two recipes that size a reference differently never share an extraction.
        """
        budget = self.models.caption_budget
        requests = [(*r, *(None,) * (6 - len(r))) for r in requests]
        keys = [(tuple(r.sha256 for r in refs), text, budget, mit, self.models.spec.vl, attn, system, ib)
                for refs, text, mit, attn, system, ib in requests]
        missing: list[tuple] = []  # (key, disk key, request) of each distinct uncached input, in request order
        for key, request in zip(keys, requests):
            if key in self._extractions or any(key == m[0] for m in missing):
                continue
            refs, text, mit, attn, system, ib = request
            disk_key = ex = None
            if self.disk_cache is not None:
                vl = self.models.vl
                disk_key = extraction_key(vl, [r.cache_id for r in refs], text, budget, mit, attn, system, ib)
                ex = self.disk_cache.get(disk_key, vl.device)
            if ex is not None:
                self._extractions[key] = ex
            else:
                missing.append((key, disk_key, request))
        if missing:
            vl = self.models.vl
            preps = [prepare(vl, [r.image for r in refs], text, budget, mit, system, ib)
                     for _, _, (refs, text, mit, _, system, ib) in missing]
            plain = [i for i, m in enumerate(missing) if m[2][3] is None]
            done = dict(zip(plain, self._forward([preps[i] for i in plain], batch)))
            for i, m in enumerate(missing):  # with attention: one hooked call each (single-pass recipes only)
                if i not in done:
                    done[i] = forward(vl, preps[i], m[2][3])
                    self.vl_batched_calls += 1
            for (key, disk_key, _), ex in zip(missing, [done[i] for i in range(len(missing))]):
                self.vl_forwards += 1
                if self.disk_cache is not None:
                    self.disk_cache.put(disk_key, ex)
                self._extractions[key] = ex
        return [self._extractions[key] for key in keys]

    def _forward(self, preps: list, batch: bool) -> list[Extraction]:
        """Run prepared inputs: one batched call when allowed and it fits, else one call each."""
        vl = self.models.vl
        if not preps:
            return []
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

    def description(self, ref: Reference) -> bridge.Description:
        """The text bridge's description of one reference, generated once per (reference bytes, instruction, VL
        model, token cap, caption budget): kept in memory, and on disk beside the extractions when cached there."""
        vl = self.models.vl
        budget = self.models.caption_budget
        key = bridge.description_key(vl, ref.cache_id, budget)
        if key in self._descriptions:
            return self._descriptions[key]
        path = self.disk_cache.root / "text_bridge" / f"{key}.json" if self.disk_cache is not None else None
        found = None
        if path is not None and path.is_file():
            try:
                data = json.loads(read_text_file(path))
                found = bridge.from_dict(data["description"]) if data.get("key") == key else None
            except (OSError, ValueError, KeyError, TypeError):
                found = None  # damaged: regenerate, never trust it
        if found is None:
            found = bridge.describe(vl, ref.image, ref.sha256, budget)
            self.vl_generations += 1
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, json.dumps({"key": key, "description": found.to_dict()}))
        self._descriptions[key] = found
        return found

    # ---- recipe -> conditioning ----
    def condition(self, recipe: Recipe, prompt: str, refs: list[Reference]) -> Conditioning:
        """Build the exact [L, D] tensor(s) the DiT receives, from as few model forwards as the cache allows.

        Read top to bottom: the VL sequence (one selection, an intra mix, or the dual mix; several references
        jointly or averaged), Qwen3-4B's encoding (of prompt + description with text_bridge), then the alpha mix
        (docs/intra_vl_blending.md), then the schedule's caption per step (docs/schedules.md)."""
        if not isinstance(prompt, str):
            raise UserError("must be text", field="prompt")
        self._check_inputs(recipe, refs, prompt)
        timings: dict[str, float] = {}
        vl = qwen3 = None
        extractions: list[Extraction] = []
        warnings: list[str] = [f"reference {ref.path}: {note}" for ref in refs for note in ref.notes]  # issue 26
        text = description = qwen3_prompt = None
        # vl_guidance: Qwen3-4B's caption is the text-only branch; vl_blocks: it carries the caption where VL is masked
        if recipe.uses_qwen3 or recipe.vl_guidance != 0 or recipe.vl_blocks is not None:
            t0 = time.perf_counter()
            qwen3_prompt = prompt
            if recipe.text_bridge:
                description = self.description(refs[0])
                timings["text_bridge"] = time.perf_counter() - t0
                qwen3_prompt = description.joined(prompt)
                if not description.text:
                    warnings.append("the text bridge's description is empty: Qwen3-4B read the prompt and the "
                                    "join's label alone")
        # issue 23: the whole caption planned before any reference is sized (caption_plan); refused here when even
        # the smallest references cannot fit, before the VL runs. Qwen3-4B's rows are counted with its tokenizer and
        # encode_text's own checks (the encoder itself runs after the VL, as before)
        qwen3_rows = None
        if qwen3_prompt is not None:
            qwen3_rows = self._bridged(description, lambda: self.qwen3_rows(qwen3_prompt))
        limits = self.plan_caption(recipe, prompt, refs, qwen3_rows)
        start = time.perf_counter()
        if recipe.uses_vl:
            vl, extractions = self._vl_sequence(recipe, prompt, refs, limits)
            timings["extraction"] = time.perf_counter() - start
        if qwen3_prompt is not None:
            t1 = time.perf_counter()
            text = self._bridged(description, lambda: self.text_encoding(qwen3_prompt, "prompt"))
            qwen3 = C.text_seq(text.embeds)
            timings["text_encoding"] = time.perf_counter() - t1
        t0 = time.perf_counter()
        if recipe.alpha_policy == MixPolicy.POSITIONWISE and vl is not None and qwen3 is not None:
            C.check_token_pairs(text.input_ids, [extractions[0].input_ids[r["position"]] for r in vl.rows], "alpha",
                                self.models.vl_processor.tokenizer)
        kind = recipe.own_caption  # the one rule (Recipe.own_caption) the caption planner counts too
        own = {Source.VL: vl, Source.QWEN3: qwen3}.get(kind)
        if kind == ALPHA_SOURCE:
            ratio = recipe.alpha
            if recipe.curve != Curve.CONSTANT:
                ratio = blend.ratio_curve(qwen3.length, recipe.alpha, recipe.alpha_end, recipe.curve)
            own = C.mix(qwen3, vl, ratio, recipe.alpha_policy, "alpha", recipe.attend_ratio)
        entries = recipe.schedule_entries
        by_source = {Source.RECIPE: own, Source.VL: vl, Source.QWEN3: qwen3}
        for _, source in entries:  # alpha=R: the alpha mix at R (alpha_policy), as a recipe with alpha R mixes
            ratio = schedule_alpha(source)
            if ratio is not None and source not in by_source:
                by_source[source] = C.mix(qwen3, vl, ratio, recipe.alpha_policy, "alpha", recipe.attend_ratio)
        timings["blend"] = time.perf_counter() - t0
        schedule = []
        for i, (step, source) in enumerate(entries):
            seq = by_source[source]
            end = entries[i + 1][0] if i + 1 < len(entries) else recipe.run_steps
            weights = seq.weights if seq.weighted else None
            schedule.append(Scheduled(step, end, source, seq.embeds, seq.rows, weights))
        first = by_source[entries[0][1]] if entries else own
        blocks = None
        if recipe.vl_blocks is not None:  # issue 27: the VL rows are read in the chosen blocks only
            first, blocks = self._vl_blocks(recipe, first, qwen3)
        grids = None
        if recipe.image_positions == ImagePositions.GRID:
            grids = [(seg.start, seg.grid) for seg in first.segments if seg.grid is not None]
            if not grids:
                raise UserError("has no effect: this caption holds no image rows on a patch grid (no reference, or "
                                "the selection keeps none)", field="image_positions", value=recipe.image_positions,
                                fix="add a reference, or drop it (default sequence)")
        return Conditioning(grids=grids, embeds=first.embeds, rows=first.rows, weights=first.weights if first.weighted else None,
                            extractions=extractions, text=text, timings=timings, warnings=warnings,
                            schedule=schedule, bridge=description, dual=recipe.dual and recipe.uses_vl,
                            text_branch=qwen3.embeds if recipe.vl_guidance != 0 else None,
                            vl_guidance=recipe.vl_guidance, mixes=first.mixes, blocks=blocks,
                            caption_plan=self._plan_account(limits))

    def _vl_blocks(self, recipe: Recipe, seq: C.Seq, qwen3: C.Seq) -> tuple[C.Seq, dict]:
        """issue 27's vl_blocks: the caption (with Qwen3-4B's rows put first when it has none, so no block is left
        with an empty caption) and the account of which blocks read the VL rows and which mask them."""
        transformer = self.models.pipe.transformer
        names = resolve(recipe.vl_blocks, transformer)
        added = not any(row.get("source") != Source.VL for row in seq.rows)
        if added:  # a pure VL caption: Qwen3-4B's rows first, unweighted (plain concatenation)
            rows = [dict(r, added_for="vl_blocks") for r in qwen3.rows] + seq.rows
            segments = list(qwen3.segments) + [C.Segment(s.start + qwen3.length, s.n, s.grid, s.image)
                                               for s in seq.segments]
            seq = C.Seq(torch.cat([qwen3.embeds.to(seq.embeds.device, seq.embeds.dtype), seq.embeds]), rows,
                        torch.cat([qwen3.weights, seq.weights]), segments, mixes=seq.mixes)
        vl_rows = torch.tensor([row.get("source") == Source.VL for row in seq.rows])
        account = {"spec": recipe.vl_blocks, "read": names, "masked": masked(names, transformer),
                   "vl_rows": int(vl_rows.sum()), "qwen3_rows_added": added, "rows": vl_rows}
        return seq, account

    def _check_inputs(self, recipe: Recipe, refs: list[Reference], prompt: str) -> None:
        recipe.check_inputs(len(refs))
        check_attention(recipe, self.models.spec.attention)
        if VLText.PROMPT in recipe.vl_text_settings:  # the VL reads the prompt: its special tokens are the prompt's fault
            check_special_tokens(self.models.vl_processor.tokenizer, prompt, "prompt", "Qwen3-VL")

    def _select(self, ex: Extraction, tokens: str, recipe: Recipe, layer: int | None = None,
                pass_name: str | None = None) -> C.Seq:
        """One selection's rows (image-role rows from image_layer, text rows from text_layer: one forward),
        its images pooled (pool_image_tokens) and its roles normalised (normalization)."""
        positions = ex.positions(tokens)
        if layer is not None:
            layers = [ex.check_layer(layer)] * len(positions)
        else:
            img_layer = ex.check_layer(recipe.layer_for(True), "image_layer" if recipe.image_layer is not None else "layer")
            txt_layer = ex.check_layer(recipe.layer_for(False), "text_layer" if recipe.text_layer is not None else "layer")
            layers = [img_layer if ex.roles[p] in C.IMAGE_ROLES else txt_layer for p in positions]
        seq = C.select(ex, positions, layers, pass_name)
        if recipe.normalization != Normalization.NONE:
            seq = C.normalize(seq, recipe.normalization, load_stats(recipe.calibration, self.models))
        weighting = recipe.image_attention
        if weighting != ImageAttention.NONE and seq.has_image_rows:  # issue 17
            importance = C.image_row_weights(seq, ex)
            if weighting == ImageAttention.TOPK:
                return C.top_k_images(seq, importance, recipe.image_top_k)
            pooled = C.pool_images(seq, recipe.pool_image_tokens, importance)
            if pooled.length == seq.length:
                raise UserError(f"has no effect: pool_image_tokens {recipe.pool_image_tokens} keeps every image "
                                "token, so there is nothing to pool", field="image_attention", value=weighting,
                                fix="lower pool_image_tokens, or drop it (default none)")
            return pooled
        if recipe.pool_image_tokens is not None and seq.has_image_rows:
            seq = C.pool_images(seq, recipe.pool_image_tokens)
        return seq

    @staticmethod
    def _bridged(description, call):
        """`call()`, a prompt error re-worded when the text bridge's description was joined to the prompt."""
        try:
            return call()
        except UserError as exc:
            if description is None or exc.field != "prompt":
                raise
            raise UserError(f"with the text bridge's description joined: {exc.problem}", field="prompt",
                            fix=f"shorten the prompt (the description takes up to {bridge.MAX_NEW_TOKENS} "
                                "tokens)") from None

    def qwen3_rows(self, prompt: str) -> int:
        """Qwen3-4B's caption rows for `prompt` (Z-Image's template), with encode_text's checks and words, from the
        tokenizer alone: the encoder is not loaded for it."""
        if prompt in self._texts:
            return len(self._texts[prompt].input_ids)

        tokenizer = self._qwen3_tokenizer()
        check_qwen3_length(tokenizer, prompt, "prompt")
        return len(template_ids(tokenizer, prompt)[0])

    def _qwen3_tokenizer(self):
        models = self.models
        if getattr(models, "_text_encoder_loaded", False):
            return models.text_pipe.tokenizer
        files = getattr(models, "files", None)
        if files is not None and getattr(files, "qwen3_tokenizer", None) is not None:
            return files.qwen3_tokenizer
        if getattr(self, "_tokenizer", None) is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(models.spec.built().zimage, subfolder="tokenizer")
        return self._tokenizer

    def plan_caption(self, recipe: Recipe, prompt: str, refs: list[Reference],
                     qwen3_rows: int | None) -> list[int | None]:
        """issue 23: the caption's plan (caption_plan.plan_caption) for this job, and each VL input's image-token limit
        in extraction order. None everywhere when the sizing before the plan (each input: the whole budget less its
        own text) already gives a caption within the budget — that image and cache key stand, so a re-run of an old
        record reads the same reference; else None only where the limit cannot bind (it leaves more than the input's
        text or max_image_tokens leave, or than the references' native tokens). UserError when even the smallest
        references cannot fit."""
        inputs = self.vl_inputs(recipe, prompt, refs)
        if not inputs:
            self.last_plan = plan_caption(recipe, self.models.caption_budget, qwen3_rows, [])
            return []
        processor = self.models.vl_processor
        budget = self.models.caption_budget
        for images, text, system in inputs:  # the VL input's own text against the budget: prepare's checks and words
            if text is not None:
                check_text_bound(text, "vl_text", budget, max_token_chars(processor.tokenizer), "the caption budget")
            check_vl_text(processor, len(images), text, budget, system)
        counts = [vl_counts(processor, len(images), text, system) for images, text, system in inputs]
        lows = [min_image_tokens(processor.image_processor, [r.image.size for r in images])
                for images, _, _ in inputs]
        budget = self.models.caption_budget
        try:
            plan = plan_caption(recipe, budget, qwen3_rows, counts, lows)
        except UserError:
            if recipe.image_attention == ImageAttention.TOPK:  # top-k past an image's tokens: its own, named error

                files = ModelFiles(axes_lens=[budget + 32, 0, 0], pixels_per_token=0, vl_processor=processor,
                                   qwen3_tokenizer=None)
                _check_top_k(files, recipe, prompt, refs, lambda key: True)
            raise
        self.last_plan = plan
        if plan.image_budget is None:
            return [None] * len(inputs)
        # old results keep their meaning: where every input sized by the rule before the plan (the whole budget less
        # its own text, and max_image_tokens) already gives a caption within the budget, that sizing stands
        cap = _first(recipe.max_image_tokens, budget)
        old = [fitted_tokens(processor.image_processor, [r.image.size for r in images],
                             min(budget - c.text_tokens, cap)) if images else 0
               for (images, _, _), c in zip(inputs, counts)]
        if None not in old and plan.length(old) <= budget:
            return [None] * len(inputs)
        # the limit only where it can bind: below what the input's own text leaves (and max_image_tokens) and below
        # the references' native tokens; elsewhere the reference is sized exactly as before, under its old cache key
        native = [sum(image_token_count(processor.image_processor, *r.image.size) for r in images)
                  for images, _, _ in inputs]
        return [plan.image_budget if plan.image_budget < min(budget - c.text_tokens, n,
                                                            _first(recipe.max_image_tokens, budget)) else None
                for c, n in zip(counts, native)]

    def _plan_account(self, limits: list[int | None]) -> dict | None:
        """The record of a plan that limited a reference (issue 23): the budget, what each part wants, the image tokens
        left to each VL input (None: sized as before the plan) and whether the plan's length is exact."""
        plan = self.last_plan
        if plan is None or not any(limit is not None for limit in limits):
            return None
        return {"budget": plan.budget, "parts": dict(plan.parts), "image_budget": list(limits), "exact": plan.exact,
                "rule": CAPTION_PLAN_RULE}

    @staticmethod
    def vl_inputs(recipe: Recipe, prompt: str, refs: list[Reference]) -> list[tuple]:
        """(references, VL text, system text) of each VL input this job extracts, in _vl_sequence's order."""
        return vl_inputs(recipe, prompt, refs)

    def _vl_sequence(self, recipe: Recipe, prompt: str, refs: list[Reference],
                     limits: list[int | None] | None = None) -> tuple[C.Seq, list[Extraction]]:
        limits = limits or [None] * max(2, len(refs))
        if recipe.dual:
            system = recipe.resolve_vl_system()
            style_ex, content_ex = self.extractions(  # two passes, one batched model call when neither is cached
                [(refs, recipe.resolve_vl_text(prompt, recipe.style_vl_text), recipe.max_image_tokens, None, system,
                  limits[0]),
                 (refs, recipe.resolve_vl_text(prompt, recipe.content_vl_text), recipe.max_image_tokens, None,
                  system, limits[1])],
                batch=self.batch_dual)
            style = self._select(style_ex, recipe.style_tokens, recipe, _first(recipe.style_layer, recipe.layer),
                                 "style")
            content = self._select(content_ex, recipe.content_tokens, recipe,
                                   _first(recipe.content_layer, recipe.layer), "content")
            mixed = C.mix(content, style, recipe.dual_ratio, recipe.dual_policy, "dual_ratio", recipe.attend_ratio)
            return mixed, [content_ex, style_ex]
        text = recipe.resolve_vl_text(prompt)
        if recipe.multi_image == MultiImage.SEPARATE and len(refs) > 1:
            pairs = [self._single(recipe, text, [r], limit) for r, limit in zip(refs, limits)]
            weights = recipe.image_weights or tuple(1.0 for _ in refs)
            return C.average_references([seq for seq, _ in pairs], weights), [ex for _, ex in pairs]
        seq, ex = self._single(recipe, text, refs, limits[0])
        return seq, [ex]

    def _single(self, recipe: Recipe, text: str | None, refs: list[Reference],
                image_budget: int | None = None) -> tuple[C.Seq, Extraction]:
        attention = None
        if recipe.image_attention != ImageAttention.NONE:  # issue 17: checked before the forward
            attention = self.attention_layer(recipe)
            if text is not None and not text.strip():
                raise UserError("reads the VL text's attention to the image, and the VL text is empty",
                                field="image_attention", value=recipe.image_attention,
                                fix="give the VL a text, or drop it (default none)")
        ex = self.extraction(refs, text, recipe.max_image_tokens, attention, recipe.resolve_vl_system(), image_budget)
        if attention is not None and (PROMPT not in ex.roles or IMAGE not in ex.roles):
            raise UserError("reads the VL text's attention to the image, and this VL input has "
                            + ("no text positions" if PROMPT not in ex.roles else "no image"),
                            field="image_attention", value=recipe.image_attention,
                            fix="give the VL a text and a reference, or drop it (default none)")
        if recipe.intra_ratio is None:
            return self._select(ex, recipe.tokens, recipe), ex
        text_seq = self._select(ex, "text", recipe)
        image_seq = self._select(ex, "image", recipe)
        return C.mix(text_seq, image_seq, recipe.intra_ratio, recipe.intra_policy, "intra_ratio",
                     recipe.attend_ratio), ex

    def attention_layer(self, recipe: Recipe) -> int:
        """The decoder layer (0-based) whose attention weights the image tokens: attention_layer, else the image rows'
        layer, as a hidden-state index h -> decoder layer h-1 (negative indices resolved)."""
        if recipe.attention_layer is not None:
            index, name = recipe.attention_layer, "attention_layer"
        else:
            index, name = recipe.layer_for(True), "image_layer" if recipe.image_layer is not None else "layer"
        return decoder_layer_for(index, self.models.vl.model.config.text_config.num_hidden_layers, name)

    def negative(self, recipe: Recipe) -> torch.Tensor | None:
        if recipe.guidance <= 0:
            return None
        if recipe.negative_vl_text is not None:
            return self.negative_vl(recipe)[0]
        return self.text_encoding(recipe.negative_prompt, "negative_prompt").embeds

    def negative_vl(self, recipe: Recipe) -> tuple[torch.Tensor, dict]:
        """issue 27: the negative caption from Qwen3-VL — its hidden states of negative_vl_text (no image) at
        negative_tokens and negative_layer (else layer) — and its account for the run record."""
        try:
            ex = self.extraction([], recipe.negative_vl_text, None)
        except UserError as exc:
            if exc.field != "vl_text":
                raise
            raise UserError(exc.problem, field="negative_vl_text", fix=exc.fix) from None
        layer = recipe.layer if recipe.negative_layer is None else recipe.negative_layer
        ex.check_layer(layer, "negative_layer" if recipe.negative_layer is not None else "layer")
        try:
            positions = ex.positions(recipe.negative_tokens)
        except UserError as exc:
            raise UserError(exc.problem, field="negative_tokens", value=recipe.negative_tokens) from None
        embeds = ex.select(recipe.negative_tokens, layer)
        return embeds, {"source": "vl", "vl_text": recipe.negative_vl_text, "tokens": recipe.negative_tokens,
                        "layer": layer, "positions": positions, "input_ids": ex.input_ids, "decoded": ex.decoded,
                        "length": int(embeds.shape[0])}

    # ---- recipe -> image ----
    def run(self, recipe: Recipe, prompt: str, refs: list[Reference],
            on_step: Callable[[int, int], None] | None = None) -> Result:
        cuda = self.models.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.models.device)
        cond = self.condition(recipe, prompt, refs)
        negative = self.negative(recipe)
        if recipe.guidance > 0 and recipe.negative_vl_text is not None:
            cond.negative = self.negative_vl(recipe)[1]  # (served by the extraction cache)
        budget = self.models.caption_budget
        for caption in cond.captions:
            check_caption(caption.shape[0], budget)
        self.models.prepare_generation()  # --offload cpu: the encoders leave the GPU before the DiT runs
        start = time.perf_counter()
        common = dict(seed=recipe.seed, steps=recipe.steps, width=recipe.width, height=recipe.height,
                      guidance=recipe.guidance, negative_embeds=negative, budget=budget, on_step=on_step)
        common["caption_weights"] = cond.weights
        common["attend_scope"] = recipe.attend_scope
        probe = None
        if self.share_probe and cond.mixes:
            per_token = self.models.pipe.vae_scale_factor * 2
            probe = ShareProbe(self.models.pipe.transformer, int(cond.embeds.shape[0]),
                               (recipe.height // per_token) * (recipe.width // per_token))
        common["probe"] = probe
        common["schedule"] = [(s.from_step, s.embeds, s.weights) for s in cond.schedule[1:]]
        if cond.text_branch is not None:
            common["vl_guidance"] = (recipe.vl_guidance, cond.text_branch)
        if cond.grids is not None:
            common["caption_grids"] = cond.grids
        if cond.blocks is not None:
            common["hide"] = (cond.blocks["rows"], cond.blocks["masked"])
        if recipe.strength is None:
            image = generate(self.models.pipe, cond.embeds, **common)
        else:
            image = generate(self.img2img_pipe, cond.embeds, init_image=refs[0].image, strength=recipe.strength,
                             **common)
        timings = dict(cond.timings, generation=time.perf_counter() - start)
        if probe is not None:
            record_realised_shares(cond, probe)
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


def record_realised_shares(cond: Conditioning, probe: ShareProbe) -> None:
    """Each attend mix's account gains `realised_share`: the share of the image tokens' attention to the mix's rows
    that reached its other source, in the probe's blocks, summed over heads, image tokens and steps (step 0's
    caption: with a schedule, the steps that read another caption count too)."""
    for account in cond.mixes:
        account["realised_share"] = round(probe.shares(mix_sides(cond.rows, account["mix"])), 6)
        account["realised_in"] = {"blocks": [f"layers.{i}" for i in probe.blocks], "forwards": probe.calls,
                                  "formula": REALISED_FORMULA}


REALISED_FORMULA = ("sum over probed joint blocks, denoising steps, heads and image-token queries of the softmax "
                    "attention on the mix's other-source caption rows / the same sum over all the mix's rows")


def check_attention(recipe: Recipe, attention: str | None) -> None:
    """Refuse, before any model runs, a weighted attend mix on an attention kernel that takes no mask."""
    if attention == "sdpa-flash" and recipe.vl_blocks is not None:
        raise UserError("takes no attention mask, and vl_blocks masks the VL rows' keys with one", field="attention",
                        value=attention, fix="use sdpa (the default) or sdpa-cudnn")
    if attention == "sdpa-flash" and recipe.attention_bias:
        name, ratio = next(((n, m[0]) for n, m in recipe.mixes.items() if m[1] == MixPolicy.ATTEND
                            and m[0] != NATURAL and 0 < m[0] < 1), ("alpha", next(iter(recipe.scheduled_alphas), "")))
        raise UserError(f"takes no attention mask, and the attend mix {name} {ratio:g} weights caption rows with one",
                        field="attention", value=attention,
                        fix=f"use sdpa (the default) or sdpa-cudnn, or {name} natural (plain concatenation, no "
                            "weights)")


def environment(models: Models | None = None) -> dict[str, Any]:
    """Library versions, device and dtype: recorded with every run."""
    import diffusers
    import transformers

    env: dict[str, Any] = {
        "vlbench": vlbench.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "diffusers": diffusers.__version__,
    }
    if models is not None:
        env.update(device=str(models.device), dtype=str(models.dtype).removeprefix("torch."),
                   zimage=models.spec.zimage, vl=models.spec.vl)
        if models.device.type == "cuda":
            env["gpu"] = torch.cuda.get_device_name(models.device)
        if getattr(models, "fast_settings", None) is not None:
            env["fast"] = models.fast_settings
    return env
