"""`vlbench embed`: write the exact conditioning tensor Z-Image would receive, with a JSON sidecar."""

from __future__ import annotations


from vlbench.analysis import heatmap
from vlbench.cli import common
from vlbench.files import atomic_write, atomic_write_json
from vlbench.jobs import NonFinite, check_conditioning

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

    out, prompt, recipe, refs, spec, files = common.single_image_inputs(args, ".safetensors")
    console = common.console()
    engine = common.engine(spec, console, files=files)
    cond = engine.condition(recipe, prompt, refs)
    common.warn(console, cond.warnings)
    for caption in cond.captions:
        check_caption(caption.shape[0], engine.models.caption_budget)
    try:  # a NaN tensor is never written
        check_conditioning(engine, recipe, cond)
    except NonFinite as exc:
        console.print(f"[red]failed: {common.escape(exc)}[/red]")
        return 1
    tensors, captions = caption_tensors(cond, recipe.run_steps)
    tensor = tensors["prompt_embeds"]
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "vlbench-conditioning-1"}))
    sidecar = {
        "recipe": recipe.to_dict(), "prompt": prompt, "images": [r.path for r in refs],
        "image_sha256": [r.sha256 for r in refs], "dtype": str(tensor.dtype).removeprefix("torch."),
        "shape": list(tensor.shape), "captions": captions, "caption_budget": engine.models.caption_budget,
        "conditioning": cond.describe(), "timings": cond.timings, "environment": environment(engine.models),
    }
    side = atomic_write_json(out.with_suffix(".json"), sidecar)
    console.print(f"wrote {common.escape(out)} [{tensor.shape[0]}×{tensor.shape[1]}] and {common.escape(side)}")
    for path in write_heatmaps(out, sidecar["conditioning"], refs, recipe.to_dict()):
        console.print(f"wrote {common.escape(path)} (the VL text's attention to the reference's image tokens)")
    return 0


def caption_tensors(cond, steps: int) -> tuple[dict, list[dict]]:  # steps: those the sampler runs (run_steps)
    """Every caption the DiT reads, as safetensors keys, and the sidecar's account of them.

    Step 0's caption is `prompt_embeds` (what a one-caption recipe writes, and all it writes); with a
    schedule, the caption the DiT reads from step K on is `prompt_embeds@K`; an attend mix's per-row
    attention weights go beside their caption as `attention_weights` / `attention_weights@K`."""
    entries = [(s.from_step, s.to_step, s.embeds, s.weights) for s in cond.schedule] \
        or [(0, steps, cond.embeds, cond.weights)]
    tensors, captions = {}, []
    for from_step, to_step, embeds, weights in entries:
        tail = "" if from_step == 0 else f"@{from_step}"
        tensors["prompt_embeds" + tail] = embeds.detach().to("cpu").contiguous()
        item = {"key": "prompt_embeds" + tail, "from_step": from_step, "to_step": to_step,
                "shape": list(embeds.shape)}
        if weights is not None:
            tensors["attention_weights" + tail] = weights.detach().to("cpu").contiguous()
            item["attention_weights"] = "attention_weights" + tail
        captions.append(item)
    return tensors, captions


def write_heatmaps(out, conditioning: dict, refs, recipe: dict) -> list:
    """With image_attention on: COND.heatmap.png beside COND.safetensors (COND.heatmap-N.png, one per
    reference, when there are several)."""
    images = heatmap.from_conditioning(conditioning, [r.image for r in refs], recipe)
    paths = []
    for i, img in enumerate(images, 1):
        path = out.with_name(out.stem + (".heatmap.png" if len(images) == 1 else f".heatmap-{i}.png"))
        atomic_write(path, lambda tmp, img=img: img.save(tmp, format="PNG"))
        paths.append(path)
    return paths
