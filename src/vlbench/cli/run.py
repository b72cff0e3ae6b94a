"""`vlbench run --experiment …`: every config × reference × prompt × seed into a resumable output folder."""

from __future__ import annotations

from pathlib import Path

from vlbench.cli import common
from vlbench.engine.precheck import check_plan, read_model_files
from vlbench.errors import UserError
from vlbench.evalsets import load_eval_set
from vlbench.executors import EXECUTORS, ExecutorChoice, start_executor
from vlbench.experiments.runner import LocalExecutor, run_experiment
from vlbench.experiments.spec import load_type
from vlbench.prompts import check_prompt, read_prompts_file
from vlbench.recipe import field_infos, parse_seeds

HELP = "run an experiment type: every config × reference × prompt × seed, resumable"
DESCRIPTION = ("Run an experiment type into --output-dir: one PNG per image, results.jsonl, grid.png, report.html "
               "and run.json. Re-run the same command to resume: finished images are skipped.")


def add_arguments(p) -> None:
    p.add_argument("--experiment", required=True, metavar="NAME_OR_PATH",
                   help="a built-in type (see `vlbench experiments`) or the path of a type file")
    p.add_argument("--image", action="append", default=[], metavar="REF",
                   help="reference image; repeat for several: every config runs on each one, or, for a type with "
                        "references = \"together\", every job reads them all")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt; repeat for several")
    p.add_argument("--prompts-file", metavar="FILE",
                   help="prompts, one per line (blank and # lines skipped), or a TOML file with prompts = [...]")
    p.add_argument("--eval-set", metavar="NAME_OR_DIR",
                   help="references and prompts of an evaluation set: quick, default (12 prompts × 6 procedural "
                        "references), full (36 × 12), photos (12 prompts × 7 real photographs), or a folder of "
                        "images with an optional prompts.txt; "
                        "--image/--prompt add to it; its seeds apply unless --seeds is given")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="where the images and reports go")
    p.add_argument("--quick", action="store_true", help="the type's quick subset (fewer layers, every kind of config)")
    p.add_argument("--seeds", "--seed", dest="seeds", metavar="SEEDS",
                   help="seeds for every config: 3, 1,2,5, 0-7 or 0-3,8 (default: the type's seeds — see "
                        "`vlbench experiments` — else the eval set's, else each config's seed)")
    common.add_recipe_flags(p, only=("steps", "width", "height"), recipe_file=False)
    p.add_argument("--limit", type=int, metavar="N", help="generate at most N images now; re-run to continue")
    p.add_argument("--no-store", action="store_true", help="do not record the images in the run history")
    p.add_argument("--measure-share", action="store_true", help="record each attend mix's realised share: the share of the image tokens' attention to the mix's caption rows that reaches its other source, measured in a few joint blocks of the DiT (docs/intra_vl_blending.md)")
    g = common.add_metric_flags(p, in_run=True)
    g.add_argument("--metrics-batch-size", type=int, default=16, metavar="N", help="images per metric batch (default 16)")
    p.add_argument("--no-diagnostics", action="store_true",
                   help="skip the report's embedding diagnostics (they load Qwen3-VL and Qwen3-4B if the run did not)")
    common.add_model_flags(p)
    g = p.add_argument_group("executor")
    g.add_argument("--executor", metavar="{" + ",".join(EXECUTORS) + "}", default="local",
                   help="local: this process's Engine (default); ray: one Ray actor per GPU, each holding the models")
    g.add_argument("--ray-address", metavar="ADDR",
                   help="a running Ray cluster: auto, HOST:PORT (ray start --head) or ray://HOST:10001 (Ray Client); "
                        "default: start a local Ray instance on 127.0.0.1 with every visible GPU")
    g.add_argument("--ray-actors", type=int, metavar="N",
                   help="actors to start (default: one per GPU of the cluster; without GPUs, min(2, CPUs))")
    common.add_batch_flag(g)


def run(args) -> int:
    from vlbench.analysis.report import write_folder_report

    image_bytes = common.image_bytes

    # everything a user can get wrong is checked before any model loads
    experiment = load_type(args.experiment)
    overrides = {k: getattr(args, k) for k in ("steps", "width", "height") if getattr(args, k) is not None}
    recipes = experiment.recipes(quick=args.quick, overrides=overrides)
    prompts = [check_prompt(p) for p in args.prompt] + (read_prompts_file(args.prompts_file) if args.prompts_file
                                                         else [])
    images = list(args.image)
    eval_set = None
    if args.eval_set:  # references, prompts and (unless --seeds) seeds of an evaluation set

        eval_set = load_eval_set(args.eval_set)
        images = [str(p) for p in eval_set.references] + images
        prompts = eval_set.prompts + prompts
        if not prompts:
            raise UserError("has no prompts.txt and no --prompt was given", field="eval_set", value=args.eval_set,
                            fix="add prompts.txt to the folder (one prompt a line) or give --prompt/--prompts-file")
    # --seeds, else the type's declared seeds, else the eval set's, else each config's own seed
    seeds = (parse_seeds(args.seeds) if args.seeds is not None else list(experiment.seeds)
             or (list(eval_set.seeds) if eval_set is not None else None))
    prompts = list(dict.fromkeys(prompts))
    if not prompts:
        raise UserError("give at least one prompt (or --prompts-file, or --eval-set)", field="prompt")
    if not images:
        raise UserError("give at least one reference image (or --eval-set)", field="image")
    refs = []
    for ref in common.open_references(images):
        if all(r.sha256 != ref.sha256 for r in refs):  # the same picture twice is one reference
            refs.append(ref)
    reference_sets = experiment.reference_sets(refs)
    for named in recipes:  # a config that cannot run with these references is refused before anything runs
        try:
            named.recipe.check_inputs(len(reference_sets[0]))
        except UserError as exc:
            how = "together" if experiment.references == "together" else "one at a time"
            raise exc.within(f"{experiment.path}: config {named.name!r} (with {len(reference_sets[0])} "
                             f"reference(s) read {how})") from None
    if args.limit is not None and args.limit < 0:
        raise UserError("must be >= 0", field="limit", value=args.limit)
    out = common.check_out_dir(args.output_dir)
    metrics = common.metrics_choice(args, in_run=True)
    spec = common.model_spec(args)
    sources = None
    if metrics:  # the metric models: the tiny ones with tiny image models; offline and not downloaded: one line now
        sources = common.metric_sources(args, tiny_models=spec.tiny, console=common.console())
        common.check_metric_sources(metrics, sources, shared=() if sources.get("vqa") else ("vqa",))
    files = read_model_files(spec)  # sizes, control tokens and top-k against the models' files, before loading
    for named in recipes:
        try:
            check_plan(files, ((named.recipe, p, list(s) if isinstance(s, tuple) else [s])
                                      for s in reference_sets for p in prompts))
        except UserError as exc:  # a field the config sets is the config's; a flag's or the prompt's is not
            if exc.field in field_infos() and exc.field not in overrides:
                raise exc.within(f"{experiment.path}: config {named.name!r}") from None
            raise
    choice = ExecutorChoice(args.executor, args.ray_address, args.ray_actors)
    batch = common.batch_size(args.batch, choice.kind)
    if args.measure_share and args.executor != "local":
        raise UserError("measures in the local engine only", field="measure_share", value=True,
                        fix="drop --executor, or drop --measure-share")

    console = common.console()
    n = len(recipes) * len(reference_sets) * len(prompts) * len(seeds or [None])
    size = max((image_bytes(r.recipe.width, r.recipe.height) for r in recipes), default=0)
    common.check_free_space(out, n * size + (1 << 20), console, "output_dir")  # + grid, report, run.json
    engine, executor = start_executor(spec, choice, lambda s: common.engine(s, console, files=files), console)
    if engine is not None:
        engine.share_probe = args.measure_share
    store = None if args.no_store else common.open_store(console)
    parameters = {"experiment": args.experiment, "images": images, "prompts": prompts, "seeds": seeds,
                  "eval_set": args.eval_set,
                  "quick": args.quick, "overrides": overrides, "limit": args.limit, "output_dir": str(out)}
    local = None
    if batch > 1:
        parameters["batch"] = batch
        if executor is not None:
            executor.batch = batch  # each actor batches the jobs it takes (one group, one shape)
        else:
            local = LocalExecutor(common.render, batch=batch)
    if executor is not None:
        parameters["executor"] = executor.describe()
    console.print(f"[bold]{common.escape(experiment.name)}[/bold]: {len(recipes)} configs × {len(reference_sets)} "
                  f"references × {len(prompts)} prompts × {len(seeds or [None])} seeds = {n} images → "
                  f"{common.escape(out)}/")
    previous = common.sigterm_as_interrupt()
    try:
        summary = run_experiment(engine, experiment, recipes, reference_sets, prompts, out, seeds=seeds,
                                 limit=args.limit, parameters=parameters, store=store, console=console,
                                 executor=executor or local, render=common.render, report=write_folder_report)
        if executor is not None:
            executor.close()  # the GPUs are free before diagnostics or metrics load models here
        _after_run(args, engine, out, recipes, refs, prompts, metrics, sources, store, console)
    except OSError as exc:
        if exc.filename is None:  # a write that failed mid-file (a full disk) names no file: name the folder
            exc.filename = str(out)
        raise
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted; finished images are kept. Re-run the same command to resume.[/yellow] "
                      f"Report so far: {common.escape(out / 'report.html')}")
        raise
    finally:
        common.release(previous, executor, store)
    left = summary.jobs - summary.skipped - summary.done - summary.failed
    console.print(f"{summary.done} new images, {summary.skipped} already done, {summary.failed} failed"
                  + (f", {left} left (re-run to continue)" if left > 0 else "")
                  + (f"; {summary.redone} redone (image missing or damaged)" if summary.redone else "")
                  + (f"; {summary.rerecorded} re-recorded in the run history" if summary.rerecorded else "")
                  + f"; {summary.vl_forwards} VL forwards")
    if summary.unrecorded:
        console.print(f"[yellow]{summary.unrecorded} image(s) are in {common.escape(out)} but not yet in the run "
                      f"history (run store: {common.escape(summary.store_error)}); re-run the same command once the "
                      "store is writable to record them[/yellow]")
    for line in summary.failures[:10]:
        console.print(f"[red]failed: {common.escape(line)}[/red]")
    console.print(f"wrote {common.escape(out / 'grid.png')}, {common.escape(out / 'report.html')} and "
                  f"{common.escape(out / 'results.jsonl')}")
    return 1 if summary.failed else 0


def _after_run(args, engine, out: Path, recipes, refs, prompts, metrics, sources, store, console) -> None:
    """The report's embedding diagnostics, then (with --metrics) the scoring pass; then the report again."""
    if not args.no_diagnostics:
        from vlbench.analysis.diagnose import diagnose_run, recipe_layers

        calibration = next((n.recipe.calibration for n in recipes if n.recipe.calibration), None)
        try:
            diagnose_run(engine, out, refs, prompts, recipe_layers([n.recipe for n in recipes]), calibration)
        except UserError as exc:
            console.print(f"[yellow]embedding diagnostics skipped: {common.escape(common.render(exc))}[/yellow]")
    if metrics:
        sources = dict(sources)
        sources.setdefault("vqa", engine.models.spec.vl)  # the judge is the run's own Qwen3-VL unless --vqa names one
        common.score(out, metrics, sources, engine.models.device, None, args.metrics_batch_size, store, console,
                     shared={"vqa": lambda: engine.models.vl}, shared_sources={"vqa": engine.models.spec.vl})
    if metrics or not args.no_diagnostics:
        common.rewrite_report(out)
    if metrics:  # the statistics table ends the run
        from vlbench.analysis.folders import print_folder_stats

        print_folder_stats([out], console, common.render)
