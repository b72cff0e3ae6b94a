"""`vlbench embed`: write the exact conditioning tensor Z-Image would receive, with a JSON sidecar."""

from __future__ import annotations


from vlbench.cli import common

HELP = "write the exact conditioning tensor Z-Image would receive"


def add_arguments(p) -> None:
    common.add_input_flags(p)
    common.add_recipe_flags(p)
    p.add_argument("--out", required=True, metavar="COND.safetensors", help="output tensor (+ COND.json sidecar)")
    common.add_model_flags(p)


def run(args) -> int:
    from safetensors.torch import save_file

    from vlbench.engine.engine import environment
    from vlbench.engine.generate import check_caption
    from vlbench.files import atomic_write, atomic_write_json
    from vlbench.jobs import NonFinite, check_conditioning
    from vlbench.prompts import check_prompt

    out = common.check_out(args.out, ".safetensors")
    prompt = check_prompt(args.prompt)
    recipe = common.recipe_from_args(args)
    recipe.check_inputs(len(args.image))
    refs = common.open_references(args.image)
    spec = common.model_spec(args)
    console = common.console()
    engine = common.engine(spec, console)
    cond = engine.condition(recipe, prompt, refs)
    common.warn(console, cond.warnings)
    check_caption(cond.embeds.shape[0], engine.models.caption_budget)
    try:  # a NaN tensor is never written
        check_conditioning(engine, recipe, cond)
    except NonFinite as exc:
        console.print(f"[red]failed: {common.escape(exc)}[/red]")
        return 1
    tensor = cond.embeds.detach().to("cpu").contiguous()
    atomic_write(out, lambda tmp: save_file({"prompt_embeds": tensor}, str(tmp),
                                            metadata={"format": "vlbench-conditioning-1"}))
    sidecar = {
        "recipe": recipe.to_dict(), "prompt": prompt, "images": [r.path for r in refs],
        "image_sha256": [r.sha256 for r in refs], "dtype": str(tensor.dtype).removeprefix("torch."),
        "shape": list(tensor.shape), "caption_budget": engine.models.caption_budget,
        "conditioning": cond.describe(), "timings": cond.timings, "environment": environment(engine.models),
    }
    side = atomic_write_json(out.with_suffix(".json"), sidecar)
    console.print(f"wrote {common.escape(out)} [{tensor.shape[0]}×{tensor.shape[1]}] and {common.escape(side)}")
    return 0
