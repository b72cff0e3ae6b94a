"""`vlbench run --experiment …`, `vlbench experiments`, `vlbench score` and `vlbench diagnose`.

`add_parsers(subparsers)` adds them to vlbench's parser; each sets `func` to its handler.
"""

from __future__ import annotations

import re
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
    p.add_argument("--eval-set", metavar="NAME_OR_DIR",  # issue 15
                   help="references and prompts of an evaluation set: quick, default (12 prompts × 6 procedural "
                        "references), full (36 × 12), or a folder of images with an optional prompts.txt; "
                        "--image/--prompt add to it; without --seed/--seeds it runs seeds 0,1,2,3")
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
    g = _metric_flags(p, in_run=True)
    g.add_argument("--metrics-batch-size", type=int, default=16, metavar="N", help="images per metric batch (16)")
    p.add_argument("--no-diagnostics", action="store_true",
                   help="skip the report's embedding diagnostics (they load Qwen3-VL and Qwen3-4B if the run did not)")
    _model_flags(p)
    from vlbench.executors import add_executor_flags

    add_executor_flags(p)  # --executor local|ray, --ray-address, --ray-actors
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser(
        "score", help="score a run folder's images: prompt adherence and reference similarity",
        description="Score every image of a vlbench run folder (results.jsonl) with image metrics. Values go to "
                    "scores.jsonl in the folder, the run history and report.html. Batched and resumable: "
                    "re-running skips every image already scored with the same models.")
    p.add_argument("dir", metavar="DIR", help="the --output-dir of a vlbench run")
    _metric_flags(p, in_run=False)
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per batch (default 16)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"],
                   help="metric models' dtype (default fp32; the Qwen3-VL judge bf16 on a GPU)")
    p.add_argument("--tiny", action="store_true",
                   help="use built-in tiny RANDOM-WEIGHT metric models (no download; the scores mean nothing)")
    p.add_argument("--no-store", action="store_true", help="do not write the scores into the run history")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=cmd_score)

    p = subparsers.add_parser(
        "diagnose", help="compare Qwen3-VL hidden states with Qwen3-4B's, per layer and token role",
        description="Per VL layer and token role (image, markers, text, prompt, attention sinks): RMS, per-dimension "
                    "std ratio against Qwen3-4B's encoding of the same prompt (layer -2), cosine of position-aligned "
                    "text tokens, and the same after each normalisation mode (global and per-dim need vlbench "
                    "calibrate).")
    p.add_argument("--image", action="append", default=[], metavar="REF",
                   help="reference image; repeat for several (default: none, text only)")
    p.add_argument("--prompt", required=True, help="the prompt")
    p.add_argument("--layers", nargs="+", default=None, metavar="L",
                   help="VL layers for the table, e.g. -1,-2,-5 (default -1,-2,-5; 'all' for every layer)")
    p.add_argument("--calibration", metavar="STATS.safetensors",
                   help="calibration stats for the normalisation columns (default: vlbench calibrate's for these models)")
    p.add_argument("--out", metavar="DIR", help="also write DIR/diagnostics.json and a per-layer plot PNG")
    _model_flags(p)
    # "-1,-2,-5" is a value, not an option (argparse alone only takes "-1" for a negative number)
    p._negative_number_matcher = re.compile(r"^-\d+(,-?\d+)*,?$|^-\d*\.\d+$")
    p.set_defaults(func=cmd_diagnose)

    p = subparsers.add_parser("experiments", help="list the experiment types and their configs",
                              description="List the built-in experiment types, or check type files given by path.")
    p.add_argument("types", nargs="*", metavar="NAME_OR_PATH", help="only these types (names or type files)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=cmd_experiments)


def _metric_flags(p, in_run: bool):
    from vlbench.metrics import DEFAULT_METRICS, DEFAULT_MODELS, METRICS

    g = p.add_argument_group("metrics")
    names = ",".join(METRICS)
    if in_run:
        g.add_argument("--metrics", nargs="?", const=",".join(DEFAULT_METRICS), default=None, metavar="LIST",
                       help=f"score the images when the run ends, then print the statistics: some of {names} "
                            f"(no list: {','.join(DEFAULT_METRICS)})")
    else:
        g.add_argument("--metrics", default=None, metavar="LIST",
                       help=f"comma-separated, from {names} (default {','.join(DEFAULT_METRICS)})")
    g.add_argument("--siglip", metavar="ID_OR_DIR", help=f"SigLIP 2 model (default {DEFAULT_MODELS['siglip']})")
    g.add_argument("--clip", metavar="ID_OR_DIR", help=f"CLIP model for clip_t, clip_i (default {DEFAULT_MODELS['clip']})")
    g.add_argument("--dino", metavar="ID_OR_DIR", help=f"DINO ViT model (default {DEFAULT_MODELS['dino']})")
    g.add_argument("--dinov2", metavar="ID_OR_DIR", help=f"DINOv2 model for dinov2 (default {DEFAULT_MODELS['dinov2']})")
    g.add_argument("--vgg", metavar="ID_OR_DIR",
                   help=f"VGG-19 (torchvision layout, model.safetensors) for style_gram (default {DEFAULT_MODELS['vgg']})")
    g.add_argument("--vqa", metavar="ID_OR_DIR",
                   help=f"Qwen3-VL judge for vqascore, content_leak (default: vlbench run's own --vl; "
                        f"vlbench score: {DEFAULT_MODELS['vqa']})")
    g.add_argument("--pickscore", metavar="ID_OR_DIR", help=f"PickScore model (default {DEFAULT_MODELS['pickscore']})")
    g.add_argument("--pickscore-processor", metavar="ID_OR_DIR",
                   help=f"PickScore's processor (default {DEFAULT_MODELS['pickscore_processor']})")
    return g


def _metric_sources(args) -> dict[str, str]:
    """The model of each metric family: the flags, or the tiny random ones with --tiny."""
    from vlbench.metrics import SOURCE_FLAGS

    given = {k: getattr(args, k) for k in SOURCE_FLAGS if getattr(args, k, None)}
    if args.tiny:
        if given:
            raise UserError(f"--tiny: cannot be combined with --{next(iter(given)).replace('_', '-')}; drop one")
        from vlbench.metrics.tiny import ensure_tiny_metric_models

        return ensure_tiny_metric_models().sources()
    return given


def _score(out: Path, metrics, sources: dict, device, dtype, batch_size: int, store, console, shared=None,
           shared_sources=None, judge_dtype=None) -> None:
    """The scoring pass with its progress and summary lines (run --metrics and score share it)."""
    from vlbench.metrics.models import MetricModels
    from vlbench.metrics.score import SCORES, score_folder

    models = MetricModels(sources, device=device, dtype=dtype, on_status=lambda t: console.print(f"[dim]{t}[/dim]"),
                          shared=shared, shared_sources=shared_sources, judge_dtype=judge_dtype)
    try:
        summary = score_folder(out, metrics, models, batch_size=batch_size, store=store, console=console)
    except KeyboardInterrupt:
        console.print(f"[yellow]scoring interrupted; scored images are kept in {out / SCORES}. "
                      "Re-run to resume.[/yellow]")
        raise
    for line in summary.warnings:
        console.print(f"[yellow]warning: {_escape(line)}[/yellow]")
    console.print(f"scored {summary.scored} images ({summary.values} values: {', '.join(metrics)}), "
                  f"{summary.skipped} already scored; {summary.stored} run-history rows updated → {out / SCORES}")


def _rewrite_report(out: Path) -> None:
    import json

    from vlbench.experiments.results import ResultsLog, latest_by_key
    from vlbench.report import write_report

    rows, _ = ResultsLog(out / "results.jsonl").read()
    try:
        info = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    write_report(out, list(latest_by_key(rows).values()), info)


def _metric_dtype(name: str | None):
    import torch

    from vlbench.engine.models import TORCH_DTYPES

    return torch.float32 if name is None else TORCH_DTYPES[name]


def _open_store(console):
    try:
        from vlbench.store import Store

        return Store()
    except Exception as exc:  # noqa: BLE001 — the output folder is the run's primary record
        console.print(f"[yellow]run store unavailable ({exc.__class__.__name__}: {exc}); "
                      "results are recorded in the output folder only[/yellow]")
        return None


# ---- vlbench score ----
def cmd_score(args) -> int:
    from vlbench.modelspec import ModelSpec
    from vlbench.metrics import check_available, parse_metrics

    out = Path(args.dir)
    if not out.is_dir():
        raise UserError(f"{out}: no such folder; give the --output-dir of a vlbench run")
    if not (out / "results.jsonl").is_file():
        raise UserError(f"{out}: no results.jsonl here; give the --output-dir of a vlbench run")
    metrics = parse_metrics(args.metrics)
    check_available(metrics)
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size}: must be >= 1")
    sources = _metric_sources(args)
    device = ModelSpec(device=args.device).resolved_device()
    console = _console()
    if args.tiny:
        console.print("[yellow]--tiny: built-in RANDOM-WEIGHT metric models; the scores mean nothing[/yellow]")
    store = None if args.no_store else _open_store(console)
    try:
        _score(out, metrics, sources, device, _metric_dtype(args.dtype), args.batch_size, store, console,
               judge_dtype=_metric_dtype(args.dtype) if args.dtype else None)
    finally:
        if store is not None:
            store.close()
    _rewrite_report(out)
    console.print(f"wrote {out / 'report.html'}")
    return 0


# ---- vlbench diagnose ----
def parse_layers(values: list[str] | None) -> tuple[int, ...] | None:
    """['-1,-2', '-5'] -> (-1, -2, -5); None -> the default layers; ['all'] -> None (every layer)."""
    from vlbench.diagnose import DEFAULT_LAYERS

    if values is None:
        return DEFAULT_LAYERS
    parts = [p.strip() for v in values for p in v.split(",") if p.strip()]
    if parts == ["all"]:
        return None
    try:
        layers = tuple(dict.fromkeys(int(p) for p in parts))
    except ValueError:
        raise UserError(f"--layers {' '.join(values)}: expected whole numbers separated by commas, e.g. -1,-2,-5") from None
    if not layers:
        raise UserError("--layers: give at least one layer, e.g. -1,-2,-5")
    return layers


def cmd_diagnose(args) -> int:
    from rich.console import Console

    from vlbench.cli import _engine, _open_references
    from vlbench.diagnose import diagnose, entry_id, plot, print_diagnostics, write_diagnostics

    layers = parse_layers(args.layers)
    if args.calibration and not Path(args.calibration).is_file():
        raise UserError(f"--calibration {args.calibration}: no such file")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder")
    refs = _open_references(args.image)
    console = _console()
    engine = _engine(args, console)
    diag = diagnose(engine, refs, args.prompt, layers, args.calibration)
    print_diagnostics(diag, Console())
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        diag["id"] = entry_id(diag["reference_sha256"], args.prompt)
        diag["plot"] = f"diagnostics-{diag['id']}.png"
        plot(diag, out / diag["plot"])
        path = write_diagnostics(out, [diag])
        console.print(f"wrote {path} and {out / diag['plot']}")
    return 0


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
    images = list(args.image)
    # ---- issue 15: --eval-set supplies references, prompts and (without --seed/--seeds) several seeds ----
    eval_set = None
    if getattr(args, "eval_set", None):
        from vlbench.evalsets import load_eval_set

        eval_set = load_eval_set(args.eval_set)
        images = [str(p) for p in eval_set.references] + images
        prompts = eval_set.prompts + prompts
        if not prompts:
            raise UserError("has no prompts.txt and no --prompt was given", field="eval_set", value=args.eval_set,
                            fix="add prompts.txt to the folder (one prompt a line) or give --prompt/--prompts-file")
        if seeds is None:
            seeds = list(eval_set.seeds)
    # ---- end issue 15 ----
    prompts = _unique(prompts)
    if not prompts:
        raise UserError("--prompt: give at least one prompt (or --prompts-file, or --eval-set)")
    if not images:
        raise UserError("--image: give at least one reference image (or --eval-set)")
    refs = []
    for path in images:
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
    metrics = None
    if args.metrics is not None:
        from vlbench.metrics import check_available, parse_metrics

        metrics = parse_metrics(args.metrics)
        check_available(metrics)
        if args.metrics_batch_size < 1:
            raise UserError(f"--metrics-batch-size {args.metrics_batch_size}: must be >= 1")
    else:
        from vlbench.metrics import SOURCE_FLAGS

        if any(getattr(args, k, None) for k in SOURCE_FLAGS):
            raise UserError("--siglip/--clip/--dino/…: choose the metric models only with --metrics")

    console = _console()
    from vlbench.executors import start_executor

    # local: the same Engine factory as generate (one Engine, models load lazily, once); ray: the actors hold the models
    engine, executor = start_executor(args, console)
    store = None if args.no_store else _open_store(console)
    parameters = {"experiment": args.experiment, "images": images, "prompts": prompts, "seeds": seeds,
                  "eval_set": args.eval_set if eval_set else None,
                  "quick": args.quick, "overrides": overrides, "limit": args.limit, "output_dir": str(out)}
    if executor is not None:
        parameters["executor"] = executor.describe()
    n = len(recipes) * len(refs) * len(prompts) * len(seeds or [None])
    console.print(f"[bold]{experiment.name}[/bold]: {len(recipes)} configs × {len(refs)} references × "
                  f"{len(prompts)} prompts × {len(seeds or [None])} seeds = {n} images → {out}/")
    previous = signal.signal(signal.SIGTERM, _sigterm) if _main_thread() else None
    try:
        summary = run_experiment(engine, experiment, recipes, refs, prompts, out, seeds=seeds, limit=args.limit,
                                 parameters=parameters, store=store, console=console, executor=executor)
        if executor is not None:
            executor.close()  # the GPUs are free before diagnostics or metrics load models here
        _after_run(args, engine, out, recipes, refs, prompts, metrics, store, console)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted; finished images are kept. Re-run the same command to resume.[/yellow] "
                      f"Report so far: {out / 'report.html'}")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if executor is not None:
            executor.close()
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


def _after_run(args, engine, out: Path, recipes, refs, prompts, metrics, store, console) -> None:
    """The report's embedding diagnostics, then (with --metrics) the scoring pass; then the report again."""
    if not args.no_diagnostics:
        from vlbench.diagnose import diagnose_run, recipe_layers

        calibration = next((n.recipe.calibration for n in recipes if n.recipe.calibration), None)
        try:
            diagnose_run(engine, out, refs, prompts, recipe_layers([n.recipe for n in recipes]), calibration)
        except UserError as exc:
            console.print(f"[yellow]embedding diagnostics skipped: {_escape(str(exc))}[/yellow]")
    if metrics:
        sources = _metric_sources(args)
        # ---- issue 15: the VQA judge is the run's own Qwen3-VL unless --vqa names another ----
        sources.setdefault("vqa", engine.models.spec.vl)
        _score(out, metrics, sources, engine.models.device, _metric_dtype(None), args.metrics_batch_size, store,
               console, shared={"vqa": lambda: engine.models.vl}, shared_sources={"vqa": engine.models.spec.vl})
    if metrics or not args.no_diagnostics:
        _rewrite_report(out)
    if metrics:  # ---- issue 15: the statistics table ends the run ----
        from vlbench.cli_stats import print_folder_stats

        print_folder_stats([out], console)


def _sigterm(signum, frame):  # `kill` finishes like Ctrl-C: the report is written, the folder stays resumable
    raise KeyboardInterrupt


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _console():
    from rich.console import Console

    return Console(stderr=True)
