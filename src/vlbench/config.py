"""User settings: `config_dir()/config.toml`, written with comments on first run.

Models, device and dtype; defaults for the Parameters pane (any Recipe field, validated by
building a Recipe); the workbench theme, preview method and key-binding overrides. Bad values are
one-line UserErrors naming the file, the table and the key. Imports nothing heavy.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vlbench.errors import UserError

PREVIEW_METHODS = ("auto", "halfcell", "unicode", "sixel", "tgp")
DTYPES = ("", "bf16", "fp16", "fp32")

DEFAULT_CONFIG = """\
# vlbench settings. Created on first run; edit it and restart vlbench.
# Every key is optional: delete a line to get its default back.

[models]
# Z-Image pipeline and Qwen3-VL model: Hugging Face ids or local directories.
# Leave both empty to use the built-in tiny RANDOM-WEIGHT models (their images are noise).
# e.g. zimage = "Tongyi-MAI/Z-Image-Turbo" and vl = "Qwen/Qwen3-VL-4B-Instruct"
zimage = ""
vl = ""
# cpu, cuda or cuda:N; empty = cuda when available, else cpu
device = ""
# bf16, fp16 or fp32; empty = bf16 on GPU, fp32 on CPU
dtype = ""

[recipe]
# Defaults for the Parameters pane: any Recipe field, as in a recipe TOML file.
# steps = 9
# width = 1024
# height = 1024
# tokens = "full"

[ui]
# vlbench-dark and vlbench-light ship with vlbench; any Textual theme name works too
# (textual-dark, nord, gruvbox, ...). Extra themes: TOML files in <config dir>/themes/.
theme = "vlbench-dark"
# How the Preview draws images: auto (Kitty/Sixel when the terminal has it), halfcell, unicode, sixel, tgp
preview = "auto"

[keys]
# Key-binding overrides: binding id = "key[,key...]". F1 in the workbench lists every id.
# queue = "ctrl+enter,f5"
# pause = "f8"
"""


@dataclass(frozen=True)
class ModelSettings:
    zimage: str = ""
    vl: str = ""
    device: str = ""
    dtype: str = ""

    @property
    def tiny(self) -> bool:
        """No real model configured: the embedded tiny random models are used."""
        return not self.zimage and not self.vl


@dataclass(frozen=True)
class UISettings:
    theme: str = "vlbench-dark"
    preview: str = "auto"


@dataclass(frozen=True)
class Settings:
    models: ModelSettings = field(default_factory=ModelSettings)
    recipe: dict[str, Any] = field(default_factory=dict)  # Recipe field -> value, validated
    ui: UISettings = field(default_factory=UISettings)
    keys: dict[str, str] = field(default_factory=dict)  # binding id -> keys
    path: Path | None = None


def config_path() -> Path:
    from vlbench.paths import config_dir

    return config_dir() / "config.toml"


def load_settings(path: Path | None = None, *, create: bool = True) -> Settings:
    """Read the settings file, writing the commented default first when it does not exist."""
    path = Path(path) if path is not None else config_path()
    if not path.exists():
        if not create:
            return Settings(path=path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(DEFAULT_CONFIG, encoding="utf-8")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it ({exc.__class__.__name__})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    return parse_settings(data, path)


def parse_settings(data: dict[str, Any], path: Path | None = None) -> Settings:
    where = str(path or "config.toml")
    tables = {"models", "recipe", "ui", "keys"}
    for key, value in data.items():
        if key not in tables:
            raise UserError(f"{where}: unknown table [{key}]; known tables: {', '.join(sorted(tables))}")
        if not isinstance(value, dict):
            raise UserError(f"{where}: {key} must be a table ([{key}])")
    models = ModelSettings(**_strings(where, "models", data.get("models", {}), ModelSettings))
    if models.dtype not in DTYPES:
        raise UserError(f"{where}: [models] dtype {models.dtype!r}: use bf16, fp16, fp32 or leave it empty")
    ui = UISettings(**_strings(where, "ui", data.get("ui", {}), UISettings))
    if ui.preview not in PREVIEW_METHODS:
        raise UserError(f"{where}: [ui] preview {ui.preview!r}: use one of {', '.join(PREVIEW_METHODS)}")
    recipe = dict(data.get("recipe", {}))
    if recipe:
        from vlbench.engine.recipe import Recipe

        try:
            Recipe.from_dict(recipe, source=f"{where}: [recipe]")
        except UserError as exc:
            raise UserError(f"{where}: [recipe] {exc}" if not str(exc).startswith(where) else str(exc)) from None
        except TypeError as exc:
            raise UserError(f"{where}: [recipe] {exc}") from None
    keys = data.get("keys", {})
    for binding_id, keyspec in keys.items():
        if not isinstance(keyspec, str) or not keyspec.strip():
            raise UserError(f"{where}: [keys] {binding_id}: must be a key string such as \"f5\" or \"ctrl+enter,f5\"")
    return Settings(models=models, recipe=recipe, ui=ui, keys=dict(keys), path=path)


def _strings(where: str, table: str, values: dict[str, Any], cls) -> dict[str, str]:
    known = {f.name for f in fields(cls)}
    out = {}
    for key, value in values.items():
        if key not in known:
            raise UserError(f"{where}: [{table}] unknown key {key!r}; known keys: {', '.join(sorted(known))}")
        if not isinstance(value, str):
            raise UserError(f"{where}: [{table}] {key}: must be a string (in quotes)")
        out[key] = value.strip()
    return out
