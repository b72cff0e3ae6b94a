"""The experiment types the workbench can queue, through vlbench.experiments when it is there.

`list_types()` gives objects with name, description and expand(quick) -> [(config, recipe dict)].
Without the package (or with an older one) `types()` returns [] and the app hides the command.
"""

from __future__ import annotations

from typing import Any

from vlbench.errors import UserError

# The run's own settings win over an experiment's for these (the experiment varies conditioning).
GENERATION = ("seed", "steps", "width", "height")


def types() -> list[Any]:
    try:
        from vlbench.experiments import list_types
    except ImportError:
        return []
    try:
        return list(list_types())
    except UserError:
        return []


def expand(experiment: Any, quick: bool, current: dict[str, Any], seeds: list[int]) -> list[tuple[str, dict]]:
    """(config name, recipe dict) for every config × seed, generation settings from `current`."""
    from vlbench.engine.recipe import Recipe

    try:
        from vlbench.experiments import GENERATION as generation
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
