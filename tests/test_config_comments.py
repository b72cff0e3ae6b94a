"""Issue 24: config.toml's comments are made from the settings' vocabularies (one source).

The generated file once described `offload` without `group`: a value added to a vocabulary never reached the
comment typed beside it. Now each enum-valued setting's comment ends with "Values: " and the vocabulary's values,
each with its description; this test reads every such list back out of the written text and compares it with the
enum, value for value.
"""

from __future__ import annotations

import re
import tomllib

import pytest

from vlbench.config import CHOICE_SETTINGS, DEFAULT_CONFIG, VALUES, ModelSettings, UISettings


def comment_above(text: str, table: str, key: str) -> str:
    """The comment lines right above `key = …` (or the commented-out `# key = …`) in [table], joined."""
    lines = text.split(f"[{table}]\n", 1)[1].split("\n[", 1)[0].splitlines()
    at = next(i for i, line in enumerate(lines) if re.match(rf"(# )?{key} = ", line))
    above = []
    for line in reversed(lines[:at]):
        if not line.startswith("# ") or re.match(r"# [a-z_]+ = ", line):
            break
        above.append(line[2:])
    return " ".join(reversed(above))


def listed_values(comment: str) -> list[str]:
    """The values a comment lists after "Values: ": each item's first word, items split at commas outside
    parentheses."""
    assert VALUES in comment, comment
    listing, items, depth, current = comment.split(VALUES, 1)[1], [], 0, ""
    for char in listing:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [item.split()[0] for item in items if item.strip()]


@pytest.mark.parametrize("table, key", sorted(CHOICE_SETTINGS))
def test_every_enum_valued_settings_comment_lists_exactly_its_values(table, key):
    vocab = CHOICE_SETTINGS[(table, key)]
    assert listed_values(comment_above(DEFAULT_CONFIG, table, key)) == list(vocab.values())
    for member in vocab:  # each value with its description, where it has one
        assert (f"{member.value} ({member.help})" if member.help else member.value) in \
            comment_above(DEFAULT_CONFIG, table, key).replace("\n", " ")


def test_every_setting_with_a_vocabulary_is_in_the_table():
    """A [models] or [ui] setting whose values are a vocabulary is one of CHOICE_SETTINGS (so it gets its list)."""
    choice_keys = {key for _, key in CHOICE_SETTINGS}
    assert {"offload", "dtype", "quantize", "attention"} <= choice_keys
    assert "preview" in choice_keys
    settings = {f for f in ModelSettings.__dataclass_fields__} | {f for f in UISettings.__dataclass_fields__}
    assert choice_keys <= settings


def test_the_written_file_is_the_defaults():
    data = tomllib.loads(DEFAULT_CONFIG)
    assert data["models"]["offload"] == "none" and data["ui"]["preview"] == "auto" and "attention" not in data["models"]


def test_a_hand_written_comment_that_misses_a_value_is_caught():
    """The comment of issue 25, before `group` was added, read back by the same parser."""
    old = ("[models]\n# GPU placement. Values: none (all resident), cpu (only the model in use on the GPU), "
           "sequential (diffusers' offload hooks, layer by layer)\noffload = \"none\"\n")
    vocab = CHOICE_SETTINGS[("models", "offload")]
    assert listed_values(comment_above(old, "models", "offload")) != list(vocab.values())
    assert "group" not in listed_values(comment_above(old, "models", "offload"))
