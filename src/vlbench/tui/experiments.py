"""The experiment types the workbench can queue, from vlbench.experiments.

Each type has a name, a description and expand(quick) -> [(config name, recipe dict)]. The package's
`list_types()` provides them; without it, its spec module's built-in types are adapted. Without the
package at all, `types()` is [] and the app hides the command. Nothing here is imported before the
first paint: `available()` only looks the package up.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from vlbench.errors import UserError

# The run's own settings win over an experiment's for these (the experiment varies conditioning).
GENERATION = ("seed", "steps", "width", "height")


def available() -> bool:
    try:
        return importlib.util.find_spec("vlbench.experiments") is not None
    except ImportError:
        return False


def types() -> list[Any]:
    try:
        from vlbench.experiments import list_types
    except ImportError:
        list_types = _builtin_types
    try:
        return list(list_types())
    except (ImportError, UserError):
        return []


class _SpecType:
    """A vlbench.experiments.spec.ExperimentType seen through the list_types() interface."""

    def __init__(self, spec) -> None:
        self.spec = spec
        self.name = spec.name
        self.description = spec.description

    def expand(self, quick: bool) -> list[tuple[str, dict]]:
        return [(named.name, named.recipe.to_dict()) for named in self.spec.recipes(quick)]


def _builtin_types() -> list[_SpecType]:
    from vlbench.experiments.spec import builtin_names, load_type

    out = []
    for name in builtin_names():
        try:
            out.append(_SpecType(load_type(name)))
        except UserError:  # a broken type file is the CLI's to report; the others stay usable
            continue
    return out


def expand(experiment: Any, quick: bool, current: dict[str, Any], seeds: list[int]) -> list[tuple[str, dict]]:
    """(config name, recipe dict) for every config × seed, generation settings from `current`."""
    from vlbench.engine.recipe import Recipe

    try:
        from vlbench.experiments.spec import GENERATION as generation
    except ImportError:
        generation = GENERATION
    out = []
    for name, recipe in experiment.expand(quick):
        data = recipe.to_dict() if hasattr(recipe, "to_dict") else dict(recipe)
        for seed in seeds:
            merged = {**data, **{k: current[k] for k in generation if k in current}, "seed": seed}
            try:
                out.append((name, Recipe.from_dict(merged, source=f"{experiment.name}/{name}").to_dict()))
            except TypeError as exc:
                raise UserError(f"{experiment.name}/{name}: {exc}") from None
    return out
