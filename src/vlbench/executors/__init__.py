"""Where an experiment's jobs run: `local` (the in-process Engine, vlbench.experiments.runner) or `ray`.

The runner plans, resumes and records; an executor only runs the pending jobs (`run_experiment(...,
executor=...)`). `ray` (vlbench.executors.ray_executor): one actor per GPU, each with its own Engine built
from the same ModelSpec; results come back to this process, which writes every PNG, results row and
history entry, so nothing depends on a shared filesystem.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlbench.errors import UserError
from vlbench.executors.ray_connect import head_engine

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class ExecutorChoice:
    kind: str = "local"
    address: str | None = None  # a running Ray cluster; None: a local instance on this machine
    actors: int | None = None  # None: one per GPU (without GPUs, min(2, CPUs))

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise UserError("unknown executor", field="executor", value=self.kind, fix=f"use {' or '.join(EXECUTORS)}")
        if self.kind != "ray":
            for field, value in (("ray_address", self.address), ("ray_actors", self.actors)):
                if value is not None:
                    raise UserError("has no effect without executor ray", field=field, value=value,
                                    fix="add --executor ray or drop it")
            return
        if self.actors is not None and self.actors < 1:
            raise UserError("must be >= 1", field="ray_actors", value=self.actors)
        try:
            import ray  # noqa: F401
        except ImportError:
            raise UserError("Ray is not installed", field="executor", value="ray",
                            fix="pip install 'vlbench[ray]' (or 'ray[default]')") from None


def start_executor(spec, choice: ExecutorChoice, make_engine, console=None):
    """(engine, executor) for an experiment run: local -> (make_engine(spec), None); ray -> (an Engine in this
    process that loads nothing unless diagnostics or metrics ask after the run, the started actors)."""
    if choice.kind != "ray":
        return make_engine(spec), None
    from vlbench.executors.ray_executor import RayExecutor

    spec = spec.built()  # every actor on this host uses the same tiny build
    executor = RayExecutor.start(spec, address=choice.address, actors=choice.actors, console=console)
    try:
        engine = head_engine(spec)
    except BaseException:
        executor.close()
        raise
    return engine, executor
