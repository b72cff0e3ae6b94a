"""Prompts from the command line, files and the workbench: one rule for what a prompt is.

A prompt is non-blank text, valid UTF-8. Prompt files hold one per line (blank lines and lines
starting with # are not prompts), or a TOML file with `prompts = [...]`. Torch-free.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from vlbench.errors import UserError
from vlbench.files import TooDeep, parse_toml, read_named_text


def check_prompt(text: object, field: str = "prompt") -> str:
    """The prompt itself, or a one-line error naming the input: blank, not text, or undecodable bytes."""
    if not isinstance(text, str):
        raise UserError("must be text", field=field)
    if not text.strip():
        raise UserError("is blank", field=field, value=text,
                        fix="give the text to draw (for image-only conditioning keep a prompt and set vl_text none)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"is not valid UTF-8 (an undecodable byte at character {exc.start})", field=field,
                        fix="check the terminal's or the file's encoding") from None
    return text


def read_prompts_file(path: str | Path, field: str = "prompts_file") -> list[str]:
    """The prompts of a text or TOML file, in order, duplicates kept once."""
    file = Path(path)
    text = read_named_text(path, field, fix="give a text or TOML file")
    if file.suffix.lower() == ".toml":
        try:
            data = parse_toml(text)
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"not valid TOML ({exc})", field=field, value=str(path)) from None
        except TooDeep as exc:
            raise UserError(str(exc), field=field, value=str(path)) from None
        prompts = data.get("prompts")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise UserError("expected prompts = [\"...\", ...]", field=field, value=str(path))
        prompts = [p for p in prompts if p.strip()]
    else:
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise UserError("has no prompts", field=field, value=str(path))
    return list(dict.fromkeys(prompts))
