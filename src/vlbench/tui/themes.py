"""Themes as data: TOML files whose keys are textual.theme.Theme's fields.

vlbench's own live in the repository's themes/ folder; a user's in <config dir>/themes/ (same
name wins over ours). A broken file is reported and skipped, never fatal.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from textual.theme import Theme

from vlbench.errors import UserError
from vlbench.files import read_toml_file
from vlbench.paths import config_dir

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "themes"  # vlbench/themes: a link to the repository's themes/, copied into the wheel
DEFAULT_THEME = "vlbench-dark"


def theme_dirs() -> list[Path]:
    return [SHIPPED_DIR, config_dir() / "themes"]


def load_theme(path: Path) -> Theme:
    try:
        data = read_toml_file(path)
    except (OSError, ValueError) as exc:  # NotAFile, UnicodeDecodeError, TOMLDecodeError, TooDeep
        raise UserError(f"theme {path}: cannot read it ({exc})") from None
    known = {f.name for f in dataclasses.fields(Theme)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"theme {path}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    data.setdefault("name", path.stem)
    if "primary" not in data:
        raise UserError(f"theme {path}: needs at least a primary colour")
    try:
        return Theme(**data)
    except Exception as exc:  # a bad colour string
        raise UserError(f"theme {path}: {exc}") from None


def load_themes(dirs: list[Path] | None = None) -> tuple[list[Theme], list[str]]:
    """Every theme found, and one line per file that could not be loaded."""
    themes: dict[str, Theme] = {}
    problems: list[str] = []
    for folder in dirs if dirs is not None else theme_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                theme = load_theme(path)
            except UserError as exc:
                problems.append(str(exc))
                continue
            themes[theme.name] = theme
    return list(themes.values()), problems
