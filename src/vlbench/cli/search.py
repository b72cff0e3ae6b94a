"""`vlbench search --space FILE`: a multi-objective search over a recipe space (docs/search.md)."""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from vlbench.cli import common
from vlbench.errors import UserError
from vlbench.evalsets import load_eval_set
from vlbench.executors import EXECUTORS, ExecutorChoice, start_executor
from vlbench.experiments import folder as F
from vlbench.files import atomic_write_json, read_text_file
from vlbench.metrics import DEFAULT_MODELS, SOURCE_FLAGS
from vlbench.modelspec import ModelSpec
from vlbench.prompts import check_prompt, read_prompts_file
from vlbench.recipe import Recipe, parse_seeds
from vlbench.search.runner import INFO, optuna_module, run_search
from vlbench.search.space import load_space, parse_space

HELP = "search a recipe space for the Pareto front of metric objectives (Optuna), resumable"
DESCRIPTION = ("Search the Recipe fields a space file declares (ranges, value lists) for the trade-off between its "
               "objectives (metric means over every prompt × reference × seed), with Optuna's NSGA-II/III or TPE. "
               "Each trial is a vlbench run folder under --output-dir/trials/; the folder also holds search.journal "
               "(the Optuna study), trials.jsonl, pareto.json, pareto.png and front/ (the front's recipes, grid "
               "and report). Re-run with --resume to continue.")
INPUT_FLAGS = ("image", "prompt", "prompts_file", "eval_set", "seeds", "sampler_seed", "steps", "width", "height")
SIZE_FLAGS = ("steps", "width", "height")


def add_arguments(p) -> None:
    p.add_argument("--space", metavar="FILE.toml",
                   help="the search space: fields to vary, fixed fields, objectives, constraints, sampler "
                        "(see examples/search/); with --resume, the search's own unless given")
    p.add_argument("--output-dir", required=True, metavar="DIR",
                   help="the search folder: search.journal, search.json, trials/, trials.jsonl, pareto.json, front/")
    p.add_argument("--resume", action="store_true",
                   help="continue the search in --output-dir with its own space, inputs and sampler seed")
    p.add_argument("--trials", type=int, metavar="N",
                   help="stop when the search has N finished trials (this and earlier runs, complete, failed and "
                        "refused ones included)")
    p.add_argument("--budget-minutes", type=float, metavar="M",
                   help="ask no new trial after M minutes of this invocation (the trial in flight finishes; "
                        "the invocation's first trial always runs)")
    p.add_argument("--sampler-seed", type=int, metavar="S",
                   help="the sampler's seed (default 0): same seed + same space + same inputs -> the same trials "
                        "in the same order, resumed or not, with one worker (local, or one Ray actor); with several "
                        "actors the order depends on timing")
    p.add_argument("--image", action="append", default=[], metavar="REF",
                   help="reference image; repeat for several: every trial runs on each one")
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt; repeat for several")
    p.add_argument("--prompts-file", metavar="FILE", help="prompts, one per line, or a TOML file with prompts = [...]")
    p.add_argument("--eval-set", metavar="NAME_OR_DIR",
                   help="references and prompts of an evaluation set (quick, default, full, photos, or a folder); its "
                        "seeds apply unless the space file or --seeds names others")
    p.add_argument("--seeds", "--seed", dest="seeds", metavar="SEEDS",
                   help="seeds of every trial: 3, 1,2,5, 0-7 (default: the space's seeds, else the eval set's, "
                        "else 0)")
    p.add_argument("--no-store", action="store_true", help="do not record the images in the run history")
    common.add_recipe_flags(p, only=SIZE_FLAGS, recipe_file=False)  # override the space's [fixed] (a quick try)
    g = p.add_argument_group("metric models (the metrics are the space file's objectives, constraints and metrics)")
    for name in SOURCE_FLAGS:
        g.add_argument(common.flag_name(name), dest=name, metavar="ID_OR_DIR",
                       help=f"model of the {name.replace('_', ' ')} metric family (default "
                            f"{DEFAULT_MODELS[name] if name != 'vqa' else 'the search’s own Qwen3-VL'})")
    g.add_argument("--metrics-batch-size", type=int, default=16, metavar="N", help="images per metric batch "
                                                                                   "(default 16)")
    common.add_model_flags(p)
    g = p.add_argument_group("executor")
    g.add_argument("--executor", metavar="{" + ",".join(EXECUTORS) + "}", default="local",
                   help="local: this process's Engine (default); ray: one Ray actor per GPU, trials run "
                        "concurrently, one per free actor (with one actor, one after another)")
    g.add_argument("--ray-address", metavar="ADDR", help="a running Ray cluster (see vlbench run --help)")
    g.add_argument("--ray-actors", type=int, metavar="N", help="actors to start (default: one per GPU)")
    common.add_batch_flag(g)


def run(args) -> int:
    # ---- everything a user can get wrong, before any model loads ----
    if args.trials is None and args.budget_minutes is None:
        raise UserError("give --trials N or --budget-minutes M (or both)", field="trials")
    if args.trials is not None and args.trials < 1:
        raise UserError("must be >= 1", field="trials", value=args.trials)
    if args.budget_minutes is not None and not args.budget_minutes > 0:
        raise UserError("must be > 0", field="budget_minutes", value=args.budget_minutes)
    if args.metrics_batch_size < 1:
        raise UserError("must be >= 1", field="metrics_batch_size", value=args.metrics_batch_size)
    optuna_module()
    out = Path(args.output_dir)
    info_path = out / INFO
    info = _read_info(info_path)
    if args.resume:
        if info is None:
            raise UserError("holds no search to resume (no search.json)", field="output_dir", value=args.output_dir,
                            fix="start it without --resume")
        given = [f for f in INPUT_FLAGS if getattr(args, f) not in (None, [])]
        if given:
            raise UserError("has no effect with --resume: the search keeps its own inputs and sampler seed",
                            field=given[0], value=getattr(args, given[0]),
                            fix="drop it, or start a new search in another folder")
        space = parse_space(info["space_source"], Path(info["space_file"]))
        _check_meaning(info, space, args.output_dir)
        if args.space is not None and load_space(args.space).source != space.source:
            raise UserError("differs from the space this search was started with (search.json)", field="space",
                            value=args.space, fix="resume without --space, or start a new search in another folder")
        inputs = info["inputs"]
        sampler_seed = info["sampler_seed"]
        _resume_models(args, info)  # issue 26: the models the search was started with, unless named again
    else:
        if info is not None:
            raise UserError("already holds a search", field="output_dir", value=args.output_dir,
                            fix="add --resume to continue it, or choose another folder")
        if args.space is None:
            raise UserError("give the search space file", field="space", fix="e.g. --space examples/search/"
                                                                                "style_vs_prompt.toml")
        space = load_space(args.space)
        inputs = _inputs(args, space)
        sampler_seed = 0 if args.sampler_seed is None else args.sampler_seed
        if sampler_seed < 0:
            raise UserError("must be >= 0", field="sampler_seed", value=sampler_seed)
    space = _with_overrides(space, inputs.get("overrides") or {})
    refs, prompts = _open_inputs(inputs)
    space.check_feasible(len(refs))
    reference_sets = [(r,) for r in refs]
    spec = common.model_spec(args)
    choice = ExecutorChoice(args.executor, args.ray_address, args.ray_actors)
    batch = common.batch_size(args.batch, choice.kind)
    if batch > 1 and choice.kind != "local":  # a search batches trials in this process's engine (search.runner)
        raise UserError("batches a search's trials on the local executor only", field="batch", value=batch,
                        fix="drop --batch, or use --executor local")

    console = common.console()
    if args.resume and not args.tiny and not any(getattr(args, k, None) for k in SOURCE_FLAGS):
        sources = {k: v for k, v in info["metric_sources"].items() if k != "vqa" or v != spec.vl}  # its own models
    else:
        sources = common.metric_sources(args, tiny_models=spec.tiny, console=console)
    common.check_metric_sources(space.metrics, sources, shared=() if sources.get("vqa") else ("vqa",))
    model_ids = {"tiny": spec.tiny, "zimage": spec.zimage, "vl": spec.vl}
    if args.resume and info.get("models") not in (None, model_ids):  # issue 26
        raise UserError(f"the models differ from the search's (search.json: {_describe_models(info['models'])})",
                        field="output_dir", value=args.output_dir,
                        fix="resume without model flags (the search's own are used), or with the same ones")
    out = common.check_out_dir(args.output_dir)

    handle = F.lock(out)  # one search per folder
    try:
        engine, executor = start_executor(spec, choice, lambda s: common.engine(s, console), console)
        sources.setdefault("vqa", engine.models.spec.vl)  # the judge is the search's own Qwen3-VL unless named
        if args.resume and info.get("metric_sources") != sources:
            raise UserError("the metric models differ from the search's (search.json)", field="output_dir",
                            value=str(out), fix="resume with the same metric model flags (and --tiny if it had it)")
        store = None if args.no_store else common.open_store(console)
        models = _metric_models(sources, engine, console)
        invocation = {"started": _now(), "argv": list(sys.argv), "trials": args.trials,
                      "budget_minutes": args.budget_minutes,
                      "executor": executor.describe() if executor is not None else {"kind": "local"}}
        info = info or {"schema": SEARCH_SCHEMA, "space_file": str(space.path), "space_source": space.source,
                        "sampler": space.sampler, "sampler_seed": sampler_seed, "inputs": inputs,
                        "metric_sources": sources, "invocations": []}
        info.setdefault("models", model_ids)  # what a resume reads (searches before issue 26: inferred)
        info["invocations"].append(invocation)
        atomic_write_json(info_path, info)
        n_images = len(refs) * len(prompts) * len(inputs["seeds"] or [None])
        console.print(f"[bold]{common.escape(space.name)}[/bold]: {len(space.params)} fields searched "
                      f"({'; '.join(p.describe() for p in space.params)}) with {space.sampler} (seed {sampler_seed}); "
                      f"{n_images} images per trial → {common.escape(out)}/")
        previous = common.sigterm_as_interrupt()
        summary = None
        try:
            summary = run_search(engine, space, reference_sets, prompts, out, seeds=inputs["seeds"],
                                 trials=args.trials, budget_minutes=args.budget_minutes, sampler_seed=sampler_seed,
                                 metric_models=models, metrics_batch_size=args.metrics_batch_size, store=store,
                                 executor=executor, console=console, render=common.render,
                                 parameters={"search": str(out), "space": str(space.path)}, batch=batch)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted; finished trials are kept. Continue with the same command and "
                          "--resume.[/yellow]")
            raise
        finally:
            common.release(previous, executor, store)
            invocation.update(finished=_now(), **({} if summary is None else {
                "ran": summary.ran, "complete": summary.complete, "refused": summary.refused,
                "failed": summary.failed, "images": summary.images, "seconds": round(summary.seconds, 3),
                "stopped": summary.stopped}))
            atomic_write_json(info_path, info)
    finally:
        F.unlock(handle)
    hours = summary.seconds / 3600
    console.print(f"{summary.ran} trials now ({summary.complete} complete, {summary.refused} refused by the Recipe, "
                  f"{summary.failed} failed), {summary.finished_before} before; stopped by "
                  f"{summary.stopped}. {summary.images} images in {summary.seconds:.1f} s"
                  + (f" ({summary.ran / hours:.0f} trials/hour, {summary.images / summary.seconds:.2f} images/s)"
                     if summary.seconds > 0 else ""))
    for line in summary.errors[:10]:
        console.print(f"[red]{common.escape(line)}[/red]")
    console.print(f"front: {len(summary.front)} trial(s) → {common.escape(out / 'pareto.json')}, "
                  f"{common.escape(out / 'pareto.png')}, {common.escape(out / 'front')}/ (recipes, grid, report)")
    if summary.ran and not summary.complete and summary.failed:  # nothing to show for it: scripts must see that
        console.print(f"[red]failed: none of this invocation's {summary.ran} trials completed ({summary.failed} "
                      "failed; the reasons above and in trials.jsonl)[/red]")
        return 1
    return 0


SEARCH_SCHEMA = "vlbench.search/2"  # 2: its recipes are of recipe schema 3 (attend ratios are shares)
RATIO_FIELDS = ("alpha", "intra_ratio", "dual_ratio")


def _check_meaning(info: dict, space, output_dir: str) -> None:
    """A search started before recipe schema 3 whose space sets or searches a mix ratio is refused in one line:
    its finished trials read the ratio as per-token odds, and Optuna would go on as if it meant a share."""
    if info.get("schema") != "vlbench.search/1":
        return
    ratios = [f for f in RATIO_FIELDS if f in space.fixed or any(p.name == f for p in space.params)]
    if ratios:
        raise UserError(f"is a search started before recipe schema 3, where {ratios[0]} was per-token odds; this "
                        f"vlbench reads it as a share", field="output_dir", value=output_dir,
                        fix="start a new search in another folder (this one's trials keep their old meaning)")


def _metric_flags(args) -> list[str]:
    return [k for k in SOURCE_FLAGS if getattr(args, k, None)]


def _describe_models(models: dict) -> str:
    return "the tiny random models" if models.get("tiny") else f"--zimage {models.get('zimage')} --vl {models.get('vl')}"


def _resume_models(args, info: dict) -> None:
    """With no model flag given, resume with the models the search was started with (search.json's "models"; a
    search written before it was recorded: tiny when its judge is the tiny Qwen3-VL)."""
    if args.tiny or args.zimage or args.vl:
        return
    models = info.get("models")
    if models is None:
        models = {"tiny": _started_tiny(info)}
    if models.get("tiny"):
        if not _metric_flags(args):
            args.tiny = True
    else:
        args.zimage, args.vl = models.get("zimage") or None, models.get("vl") or None


def _started_tiny(info: dict) -> bool:
    judge = (info.get("metric_sources") or {}).get("vqa")
    return bool(judge) and judge == ModelSpec(tiny=True).built().vl


def _inputs(args, space) -> dict:
    """The search's prompts, references and seeds (what search.json keeps for --resume)."""
    prompts = [check_prompt(p) for p in args.prompt] + (read_prompts_file(args.prompts_file) if args.prompts_file
                                                         else [])
    eval_seeds = None
    if args.eval_set:
        eval_set = load_eval_set(args.eval_set)
        prompts = eval_set.prompts + prompts
        eval_seeds = list(eval_set.seeds)
    prompts = list(dict.fromkeys(prompts))
    if not prompts:
        raise UserError("give at least one prompt (or --prompts-file, or --eval-set)", field="prompt")
    if not args.image and not args.eval_set:
        raise UserError("give at least one reference image (or --eval-set)", field="image")
    seeds = (parse_seeds(args.seeds) if args.seeds is not None else list(space.seeds) or eval_seeds)
    overrides = {k: getattr(args, k) for k in SIZE_FLAGS if getattr(args, k, None) is not None}
    searched = [k for k in overrides if any(p.name == k for p in space.params)]
    if searched:
        raise UserError(f"is searched by the space ({space.path})", field=searched[0], value=overrides[searched[0]],
                        fix="drop the flag, or move the field to [fixed] in a copy of the space file")
    return {"eval_set": args.eval_set, "images": [str(Path(p).resolve()) for p in args.image], "prompts": prompts,
            "seeds": seeds, **({"overrides": overrides} if overrides else {})}


def _with_overrides(space, overrides: dict):
    """The space with --steps/--width/--height set in its [fixed] fields (kept in search.json for --resume)."""
    if not overrides:
        return space
    for key, value in overrides.items():
        Recipe.from_dict({**{k: v for k, v in space.fixed.items() if k in SIZE_FLAGS}, key: value})  # one line if bad
    return dataclasses.replace(space, fixed={**space.fixed, **overrides})


def _open_inputs(inputs: dict):
    images = list(inputs["images"])
    if inputs.get("eval_set"):
        images = [str(p) for p in load_eval_set(inputs["eval_set"]).references] + images
    refs = []
    for ref in common.open_references(images):
        if all(r.sha256 != ref.sha256 for r in refs):
            refs.append(ref)
    return refs, list(inputs["prompts"])


def _metric_models(sources: dict, engine, console):
    import torch

    from vlbench.metrics.models import MetricModels

    return MetricModels(sources, device=engine.models.device, dtype=torch.float32,
                        on_status=lambda t: console.print(f"[dim]{common.escape(t)}[/dim]"),
                        shared={"vqa": lambda: engine.models.vl}, shared_sources={"vqa": engine.models.spec.vl})


def _read_info(path: Path) -> dict | None:
    try:
        return json.loads(read_text_file(path))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read it ({exc.__class__.__name__})", field="output_dir", value=str(path)) from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
