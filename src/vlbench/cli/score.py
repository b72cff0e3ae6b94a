"""`vlbench score DIR`: score a run folder's images (prompt adherence, reference similarity)."""

from __future__ import annotations

from pathlib import Path

from vlbench.cli import common
from vlbench.config import load_settings
from vlbench.errors import UserError
from vlbench.experiments.folder import read_info
from vlbench.modelspec import ModelSpec, resolve_model_spec

HELP = "score a run folder's images: prompt adherence and reference similarity"
DESCRIPTION = ("Score every image of a vlbench run folder (results.jsonl) with image metrics. Values go to "
               "scores.jsonl in the folder, the run history and report.html. Batched and resumable: "
               "re-running skips every image already scored with the same models.")


def add_arguments(p) -> None:
    p.add_argument("dir", metavar="DIR", help="the --output-dir of a vlbench run")
    common.add_metric_flags(p, in_run=False)
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per batch (default 16)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--dtype", metavar="{bf16,fp16,fp32}",
                   help="metric models' dtype (default fp32; the Qwen3-VL judge bf16 on a GPU)")
    p.add_argument("--tiny", action="store_true",
                   help="use built-in tiny RANDOM-WEIGHT metric models (no download; the scores mean nothing)")
    p.add_argument("--no-store", action="store_true", help="do not write the scores into the run history")
    common.add_debug_flag(p)


def run(args) -> int:
    out = Path(args.dir)
    if not out.is_dir():
        raise UserError("no such folder", field="dir", value=args.dir, fix="give the --output-dir of a vlbench run")
    if not (out / "results.jsonl").is_file():
        raise UserError("no results.jsonl here", field="dir", value=args.dir,
                        fix="give the --output-dir of a vlbench run")
    metrics = common.metrics_choice(args, in_run=False)
    console = common.console()
    sources = common.metric_sources(args, tiny_models=_tiny_images(out), console=console)
    common.check_metric_sources(metrics, sources)  # offline and not downloaded: one line now
    spec = ModelSpec(device=args.device, dtype=args.dtype)
    device, dtype = spec.resolved_device(), spec.resolved_dtype() if args.dtype else None
    if args.tiny:
        console.print("[yellow]--tiny: built-in RANDOM-WEIGHT metric models; the scores mean nothing[/yellow]")
    store = None if args.no_store else common.open_store(console)
    try:
        summary = common.score(out, metrics, sources, device, dtype, args.batch_size, store, console,
                               judge_dtype=dtype)
    finally:
        if store is not None:
            store.close()
    common.rewrite_report(out)
    console.print(f"wrote {common.escape(out / 'report.html')}")
    if summary.problems:  # said above, one line each; the last line says the pass is incomplete
        console.print(f"[red]failed: {len(summary.problems)} problem(s) left images unscored (above); fix them or "
                      "re-run the same `vlbench run` command, then score again[/red]")
        return 1
    return 0


def _tiny_images(out: Path) -> bool:
    """Were the folder's images made by the tiny models (its run.json), or — no run.json — would they be now
    (nothing names the image models)?"""
    info = read_info(out)
    if info is not None and isinstance(info.get("models"), dict):
        return bool(info["models"].get("tiny"))

    return resolve_model_spec(load_settings(create=False).models.to_dict()).tiny
