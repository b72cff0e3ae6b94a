"""`vlbench search`: a multi-objective search over a declared recipe space (docs/search.md).

- `space`: the space file (fields with ranges or choice lists, fixed fields, objectives, constraints,
  sampler) parsed and checked against the Recipe schema: torch-free and Optuna-free.
- `front`: objectives of a trial (metric means with design-aware CIs, as `vlbench stats`), the non-dominated set, the Pareto plot.
- `runner`: the search loop: Optuna's ask/tell with its SQLite storage; each trial a `vlbench run` folder.
"""
