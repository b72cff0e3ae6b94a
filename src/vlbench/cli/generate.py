"""`vlbench generate`: one image through the one job path, recorded in the run history."""

from __future__ import annotations

from pathlib import Path

from vlbench.cli import common
from vlbench.errors import UserError
from vlbench.jobs import execute
from vlbench.pngs import encode_png, write_png, write_run_png
from vlbench.records import RunRecord, job_key, references_of

HELP = "generate one image"


def add_arguments(p) -> None:
    common.add_input_flags(p, prompt_required=False)
    p.add_argument("--from", dest="from_png", metavar="IMAGE.png",
                   help="re-run the recipe, seed, prompt and references a vlbench PNG records (flags set here "
                        "override them); the same models and device give the same pixels")
    common.add_recipe_flags(p)
    p.add_argument("--out", required=True, metavar="OUT.png", help="output PNG (its run record in the PNG's metadata)")
    p.add_argument("--no-store", action="store_true", help="do not record the image in the run history")
    p.add_argument("--measure-share", action="store_true", help="record each attend mix's realised share: the share of the image tokens' attention to the mix's caption rows that reaches its other source, measured in a few joint blocks of the DiT (docs/intra_vl_blending.md)")
    common.add_model_flags(p)


def run(args) -> int:
    from rich.progress import Progress

    out, prompt, recipe, refs, spec, files = common.single_image_inputs(args, ".png")
    console = common.console()
    common.check_free_space(out, common.image_bytes(recipe.width, recipe.height), console, "out")
    engine = common.engine(spec, console, files=files)
    engine.share_probe = args.measure_share
    record = RunRecord(prompt=prompt, recipe=recipe.to_dict(), seed=recipe.seed, source="cli",
                       references=references_of((Path(r.path).resolve(), r.sha256) for r in refs),
                       key=job_key("", recipe.to_dict(), prompt, [r.sha256 for r in refs]))
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("generating", total=recipe.steps)
        outcome = execute(engine, record, refs, render=common.render,
                          on_step=lambda i, n: progress.update(task, completed=i, total=n))
    if outcome.failure is not None:
        if outcome.failure.kind == "input":
            raise UserError(outcome.failure.reason)
        console.print(f"[red]failed: {common.escape(outcome.failure.reason)}[/red]")
        return 1
    record = outcome.record
    common.warn(console, record.conditioning.get("warnings", []))
    record = write_run_png(out, outcome.image, record, name=str(out.resolve()))  # before its history row
    if not args.no_store:
        store = common.open_store(console)
        if store is not None:
            with store:
                try:
                    store.add(record)
                except Exception as exc:  # noqa: BLE001 — the image is written; the history is an index
                    console.print(f"[yellow]run store: {common.escape(type(exc).__name__)}: {common.escape(exc)}; "
                                  f"{common.escape(out)} is written but not in the run history[/yellow]")
    console.print(f"wrote {common.escape(out)} ({recipe.width}×{recipe.height}, seed {recipe.seed}, "
                  f"{record.caption_tokens} caption tokens, {record.timings['generation']:.2f} s)")
    return 0
