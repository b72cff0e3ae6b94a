"""User settings: `config_dir()/config.toml`, written with comments on first run.

Models and their placement (the first source vlbench.modelspec.resolve_model_spec merges: the
environment and flags win over it); defaults for the Parameters pane (any Recipe field, validated
by building a Recipe); the workbench theme, preview method and key-binding overrides. Bad values are
one-line UserErrors naming the file, the table and the key. Imports nothing heavy.
"""

from __future__ import annotations

import textwrap
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vlbench.errors import UserError
from vlbench.files import NotAFile, TooDeep, atomic_write_text, read_toml_file
from vlbench.modelspec import Attention, Dtype, Offload, Quantize
from vlbench.recipe.vocab import Choice
from vlbench.modelspec import resolve_model_spec
from vlbench.paths import config_dir
from vlbench.recipe import Recipe

class Preview(Choice):
    """How the Preview draws images."""

    AUTO = "auto", "Kitty/Sixel when the terminal has it"
    HALFCELL = "halfcell", ""
    UNICODE = "unicode", ""
    SIXEL = "sixel", ""
    TGP = "tgp", ""


PREVIEW_METHODS = Preview.values()
VALUES = "Values: "  # starts a comment's list of a setting's values (tests/test_config_comments.py reads it back)
# (table, key) -> the vocabulary its comment lists: the comments below are made from these, never retyped
CHOICE_SETTINGS: dict[tuple[str, str], type[Choice]] = {
    ("models", "dtype"): Dtype, ("models", "offload"): Offload, ("models", "quantize"): Quantize,
    ("models", "attention"): Attention, ("ui", "preview"): Preview}


def _comment(text: str, vocab: type[Choice] | None = None) -> str:
    """`text` as comment lines, followed by the vocabulary's values ("none (all resident), cpu (…), …")."""
    if vocab is not None:
        text += f" {VALUES}" + ", ".join(f"{m.value} ({m.help})" if m.help else m.value for m in vocab)
    return "\n".join("# " + line for line in textwrap.wrap(text, 114, break_long_words=False,
                                                            break_on_hyphens=False))


DEFAULT_CONFIG = f"""\
# vlbench settings. Created on first run; edit it and restart vlbench.
# Every key is optional: delete a line to get its default back.

[models]
# Z-Image pipeline and Qwen3-VL model: Hugging Face ids or local directories.
# Leave both empty to use the built-in tiny RANDOM-WEIGHT models (their images are noise);
# every command does the same (VLBENCH_ZIMAGE / VLBENCH_VL and --zimage / --vl win over this file).
# e.g. zimage = "Tongyi-MAI/Z-Image-Turbo" and vl = "Qwen/Qwen3-VL-4B-Instruct"
zimage = ""
vl = ""
# cpu, cuda or cuda:N; empty = cuda when available, else cpu
device = ""
{_comment("Empty = bf16 on GPU, fp32 on CPU.", Dtype)}
dtype = ""
{_comment("GPU placement.", Offload)}
offload = "none"
# torch.compile the DiT's repeated blocks: true or false
compile = false
{_comment("The DiT's matmuls.", Quantize)}
quantize = "none"
{_comment("The DiT's attention kernel (not set: sdpa).", Attention)}
# attention = "sdpa"
# GiB of GPU memory vlbench may use (offload group plans to it); leave unset for the whole card
# gpu_memory = 16

[recipe]
# Defaults for the Parameters pane: any Recipe field, as in a recipe TOML file.
# steps = 9
# width = 1024
# height = 1024
# tokens = "full"

[ui]
# vlbench-dark and vlbench-light ship with vlbench; any Textual theme name works too
# (textual-dark, nord, gruvbox, ...). Extra themes: TOML files in <config dir>/themes/.
# This is the theme of a first start: the workbench remembers the last one chosen (ctrl+t or the
# palette) with the form and the layout in <data dir>/session.json (delete it to start afresh).
theme = "vlbench-dark"
{_comment("How the Preview draws images.", Preview)}
preview = "auto"

[keys]
# Key-binding overrides: binding id = "key[,key...]". F1 in the workbench lists every id.
# queue = "ctrl+enter,f5"
# pause = "f8"
"""


@dataclass(frozen=True)
class ModelSettings:
    """config.toml's [models] as written (empty: not set); resolve_model_spec turns it into a ModelSpec."""

    zimage: str = ""
    vl: str = ""
    device: str = ""
    dtype: str = ""
    offload: str = ""
    compile: bool = False
    quantize: str = ""
    attention: str = ""
    gpu_memory: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
    return config_dir() / "config.toml"


def load_settings(path: Path | None = None, *, create: bool = True) -> Settings:
    """Read the settings file, writing the commented default first when it does not exist."""
    path = Path(path) if path is not None else config_path()
    if not path.exists():
        if not create:
            return Settings(path=path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, DEFAULT_CONFIG)
    try:
        data = read_toml_file(path)
    except NotAFile as exc:
        raise UserError(str(exc), where=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"not valid TOML ({exc})", where=str(path)) from None
    except TooDeep as exc:
        raise UserError(str(exc), where=str(path)) from None
    except (OSError, ValueError) as exc:  # ValueError: UnicodeDecodeError
        raise UserError(f"cannot read it ({exc.__class__.__name__})", where=str(path)) from None
    return parse_settings(data, path)


def parse_settings(data: dict[str, Any], path: Path | None = None) -> Settings:
    where = str(path or "config.toml")
    tables = {"models", "recipe", "ui", "keys"}
    for key, value in data.items():
        if key not in tables:
            raise UserError(f"unknown table [{key}]", where=where, fix=f"known tables: {', '.join(sorted(tables))}")
        if not isinstance(value, dict):
            raise UserError(f"{key} must be a table ([{key}])", where=where)
    raw_models = dict(data.get("models", {}))
    compile_value = raw_models.pop("compile", False)
    if not isinstance(compile_value, bool):
        raise UserError("must be true or false", field="compile", value=compile_value, where=f"{where}: [models]")
    gpu_memory = raw_models.pop("gpu_memory", None)
    if gpu_memory is not None and (isinstance(gpu_memory, bool) or not isinstance(gpu_memory, (int, float))):
        raise UserError("must be a number of GiB", field="gpu_memory", value=gpu_memory, where=f"{where}: [models]")
    models = ModelSettings(**_strings(where, "models", raw_models, ModelSettings), compile=compile_value,
                           gpu_memory=gpu_memory)
    try:
        resolve_model_spec(models.to_dict(), environ={})  # every value checked as the commands will read it
    except UserError as exc:
        raise exc.within(f"{where}: [models]") from None
    ui = UISettings(**_strings(where, "ui", data.get("ui", {}), UISettings))
    if ui.preview not in PREVIEW_METHODS:
        raise UserError("unknown method", field="preview", value=ui.preview, where=f"{where}: [ui]",
                        fix=f"use one of {', '.join(PREVIEW_METHODS)}")
    recipe = dict(data.get("recipe", {}))
    if recipe:
        Recipe.from_dict(recipe, where=f"{where}: [recipe]")
    keys = data.get("keys", {})
    for binding_id, keyspec in keys.items():
        if not isinstance(keyspec, str) or not keyspec.strip():
            raise UserError("must be a key string such as \"f5\" or \"ctrl+enter,f5\"", field=binding_id,
                            where=f"{where}: [keys]")
    return Settings(models=models, recipe=recipe, ui=ui, keys=dict(keys), path=path)


def _strings(where: str, table: str, values: dict[str, Any], cls) -> dict[str, str]:
    known = {f.name for f in fields(cls) if f.type in (str, "str")}
    out = {}
    for key, value in values.items():
        if key not in known:
            raise UserError(f"unknown key {key!r}", where=f"{where}: [{table}]",
                            fix=f"known keys: {', '.join(sorted(known | ({'compile', 'gpu_memory'} if table == 'models' else set())))}")
        if not isinstance(value, str):
            raise UserError("must be a string (in quotes)", field=key, where=f"{where}: [{table}]")
        out[key] = value.strip()
    return out
