"""vlbench's command line: headless commands over the same engine the workbench drives.

Every bad input ends the command with one line naming the input and the fix (exit 2);
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from vlbench.errors import UserError

def flag_name(field: str) -> str:
    """The command line's word for a field or input: `image_layer` -> `--image-layer`."""
    return "--" + field.replace("_", "-")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        raise UserError(f"{message} (see {self.prog} --help)")


def _model_flags(p: argparse.ArgumentParser) -> None:
    from vlbench.engine.recipe import DEFAULT_VL, DEFAULT_ZIMAGE  # not models.py: no torch before first paint

    g = p.add_argument_group("models")
    g.add_argument("--zimage", metavar="ID_OR_DIR", help=f"Z-Image pipeline (default {DEFAULT_ZIMAGE})")
    g.add_argument("--vl", metavar="ID_OR_DIR", help=f"Qwen3-VL model (default {DEFAULT_VL})")
    g.add_argument("--tiny", action="store_true",
                   help="use the built-in tiny RANDOM-WEIGHT models (no download; images are noise)")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    g.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="default: bf16 on GPU, fp32 on CPU")
    g.add_argument("--offload", choices=["none", "cpu", "group", "sequential"], default="none",
                   help="GPU placement: none = all resident (default); cpu = only the model in use on the GPU "
                        "(the encoders wait in host memory); group = as cpu, and the DiT streams the blocks that "
                        "do not fit --gpu-memory (16/12 GB cards; CUDA only); sequential = layer-by-layer from "
                        "host memory (smallest, slowest). cpu/sequential: no effect with --device cpu")
    g.add_argument("--gpu-memory", type=float, metavar="GIB",
                   help="GPU memory vlbench may use, in GiB (a hard cap; --offload group plans to it); "
                        "default: the whole card")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the DiT's repeated blocks (first image slower; no recompile per caption length)")
    g.add_argument("--quantize", choices=["none", "fp8"], default="none",
                   help="fp8 = torchao float8 matmuls in the DiT (needs --compile and an fp8 GPU: Ada, Hopper, "
                        "Blackwell; images drift from bf16); default none (exact)")
    g.add_argument("--attention", choices=["sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math"],
                   help="the DiT's attention kernel (default sdpa: torch chooses)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


# Help for each Recipe field; the flags themselves are made from the dataclass, so a new field
# gets its flag (`--field-name`) and its TOML key (`field_name`) without a second list of defaults.
RECIPE_HELP = {
    "alpha": "0 = pure Qwen3-4B (Z-Image's own text path), 1 = pure VL (default 1)",
    "tokens": "VL token selection (default full)",
    "layer": "hidden layer, indexed as transformers' output_hidden_states (-1 = after the final norm; default -2)",
    "vl_text": "what the VL reads: prompt (default), none, or any other text verbatim",
    "max_image_tokens": "cap the reference's image tokens below the caption budget",
    "image_layer": "layer for image-role positions (default: --layer)",
    "text_layer": "layer for text positions (default: --layer)",
    "intra_ratio": "mix image and text tokens of one extraction: 0 = all text, 1 = all image  [vl_intra_blend_ratio]",
    "dual": "two extractions, a style pass and a content pass, mixed at --dual-ratio",
    "style_vl_text": "style pass VL text (default none)", "style_tokens": "style pass selection (default image)",
    "style_layer": "style pass layer (default --layer)", "content_vl_text": "content pass VL text (default prompt)",
    "content_tokens": "content pass selection (default text)", "content_layer": "content pass layer (default --layer)",
    "dual_ratio": "0 = all content, 1 = all style (default 0.5)",
    "length_policy": "how sequences of different lengths mix (default pool)",
    "curve": "per-token ratio from alpha/intra_ratio at the first token to *_end at the last (default constant)",
    "alpha_end": "alpha at the last token (with --curve)", "intra_ratio_end": "intra_ratio at the last token (with --curve)",
    "normalization": "match VL statistics to Qwen3-4B's (needs vlbench calibrate; default none)",
    "calibration": "calibration stats file (default: the one vlbench calibrate wrote for these models)",
    "multi_image": "several --image: joint = one extraction, separate = one each mixed by --image-weights",
    "image_weights": "one weight per --image, comma-separated (with --multi-image separate)",
    "strength": "img2img from the first reference: 0 keeps it, 1 ignores it (default: txt2img)",
    "seed": "default 0", "steps": "default 9 (Turbo)", "width": "default 1024, multiple of 16",
    "height": "default 1024, multiple of 16", "guidance": "default 0 (Turbo)",
    "negative_prompt": "used when --guidance > 0 (default empty)",
}


def _recipe_field_types():
    import typing

    from vlbench.engine.recipe import Recipe

    return typing.get_type_hints(Recipe)


def _recipe_flags(p: argparse.ArgumentParser) -> None:
    from dataclasses import fields

    from vlbench.engine import recipe as R

    choices = {"tokens": R.TOKEN_SELECTIONS, "style_tokens": R.TOKEN_SELECTIONS,
               "content_tokens": R.TOKEN_SELECTIONS, "length_policy": R.LENGTH_POLICIES,
               "normalization": R.NORMALIZATIONS, "curve": R.CURVES, "multi_image": R.MULTI_IMAGE}
    hints = _recipe_field_types()
    g = p.add_argument_group("recipe (flags override --recipe; TOML keys are the same names with _)")
    g.add_argument("--recipe", metavar="FILE.toml", help="read the recipe from a TOML file")
    for f in fields(R.Recipe):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        kwargs: dict[str, Any] = {"dest": f.name, "help": RECIPE_HELP.get(f.name), "default": None}
        if hint is bool:
            kwargs.update(action="store_const", const=True)
        elif f.name == "image_weights":
            kwargs.update(type=_float_list, metavar="W1,W2")
        else:
            base = next((t for t in (int, float, str) if t == hint or t in typing_args(hint)), str)
            kwargs.update(type=base)
            if f.name in choices:
                kwargs["choices"] = list(choices[f.name])
        g.add_argument(flag, **kwargs)


def typing_args(hint) -> tuple:
    import typing

    return typing.get_args(hint)


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _inputs_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", action="append", default=[], metavar="REF",
                   help="reference image; repeat for several (each gets its own vision block)")
    p.add_argument("--prompt", required=True, help="the prompt")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vlbench", description="Condition Z-Image-Turbo on Qwen3-VL hidden states.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("embed", help="write the exact conditioning tensor Z-Image would receive")
    _inputs_flags(p)
    _recipe_flags(p)
    p.add_argument("--out", required=True, metavar="COND.safetensors", help="output tensor (+ COND.json sidecar)")
    _model_flags(p)

    p = sub.add_parser("generate", help="generate one image")
    _inputs_flags(p)
    _recipe_flags(p)
    p.add_argument("--out", required=True, metavar="OUT.png", help="output PNG (recipe, seed, versions in metadata)")
    _model_flags(p)

    p = sub.add_parser("calibrate", help="reference statistics of Qwen3-4B and Qwen3-VL for normalisation")
    p.add_argument("--prompts-file", default=None, metavar="F",
                   help="one prompt per line (default: the set shipped with vlbench, examples/calibration_prompts.txt)")
    p.add_argument("--out", default=None, metavar="STATS.safetensors",
                   help="where to write (default: the location recipes look in for these models)")
    _model_flags(p)

    p = sub.add_parser("inspect", help="summarise a conditioning tensor written by vlbench embed")
    p.add_argument("path", metavar="COND.safetensors")
    p.add_argument("--calibration", metavar="STATS.safetensors", help="compare with these statistics")
    p.add_argument("--debug", action="store_true", help="show tracebacks")

    p = sub.add_parser("demo", help="an end-to-end run on the tiny random models (what the README's first command does)")
    p.add_argument("--out", default="vlbench-demo", help="output folder (default ./vlbench-demo)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")

    from vlbench.experiments.cli import add_parsers
    from vlbench.tui.launch import add_parser as add_tui_parser

    add_parsers(sub)
    add_tui_parser(sub)
    return parser


def recipe_from_args(args: argparse.Namespace):
    from dataclasses import fields

    from vlbench.engine.recipe import Recipe, load_recipe

    overrides = {f.name: getattr(args, f.name) for f in fields(Recipe) if getattr(args, f.name, None) is not None}
    if args.recipe:
        return load_recipe(args.recipe, overrides)
    return Recipe(**overrides)


def spec_from_args(args: argparse.Namespace):
    from vlbench.modelspec import ModelSpec

    if args.tiny:
        if args.zimage or args.vl:
            raise UserError("--tiny: cannot be combined with --zimage or --vl; drop one")
        from vlbench.engine.tiny import ensure_tiny_models

        tiny = ensure_tiny_models()
        return ModelSpec(zimage=str(tiny.zimage), vl=str(tiny.vl), device=args.device, dtype=args.dtype,
                         **_placement(args))
    defaults = ModelSpec()
    return ModelSpec(zimage=args.zimage or defaults.zimage, vl=args.vl or defaults.vl,
                     device=args.device, dtype=args.dtype, **_placement(args))


def _placement(args: argparse.Namespace) -> dict:
    return {"offload": getattr(args, "offload", None) or "none", "compile": bool(getattr(args, "compile", False)),
            "quantize": getattr(args, "quantize", None) or "none", "attention": getattr(args, "attention", None),
            "gpu_memory": getattr(args, "gpu_memory", None)}


def _console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)  # status lines carry paths: never wrap them


def _open_references(paths: list[str]):
    from vlbench.engine.engine import Reference

    return [Reference.open(p) for p in paths]


def _check_out(path: str, suffix: str, flag: str = "--out") -> Path:
    out = Path(path)
    if out.suffix.lower() != suffix:
        raise UserError(f"{flag} {path}: must end in {suffix}")
    if out.parent and not out.parent.exists():
        raise UserError(f"{flag} {path}: folder {out.parent} does not exist; create it first")
    return out


def _warn(console, warnings: list[str]) -> None:
    for w in warnings:
        console.print(f"[yellow]warning: {w}[/yellow]")


def _engine(args, console):
    from vlbench.engine.engine import Engine
    from vlbench.engine.models import Models

    models = Models(spec_from_args(args), on_status=lambda s: console.print(f"[dim]{s}[/dim]"))
    for warning in models.warnings:  # CUDA unusable: say so before minutes of CPU work
        from rich.markup import escape

        console.print(f"[bold red]warning: {escape(warning)}[/bold red]")
    if args.tiny:
        console.print("[yellow]--tiny: built-in RANDOM-WEIGHT models; the images are noise[/yellow]")
    return Engine(models)


def cmd_embed(args) -> int:
    from safetensors.torch import save_file

    from vlbench.engine.engine import environment
    from vlbench.engine.generate import check_caption

    out = _check_out(args.out, ".safetensors")
    recipe = recipe_from_args(args)
    refs = _open_references(args.image)
    console = _console()
    engine = _engine(args, console)
    cond = engine.condition(recipe, args.prompt, refs)
    _warn(console, cond.warnings)
    check_caption(cond.embeds.shape[0], engine.models.caption_budget)
    tensor = cond.embeds.detach().to("cpu").contiguous()
    save_file({"prompt_embeds": tensor}, str(out), metadata={"format": "vlbench-conditioning-1"})
    sidecar = {
        "recipe": recipe.to_dict(), "prompt": args.prompt, "images": [r.path for r in refs],
        "image_sha256": [r.sha256 for r in refs], "dtype": str(tensor.dtype).removeprefix("torch."),
        "shape": list(tensor.shape), "caption_budget": engine.models.caption_budget,
        "conditioning": cond.describe(), "timings": cond.timings, "environment": environment(engine.models),
    }
    side = out.with_suffix(".json")
    side.write_text(json.dumps(sidecar, indent=1) + "\n")
    console.print(f"wrote {out} [{tensor.shape[0]}×{tensor.shape[1]}] and {side}")
    return 0


def cmd_generate(args) -> int:
    from rich.progress import Progress

    from vlbench.engine.engine import environment
    from vlbench.engine.generate import save_png

    out = _check_out(args.out, ".png")
    recipe = recipe_from_args(args)
    refs = _open_references(args.image)
    console = _console()
    engine = _engine(args, console)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("generating", total=recipe.steps)
        result = engine.run(recipe, args.prompt, refs, on_step=lambda i, n: progress.update(task, completed=i, total=n))
    _warn(console, result.conditioning.warnings)
    meta = {
        "recipe": recipe.to_dict(), "prompt": args.prompt, "images": [r.path for r in refs],
        "seed": recipe.seed, "timings": dict(result.timings, **{f"load_{k}": v for k, v in engine.models.load_seconds.items()}),
        "peak_memory_bytes": result.peak_memory_bytes, "environment": environment(engine.models),
        "conditioning": {k: v for k, v in result.conditioning.describe().items() if k != "rows"},
    }
    save_png(result.image, out, meta)
    console.print(f"wrote {out} ({recipe.width}×{recipe.height}, seed {recipe.seed}, "
                  f"{result.conditioning.embeds.shape[0]} caption tokens, {result.timings['generation']:.2f} s)")
    return 0


def cmd_demo(args) -> int:
    """Build the tiny models, make a reference, embed and generate: every path end to end, no download."""
    from PIL import Image
    from safetensors.torch import save_file

    from vlbench.engine.engine import Engine, Reference
    from vlbench.engine.generate import save_png
    from vlbench.engine.models import Models
    from vlbench.modelspec import ModelSpec
    from vlbench.engine.recipe import Recipe
    from vlbench.engine.tiny import ensure_tiny_models

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ref = out / "reference.png"
    if not ref.exists():
        Image.linear_gradient("L").resize((192, 128)).convert("RGB").save(ref)
    console = _console()
    console.print("[bold]vlbench demo[/bold] on the built-in tiny RANDOM-WEIGHT models (images are noise)")
    tiny = ensure_tiny_models()
    engine = Engine(Models(ModelSpec(zimage=str(tiny.zimage), vl=str(tiny.vl)),
                           on_status=lambda s: console.print(f"[dim]{s}[/dim]")))
    refs = [Reference.open(ref)]
    prompt = "Homer Simpson eating spaghetti"
    for tokens in ("full", "image", "text"):
        recipe = Recipe(tokens=tokens, width=128, height=128, steps=4)
        result = engine.run(recipe, prompt, refs)
        path = save_png(result.image, out / f"demo-{tokens}.png", {"recipe": recipe.to_dict(), "prompt": prompt})
        console.print(f"--tokens {tokens:6}: {result.conditioning.embeds.shape[0]:3} caption tokens -> {path}")
    cond = engine.condition(Recipe(tokens="text"), prompt, refs)
    save_file({"prompt_embeds": cond.embeds.contiguous()}, str(out / "demo-text.safetensors"))
    console.print(f"one VL forward served all three selections (forwards: {engine.vl_forwards})")
    console.print(f"outputs in {out}/ — with real weights: vlbench generate --image REF --prompt TEXT --out out.png")
    return 0


def _read_prompts(path: str | None) -> list[str]:
    from vlbench.experiments.cli import read_prompts

    return read_prompts(path or str(Path(__file__).resolve().parent / "data" / "calibration_prompts.txt"))


def cmd_calibrate(args) -> int:
    from rich.progress import Progress

    from vlbench.engine.calibrate import calibrate, default_path, save_stats

    prompts = _read_prompts(args.prompts_file)
    console = _console()
    engine = _engine(args, console)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("calibrating", total=len(prompts))
        tensors, meta = calibrate(engine, prompts, on_progress=lambda i, n: progress.update(task, completed=i))
    out = save_stats(tensors, meta, args.out or default_path(engine.models))
    console.print(f"wrote {out}: statistics of {len(prompts)} prompts, "
                  f"{meta['layers']['qwen3']} Qwen3-4B and {meta['layers']['vl']} Qwen3-VL hidden layers")
    return 0


def cmd_inspect(args) -> int:
    from rich.console import Console
    from rich.table import Table
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vlbench.engine import blend

    path = Path(args.path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a safetensors file ({exc})") from None
    if "prompt_embeds" not in tensors:
        raise UserError(f"{path}: has no 'prompt_embeds' tensor; is it from vlbench embed?")
    x = tensors["prompt_embeds"].float()
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text()) if side.exists() else {}
    rows = meta.get("conditioning", {}).get("rows", [])
    roles = [r.get("role") or (r.get("base") or {}).get("role") or r.get("mix") or r.get("source") for r in rows]
    console = Console()
    console.print(f"[bold]{path}[/bold]  {x.shape[0]} tokens × {x.shape[1]}  ({tensors['prompt_embeds'].dtype})")
    if meta:
        console.print(f"recipe: {json.dumps({k: v for k, v in meta['recipe'].items() if v is not None})}")
    table = Table("rows", "count", "RMS", "min", "max", "mean |x|")
    groups: dict[str, list[int]] = {"all": list(range(x.shape[0]))}
    for i, role in enumerate(roles):
        groups.setdefault(str(role), []).append(i)
    sinks = blend.sink_positions(x)
    if sinks:
        groups["attention sinks"] = sinks
    for name, idx in groups.items():
        part = x[idx]
        table.add_row(name, str(len(idx)), f"{float(blend.rms(part)):.3f}", f"{float(part.min()):.3f}",
                      f"{float(part.max()):.3f}", f"{float(part.abs().mean()):.3f}")
    console.print(table)
    if args.calibration:
        from vlbench.engine.calibrate import load_stats

        stats = load_stats(args.calibration, None)
        ref = stats.get("qwen3", -2, "text")
        keep = [i for i in range(x.shape[0]) if i not in set(sinks)] or list(range(x.shape[0]))
        odd = blend.outlier_dims(x[keep], ref["std"]) if len(keep) > 1 else {"too_large": [], "too_small": []}
        console.print(f"vs Qwen3-4B layer -2 text tokens: RMS ratio {float(blend.rms(x[keep]) / ref['rms']):.3f}; "
                      f"dims with std > 8× reference: {odd['too_large'][:10]}; < 1/8×: {odd['too_small'][:10]}")
    return 0


COMMANDS = {"embed": cmd_embed, "generate": cmd_generate, "calibrate": cmd_calibrate, "inspect": cmd_inspect,
            "demo": cmd_demo}


def _experiment_commands() -> None:
    from vlbench.experiments.cli import cmd_diagnose, cmd_experiments, cmd_run, cmd_score
    from vlbench.tui.launch import run_tui

    COMMANDS.update(run=cmd_run, experiments=cmd_experiments, tui=run_tui, score=cmd_score, diagnose=cmd_diagnose)


_experiment_commands()


def _quiet_libraries() -> None:
    """Our own status lines replace the libraries' per-load progress bars."""
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("VLBENCH_DEBUG") == "1"
    try:
        if not argv or argv[0].startswith("-") and not {"-h", "--help"} & set(argv):
            argv = ["tui", *argv]  # `vlbench [--tiny ...]` opens the workbench
        args = build_parser().parse_args(argv)
        if args.command != "tui":  # the workbench paints before torch is imported
            _quiet_libraries()
        return COMMANDS[args.command](args)
    except UserError as exc:
        if debug:
            raise
        print(f"vlbench: error: {exc.render(flag_name)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vlbench: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
