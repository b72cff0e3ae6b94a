"""`vlbench inspect COND.safetensors | IMAGE.png`: what a conditioning tensor written by `vlbench embed` holds, or
what a PNG's run record says of its recipe and its attend mixes (prior and realised shares)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vlbench.cli import common
from vlbench.errors import UserError
from vlbench.files import read_text_file
from vlbench.pngs import read_png_metadata
from vlbench.recipe import MixPolicy, Recipe
from vlbench.records import RunRecord

HELP = "summarise a conditioning tensor written by vlbench embed, or a PNG's run record"


def add_arguments(p) -> None:
    p.add_argument("path", metavar="COND.safetensors|IMAGE.png")
    p.add_argument("--calibration", metavar="STATS.safetensors", help="compare with these statistics")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    common.add_debug_flag(p)


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vlbench.engine import blend

    path = Path(args.path)
    if not path.exists():
        raise UserError("no such file", field="path", value=args.path)
    if path.suffix.lower() == ".png":
        return _png(path, args.path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"not a safetensors file ({exc})", field="path", value=args.path) from None
    if "prompt_embeds" not in tensors:
        raise UserError("has no 'prompt_embeds' tensor", field="path", value=args.path,
                        fix="give a file written by vlbench embed")
    x = tensors["prompt_embeds"].float()
    side = path.with_suffix(".json")

    meta = json.loads(read_text_file(side)) if side.exists() else {}
    rows = meta.get("conditioning", {}).get("rows", [])
    roles = [r.get("role") or (r.get("base") or {}).get("role") or r.get("mix") or r.get("source") for r in rows]
    console = Console()
    e = common.escape
    summary = {"path": str(path), "tokens": int(x.shape[0]), "width": int(x.shape[1]),
               "dtype": str(tensors["prompt_embeds"].dtype).removeprefix("torch."),
               "recipe": meta.get("recipe"), "groups": [], "calibration": None}
    if not args.json:
        console.print(f"[bold]{e(path)}[/bold]  {x.shape[0]} tokens × {x.shape[1]}  ({tensors['prompt_embeds'].dtype})")
    if meta and not args.json:
        console.print(f"recipe: {e(json.dumps({k: v for k, v in meta['recipe'].items() if v is not None}))}")
    table = Table("rows", "count", "RMS", "min", "max", "mean |x|")
    groups: dict[str, list[int]] = {"all": list(range(x.shape[0]))}
    for i, role in enumerate(roles):
        groups.setdefault(str(role), []).append(i)
    sinks = blend.sink_positions(x)
    if sinks:
        groups["attention sinks"] = sinks
    for name, idx in groups.items():
        part = x[idx]
        summary["groups"].append({"rows": name, "count": len(idx), "rms": float(blend.rms(part)),
                                  "min": float(part.min()), "max": float(part.max()),
                                  "mean_abs": float(part.abs().mean())})
        table.add_row(e(name), str(len(idx)), f"{float(blend.rms(part)):.3f}", f"{float(part.min()):.3f}",
                      f"{float(part.max()):.3f}", f"{float(part.abs().mean()):.3f}")
    if not args.json:
        console.print(table)
        for line in attend_lines(meta.get("conditioning", {})):
            console.print(e(line))
    else:
        summary["attend_mixes"] = meta.get("conditioning", {}).get("attend_mixes", [])
    if args.calibration:
        from vlbench.engine.calibrate import load_stats

        stats = load_stats(args.calibration, None)
        ref = stats.get("qwen3", -2, "text")
        keep = [i for i in range(x.shape[0]) if i not in set(sinks)] or list(range(x.shape[0]))
        odd = blend.outlier_dims(x[keep], ref["std"]) if len(keep) > 1 else {"too_large": [], "too_small": []}
        ratio = float(blend.rms(x[keep]) / ref["rms"])
        summary["calibration"] = {"against": "qwen3 layer -2 text tokens", "rms_ratio": ratio,
                                  "std_too_large_dims": [int(d) for d in odd["too_large"]],
                                  "std_too_small_dims": [int(d) for d in odd["too_small"]]}
        if not args.json:
            console.print(f"vs Qwen3-4B layer -2 text tokens: RMS ratio {ratio:.3f}; "
                          f"dims with std > 8× reference: {odd['too_large'][:10]}; < 1/8×: {odd['too_small'][:10]}")
    if args.json:
        json.dump(summary, sys.stdout, indent=1)
        sys.stdout.write("\n")
    return 0


def attend_lines(conditioning: dict) -> list[str]:
    """One line per attend mix of a conditioning record: its ratio and meaning, rows, prior and realised shares."""
    out = []
    for m in conditioning.get("attend_mixes", []):
        ratio = m["ratio"] if isinstance(m["ratio"], str) else f"{m['ratio']:g}"
        line = (f"attend mix {m['mix']} {ratio} ({m['meaning']}): rows {m['rows'][0]} base + {m['rows'][1]} other, "
                f"weights {m['weights'][0]:.4g}/{m['weights'][1]:.4g}; prior share of the other "
                f"{m['prior_share']:.3f} (natural {m['natural_share']:.3f})")
        if "realised_share" in m:
            where = m.get("realised_in", {})
            line += (f"; realised share {m['realised_share']:.3f} (in {', '.join(where.get('blocks', []))}, "
                     f"{where.get('forwards', '?')} forwards)")
        out.append(line)
    return out


def _png(path: Path, given: str) -> int:
    try:
        raw = read_png_metadata(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"not a readable PNG ({exc.__class__.__name__})", field="path", value=given) from None
    if not raw:
        raise UserError("has no vlbench run record", field="path", value=given, fix="give a PNG vlbench wrote")
    from rich.console import Console

    record = RunRecord.from_json(raw)
    console = Console(soft_wrap=True)
    e = common.escape
    was = f" (written as record schema {raw.get('schema')}, read as {record.schema})" \
        if raw.get("schema") != record.schema else ""
    console.print(f"[bold]{e(path)}[/bold]{e(was)}: {e(record.prompt)!r}, seed {record.seed}")

    console.print(f"recipe: {e(json.dumps(Recipe.from_dict(record.recipe).changed()))}")
    lines = attend_lines(record.conditioning)
    weights = record.conditioning.get("attention_weights") or {}
    if not lines and weights:  # a record made before the attend accounts: its weights and row counts say the share
        mass = {float(w): float(w) * n for w, n in weights.items()}
        weighted = sum(v for w, v in mass.items() if w != 1)
        mixes = [k for k, (_, p) in Recipe.from_dict(record.recipe).mixes.items() if p == MixPolicy.ATTEND]
        if len(mixes) == 1:
            lines = [f"attend mix {mixes[0]} ({record.recipe.get('attend_ratio', 'share')}): rows by weight "
                     f"{weights}; prior share of the down-weighted source {weighted / sum(mass.values()):.3f} "
                     "(from the record's row counts)"]
    for line in lines or ["no attend mix"]:
        console.print(e(line))
    return 0
