"""Recipe TOML files: read through the guarded reader (vlbench.files), checked, upgraded; written atomically."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from vlbench.errors import UserError
from vlbench.files import TooDeep, atomic_write_text, parse_toml, read_named_text
from vlbench.recipe.rules import _check_field
from vlbench.recipe.schema import DEFAULTS, OLD_TOML_HEADER, Recipe, check_keys, field_default, field_infos
from vlbench.recipe.versions import upgrade_recipe


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """The fields a recipe file sets (a partial recipe is fine), checked as keys; values are checked by Recipe.
    A file Recipe.to_toml wrote before recipe schema 3 (its first line exactly OLD_TOML_HEADER) is read as what it
    was (upgrade_recipe); any other file is read in the current schema."""
    path = Path(path)
    text = read_named_text(path, "recipe", fix="give a .toml file")
    try:
        data = parse_toml(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"not valid TOML ({exc})", field="recipe", value=str(path)) from None
    except TooDeep as exc:
        raise UserError(str(exc), field="recipe", value=str(path)) from None
    try:
        check_keys(data)
    except UserError as exc:
        raise exc.within(str(path)) from None
    if text.split("\n", 1)[0].rstrip() == OLD_TOML_HEADER:
        data = upgrade_recipe(data, 2)
    return data


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None, base: Recipe | None = None) -> Recipe:
    """A recipe file over `base` (default: the defaults), then `overrides` (e.g. flags the user set) over both."""
    data = read_recipe_file(path)
    overrides = overrides or {}
    start = (base or DEFAULTS).to_dict()
    infos = field_infos()
    for name, value in data.items():  # a bad value in the file is the file's error, whatever a flag overrides
        try:
            _check_field(name, infos[name], tuple(value) if isinstance(value, list) else value,
                         field_default(name))
        except UserError as exc:
            raise exc.within(str(path)) from None
    try:  # the file alone: its combinations are checked too, unless a flag changes the field at fault
        Recipe.from_dict({**start, **data})
    except UserError as exc:
        if not set(overrides) & set(data) or exc.field not in overrides:
            raise exc.within(str(path)) from None
    return Recipe.from_dict({**start, **data, **overrides})


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    atomic_write_text(Path(path), recipe.to_toml())
