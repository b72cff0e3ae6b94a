"""`vlbench run --experiment …` and `vlbench experiments`: the experiment commands.

`add_parsers(subparsers)` adds both to vlbench's parser; each sets `func` to its handler.
"""

from __future__ import annotations

import signal
import tomllib
from pathlib import Path

from vlbench.errors import UserError


def add_parsers(subparsers) -> None:
    from vlbench.cli import _model_flags

    p = subparsers.add_parser(
        "run", help="run an experiment type: every config × reference × prompt × seed, resumable",
        description="Run an experiment type into --output-dir: one PNG per image, results.jsonl, grid.png, "
                    "report.html and run.json. Re-run the same command to resume: finished images are skipped.")
    p.add_argument("--experiment", required=True, metavar="NAME_OR_PATH",
                   help="a built-in type (see `vlbench experiments`) or the path of a type file")
    p.add_argument("--image", action="append", default=[], metavar="REF",
                   help="reference image; repeat to run every config on each reference")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt; repeat for several")
    p.add_argument("--prompts-file", metavar="FILE",
                   help="prompts, one per line (blank and # lines skipped), or a TOML file with prompts = [...]")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="where the images and reports go")
    p.add_argument("--quick", action="store_true", help="the type's quick subset (fewer layers, every kind of config)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, help="one seed for every image (default: the type's, else 0)")
    seeds.add_argument("--seeds", metavar="N,N,…", help="several seeds, comma-separated: each config runs with each")
    p.add_argument("--steps", type=int, help="denoising steps (default 9, Turbo)")
    p.add_argument("--width", type=int, help="default 1024, multiple of 16")
    p.add_argument("--height", type=int, help="default 1024, multiple of 16")
    p.add_argument("--limit", type=int, metavar="N", help="generate at most N images now; re-run to continue")
    p.add_argument("--no-store", action="store_true", help="do not record the images in the run history")
    _model_flags(p)
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("experiments", help="list the experiment types and their configs",
                              description="List the built-in experiment types, or check type files given by path.")
    p.add_argument("types", nargs="*", metavar="NAME_OR_PATH", help="only these types (names or type files)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=cmd_experiments)


# ---- vlbench experiments ----
def cmd_experiments(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from vlbench.experiments.spec import builtin_types, load_type

    targets = args.types or [str(p) for p in builtin_types()]
    table = Table(title="experiment types", show_lines=True, title_justify="left")
    table.add_column("type", style="bold", no_wrap=True)
    table.add_column("question")
    table.add_column("configs", justify="right", no_wrap=True)
    table.add_column("configs and their key fields")
    bad = 0
    for target in targets:
        experiment = load_type(target)  # a shape error is fatal: one line naming file and key
        counts = f"{len(experiment.configs)}\n(quick {len(experiment.selected(quick=True))})"
        lines = []
        if experiment.base:
            lines.append("[dim]base: " + " ".join(f"{k}={v}" for k, v in experiment.base.items()) + "[/dim]")
        for config in experiment.configs:
            mark = "" if config.quick else " [dim](full only)[/dim]"
            lines.append(f"{_escape(config.name)}: {_escape(config.describe())}{mark}")
        question = _escape(experiment.question or experiment.description)
        try:
            experiment.recipes()  # every key and value against Recipe
        except UserError as exc:
            bad += 1
            question += f"\n[red]{_escape(str(exc))}[/red]"
        name = experiment.name if not args.types else f"{experiment.name}\n[dim]{_escape(str(experiment.path))}[/dim]"
        table.add_row(name, question, counts, "\n".join(lines))
    Console().print(table)
    if not args.types:
        print("run one: vlbench run --experiment NAME --image REF --prompt TEXT --output-dir DIR [--quick]")
    return 1 if bad else 0


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# ---- vlbench run ----
def read_prompts(path: str) -> list[str]:
    """A text file (one prompt per line; blank and # lines skipped) or a TOML file with prompts = [...]."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--prompts-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--prompts-file {path}: cannot read it ({exc.__class__.__name__})") from None
    if file.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"--prompts-file {path}: not valid TOML ({exc})") from None
        prompts = data.get("prompts")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise UserError(f"--prompts-file {path}: prompts: expected prompts = [\"...\", ...]")
        prompts = [p for p in prompts if p.strip()]
    else:
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"--prompts-file {path}: has no prompts")
    return prompts


def parse_seeds(args) -> list[int] | None:
    if args.seeds is not None:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--seeds {args.seeds}: expected whole numbers separated by commas, e.g. 1,2,3") from None
        if not seeds:
            raise UserError("--seeds: give at least one seed, e.g. 1,2,3")
        return list(dict.fromkeys(seeds))
    return None if args.seed is None else [args.seed]


def _unique(items: list) -> list:
    return list(dict.fromkeys(items))


def cmd_run(args) -> int:
    from vlbench.cli import _engine
    from vlbench.engine.engine import Reference
    from vlbench.engine.recipe import Recipe
    from vlbench.experiments.runner import run_experiment
    from vlbench.experiments.spec import load_type

    # everything a user can get wrong is checked before any model loads
    experiment = load_type(args.experiment)
    seeds = parse_seeds(args)
    overrides = {k: getattr(args, k) for k in ("steps", "width", "height") if getattr(args, k) is not None}
    for seed in seeds or []:
        try:
            Recipe(seed=seed)
        except UserError as exc:
            raise UserError(f"--seed {seed}: {exc}") from None
    recipes = experiment.recipes(quick=args.quick, overrides=overrides)
    prompts = list(args.prompt) + (read_prompts(args.prompts_file) if args.prompts_file else [])
    prompts = _unique(prompts)
    if not prompts:
        raise UserError("--prompt: give at least one prompt (or --prompts-file)")
    if not args.image:
        raise UserError("--image: give at least one reference image")
    refs = []
    for path in args.image:
        if not Path(path).is_file():
            raise UserError(f"--image {path}: no such file")
        ref = Reference.open(path)
        if any(r.sha256 == ref.sha256 for r in refs):
            continue  # the same picture twice is one reference
        refs.append(ref)
    if args.limit is not None and args.limit < 0:
        raise UserError(f"--limit {args.limit}: must be >= 0")
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out}: is a file; give a folder")

    console = _console()
    store = None
    if not args.no_store:
        try:
            from vlbench.store import Store

            store = Store()
        except Exception as exc:  # noqa: BLE001 — the output folder is the run's primary record
            console.print(f"[yellow]run store unavailable ({exc.__class__.__name__}: {exc}); "
                          "images are recorded in the output folder only[/yellow]")
    engine = _engine(args, console)  # the same Engine factory as generate: one Engine, models load lazily, once
    parameters = {"experiment": args.experiment, "images": args.image, "prompts": prompts, "seeds": seeds,
                  "quick": args.quick, "overrides": overrides, "limit": args.limit, "output_dir": str(out)}
    n = len(recipes) * len(refs) * len(prompts) * len(seeds or [None])
    console.print(f"[bold]{experiment.name}[/bold]: {len(recipes)} configs × {len(refs)} references × "
                  f"{len(prompts)} prompts × {len(seeds or [None])} seeds = {n} images → {out}/")
    previous = signal.signal(signal.SIGTERM, _sigterm) if _main_thread() else None
    try:
        summary = run_experiment(engine, experiment, recipes, refs, prompts, out, seeds=seeds, limit=args.limit,
                                 parameters=parameters, store=store, console=console)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted; finished images are kept. Re-run the same command to resume.[/yellow] "
                      f"Report so far: {out / 'report.html'}")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if store is not None:
            store.close()
    left = summary.jobs - summary.skipped - summary.done - summary.failed
    console.print(f"{summary.done} new images, {summary.skipped} already done, {summary.failed} failed"
                  + (f", {left} left (re-run to continue)" if left > 0 else "")
                  + f"; {summary.vl_forwards} VL forwards")
    for line in summary.failures[:10]:
        console.print(f"[red]failed: {_escape(line)}[/red]")
    console.print(f"wrote {out / 'grid.png'}, {out / 'report.html'} and {out / 'results.jsonl'}")
    return 1 if summary.failed else 0


def _sigterm(signum, frame):  # `kill` finishes like Ctrl-C: the report is written, the folder stays resumable
    raise KeyboardInterrupt


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _console():
    from rich.console import Console

    return Console(stderr=True)
