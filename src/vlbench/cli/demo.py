"""`vlbench demo`: every path end to end on the tiny random models, no download."""

from __future__ import annotations

from pathlib import Path

from vlbench.cli import common
from vlbench.files import atomic_write
from vlbench.jobs import execute
from vlbench.modelspec import ModelSpec
from vlbench.pngs import encode_png, write_png, write_run_png
from vlbench.recipe import Recipe, Tokens
from vlbench.records import RunRecord, references_of

HELP = "an end-to-end run on the tiny random models"


def add_arguments(p) -> None:
    p.add_argument("--out", default="vlbench-demo", help="output folder (default ./vlbench-demo)")
    common.add_debug_flag(p)


def run(args) -> int:
    from PIL import Image
    from safetensors.torch import save_file

    out = common.check_out_dir(args.out, field="out")
    ref_path = out / "reference.png"
    if not ref_path.exists():
        atomic_write(ref_path, lambda tmp: Image.linear_gradient("L").resize((192, 128)).convert("RGB")
                     .save(tmp, format="PNG"))
    console = common.console()
    console.print("[bold]vlbench demo[/bold] on the built-in tiny RANDOM-WEIGHT models (images are noise)")
    engine = common.engine(ModelSpec(tiny=True, zimage="", vl=""), console)
    refs = common.open_references([str(ref_path)])
    prompt = "Homer Simpson eating spaghetti"
    for tokens in (Tokens.FULL, Tokens.IMAGE, Tokens.TEXT):
        recipe = Recipe(tokens=tokens, width=128, height=128, steps=4)
        record = RunRecord(prompt=prompt, recipe=recipe.to_dict(), seed=recipe.seed, source="cli",
                           references=references_of((Path(r.path).resolve(), r.sha256) for r in refs))
        outcome = execute(engine, record, refs, render=common.render)
        if outcome.failure is not None:  # a job that fails is exit 1, as in every command
            console.print(f"[red]failed: --tokens {tokens}: {common.escape(outcome.failure.reason)}[/red]")
            return 1
        path = out / f"demo-{tokens}.png"
        write_run_png(path, outcome.image, outcome.record)
        console.print(f"--tokens {tokens:6}: {outcome.record.caption_tokens:3} caption tokens -> {common.escape(path)}")
    cond = engine.condition(Recipe(tokens="text"), prompt, refs)
    atomic_write(out / "demo-text.safetensors",
                 lambda tmp: save_file({"prompt_embeds": cond.embeds.contiguous()}, str(tmp)))
    console.print(f"one VL forward served all three selections (forwards: {engine.vl_forwards})")
    console.print(f"outputs in {common.escape(out)}/ — with real weights: vlbench generate --zimage ID_OR_DIR "
                  "--vl ID_OR_DIR --image REF --prompt TEXT --out out.png")
    return 0
