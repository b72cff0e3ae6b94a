"""Experiment types as data: a TOML file names a question and the configs that answer it.

A type file has `name`, optional `description` and `question`, optional `seeds` (the seeds every
config runs with unless the run names others: a number, a list, or text such as "0-3"), a `[base]`
table of Recipe fields shared by every config, and `[[configs]]`, each a `name`, optional
`quick = false` (dropped by --quick) and Recipe fields. `references = "together"` makes every job read all
the run's references (a config's multi_image says jointly or one extraction each); the default, "each", runs
every config on each reference. `baseline = "CONFIG"` names the config `vlbench stats` and the report compare
the others with when no --baseline is given (default: the first config); run.json records it, as it records
`equivalence = true` (or a table metric = margin): the report then tests equivalence (docs/stats.md). Parsing checks the file's shape; `recipes()` builds the Recipes (and so
checks every key and value against Recipe). Every error is one line naming the file and the key.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlbench.errors import UserError
from vlbench.recipe import MultiImage
from vlbench.files import NotAFile, TooDeep, parse_toml, read_text_file
from vlbench.recipe import Recipe, check_keys, seeds_value

TYPES_DIR = Path(__file__).parent / "types"
TOP_KEYS = ("name", "description", "question", "seeds", "references", "base", "configs", "baseline", "equivalence")
REFERENCES = ("each", "together")  # one job group per reference, or every job reads all of them
CONFIG_META = ("name", "quick")  # config keys that are not Recipe fields
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,79}$")  # config names become file names (255 bytes at most)


@dataclass(frozen=True)
class Config:
    """One named config of a type: its own Recipe fields (over the type's base)."""

    name: str
    fields: dict[str, Any]
    quick: bool = True  # kept by --quick

    def describe(self) -> str:
        return " ".join(f"{k}={_show(v)}" for k, v in self.fields.items())


@dataclass(frozen=True)
class NamedRecipe:
    name: str
    index: int  # position in the type file (grids and reports keep this order)
    recipe: Any  # vlbench.engine.recipe.Recipe


@dataclass(frozen=True)
class ExperimentType:
    name: str
    description: str
    question: str
    base: dict[str, Any]
    configs: tuple[Config, ...]
    path: Path
    source: str  # the file's text, recorded with every run
    seeds: tuple[int, ...] = ()  # the type's default seeds (empty: each config's own seed)
    references: str = "each"  # each: every config runs on each reference; together: every job reads them all
    baseline: str | None = None  # the config statistics compare the others with (None: the first)
    # equivalence tests in `vlbench stats` and the report: True (each metric's default margin), {metric: margin}
    equivalence: bool | dict | None = None

    def reference_sets(self, refs: list) -> list[tuple]:
        """The references of each job group: one each, or all of them together."""
        return [tuple(refs)] if self.references == "together" else [(r,) for r in refs]

    def selected(self, quick: bool = False) -> list[Config]:
        return [c for c in self.configs if c.quick or not quick]

    def recipes(self, quick: bool = False, overrides: dict[str, Any] | None = None) -> list[NamedRecipe]:
        """Each config as a Recipe: base, then the config's fields, then `overrides` (the run's settings)."""
        try:
            check_keys(self.base)
        except UserError as exc:
            raise exc.within(f"{self.path}: [base]") from None
        out = []
        for index, config in enumerate(self.configs):
            where = f"{self.path}: config {config.name!r}"
            try:
                check_keys(config.fields)
            except UserError as exc:
                raise exc.within(where) from None
            if quick and not config.quick:
                continue
            recipe = Recipe.from_dict({**self.base, **config.fields, **(overrides or {})}, where=where)
            out.append(NamedRecipe(config.name, index, recipe))
        return out

    def varying(self) -> dict[str, list]:
        """Recipe fields whose value differs between configs (the fields a config sets)."""
        keys = {k for c in self.configs for k in c.fields}
        out = {}
        for key in sorted(keys):
            values = [c.fields.get(key, self.base.get(key)) for c in self.configs]
            if len({repr(v) for v in values}) > 1:
                out[key] = values
        return out


# ---- finding types ----
def builtin_types() -> list[Path]:
    return sorted(TYPES_DIR.glob("*.toml"))


def builtin_names() -> list[str]:
    return [p.stem for p in builtin_types()]


def resolve(name_or_path: str) -> Path:
    """A built-in type's name, or a path to a type file."""
    candidate = Path(name_or_path).expanduser()
    looks_like_path = name_or_path.endswith(".toml") or "/" in name_or_path or "\\" in name_or_path
    if looks_like_path or candidate.is_file():
        if not candidate.is_file():
            raise UserError("no such file", field="experiment", value=name_or_path)
        return candidate
    path = TYPES_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise UserError("unknown type", field="experiment", value=name_or_path,
                        fix=f"choose one of {', '.join(builtin_names())} or give the path of a type file "
                            "(see `vlbench experiments`)")
    return path


def load_type(name_or_path: str | Path) -> ExperimentType:
    """Read and check a type file's shape (keys, names, duplicates). Recipes are built by `recipes()`."""
    path = resolve(str(name_or_path)) if not isinstance(name_or_path, Path) else name_or_path

    try:
        source = read_text_file(path)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except NotAFile as exc:
        raise UserError(f"{path}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read it ({exc.__class__.__name__})") from None
    try:
        data = parse_toml(source)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    except TooDeep as exc:
        raise UserError(f"{path}: {exc}") from None
    return parse_type(data, path, source)


def parse_type(data: dict, path: Path, source: str = "") -> ExperimentType:
    for key in data:
        if key not in TOP_KEYS:
            raise UserError(f"{path}: unknown key {key!r}; a type file has {', '.join(TOP_KEYS)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{path}: name: missing; add name = \"...\" at the top")
    for key in ("description", "question"):
        if not isinstance(data.get(key, ""), str):
            raise UserError(f"{path}: {key}: must be a string")
    seeds: tuple[int, ...] = ()
    if "seeds" in data:
        try:
            seeds = tuple(seeds_value(data["seeds"]))
        except UserError as exc:
            raise exc.within(str(path)) from None
    references = data.get("references", "each")
    if references not in REFERENCES:
        raise UserError(f"unknown value {references!r}", field="references", where=str(path),
                        fix=f"use {' or '.join(REFERENCES)}")
    base = data.get("base", {})
    if not isinstance(base, dict):
        raise UserError(f"{path}: base: must be a table ([base])")
    for key, value in base.items():
        _check_value(path, "[base]", key, value)
    raw = data.get("configs")
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{path}: configs: missing; add at least one [[configs]] table with a name")
    configs: list[Config] = []
    seen: set[str] = set()
    for i, item in enumerate(raw, 1):
        if not isinstance(item, dict):
            raise UserError(f"{path}: configs: entry {i} must be a table ([[configs]])")
        cname = item.get("name")
        if not isinstance(cname, str) or not cname:
            raise UserError(f"{path}: configs[{i}]: name: missing; every [[configs]] needs a name")
        if not _NAME.match(cname):
            raise UserError(f"{path}: config {cname[:60]!r}: name: use up to 80 letters, digits and . _ + = - "
                            "(it becomes part of file names)")
        if cname in seen:
            raise UserError(f"{path}: config {cname!r}: name: duplicate config name; names must be unique")
        seen.add(cname)
        quick = item.get("quick", True)
        if not isinstance(quick, bool):
            raise UserError(f"{path}: config {cname!r}: quick: {quick!r} must be true or false")
        own = {k: v for k, v in item.items() if k not in CONFIG_META}
        for key, value in own.items():
            _check_value(path, f"config {cname!r}", key, value)
        configs.append(Config(cname, own, quick))
    if references == "each":
        check_joint_rule(base, configs, str(path))
    baseline = data.get("baseline")
    if baseline is not None and baseline not in seen:
        raise UserError(f"{path}: baseline: {baseline!r} is not a config of this type; name one of its [[configs]]")
    equivalence = data.get("equivalence")
    if equivalence is not None and not isinstance(equivalence, bool) and not (
            isinstance(equivalence, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                                  and math.isfinite(v) for v in equivalence.values())):
        raise UserError(f"{path}: equivalence: {equivalence!r} must be true, or a table of positive margins "
                        "(metric = margin)")
    return ExperimentType(name=name.strip(), description=data.get("description", "").strip(),
                          question=data.get("question", "").strip(), base=dict(base), configs=tuple(configs),
                          path=path, source=source, seeds=seeds, references=references, baseline=baseline,
                          equivalence=equivalence)


JOINT_FIX = ('add references = "together" at the top of the type (every job reads all the references), or drop '
             'multi_image')


def check_joint_rule(base: dict, configs, where: str, overrides: dict | None = None) -> None:
    """One rule: a type that runs one reference per job (references = "each", the default) refuses an explicit
    multi_image = "joint" — in [base], a config or a flag — before anything runs: one reference read "jointly" is
    not what the setting says. The default value (not set) is not an explicit setting."""
    places = [("[base]", base)] + [(f"config {c.name!r}", c.fields) for c in configs] + [("--multi-image",
                                                                                            overrides or {})]
    for place, fields in places:
        if fields.get("multi_image") == MultiImage.JOINT:
            raise UserError(f"{where}: {place}: multi_image joint reads several references in one extraction, and "
                            "this type runs one reference per job (references each)", fix=JOINT_FIX)


def _check_value(path: Path, where: str, key: str, value: Any) -> None:
    scalar = (str, int, float, bool)
    if isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value)):
        return
    raise UserError(f"{path}: {where}: {key}: {_show(value)} is not a value a Recipe field takes "
                    "(a string, number, boolean or list of them)")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if (" " in value or not value) else value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
