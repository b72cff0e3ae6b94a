"""How runs read in the tables: one-line prompts, status colours, the recipe fields that matter."""

from __future__ import annotations

import time
from functools import lru_cache

from rich.text import Text

from vlbench.recipe import Recipe

STATUS_STYLE = {"pending": "dim", "running": "bold cyan", "done": "green", "failed": "bold red",
                "cancelled": "yellow"}
# Shown in their own columns, so left out of the recipe summary.
OWN_COLUMNS = ("seed", "steps", "width", "height")


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def prompt_line(prompt: str, limit: int = 80) -> str:
    line = " ".join(prompt.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def run_label(row) -> str:
    """experiment/config, the config name alone, or '·' for a hand-made run."""
    if row.experiment and row.name:
        return f"{row.experiment}/{row.name}"
    return row.name or row.experiment or "·"


@lru_cache(maxsize=1)
def _defaults() -> dict:
    return Recipe().to_dict()


def recipe_summary(recipe: dict, limit: int = 60) -> str:
    """The fields that differ from the defaults (tokens and layer always): what sets this run apart."""
    defaults = _defaults()
    parts = [f"{recipe.get('tokens', defaults['tokens'])}@{recipe.get('layer', defaults['layer'])}"]
    for key, value in recipe.items():
        if key in ("tokens", "layer", *OWN_COLUMNS) or defaults.get(key, object()) == value:
            continue
        if isinstance(value, float):
            value = f"{value:g}"
        elif isinstance(value, (list, tuple)):
            value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        parts.append(f"{key}={value}")
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def varying_fields(recipes: list[dict], ignore: tuple[str, ...] = ("seed",)) -> list[str]:
    """The recipe fields whose value differs between these recipes (seed has a column of its own)."""
    if len(recipes) < 2:
        return []
    keys: list[str] = []
    for recipe in recipes:
        keys.extend(k for k in recipe if k not in keys)
    out = []
    for key in keys:
        if key in ignore:
            continue
        first = recipes[0].get(key)
        if any(r.get(key) != first for r in recipes[1:]):
            out.append(key)
    return out


def differs(recipe: dict, fields: list[str], limit: int = 60) -> str:
    """'layer=-5 alpha=0.3': this recipe's values of the fields that set it apart from its batch."""
    text = " ".join(f"{key}={_value(recipe.get(key))}" for key in fields)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return time.strftime("%m-%d %H:%M", time.localtime(timestamp))


def size(recipe: dict) -> str:
    return f"{recipe.get('width', '?')}×{recipe.get('height', '?')}"


def human_bytes(n: int | None) -> str:
    if n is None:
        return "not measured (CPU)"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"
