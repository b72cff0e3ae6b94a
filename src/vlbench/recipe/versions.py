"""Earlier recipe schemas: reading a recipe written under one as what it meant then."""

from __future__ import annotations

from typing import Any

from vlbench.errors import UserError
from vlbench.recipe.applies import _numeric_attend
from vlbench.recipe.schema import ADDED_AT_3, ADDED_BY_LEVERS, DEFAULTS, RECIPE_SCHEMA, Recipe, field_default
from vlbench.recipe.vocab import AttendRatio, AttendScope


def upgrade_recipe(data: dict[str, Any], schema: int) -> dict[str, Any]:
    """A recipe dict written under recipe schema `schema` as the current schema with the same meaning.

    Schema <= 2 read an attend ratio as per-token odds and biased the joint blocks only: such a recipe keeps
    exactly that (attend_ratio token-odds; attend_scope joint where a bias is installed), so re-running it makes
    the same image. A dict that is not a valid recipe is returned as it is (whoever reads it reports the error)."""
    if schema >= RECIPE_SCHEMA or not isinstance(data, dict) or any(k in data for k in ADDED_AT_3):
        return data
    try:
        recipe = Recipe.from_dict({**DEFAULTS.to_dict(), **data})
    except (UserError, TypeError):
        return data
    if not _numeric_attend(recipe):
        return data
    out = dict(data, attend_ratio=AttendRatio.TOKEN_ODDS.value)
    if recipe.replace(attend_ratio=AttendRatio.TOKEN_ODDS.value).attention_bias:
        out["attend_scope"] = AttendScope.JOINT.value
    return out


def changed_meaning(data: dict[str, Any]) -> bool:
    """A (current-schema) recipe dict whose attend ratios keep an earlier schema's meaning (token-odds)."""
    return isinstance(data, dict) and data.get("attend_ratio") == AttendRatio.TOKEN_ODDS


def key_dict(data: dict[str, Any]) -> dict[str, Any]:
    """The recipe dict a job key hashes: the fields added since schema 2 left out at their defaults."""
    return {k: v for k, v in data.items() if not (k in ADDED_AT_3 + ADDED_BY_LEVERS and v == field_default(k))}
