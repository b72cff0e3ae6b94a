"""The experiment types the workbench can queue: the built-in types of vlbench.experiments.spec.

`types()` reads them on first use (never before the first paint); `expand` turns one into runs with the
form's generation settings (seed, steps, size), which win over the type's: the type varies the
conditioning, the form says how big and how many.
"""

from __future__ import annotations

from vlbench.errors import UserError
from vlbench.experiments.spec import builtin_names, load_type

GENERATION = ("steps", "width", "height")  # the form's settings the experiment's configs take


def types() -> list:
    out = []
    for name in builtin_names():
        try:
            out.append(load_type(name))
        except UserError:  # a broken type file is the CLI's to report; the others stay usable
            continue
    return out


def expand(experiment, quick: bool, form, seeds: list[int]) -> list[tuple[str, dict]]:
    """(config name, recipe dict) for every config × seed, generation settings from the form's recipe."""
    overrides = {k: getattr(form, k) for k in GENERATION}
    out = []
    for named in experiment.recipes(quick, overrides=overrides):
        for seed in seeds:
            out.append((named.name, named.recipe.replace(seed=seed).to_dict()))
    return out


def overrides(form, runs: list[tuple[str, dict]]) -> dict[str, tuple[object, list]]:
    """field -> (the form's value, the values the experiment's configs give it) for every field the configs
    set to something other than the form's value: what queueing the experiment replaces (seed aside)."""
    mine = form.to_dict()
    out: dict[str, tuple[object, list]] = {}
    for _, recipe in runs:
        for key, value in recipe.items():
            if key == "seed" or value == mine.get(key):
                continue
            values = out.setdefault(key, (mine.get(key), []))[1]
            if value not in values:
                values.append(value)
    # fields where some configs keep the form's value still show it among the values
    for key, (value, values) in out.items():
        if any(recipe.get(key) == value for _, recipe in runs) and value not in values:
            values.insert(0, value)
    return out
