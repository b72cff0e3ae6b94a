"""`vlbench calibrate`: reference statistics of Qwen3-4B and Qwen3-VL, per layer and role, for normalisation."""

from __future__ import annotations

from pathlib import Path

from vlbench.cli import common
from vlbench.errors import UserError
from vlbench.evalsets import load_eval_set
from vlbench.prompts import read_prompts_file

HELP = "reference statistics of Qwen3-4B and Qwen3-VL for normalisation"
SHIPPED_PROMPTS = Path(__file__).resolve().parent.parent / "data" / "calibration_prompts.txt"


def add_arguments(p) -> None:
    p.add_argument("--prompts-file", default=None, metavar="F",
                   help="one prompt per line (default: the set shipped with vlbench)")
    p.add_argument("--references", default="photos", metavar="SET_OR_DIR",
                   help="reference images for the image-token statistics: an evaluation set's images (photos: "
                        "7 real photographs, the default; quick, default, full: procedural patterns) or a folder "
                        "of your own")
    p.add_argument("--out", default=None, metavar="STATS.safetensors",
                   help="where to write (default: the location recipes look in for these models)")
    common.add_model_flags(p)


def run(args) -> int:
    from rich.progress import Progress

    from vlbench.engine.calibrate import calibrate, default_path, save_stats

    prompts = read_prompts_file(args.prompts_file or SHIPPED_PROMPTS)
    try:
        references = load_eval_set(args.references).references
    except Exception as exc:  # noqa: BLE001 — a UserError names eval_set; here the option is --references

        if isinstance(exc, UserError):
            raise UserError(exc.problem, field="references", value=args.references, fix=exc.fix) from None
        raise
    refs = common.open_references([str(p) for p in references])
    out = common.check_out(args.out, ".safetensors") if args.out else None
    spec = common.model_spec(args)
    console = common.console()
    engine = common.engine(spec, console)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("calibrating", total=len(prompts))
        tensors, meta = calibrate(engine, prompts, refs, on_progress=lambda i, n: progress.update(task, completed=i))
    path = save_stats(tensors, meta, out or default_path(engine.models))
    console.print(f"wrote {common.escape(path)}: statistics of {len(prompts)} prompts and {len(refs)} references, "
                  f"{meta['layers']['qwen3']} Qwen3-4B and {meta['layers']['vl']} Qwen3-VL hidden layers")
    return 0
