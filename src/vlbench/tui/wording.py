"""The workbench's words for inputs and fields: how an error from the engine or the schema reads here.

The engine and the Recipe raise UserErrors naming plain fields ("image", "alpha"); the command line
shows flags, the workbench shows what its panes call them: "Reference ref.png: no such file".
"""

from __future__ import annotations

from vlbench.errors import UserError, word_failure

# Inputs that are not Recipe fields, as the Inputs pane names them; Recipe fields keep their form names.
LABELS = {"image": "Reference", "prompt": "Prompt", "vl_text": "VL text", "recipe": "Recipe file",
          "zimage": "Z-Image model", "vl": "Qwen3-VL model", "device": "Device", "dtype": "Dtype",
          "offload": "Offload", "compile": "Compile", "conditioning": "Conditioning", "seeds": "seed",
          "negative_prompt": "negative_prompt"}


def label(field: str) -> str:
    return LABELS.get(field, field)


def render(exc: UserError) -> str:
    return exc.render(label)


def failure_text(error: str | None, data: dict | None) -> str | None:
    """A stored failure (a row's error and error_data, a JobFailed's reason and data) as the workbench says it."""
    return word_failure(error, data, label)
