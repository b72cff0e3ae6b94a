"""Values as text and back: numbers and defaults as the help shows them, seed lists, TOML values."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from vlbench.errors import UserError

SEED_MAX = 2**63 - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show_default(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else "empty"
    return _num(value)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}" if abs(value) < 1e15 else repr(value)
    return str(value)


def _float(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError("must be a number", field=name, value=text) from None
    if not math.isfinite(value):
        raise UserError("must be a finite number", field=name, value=text)
    return value


def format_value(name: str, value: Any) -> str:
    """The text a field shows for a value (the inverse of parse_value)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(_num(float(v)) for v in value)
    return _num(value) if isinstance(value, float) else str(value)


def parse_seeds(text: str, field: str = "seeds", limit: int = 10_000) -> list[int]:
    """"1,2,5", "0-7" or a mix ("0-3,8") -> seeds in order, duplicates dropped. The one seed-list parser."""
    seeds: list[int] = []
    for part in re.split(r"[,\s]+", str(text).strip()):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)\s*(?:-|\.\.)\s*(\d+)", part)
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if hi < lo:
                raise UserError("range runs backwards", field=field, value=part, fix=f"write {hi}-{lo}")
            if hi - lo >= limit:
                raise UserError(f"range has more than {limit} seeds", field=field, value=part)
            seeds.extend(range(lo, hi + 1))
        elif re.fullmatch(r"\d+", part):
            seeds.append(int(part))
        else:
            raise UserError("is not a whole number >= 0", field=field, value=part,
                            fix="write seeds as 1,2,5 or 0-7 or 0-3,8")
    if not seeds:
        raise UserError("give at least one seed", field=field, fix="e.g. 0, 1,2,5 or 0-7")
    if len(seeds) > limit:
        raise UserError(f"more than {limit} seeds", field=field)
    for seed in seeds:
        if seed > SEED_MAX:
            raise UserError(f"must be <= {SEED_MAX}", field=field, value=seed)
    return list(dict.fromkeys(seeds))


def seeds_value(value: Any, field: str = "seeds") -> list[int]:
    """Seeds from a TOML/JSON value: a whole number, a list of them, or the text forms of parse_seeds."""
    if _is_int(value):
        value = [value]
    if isinstance(value, list) and value and all(_is_int(v) for v in value):
        bad = next((v for v in value if v < 0), None)
        if bad is not None:
            raise UserError("is not a whole number >= 0", field=field, value=bad)
        return parse_seeds(",".join(str(v) for v in value), field)
    if isinstance(value, str):
        return parse_seeds(value, field)
    raise UserError("must be seeds: a number, a list of numbers or text such as \"0-7\"", field=field, value=value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # a JSON string is a valid TOML basic string, once DEL (allowed raw in JSON, not in TOML) is escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
