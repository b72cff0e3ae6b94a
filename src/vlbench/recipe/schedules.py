"""issue 17: schedules — which conditioning each step uses, as K:SOURCE entries (docs/schedules.md)."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Iterable

from vlbench.errors import UserError
from vlbench.recipe.values import _num
from vlbench.recipe.vocab import NATURAL, Curve, Source

if TYPE_CHECKING:
    from vlbench.recipe.schema import Recipe

SCHEDULE_EXAMPLE = "0:vl, 4:qwen3"
ALPHA_SOURCE = "alpha"  # a schedule source "alpha=R": the alpha mix (alpha_policy) at alpha R from that step


def parse_schedule(text: str) -> tuple[tuple[int, str], ...]:
    """"0:vl, 4:qwen3" -> ((0, "vl"), (4, "qwen3")): each entry K:SOURCE, K ascending from 0. Steps are checked
    against the recipe by its schedule rule."""
    entries: list[tuple[int, str]] = []
    parts = [p.strip() for p in re.split(r"[,\s]+", re.sub(r"\s*([:=])\s*", r"\1", text)) if p.strip()]
    if not parts:
        raise UserError("is empty", field="schedule", value=text, fix=f"write entries such as {SCHEDULE_EXAMPLE}, "
                                                                        "or leave it not set")
    for part in parts:
        match = re.fullmatch(r"(\d+):([A-Za-z0-9_.+-]+(?:=[^,\s]*)?)", part)
        if not match:
            raise UserError(f"entry {part!r} is not K:SOURCE", field="schedule", value=text,
                            fix=f"write e.g. {SCHEDULE_EXAMPLE} (from step K on, use SOURCE)")
        step, source = int(match.group(1)), match.group(2)
        if source.startswith(f"{ALPHA_SOURCE}="):
            source = _alpha_source(part, source[len(ALPHA_SOURCE) + 1:], text)
        elif source not in Source.values():
            raise UserError(f"entry {part!r} names an unknown source", field="schedule", value=text,
                            fix=f"sources: {', '.join(Source.values())}, or {ALPHA_SOURCE}=R")
        if entries and step <= entries[-1][0]:
            raise UserError(f"breakpoints out of order: step {step} comes after step {entries[-1][0]}",
                            field="schedule", value=text, fix="list the entries with their steps ascending")
        entries.append((step, source))
    if entries[0][0] != 0:
        raise UserError(f"starts at step {entries[0][0]}, so nothing conditions the steps before it",
                        field="schedule", value=text, fix=f"begin with 0:SOURCE, e.g. {SCHEDULE_EXAMPLE}")
    return tuple(entries)


def _alpha_source(part: str, number: str, text: str) -> str:
    """`alpha=R` as one spelling (R as %g), 0 < R < 1: the ends are the qwen3 and vl sources."""
    try:
        ratio = float(number)
    except ValueError:
        ratio = math.nan
    if not math.isfinite(ratio) or not 0 <= ratio <= 1:
        raise UserError(f"entry {part!r}: alpha must be a number in [0, 1]", field="schedule", value=text,
                        fix="write e.g. 3:alpha=0.5")
    if ratio in (0, 1):
        name = Source.QWEN3.value if ratio == 0 else Source.VL.value
        raise UserError(f"entry {part!r} is the {name} source", field="schedule", value=text,
                        fix=f"write {part.split(':')[0]}:{name}")
    return f"{ALPHA_SOURCE}={ratio:g}"


def schedule_alpha(source: str) -> float | None:
    """R of an `alpha=R` schedule source; None for the named sources."""
    return float(source[len(ALPHA_SOURCE) + 1:]) if source.startswith(f"{ALPHA_SOURCE}=") else None


def format_schedule(entries: Iterable[tuple[int, str]]) -> str:
    return ", ".join(f"{step}:{source}" for step, source in entries)


def _own_source(r: Recipe) -> str:
    """What the recipe's own conditioning is, as a schedule source: vl or qwen3 when it is one of them alone."""
    if not r.own_uses_qwen3:
        return Source.VL.value
    if not r.own_uses_vl:
        return Source.QWEN3.value
    return Source.RECIPE.value


def _rule_schedule(r: Recipe) -> None:
    """Breakpoints within the steps the sampler runs; no entry that changes nothing."""
    if r.schedule is None:
        return
    entries = r.schedule_entries
    n = r.run_steps
    for step, source in entries:
        if step >= n:
            ran = f"img2img runs {n} of steps {r.steps} at strength {_num(r.strength)}" if r.strength is not None \
                else f"steps {r.steps}"
            raise UserError(f"breakpoint {step}:{source} is past the last step ({ran}, counted 0 … {n - 1})",
                            field="schedule", value=r.schedule, fix=f"use breakpoints below {n}, or more steps")
    own = _own_source(r)
    same_as_own = f"{ALPHA_SOURCE}={r.alpha:g}" if r.own_used and r.curve == Curve.CONSTANT and r.alpha != NATURAL \
        else None
    canonical = [own if source == Source.RECIPE or source == same_as_own else source for _, source in entries]
    for (step, source), before, now in zip(entries[1:], canonical, canonical[1:]):
        if now == before:
            raise UserError(f"entry {step}:{source} conditions on what the step before it already uses ({now})",
                            field="schedule", value=r.schedule, fix="drop that entry")
    if len(entries) == 1 and canonical[0] == own:
        raise UserError(f"has no effect: {entries[0][1]} at every step is the recipe's own conditioning",
                        field="schedule", value=r.schedule, fix="drop it (default not set)")
