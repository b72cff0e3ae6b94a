"""The Recipe's fields as the Parameters form shows them: a view of vlbench.recipe's field metadata.

Kinds, choices, help, sections and defaults all come from the schema (`field_infos`); text is parsed
by the schema's own `parse_value` and `parse_seeds`, and validation is the Recipe's. Nothing here
restates a field, a default or a vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from vlbench import recipe as R

# Fields edited elsewhere: the VL text of the main extraction lives in the Inputs pane.
INPUTS_FIELDS = ("vl_text",)
SEED_FIELD = "seed"


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str  # the schema's kind, or "seeds" for the seed field (several seeds queue several runs)
    optional: bool  # None is allowed (an empty field means "not set")
    default: Any
    choices: tuple[str, ...] = ()
    choice_help: tuple[str, ...] = ()
    help: str = ""
    section: str = ""
    when: str = ""


@lru_cache(maxsize=1)
def recipe_fields() -> tuple[FieldSpec, ...]:
    out = []
    for name, info in R.field_infos().items():
        default = R.field_default(name)
        choices = info.choices.values() if info.choices is not None else ()
        helps = tuple(c.help for c in info.choices) if info.choices is not None else ()
        out.append(FieldSpec(name, "seeds" if name == SEED_FIELD else info.kind, default is None, default, choices,
                             helps, info.help, str(info.section), info.when))
    return tuple(out)


def field_names() -> tuple[str, ...]:
    return tuple(spec.name for spec in recipe_fields())


def format_value(spec: FieldSpec, value: Any) -> str:
    """The text a field shows for a recipe value (the inverse of parse_value)."""
    return R.format_value(spec.name, value)


def parse_value(spec: FieldSpec, text: str) -> Any:
    """A field's text as a recipe value; a UserError names the field."""
    if spec.kind == "seeds":
        return R.parse_seeds(text, field=spec.name)
    return R.parse_value(spec.name, text)
