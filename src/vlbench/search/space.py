"""A search space file: which Recipe fields a search varies (a range or a list of values each), which it fixes,
what it optimises (objectives: metric means), under which constraints, and with which sampler.

Every name and value is checked against the Recipe schema's field metadata (kind, choices, lo/hi, multiple of)
and every metric against `vlbench.metrics.METRICS` when the file is read, before any model loads; each
mistake is one line naming the file and the key. Torch-free and Optuna-free: `sample(trial)` takes any object
with Optuna's `suggest_float / suggest_int / suggest_categorical`.

A sampled combination the Recipe refuses (a setting with no effect in it, e.g. an `alpha_policy` at
`alpha = 1`) is not run: the trial is recorded as `refused` with the Recipe's one-line reason (docs/search.md).
"""

from __future__ import annotations

import random
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlbench.errors import UserError
from vlbench.files import TooDeep, parse_toml, read_named_text
from vlbench.metrics import METRICS, check_available
from vlbench.recipe import REMOVED, Recipe, _check_field, field_default, field_infos, seeds_value

TOP_KEYS = ("name", "description", "seeds", "fixed", "space", "objectives", "constraints", "metrics", "sampler")
SAMPLERS = ("nsga2", "nsga3", "tpe")
SAMPLER_KEYS = ("kind", "population")
RANGE_KEYS = ("low", "high", "step", "log")
DIRECTIONS = ("maximize", "minimize")
NOT_SEARCHABLE = {
    "seed": "the search runs every trial on the same seeds (seeds = ... in the space file, or --seeds); drop it",
}
FEASIBILITY_DRAWS = 256  # random combinations tried (seeded) to find one valid recipe before anything runs
_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Param:
    """One searched Recipe field: a float or int range (`low`..`high`, optional `step`, `log`) or a list of values."""

    name: str
    kind: str  # "float" | "int" | "choice"
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False
    choices: tuple = ()

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name} in {list(self.choices)}"
        extra = (f" step {self.step}" if self.step is not None else "") + (" (log)" if self.log else "")
        return f"{self.name} in [{self.low}, {self.high}]{extra}"

    def suggest(self, trial) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def draw(self, rng: random.Random) -> Any:
        """A value drawn by `rng` (the feasibility check; the search itself samples through Optuna)."""
        if self.kind == "choice":
            return rng.choice(self.choices)
        if self.kind == "int":
            step = self.step or 1
            return self.low + step * rng.randint(0, (self.high - self.low) // step)
        if self.step is not None:
            return self.low + self.step * rng.randint(0, int((self.high - self.low) / self.step + 1e-9))
        return rng.choice((self.low, self.high, rng.uniform(self.low, self.high)))


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # maximize | minimize

    def to_dict(self) -> dict:
        return {"metric": self.metric, "direction": self.direction}


@dataclass(frozen=True)
class Constraint:
    """`metric <= bound` or `metric >= bound` on the trial's mean of the metric."""

    metric: str
    op: str
    bound: float

    @property
    def text(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"

    def violation(self, mean: float) -> float:
        """Optuna's constraint value: <= 0 when the trial satisfies it."""
        return mean - self.bound if self.op == "<=" else self.bound - mean


@dataclass(frozen=True)
class Space:
    name: str
    description: str
    fixed: dict[str, Any]
    params: tuple[Param, ...]
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...]
    metrics: tuple[str, ...]  # every metric scored for each trial (objectives and constraints among them)
    sampler: str = "nsga2"
    population: int | None = None  # NSGA-II/III generation size (None: Optuna's default, 50)
    seeds: tuple[int, ...] = ()
    path: Path = Path("space.toml")
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def sample(self, trial) -> dict[str, Any]:
        """The searched fields' values for one Optuna trial, in file order."""
        return {p.name: p.suggest(trial) for p in self.params}

    def recipe(self, values: dict[str, Any]):
        """The trial's Recipe: the fixed fields, then the sampled ones; a refused combination raises UserError."""
        return Recipe.from_dict({**self.fixed, **values})

    def check_feasible(self, n_refs: int) -> None:
        """Refuse a space in which no drawn combination is a valid recipe for `n_refs` references."""
        rng = random.Random(0)
        first: UserError | None = None
        for _ in range(FEASIBILITY_DRAWS):
            try:
                self.recipe({p.name: p.draw(rng) for p in self.params}).check_inputs(n_refs)
                return
            except UserError as exc:
                first = first or exc
        raise UserError(f"no valid recipe among {FEASIBILITY_DRAWS} combinations drawn from the space, e.g. "
                        f"{first.render()}", where=str(self.path),
                        fix="fix [fixed] or [space] so the searched fields have an effect together")


# ---------------------------------------------------------------- reading
def load_space(path: str | Path) -> Space:
    path = Path(path)
    return parse_space(read_named_text(path, "space", fix="give a .toml file"), path)


def parse_space(source: str, path: Path = Path("space.toml")) -> Space:
    try:
        data = parse_toml(source)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"not valid TOML ({exc})", where=str(path)) from None
    except TooDeep as exc:
        raise UserError(str(exc), where=str(path)) from None
    try:
        return _parse(data, path, source)
    except UserError as exc:
        raise exc.within(str(path)) from None


def _parse(data: dict, path: Path, source: str) -> Space:
    for key in data:
        if key not in TOP_KEYS:
            raise UserError(f"unknown key {key!r}; a space file has {', '.join(TOP_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise UserError("name: missing; add name = \"...\" at the top")
    if not isinstance(data.get("description", ""), str):
        raise UserError("description: must be a string")
    seeds: tuple[int, ...] = ()
    if "seeds" in data:
        seeds = tuple(seeds_value(data["seeds"]))
    fixed = _table(data, "fixed")
    for key, value in fixed.items():
        _check_name(key, "[fixed]")
        _check_value(key, value, "[fixed]")
    raw = _table(data, "space")
    if not raw:
        raise UserError("[space]: missing or empty; add a [space] table with at least one field to search, "
                        "e.g. alpha = { low = 0.0, high = 1.0 }")
    params = []
    for key, spec in raw.items():
        _check_name(key, "[space]")
        if key in fixed:
            raise UserError(f"{key}: both in [fixed] and in [space]; keep one")
        params.append(_param(key, spec))
    objectives = _objectives(data.get("objectives"))
    constraints = _constraints(data.get("constraints", []))
    wanted = [o.metric for o in objectives] + [c.metric for c in constraints]
    if "metrics" in data:
        metrics = _metric_list(data["metrics"])
        for o in objectives:
            if o.metric not in metrics:
                raise UserError(f"objective {o.metric}: not computed (metrics = {', '.join(metrics)}); "
                                f"add it to metrics")
        for c in constraints:
            if c.metric not in metrics:
                raise UserError(f"constraint {c.text!r}: {c.metric} is not computed (metrics = "
                                f"{', '.join(metrics)}); add it to metrics")
    else:
        metrics = tuple(dict.fromkeys(wanted))
    check_available(metrics)
    sampler, population = _sampler(_table(data, "sampler"), len(objectives))
    return Space(name=name.strip(), description=data.get("description", "").strip(), fixed=dict(fixed),
                 params=tuple(params), objectives=objectives, constraints=constraints, metrics=metrics,
                 sampler=sampler, population=population, seeds=seeds, path=path, source=source)


def _table(data: dict, key: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{key}: must be a table ([{key}])")
    return value


def _check_name(key: str, where: str) -> None:
    if key in NOT_SEARCHABLE:
        raise UserError(f"{where} {key}: {NOT_SEARCHABLE[key]}")
    if key in REMOVED:
        raise UserError(f"{where} {key}: {REMOVED[key]}")
    if key not in field_infos():
        raise UserError(f"{where}: unknown Recipe field {key!r}", fix=f"known fields: {', '.join(field_infos())}")


def _check_value(key: str, value: Any, where: str) -> None:
    """One value against its field's metadata (kind, choices, range, multiple of), as Recipe checks it."""
    info = field_infos()[key]
    if info.kind == "floats" and isinstance(value, list):
        value = tuple(value)
    if info.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    try:
        _check_field(key, info, value, field_default(key))
    except UserError as exc:
        raise exc.within(where) from None


def _param(key: str, spec: Any) -> Param:
    info = field_infos()[key]
    where = f"[space] {key}"
    if isinstance(spec, list):
        if info.kind == "floats":
            raise UserError(f"{where}: a list of weights cannot be searched; put {key} under [fixed]")
        if not spec:
            raise UserError(f"{where}: empty list of values; give at least two, or put {key} under [fixed]")
        for value in spec:
            _check_value(key, value, where)
        if len({repr(v) for v in spec}) != len(spec):
            raise UserError(f"{where}: a value is listed twice")
        if len(spec) == 1:
            raise UserError(f"{where}: one value is not a search; put {key} = {spec[0]!r} under [fixed]")
        return Param(key, "choice", choices=tuple(spec))
    if not isinstance(spec, dict):
        raise UserError(f"{where}: must be a range {{ low = …, high = … }} or a list of values [a, b, …]")
    if info.kind not in ("int", "float"):
        raise UserError(f"{where}: a {info.kind} field takes a list of values, not a range"
                        + (f" (one of {', '.join(info.choices.values())})" if info.choices else ""))
    for k in spec:
        if k not in RANGE_KEYS:
            raise UserError(f"{where}: unknown key {k!r}; a range has {', '.join(RANGE_KEYS)}")
    if "low" not in spec or "high" not in spec:
        raise UserError(f"{where}: a range needs low and high")
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    whole = info.kind == "int"
    for label, value in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
        ok = isinstance(value, int) if whole else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise UserError(f"{where}: {label} {value!r} must be a {'whole number' if whole else 'number'}")
    if not isinstance(log, bool):
        raise UserError(f"{where}: log must be true or false")
    if not whole:
        low, high = float(low), float(high)
        step = float(step) if step is not None else None
    if low > high:
        raise UserError(f"{where}: empty range: low {low} > high {high}", fix="swap them")
    if low == high:
        raise UserError(f"{where}: the range holds one value ({low}); put {key} = {low} under [fixed]")
    for value in (low, high):
        _check_value(key, value, where)
    if info.multiple_of:
        step = step if step is not None else info.multiple_of
        if step % info.multiple_of:
            raise UserError(f"{where}: step {step} must be a multiple of {info.multiple_of}")
    if step is not None:
        if step <= 0:
            raise UserError(f"{where}: step {step} must be > 0")
        if step > high - low:
            raise UserError(f"{where}: step {step} is wider than the range; the range holds one value")
        if log:
            raise UserError(f"{where}: log and step cannot be combined (Optuna samples one or the other)")
    if log and low <= 0:
        raise UserError(f"{where}: a log range needs low > 0")
    return Param(key, info.kind, low=low, high=high, step=step, log=log)


def _metric_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{where}: names no metric", fix=f"name one of {', '.join(METRICS)}")
    if name not in METRICS:
        raise UserError(f"{where}: unknown metric {name!r}", fix=f"choose from {', '.join(METRICS)}")
    return name


def _objectives(raw: Any) -> tuple[Objective, ...]:
    if raw is None or raw == []:
        raise UserError("objectives: missing; add objectives = [\"siglip\", \"style_gram\"] (metric names; "
                        "direction from the metric unless given as { metric = …, direction = … })")
    if not isinstance(raw, list):
        raise UserError("objectives: must be a list of metric names or { metric = …, direction = … } tables")
    out: list[Objective] = []
    for i, item in enumerate(raw, 1):
        where = f"objectives[{i}]"
        if isinstance(item, dict):
            for k in item:
                if k not in ("metric", "direction"):
                    raise UserError(f"{where}: unknown key {k!r}; an objective has metric and direction")
            metric = _metric_name(item.get("metric"), where)
            direction = item.get("direction", "maximize" if METRICS[metric].higher_is_better else "minimize")
            if direction not in DIRECTIONS:
                raise UserError(f"{where}: direction {direction!r}: use maximize or minimize")
        else:
            metric = _metric_name(item, where)
            direction = "maximize" if METRICS[metric].higher_is_better else "minimize"
        if any(o.metric == metric for o in out):
            raise UserError(f"{where}: {metric} is already an objective")
        out.append(Objective(metric, direction))
    return tuple(out)


def _constraints(raw: Any) -> tuple[Constraint, ...]:
    if not isinstance(raw, list):
        raise UserError("constraints: must be a list such as [\"content_leak <= 0.5\"]")
    out = []
    for i, item in enumerate(raw, 1):
        where = f"constraints[{i}]"
        match = _CONSTRAINT.match(item) if isinstance(item, str) else None
        if match is None:
            raise UserError(f"{where}: {item!r} is not 'metric <= number' or 'metric >= number'")
        metric = _metric_name(match.group(1), where)
        out.append(Constraint(metric, match.group(2), float(match.group(3))))
    return tuple(out)


def _metric_list(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        raise UserError("metrics: must be a non-empty list of metric names")
    return tuple(dict.fromkeys(_metric_name(m, f"metrics[{i}]") for i, m in enumerate(raw, 1)))


def _sampler(raw: dict, n_objectives: int) -> tuple[str, int | None]:
    for k in raw:
        if k not in SAMPLER_KEYS:
            raise UserError(f"[sampler]: unknown key {k!r}; it has {', '.join(SAMPLER_KEYS)}")
    kind = raw.get("kind", "nsga2")
    if kind not in SAMPLERS:
        raise UserError(f"[sampler] kind {kind!r}: unknown sampler", fix=f"use {', '.join(SAMPLERS)}")
    population = raw.get("population")
    if population is not None:
        if kind == "tpe":
            raise UserError("[sampler] population: has no effect with kind tpe (it is NSGA-II/III's generation "
                            "size); drop it")
        if isinstance(population, bool) or not isinstance(population, int) or population < 2:
            raise UserError(f"[sampler] population {population!r}: must be a whole number >= 2")
    return kind, population
