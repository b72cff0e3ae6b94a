"""`vlbench diagnose`: Qwen3-VL's hidden states against Qwen3-4B's, per layer and token role."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vlbench.cli import common
from vlbench.errors import UserError
from vlbench.prompts import check_prompt

HELP = "compare Qwen3-VL hidden states with Qwen3-4B's, per layer and token role"
DESCRIPTION = ("Per VL layer and token role (image, markers, text, prompt, attention sinks): RMS, per-dimension "
               "std ratio against Qwen3-4B's encoding of the same prompt (layer -2), cosine of position-aligned "
               "text tokens, and the same after each normalisation mode (per-dim, per-dim-scale, instance and "
               "per-ref-mean need vlbench calibrate; instance and per-ref-mean, which move image rows only, a "
               "reference).")


def add_arguments(p) -> None:
    p.add_argument("--image", action="append", default=[], metavar="REF",
                   help="reference image; repeat for several (default: none, text only)")
    p.add_argument("--prompt", required=True, help="the prompt")
    p.add_argument("--layers", nargs="+", default=None, metavar="L",
                   help="VL layers for the table, e.g. -1,-2,-5 (default -1,-2,-5; 'all' for every layer)")
    p.add_argument("--calibration", metavar="STATS.safetensors",
                   help="calibration stats for the normalisation columns (default: vlbench calibrate's for these models)")
    p.add_argument("--out", metavar="DIR", help="also write DIR/diagnostics.json and a per-layer plot PNG")
    p.add_argument("--json", action="store_true", help="print the diagnostics as JSON (diagnostics.json's entry) "
                                                       "instead of tables")
    common.add_model_flags(p)


def parse_layers(values: list[str] | None) -> tuple[int, ...] | None:
    """['-1,-2', '-5'] -> (-1, -2, -5); None -> the default layers; ['all'] -> None (every layer)."""
    from vlbench.analysis.diagnose import DEFAULT_LAYERS

    if values is None:
        return DEFAULT_LAYERS
    parts = [p.strip() for v in values for p in v.split(",") if p.strip()]
    if parts == ["all"]:
        return None
    try:
        layers = tuple(dict.fromkeys(int(p) for p in parts))
    except ValueError:
        raise UserError("expected whole numbers separated by commas", field="layers", value=" ".join(values),
                        fix="e.g. -1,-2,-5") from None
    if not layers:
        raise UserError("give at least one layer", field="layers", fix="e.g. -1,-2,-5")
    return layers


def run(args) -> int:
    from rich.console import Console

    from vlbench.analysis.diagnose import diagnose, entry_id, plot, print_diagnostics, write_diagnostics

    layers = parse_layers(args.layers)
    prompt = check_prompt(args.prompt)
    if args.calibration and not Path(args.calibration).is_file():
        raise UserError("no such file", field="calibration", value=args.calibration)
    out = common.check_out_dir(args.out, field="out") if args.out else None
    refs = common.open_references(args.image)
    spec = common.model_spec(args)
    console = common.console()
    engine = common.engine(spec, console)
    diag = diagnose(engine, refs, prompt, layers, args.calibration)
    if args.json:
        json.dump(diag, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print_diagnostics(diag, Console())
    if out is not None:
        diag["id"] = entry_id(diag["reference_sha256"], prompt)
        diag["plot"] = f"diagnostics-{diag['id']}.png"
        plot(diag, out / diag["plot"])
        path = write_diagnostics(out, [diag])
        console.print(f"wrote {common.escape(path)} and {common.escape(out / diag['plot'])}")
    return 0
