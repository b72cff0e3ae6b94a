"""The Recipe's fields as the Parameters pane sees them, read from the dataclass itself.

Type hints give the widget kind, recipe.py's choice tables give the options, the field's trailing
comment in recipe.py gives its help line. A field the engine adds appears in the form with no
UI change. Text is parsed here; validation is the Recipe's own (construct it, read its UserError).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from vlbench.engine import recipe as recipe_module
from vlbench.engine.recipe import Recipe
from vlbench.errors import UserError

# Choice tables in recipe.py, by field name. Fields not listed are matched by naming convention
# (`length_policy` -> LENGTH_POLICIES, `curve` -> CURVES, `*_tokens` -> TOKEN_SELECTIONS).
_CHOICE_TABLES = {"tokens": "TOKEN_SELECTIONS"}
# Fields edited elsewhere: the VL text of the main extraction lives in the Inputs pane.
INPUTS_FIELDS = ("vl_text",)
SEED_FIELD = "seed"
VL_TEXT_CHOICES = (recipe_module.VL_TEXT_PROMPT, recipe_module.VL_TEXT_NONE, "custom")


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str  # bool | int | float | str | choice | floats | vl_text | seeds
    optional: bool  # None is allowed (an empty field means "not set")
    default: Any
    choices: tuple[str, ...] = ()
    choice_help: tuple[str, ...] = ()
    help: str = ""
    section: str = ""


@lru_cache(maxsize=1)
def recipe_fields() -> tuple[FieldSpec, ...]:
    hints = typing.get_type_hints(Recipe)
    comments, sections = _source_comments()
    specs = []
    for f in dataclasses.fields(Recipe):
        base, optional = _unwrap_optional(hints.get(f.name, str))
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        choices, choice_help = _choices(f.name) if base is str else ((), ())
        if f.name == SEED_FIELD:
            kind = "seeds"
        elif f.name == "vl_text" or f.name.endswith("_vl_text"):
            kind = "vl_text"
        elif choices and base is str:
            kind = "choice"
        elif base is bool:
            kind = "bool"
        elif base is int:
            kind = "int"
        elif base is float:
            kind = "float"
        elif typing.get_origin(base) is tuple:
            kind = "floats"
        else:
            kind = "str"
        section = sections.get(f.name, "")
        title = re.split(r":|;| \(", section, maxsplit=1)[0].strip()
        specs.append(FieldSpec(f.name, kind, optional, default, choices, choice_help,
                               comments.get(f.name) or section, title))
    return tuple(specs)


def field_names() -> tuple[str, ...]:
    return tuple(spec.name for spec in recipe_fields())


def spec_for(name: str) -> FieldSpec:
    for spec in recipe_fields():
        if spec.name == name:
            return spec
    raise KeyError(name)


def format_value(spec: FieldSpec, value: Any) -> str:
    """The text a field shows for a recipe value (the inverse of parse_value)."""
    if value is None:
        return ""
    if spec.kind == "floats":
        return ", ".join(_num(v) for v in value)
    if spec.kind == "float":
        return _num(value)
    return str(value)


def parse_value(spec: FieldSpec, text: str) -> Any:
    """A field's text as a recipe value; a UserError names the field, as the Recipe's own do."""
    text = text.strip()
    if spec.kind in ("str", "vl_text"):
        return text if text or not spec.optional else None
    if not text:
        if spec.optional:
            return None
        raise UserError(f"{spec.name}: enter a value (default {format_value(spec, spec.default)})")
    if spec.kind == "int":
        try:
            return int(text)
        except ValueError:
            raise UserError(f"{spec.name}: {text!r} must be a whole number") from None
    if spec.kind == "float":
        try:
            return float(text)
        except ValueError:
            raise UserError(f"{spec.name}: {text!r} must be a number") from None
    if spec.kind == "floats":
        try:
            return tuple(float(part) for part in text.replace(" ", ",").split(",") if part)
        except ValueError:
            raise UserError(f"{spec.name}: {text!r} must be numbers separated by commas") from None
    if spec.kind == "seeds":
        return parse_seeds(text)
    return text


def parse_seeds(text: str, limit: int = 10_000) -> list[int]:
    """"1,2,3", "0-7" or a mix ("0-3, 10") -> seeds in order, duplicates dropped."""
    seeds: list[int] = []
    for part in re.split(r"[,\s]+", text.strip()):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)\s*(?:-|\.\.)\s*(\d+)", part)
        try:
            if match:
                lo, hi = int(match.group(1)), int(match.group(2))
                if hi < lo:
                    raise UserError(f"seed: range {part!r} runs backwards; write {hi}-{lo}")
                if hi - lo >= limit:
                    raise UserError(f"seed: range {part!r} has more than {limit} seeds")
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise UserError(f"seed: {part!r} is not a whole number; write seeds as 1,2,3 or 0-7") from None
    if not seeds:
        raise UserError("seed: enter a seed, several as 1,2,3, or a range as 0-7")
    if len(seeds) > limit:
        raise UserError(f"seed: more than {limit} seeds")
    return list(dict.fromkeys(seeds))


def field_of_error(message: str) -> str | None:
    """Which recipe field a Recipe UserError is about (its messages start with the field name)."""
    head = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", message)
    if head and head.group(1) in field_names():
        return head.group(1)
    return None


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{value:.1f}"
    return repr(value) if isinstance(value, float) else str(value)


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        return (args[0] if len(args) == 1 else str), optional
    return hint, False


def _choices(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    table = getattr(recipe_module, "FIELD_CHOICES", {}).get(name)  # if recipe.py ever declares it
    if table is None:
        upper = name.upper()
        candidates = [_CHOICE_TABLES.get(name, ""), upper, upper + "S", upper + "ES"]
        if upper.endswith("Y"):
            candidates.append(upper[:-1] + "IES")
        if name.endswith("_tokens"):
            candidates.append("TOKEN_SELECTIONS")
        for candidate in candidates:
            value = getattr(recipe_module, candidate, None) if candidate else None
            if isinstance(value, (dict, tuple, list)) and value and all(isinstance(k, str) for k in value):
                table = value
                break
    if table is None:
        return (), ()
    if isinstance(table, dict):
        return tuple(table), tuple(str(v) for v in table.values())
    return tuple(table), tuple("" for _ in table)


def _source_comments() -> tuple[dict[str, str], dict[str, str]]:
    """Trailing comments of the Recipe's fields, and the section comment each field sits under."""
    comments: dict[str, str] = {}
    sections: dict[str, str] = {}
    try:
        source = inspect.getsource(Recipe)
    except (OSError, TypeError):  # no source (zipapp, frozen): the form simply has no help lines
        return comments, sections
    section = ""
    for line in source.splitlines():
        if re.match(r"^    #\s*(.+)$", line):
            section = re.match(r"^    #\s*(.+)$", line).group(1).strip()
            continue
        match = re.match(r"^    ([a-z_][a-z0-9_]*)\s*:[^#]*?(?:#\s*(.*))?$", line)
        if match and not line.strip().startswith("def "):
            comments[match.group(1)] = (match.group(2) or "").strip()
            sections[match.group(1)] = section
        elif line.startswith("    def "):
            break
    return comments, sections
