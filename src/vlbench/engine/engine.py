"""The engine: recipe + inputs -> conditioning tensor -> image, with every model loaded once.

An `Engine` owns the loaded models and the extraction cache; the CLI, the experiment runner and
the workbench's worker all drive one. It knows nothing about Textual, SQLite or argparse.
"""

from __future__ import annotations

import hashlib
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from vlbench.engine.encode import TextEncoding, encode_text
from vlbench.engine.extract import Extraction, extract, load_image
from vlbench.engine.generate import check_caption, generate
from vlbench.engine.models import Models
from vlbench.engine.recipe import IMAGE_SELECTIONS, Recipe
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
    rows: list[dict]  # per row: source ("vl" | "qwen3" | "mix"), role, position(s) and weight(s)
    extraction: Extraction | None = None
    text: TextEncoding | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def describe(self) -> dict:
        """JSON-ready account of the conditioning (the embed sidecar and every run record carry it)."""
        out: dict[str, Any] = {"length": int(self.embeds.shape[0]), "width": int(self.embeds.shape[1]),
                               "rows": self.rows}
        if self.extraction is not None:
            ex = self.extraction
            out["vl"] = {
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


class Engine:
    def __init__(self, models: Models):
        self.models = models
        self._extractions: dict[tuple, Extraction] = {}
        self._texts: dict[str, TextEncoding] = {}
        self.vl_forwards = 0  # distinct VL forwards run (the cache serves the rest)

    # ---- building blocks, each cached ----
    def extraction(self, refs: list[Reference], text: str | None, max_image_tokens: int | None) -> Extraction:
        budget = self.models.caption_budget
        key = (tuple(r.sha256 for r in refs), text, budget, max_image_tokens, self.models.spec.vl)
        if key not in self._extractions:
            self._extractions[key] = extract(self.models.vl, [r.image for r in refs], text, budget, max_image_tokens)
            self.vl_forwards += 1
        return self._extractions[key]

    def text_encoding(self, prompt: str, what: str = "--prompt") -> TextEncoding:
        if prompt not in self._texts:
            self._texts[prompt] = encode_text(self.models.text_pipe, prompt, what)
        return self._texts[prompt]

    # ---- recipe -> conditioning ----
    def condition(self, recipe: Recipe, prompt: str, refs: list[Reference]) -> Conditioning:
        if not isinstance(prompt, str):
            raise UserError("--prompt: must be text")
        if recipe.tokens in IMAGE_SELECTIONS and recipe.uses_vl and not refs:
            raise UserError(f"tokens {recipe.tokens}: needs a reference image; pass --image or choose --tokens text")
        timings: dict[str, float] = {}
        extraction = text = None
        if recipe.uses_vl:
            start = time.perf_counter()
            extraction = self.extraction(refs, recipe.resolve_vl_text(prompt), recipe.max_image_tokens)
            extraction.check_layer(recipe.layer)
            positions = extraction.positions(recipe.tokens)
            vl = extraction.select(recipe.tokens, recipe.layer)
            timings["extraction"] = time.perf_counter() - start
        if recipe.uses_text_encoder and recipe.alpha < 1:
            start = time.perf_counter()
            text = self.text_encoding(prompt)
            timings["text_encoding"] = time.perf_counter() - start

        start = time.perf_counter()
        if recipe.alpha == 1:
            embeds = vl
            rows = [{"source": "vl", "role": extraction.roles[p], "position": p, "layer": recipe.layer}
                    for p in positions]
        elif recipe.alpha == 0:
            embeds = text.embeds
            rows = [{"source": "qwen3", "position": i, "layer": -2} for i in range(embeds.shape[0])]
        else:
            vl_ids = [extraction.input_ids[p] for p in positions]
            if vl_ids != text.input_ids:
                raise UserError(
                    f"alpha {recipe.alpha}: the VL text tokens ({len(vl_ids)}) do not match Qwen3-4B's tokens "
                    f"({len(text.input_ids)}) one for one, so a position-wise mix is not defined; use alpha 0 or 1"
                )
            q = text.embeds.to(vl.device, torch.float32)
            embeds = ((1 - recipe.alpha) * q + recipe.alpha * vl.float()).to(vl.dtype)
            rows = [{"source": "mix", "role": extraction.roles[p], "position": p, "layer": recipe.layer,
                     "weights": {"vl": recipe.alpha, "qwen3": 1 - recipe.alpha}} for p in positions]
        timings["blend"] = time.perf_counter() - start
        return Conditioning(embeds=embeds, rows=rows, extraction=extraction, text=text, timings=timings)

    def negative(self, recipe: Recipe) -> torch.Tensor | None:
        if recipe.guidance <= 0:
            return None
        return self.text_encoding(recipe.negative_prompt, "--negative-prompt").embeds

    # ---- recipe -> image ----
    def run(self, recipe: Recipe, prompt: str, refs: list[Reference],
            on_step: Callable[[int, int], None] | None = None) -> Result:
        cuda = self.models.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.models.device)
        cond = self.condition(recipe, prompt, refs)
        negative = self.negative(recipe)
        check_caption(cond.embeds.shape[0], self.models.caption_budget)
        start = time.perf_counter()
        image = generate(self.models.pipe, cond.embeds, seed=recipe.seed, steps=recipe.steps, width=recipe.width,
                         height=recipe.height, guidance=recipe.guidance, negative_embeds=negative,
                         budget=self.models.caption_budget, on_step=on_step)
        timings = dict(cond.timings, generation=time.perf_counter() - start)
        peak = int(torch.cuda.max_memory_allocated(self.models.device)) if cuda else None
        return Result(image=image, conditioning=cond, timings=timings, peak_memory_bytes=peak)


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
