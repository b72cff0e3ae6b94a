"""Where an experiment's jobs run: `local` (the in-process Engine, vlbench.experiments.runner) or `ray`.

The runner plans, resumes and records; an executor only runs the pending jobs (`run_experiment(...,
executor=...)`). `ray` (vlbench.executors.ray_executor): one actor per GPU, each with its own Engine built
from the same ModelSpec; results come back to this process, which writes every PNG, results row and
history entry, so nothing depends on a shared filesystem.
"""

from __future__ import annotations

from vlbench.errors import UserError

EXECUTORS = ("local", "ray")


def add_executor_flags(p) -> None:
    g = p.add_argument_group("executor")
    g.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: this process's Engine (default); ray: one Ray actor per GPU, each holding the models")
    g.add_argument("--ray-address", metavar="ADDR",
                   help="a running Ray cluster: auto, HOST:PORT (ray start --head) or ray://HOST:10001 (Ray Client); "
                        "default: start a local Ray instance with every visible GPU")
    g.add_argument("--ray-actors", type=int, metavar="N",
                   help="actors to start (default: one per GPU of the cluster; without GPUs, min(2, CPUs))")


def check_executor_args(args) -> None:
    """Executor flags a user can get wrong, checked before anything starts."""
    kind = getattr(args, "executor", "local") or "local"
    if kind != "ray":
        for flag in ("ray_address", "ray_actors"):
            if getattr(args, flag, None) is not None:
                raise UserError(f"--{flag.replace('_', '-')}: only with --executor ray")
        return
    if args.ray_actors is not None and args.ray_actors < 1:
        raise UserError(f"--ray-actors {args.ray_actors}: must be >= 1")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UserError("--executor ray: Ray is not installed; pip install 'vlbench[ray]' (or 'ray[default]')") from None


def start_executor(args, console):
    """(engine, executor) for `vlbench run`: local -> (the one Engine, None); ray -> (an Engine in this process
    that loads nothing unless diagnostics or metrics ask after the run, the started actors)."""
    from vlbench.cli import _engine

    check_executor_args(args)
    if (getattr(args, "executor", "local") or "local") != "ray":
        return _engine(args, console), None
    from vlbench.cli import spec_from_args
    from vlbench.executors.ray_executor import RayExecutor, head_engine

    spec = spec_from_args(args)
    executor = RayExecutor.start(spec, address=args.ray_address, actors=args.ray_actors, console=console,
                                 tiny=bool(getattr(args, "tiny", False)))
    try:
        engine = head_engine(spec)
    except BaseException:
        executor.close()
        raise
    return engine, executor
