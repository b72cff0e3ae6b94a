"""RunRecord: the one description of a run — what was asked, what came out, what it cost.

Three serialisations, the same field names: a row of the run store (vlbench.store), a line of an
output folder's results.jsonl (vlbench.experiments.results) and the `vlbench` text chunk of the PNG
(`png_metadata`). The schema is versioned (`schema`); `from_json` reads every earlier version.
Torch-free.
"""

from __future__ import annotations

import dataclasses
import re
import hashlib
import json
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from vlbench.recipe import key_dict, upgrade_recipe

RECORD_VERSION = 3  # 3: recipes of recipe schema 3 (attend ratios are shares; vlbench.recipe.upgrade_recipe)
STATUSES = ("pending", "running", "done", "failed", "cancelled")
# How a failure is classified (vlbench.jobs.classify): what the user reads next to the one-line reason.
FAILURES = ("input", "out_of_memory", "non_finite", "cuda_fatal", "bug", "interrupted", "store")


@dataclass
class RunRecord:
    prompt: str = ""
    references: list[dict] = field(default_factory=list)  # [{"path": absolute path, "sha256": hex}], in order
    recipe: dict = field(default_factory=dict)  # Recipe.to_dict(), complete
    seed: int = 0
    name: str | None = None  # an experiment's config name
    experiment: str | None = None
    config_index: int | None = None  # the config's position in its type file
    key: str | None = None  # job key: config name + recipe + prompt + references (stable across processes)
    source: str = "tui"  # tui | cli | experiment
    status: str = "pending"  # one of STATUSES
    error: str | None = None  # one line; the traceback of a bug goes to the log
    failure: str | None = None  # one of FAILURES when failed
    # the failure as data (errors.UserError.to_data: kind, message; field, value, fix, where for an input error):
    # each front end words it (cli.common.failure_text, tui.wording.failure_text); None in rows made before it,
    # which read as their `error` line
    error_data: dict | None = None
    image: str | None = None  # the PNG: absolute in the store, relative to the folder in results.jsonl
    image_sha256: str | None = None  # of the PNG's bytes, to verify a done image on resume
    started_at: float | None = None  # unix seconds
    finished_at: float | None = None
    timings: dict = field(default_factory=dict)  # seconds: extraction, text_encoding, blend, generation, model_load, save
    peak_memory_bytes: int | None = None  # torch.cuda.max_memory_allocated during the job; null off GPU
    caption_tokens: int | None = None  # the conditioning's length
    vl_forwards: int = 0  # VL forwards this job ran (0 when the extraction cache served it)
    conditioning: dict = field(default_factory=dict)  # jobs.compact_conditioning: token ids, decoded input, counts
    environment: dict = field(default_factory=dict)  # library versions, device, dtype, models
    metrics: dict = field(default_factory=dict)  # metric name -> value (vlbench score)
    schema: int = RECORD_VERSION

    # ---- serialisations ----
    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(RunRecord)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunRecord":
        data = upgrade(data)
        known = {f.name for f in fields(RunRecord)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def png_metadata(self) -> dict[str, Any]:
        """How the image was made — a function of the inputs and the environment, so the same job gives the same
        PNG bytes on any executor. What it cost (timings, memory, times) and what exists only once the PNG does
        stay in the record."""
        return {k: v for k, v in self.to_json().items() if k not in _NOT_IN_PNG}

    def replace(self, **changes: Any) -> "RunRecord":
        return dataclasses.replace(self, **changes)

    @property
    def reference_paths(self) -> list[str]:
        return [r["path"] for r in self.references]

    @property
    def duration(self) -> float | None:
        """Seconds from start to finish (None while queued or running)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


_NOT_IN_PNG = {"image", "image_sha256", "metrics", "status", "error", "failure", "error_data", "timings", "started_at",
               "finished_at", "peak_memory_bytes", "vl_forwards"}


def extraction_names(count: int, dual: bool) -> list[str]:
    """The record's key for each Qwen3-VL extraction of a conditioning, in order: a dual recipe's content pass "vl"
    and style pass "vl_style"; otherwise "vl" (the one extraction, or under multi_image separate the first
    reference's), then "vl_ref2", "vl_ref3", … (each further reference's own extraction)."""
    if dual:
        return ["vl", "vl_style"][:count]
    return ["vl", *(f"vl_ref{i}" for i in range(2, count + 1))]


def vl_extractions(conditioning: dict | None) -> list[tuple[str, dict]]:
    """(key, entry) of each Qwen3-VL extraction a conditioning record holds, in the order extraction_names gives."""
    cond = conditioning or {}
    refs = sorted((k for k in cond if re.fullmatch(r"vl_ref\d+", k)), key=lambda k: int(k[6:]))
    return [(k, cond[k]) for k in ("vl", "vl_style", *refs) if isinstance(cond.get(k), dict)]


def references_of(paths_and_hashes) -> list[dict]:
    """[{"path", "sha256"}] from (path, sha256) pairs (sha256 may be None when unknown)."""
    return [{"path": str(p), "sha256": s} for p, s in paths_and_hashes]


def references_key(row: dict) -> str:
    """The sha256s of a row's references, joined: what groups its images (one reference: its sha256)."""
    return "+".join(r.get("sha256") or r["path"] for r in row.get("references", []))


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Any earlier serialisation (results.jsonl v1 rows, store rows before v2) as the current one."""
    if data.get("schema") == RECORD_VERSION:
        return data
    out = dict(data)
    if "reference" in out and "references" not in out:  # results.jsonl v1: one reference
        out["references"] = references_of([(out.pop("reference"), out.pop("reference_sha256", None))])
    if "peak_vram_bytes" in out:
        out.setdefault("peak_memory_bytes", out.pop("peak_vram_bytes"))
    if "output_path" in out:
        out.setdefault("image", out.pop("output_path"))
    if "images" in out and "references" not in out:
        out["references"] = references_of((p, None) for p in out.pop("images"))
    for key in ("started_at", "finished_at"):
        if isinstance(out.get(key), str):
            out[key] = _epoch(out[key])
    if isinstance(out.get("recipe"), dict):  # records before 3: attend ratios were per-token odds, read as such

        out["recipe"] = upgrade_recipe(out["recipe"], 2)
    out["schema"] = RECORD_VERSION
    return out


def _epoch(text: str) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def job_key(name: str, recipe: dict, prompt: str, reference_sha256: list[str]) -> str:
    """Stable across processes: config name + full recipe (seed included) + prompt + reference contents.

    One reference hashes as it did before multi-reference jobs, so earlier folders still resume."""
    payload: dict[str, Any] = {"name": name, "recipe": key_dict(recipe), "prompt": prompt, "seed": recipe.get("seed")}
    if len(reference_sha256) == 1:
        payload["reference_sha256"] = reference_sha256[0]
    else:
        payload["reference_sha256s"] = list(reference_sha256)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
