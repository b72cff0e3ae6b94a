"""One job, one path: recipe + references + prompt + seed -> image + RunRecord, and what a failure was.

`execute` is called by the workbench's worker, the experiment runner, the Ray actors and `vlbench
generate`; `classify` is the one failure classifier. Nothing here writes files or touches the store:
the caller decides where the PNG and the record go. The module imports no torch at import time
(the worker's module is imported by the workbench before its first paint).
"""

from __future__ import annotations

import logging
import re
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from vlbench.errors import Interrupt, UserError, one_line  # noqa: F401 — Interrupt: jobs.Interrupt for callers
from vlbench.recipe import Normalization
from vlbench.recipe import Recipe
from vlbench.records import RunRecord, vl_extractions

log = logging.getLogger("vlbench.jobs")


class Cancelled(Interrupt):
    """The user cancelled the job: it ends as cancelled."""


class Stopping(Interrupt):
    """The worker is stopping: the job goes back to the queue."""


class NonFinite(Exception):
    """NaN/inf in the conditioning or the image; the message names the stage and is the job's failure reason."""


@dataclass(frozen=True)
class Failure:
    kind: str  # one of records.FAILURES
    reason: str  # one line, in the caller's words for inputs
    fatal: bool = False  # the process cannot run another job (a CUDA context lost to a device-side assert)
    data: dict | None = None  # the failure as data (RunRecord.error_data): each front end words it


@dataclass
class Outcome:
    record: RunRecord  # status done or failed, every figure filled in
    image: Any = None  # PIL.Image when done
    failure: Failure | None = None


def execute(engine, record: RunRecord, refs: list, *, on_step: Callable[[int, int], None] | None = None,
            render: Callable[[UserError], str] = str) -> Outcome:
    """Run the job `record` describes (prompt, references, recipe) on `engine`; `refs` are its references opened.

    Returns the record filled in: done with timings, peak memory, caption length, the compact conditioning and
    the environment; or failed with a classified one-line reason (`render` words input errors for the caller).
    An Interrupt raised by `on_step` propagates."""
    import numpy as np

    started = time.time()
    load0 = sum(engine.models.load_seconds.values())
    forwards0 = engine.vl_forwards
    rec = record.replace(status="running", started_at=started, error=None, failure=None, error_data=None)
    image = failure = None
    try:
        recipe = Recipe.from_dict(record.recipe)
        # NaN latents reach the decoder's float -> uint8 cast; make that cast raise (errstate is per thread).
        with np.errstate(invalid="raise"):
            try:
                result = engine.run(recipe, record.prompt, refs, on_step=on_step)
            except FloatingPointError as exc:  # NaN latents: at a step (engine.generate) or at the decoder's cast
                raise NonFinite(_nan_reason(engine, recipe, record.prompt, refs, str(exc))) from None
        check_conditioning(engine, recipe, result.conditioning)
    except Interrupt:
        raise
    except Exception as exc:  # noqa: BLE001 — one bad job never ends a sweep or a worker
        failure = classify(exc, render)
        rec = rec.replace(status="failed", error=failure.reason, failure=failure.kind, error_data=failure.data,
                          timings={})
    else:
        image = result.image
        rec = _done(rec, engine, result)
    loaded = sum(engine.models.load_seconds.values()) - load0
    rec.timings = {**rec.timings, "model_load": loaded}
    rec.vl_forwards = engine.vl_forwards - forwards0
    rec.finished_at = time.time()
    return Outcome(rec, image, failure)


def _done(rec: RunRecord, engine, result) -> RunRecord:
    environment = engine.environment()
    if result.batch is not None:  # --batch: how many images shared this one's DiT call (engine/batching.py)
        environment = {**environment, "batch": result.batch}
    return rec.replace(status="done", timings={"extraction": 0.0, "blend": 0.0, **result.timings},
                       peak_memory_bytes=result.peak_memory_bytes,
                       caption_tokens=int(result.conditioning.embeds.shape[0]),
                       conditioning=compact_conditioning(result.conditioning), environment=environment)


def execute_batch(engine, records: list[RunRecord], refs: list[list], *,
                  on_step: Callable[[int, int], None] | None = None, render: Callable[[UserError], str] = str,
                  pad_to: int | None = None) -> list[Outcome]:
    """`execute` for jobs of one batch shape (engine.batching.batch_key), their images in shared DiT calls
    (`--batch`): one Outcome per record, in order. A job that fails in the batch, or whose shared call failed,
    runs again alone through `execute`, so its failure reads as without --batch. An Interrupt propagates.

    Each done record's environment has "batch": {"size", "position"}; timings' generation is its share of the
    call (call seconds / size) and batch_generation the whole call; vl_forwards and model_load are each job's
    own conditioning's, and the first job of the batch also carries the DiT's load if it happened then."""
    import numpy as np

    from vlbench.engine.batching import Item, run_batch

    started = time.time()
    try:
        items = [Item(Recipe.from_dict(r.recipe), r.prompt, list(rf))
                 for r, rf in zip(records, refs)]
    except Exception:  # noqa: BLE001 — a recipe that does not parse: every job alone, each says why
        return [execute(engine, r, list(rf), on_step=on_step, render=render) for r, rf in zip(records, refs)]
    from vlbench.engine.batching import batch_key

    keys = {batch_key(item.recipe) for item in items}
    if len(items) == 1 or len(keys) != 1 or None in keys:  # nothing to share: each alone, as without --batch
        outcomes = [execute(engine, r, list(rf), on_step=on_step, render=render) for r, rf in zip(records, refs)]
        for outcome in outcomes:
            if outcome.record.status == "done":
                outcome.record.environment = {**outcome.record.environment, "batch": {"size": 1, "position": 0}}
        return outcomes
    conds, forwards, loads = {}, [0] * len(items), [0.0] * len(items)
    for i, item in enumerate(items):
        load0, forwards0 = sum(engine.models.load_seconds.values()), engine.vl_forwards
        try:
            conds[i] = engine.condition(item.recipe, item.prompt, item.refs)
            check_conditioning(engine, item.recipe, conds[i])
        except Interrupt:
            raise
        except Exception:  # noqa: BLE001 — it runs alone below and fails there, classified
            conds.pop(i, None)
        forwards[i] = engine.vl_forwards - forwards0
        loads[i] = sum(engine.models.load_seconds.values()) - load0
    load0 = sum(engine.models.load_seconds.values())
    with np.errstate(invalid="raise"):
        results = run_batch(engine, items, on_step=on_step, conds=conds, pad_to=pad_to)
    loads[0] += sum(engine.models.load_seconds.values()) - load0
    finished = time.time()
    outcomes = []
    for i, (record, result) in enumerate(zip(records, results)):
        if isinstance(result, BaseException):
            outcome = execute(engine, record, list(refs[i]), on_step=on_step, render=render)
            if outcome.record.status == "done":  # it ran alone after all
                outcome.record.environment = {**outcome.record.environment, "batch": {"size": 1, "position": 0}}
            outcomes.append(outcome)
            continue
        rec = _done(record.replace(status="running", started_at=started, error=None, failure=None, error_data=None),
                    engine, result)
        rec.timings = {**rec.timings, "model_load": loads[i]}
        rec.vl_forwards = forwards[i]
        rec.finished_at = finished
        outcomes.append(Outcome(rec, result.image, None))
    return outcomes


def classify(exc: BaseException, render: Callable[[UserError], str] = str) -> Failure:
    """What kind of failure `exc` is, in one line (`render` words an input error) and as data (`Failure.data`: the
    same for every caller, for each front end to word). Bugs are logged with their traceback."""
    failure = _classify(exc, render)
    data = exc.to_data(failure.kind) if isinstance(exc, UserError) else {"kind": failure.kind, "message": failure.reason}
    return Failure(failure.kind, failure.reason, failure.fatal, data)


def _classify(exc: BaseException, render: Callable[[UserError], str]) -> Failure:
    if isinstance(exc, UserError):
        return Failure("input", one_line(render(exc)))
    if isinstance(exc, NonFinite):
        return Failure("non_finite", one_line(exc))
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        detail = one_line(exc)
        detail = detail if len(detail) <= 200 else detail[:199] + "…"
        return Failure("out_of_memory", f"out of memory: {detail}; lower width/height or max_image_tokens, "
                                        "or free GPU memory")
    reason = one_line(f"{type(exc).__name__}: {exc}")
    if type(exc).__name__ == "AcceleratorError" or "device-side assert" in reason or "CUDA error" in reason:
        # A device-side assert poisons this process's CUDA context: every later job would fail too.
        return Failure("cuda_fatal", reason + " (CUDA context lost: restart vlbench)", fatal=True)
    log.error("job failed with an unexpected error\n%s", "".join(traceback.format_exception(exc)))
    return Failure("bug", reason)


def _finite(tensor) -> bool:
    import torch

    return bool(torch.isfinite(tensor).all())


def _nan_reason(engine, recipe, prompt: str, refs, detail: str | None = None) -> str:
    """Which stage went non-finite: the conditioning (re-derived from the cache, cheap) or the image."""
    try:
        cond = engine.condition(recipe, prompt, refs)
        reason = nonfinite_stage(engine, recipe, cond)
        if reason is not None:
            return reason
    except Exception:  # noqa: BLE001
        log.exception("re-deriving the conditioning to locate a NaN")
    where = f" ({detail})" if detail else ""
    return (f"NaN in the image: the generated latents are not finite{where}; try dtype bf16/fp32 instead of fp16, "
            "or another layer or token selection")


def check_conditioning(engine, recipe, cond) -> None:
    """NonFinite, naming the stage, when the conditioning holds NaN/inf (before it is used or written)."""
    for caption in cond.captions:  # a schedule's later captions too
        if not _finite(caption):
            raise NonFinite(nonfinite_stage(engine, recipe, cond) or _count("NaN in the conditioning", caption))


def nonfinite_stage(engine, recipe, cond) -> str | None:
    """One line naming the first stage whose output is not finite, in the order the conditioning is built:
    Qwen3-VL's hidden states at the layers read, Qwen3-4B's encoding, the calibration statistics a
    normalisation reads, then the normalisation or blend itself. None when the conditioning is finite."""
    if _finite(cond.embeds):
        return None
    layers = {v for v in (recipe.layer, recipe.image_layer, recipe.text_layer, getattr(recipe, "style_layer", None),
                          getattr(recipe, "content_layer", None)) if v is not None}
    for ex in cond.extractions:
        for layer in sorted(layers):
            try:
                index = ex.check_layer(layer)
            except UserError:
                continue
            if not _finite(ex.hidden_states[index]):
                return _count(f"NaN in the conditioning: Qwen3-VL's hidden states at layer {layer}",
                              ex.hidden_states[index], "use dtype bf16 or fp32 (fp16 overflows), or another layer")
    if cond.text is not None and not _finite(cond.text.embeds):
        return _count("NaN in the conditioning: Qwen3-4B's encoding of the prompt", cond.text.embeds,
                      "use dtype bf16 or fp32 (fp16 overflows)")
    if recipe.normalization != Normalization.NONE:
        stats = _bad_calibration(engine, recipe, layers)
        if stats:
            return (f"NaN in the conditioning after {recipe.normalization} normalisation (calibration stats for "
                    f"{stats} are empty or not finite); re-run vlbench calibrate")
        return _count(f"NaN in the conditioning after {recipe.normalization} normalisation", cond.embeds,
                      "try normalization none, or another layer")
    return _count("NaN in the conditioning after the blend", cond.embeds, "check the weights and ratios")


def _bad_calibration(engine, recipe, layers) -> str | None:
    """'qwen3 layer -2 text' when those statistics are missing, empty or not finite."""
    import torch

    from vlbench.engine.calibrate import load_stats

    try:
        stats = load_stats(recipe.calibration, engine.models)
    except UserError:
        return None
    for model, layer in [("qwen3", -2), *(("vl", l) for l in sorted(layers))]:
        try:
            values = stats.get(model, layer, "text")
        except UserError:
            continue
        for name, t in values.items():
            if t.numel() == 0 or not bool(torch.isfinite(t).all()) or (name != "mean" and bool((t <= 0).any())):
                return f"{model} layer {layer} text"
    return None


def _count(stage: str, tensor, fix: str | None = None) -> str:
    import torch

    bad = int((~torch.isfinite(tensor)).sum())
    return f"{stage} ({bad} of {tensor.numel()} values)" + (f"; {fix}" if fix else "")


_REPEATED_SPECIAL = re.compile(r"(<\|[^|<>]+\|>)\1{3,}")


def compact_conditioning(cond) -> dict:
    """Conditioning.describe() without its per-row list: role runs instead of one role per position.

    Token ids stay exact (the record must reproduce the input); the decoded text squeezes runs of one
    special token ("<|image_pad|>×256"); role_counts/source_counts summarise the rows. The one shape of
    `conditioning` in every record.
    """
    info = cond.describe()
    rows = info.pop("rows", [])
    info["role_counts"] = dict(Counter(_row_role(r) for r in rows))
    info["source_counts"] = dict(Counter(_row_source(r) for r in rows))
    for entry in info.get("schedule", []):  # each step's caption, counted as the first one is
        entry_rows = entry.pop("rows", [])
        entry["role_counts"] = dict(Counter(_row_role(r) for r in entry_rows))
        entry["source_counts"] = dict(Counter(_row_source(r) for r in entry_rows))
    for _, vl in vl_extractions(info):
        vl["role_runs"] = _runs(vl.pop("roles", []))
        vl["decoded"] = _REPEATED_SPECIAL.sub(
            lambda m: f"{m.group(1)}×{len(m.group(0)) // len(m.group(1))}", vl.get("decoded") or "")
    return info


def _row_role(row: dict) -> str:
    """A row's role, through mixes: a mixed row counts under its base row's role."""
    while "role" not in row and isinstance(row.get("base"), dict):
        row = row["base"]
    if "role" in row:
        return str(row["role"])
    if "mix" in row:
        return f"{row['mix']} mix"
    return str(row.get("source"))


def _row_source(row: dict) -> str:
    while "source" not in row and isinstance(row.get("base") or row.get("first"), dict):
        row = row.get("base") or row.get("first")
    return str(row.get("source"))


def _runs(items: list) -> list[list]:
    out: list[list] = []
    for item in items:
        if out and out[-1][0] == item:
            out[-1][1] += 1
        else:
            out.append([item, 1])
    return out
