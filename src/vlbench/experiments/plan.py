"""Planning an experiment: every named recipe × references × prompt × seed as a Job, in an order that
lets each (references, VL text) extraction serve all its jobs back to back. Pure bookkeeping."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlbench.recipe import MultiImage
from vlbench.records import RunRecord, job_key, references_of


@dataclass(frozen=True)
class Job:
    name: str
    config_index: int
    recipe: Any  # vlbench.recipe.Recipe, with this job's seed
    prompt: str
    references: tuple  # engine.Reference, in order (one extraction over all of them, or one each: multi_image)
    key: str
    image: str  # PNG path relative to the output folder

    @property
    def reference(self):
        """The first reference (labels, grids)."""
        return self.references[0]

    @property
    def extractions(self) -> tuple[tuple[tuple[str, ...], str | None], ...]:
        """The (reference sha256s, VL text) extractions this job reads (the Engine's cache units)."""
        texts = self.recipe.vl_texts(self.prompt)
        shas = tuple(r.sha256 for r in self.references)
        if self.recipe.multi_image == MultiImage.SEPARATE and len(shas) > 1:
            return tuple(((sha,), text) for sha in shas for text in texts)
        return tuple((shas, text) for text in texts)

    def record(self, experiment: str) -> RunRecord:
        """The job's RunRecord before it runs: what is asked."""
        return RunRecord(prompt=self.prompt, recipe=self.recipe.to_dict(), seed=self.recipe.seed, name=self.name,
                         experiment=experiment, config_index=self.config_index, key=self.key, source="experiment",
                         references=references_of((Path(r.path).resolve(), r.sha256) for r in self.references))

    def label(self) -> str:
        return f"{self.name} ({Path(self.reference.path).name}, seed {self.recipe.seed})"


def _slug(text: str, limit: int = 32) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "empty"


def image_name(name: str, references, prompt: str, seed: int) -> str:
    """images/{config}__{reference}-{sha8}__{prompt slug}-{hash6}__s{seed}.png: readable and stable."""
    first = references[0]
    if len(references) == 1:
        ref = f"{_slug(Path(first.path).stem, 24)}-{first.sha256[:8]}"
    else:
        joined = hashlib.sha256("".join(r.sha256 for r in references).encode()).hexdigest()[:8]
        ref = f"{_slug(Path(first.path).stem, 16)}-x{len(references)}-{joined}"
    p = f"{_slug(prompt)}-{hashlib.sha256(prompt.encode()).hexdigest()[:6]}"
    return f"images/{name}__{ref}__{p}__s{seed}.png"


def reference_sets(references: list) -> list[tuple]:
    """Each item a Reference (its own job group) or a tuple of References one job reads together."""
    return [r if isinstance(r, tuple) else (r,) for r in references]


def plan(recipes: list, references: list, prompts: list[str], seeds: list[int] | None) -> list[Job]:
    """All jobs, ordered so each extraction's jobs run together. `references`: see `reference_sets`."""
    references = reference_sets(references)
    jobs = []
    for refs in references:
        shas = [r.sha256 for r in refs]
        for prompt in prompts:
            for named in recipes:
                for seed in (seeds if seeds else [named.recipe.seed]):
                    recipe = named.recipe.replace(seed=seed) if seeds else named.recipe
                    jobs.append(Job(named.name, named.index, recipe, prompt, tuple(refs),
                                    job_key(named.name, recipe.to_dict(), prompt, shas),
                                    image_name(named.name, refs, prompt, seed)))
    set_rank = {tuple(r.sha256 for r in refs): i for i, refs in enumerate(references)}
    prompt_rank = {p: i for i, p in enumerate(prompts)}
    text_rank: dict[tuple, int] = {}
    for job in jobs:  # first appearance in (references, prompt, config) order
        for ex in job.extractions:
            text_rank.setdefault(ex, len(text_rank))
    none_needed = (len(text_rank) + 1,)  # pure Qwen3-4B jobs last in their references' run
    return sorted(jobs, key=lambda j: (set_rank[tuple(r.sha256 for r in j.references)],
                                       tuple(sorted(text_rank[e] for e in j.extractions)) or none_needed,
                                       j.config_index, prompt_rank[j.prompt], j.recipe.seed))
