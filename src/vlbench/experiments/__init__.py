"""Experiment types as data and the runner that executes them.

A type (a TOML file under types/, or the user's own) expands to named Recipes; `run_experiment`
runs them over references × prompts × seeds on one Engine, resumably, and writes the grid; the caller's
`report` (vlbench.analysis.report.write_folder_report) writes the report: this package imports no analysis.
`vlbench run --experiment` and `vlbench experiments` are in cli/.
"""

from vlbench.experiments.runner import Summary, plan, run_experiment
from vlbench.experiments.spec import ExperimentType, NamedRecipe, builtin_names, load_type

__all__ = ["ExperimentType", "NamedRecipe", "Summary", "builtin_names", "load_type", "plan", "run_experiment"]
