"""Documentation made from the schema: the README's recipe table, a vocabulary's help."""

from __future__ import annotations

from dataclasses import fields
from typing import Iterable

from vlbench.recipe.schedules import ALPHA_SOURCE
from vlbench.recipe.schema import FieldInfo, Recipe
from vlbench.recipe.values import _show_default
from vlbench.recipe.vocab import NATURAL, Choice, Source


def markdown_table() -> str:
    """The README's recipe table, generated from the fields (a test keeps the README in step)."""
    lines = ["| field (TOML key, `--flag`) | section | default | values | help |", "|---|---|---|---|---|"]
    for f in fields(Recipe):
        info: FieldInfo = f.metadata["info"]
        if info.choices is not None:
            values = ", ".join(f"`{c}`" for c in info.choices.values())
        elif info.kind == "vl_text":
            values = "`prompt`, `none`, any text"
        elif info.kind == "bool":
            values = "true, false"
        elif info.kind == "schedule":
            values = ("`K:SOURCE, …` with SOURCE " + ", ".join(f"`{c}`" for c in Source.values())
                      + f", `{ALPHA_SOURCE}=R`")
        else:
            values = (info.range_text or info.kind) + (f", multiple of {info.multiple_of}" if info.multiple_of else "")
            values += f", `{NATURAL}`" if info.natural else ""
        text = info.help + (f"; has an effect only {info.when}" if info.when else "")
        flag = "--" + f.name.replace("_", "-")
        lines.append(f"| `{f.name}` `{flag}` | {info.section} | {_show_default(f.default)} | {values} | "
                     f"{text.replace('|', '/')} |")
    return "\n".join(lines)


def choices_help(choices: Iterable[Choice]) -> str:
    return "; ".join(f"{c.value}: {c.help}" for c in choices)
