"""Re-pin the tiny-model reference outputs of tests/test_pinned_outputs.py, deliberately and with a reason.

    PYTHONPATH=src .venv/bin/python tests/data/repin.py --check                 # how far each output is now
    PYTHONPATH=src .venv/bin/python tests/data/repin.py --why "issue 23: ..."   # re-pin those outside the bounds
    PYTHONPATH=src .venv/bin/python tests/data/repin.py --why "..." intra_attend full   # re-pin these
    PYTHONPATH=src .venv/bin/python tests/data/repin.py --why "..." --all

Each pinned recipe (PINNED in tests/test_pinned_outputs.py) runs on the tiny random models (built into
VLBENCH_TEST_CACHE, else a temporary folder) exactly as the test runs it. The script prints, per output, how far it
is from its stored reference and whether that is inside the test's bounds; it writes tests/data/pinned/NAME.safetensors
(the fp32 conditioning, with the recipe and package versions as metadata) and NAME.png (the RGB image) for the
outputs it re-pins, and appends the date, the names and the reason to tests/data/pinned/CHANGES.md. Without names
it re-pins only what moved outside the bounds, so a change shows exactly which outputs it moved.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("names", nargs="*", help="outputs to re-pin (default: those outside the bounds)")
    parser.add_argument("--all", action="store_true", help="re-pin every output")
    parser.add_argument("--check", action="store_true", help="only report; write nothing")
    parser.add_argument("--why", help="the reason, recorded in CHANGES.md (which issue changed what)")
    args = parser.parse_args(argv)
    if not args.check and not (args.why or "").strip():
        parser.error("say --why (which issue changed what), or --check")

    import numpy as np
    import torch
    import transformers
    from PIL import Image
    from safetensors.numpy import save_file

    import test_pinned_outputs as pinned
    from vlbench.engine.engine import Engine
    from vlbench.engine.models import Models
    from vlbench.engine.tiny import ensure_tiny_models
    from vlbench.files import atomic_write, atomic_write_text
    from vlbench.modelspec import ModelSpec

    unknown = sorted(set(args.names) - set(pinned.PINNED))
    if unknown:
        parser.error(f"no pinned output named {', '.join(unknown)}; the names: {', '.join(pinned.PINNED)}")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(os.environ.get("VLBENCH_TEST_CACHE") or tmp)
        models = ensure_tiny_models(cache / "tiny")
        engine = Engine(Models(ModelSpec(zimage=str(models.zimage), vl=str(models.vl), device="cpu", dtype="fp32")))
        ref = pinned.reference_image(Path(tmp))
        repinned = []
        for name, fields in pinned.PINNED.items():
            embeds, image = pinned.outputs(engine, ref, fields)
            png, tensors = pinned.DATA / f"{name}.png", pinned.DATA / f"{name}.safetensors"
            if png.exists() and tensors.exists():
                old = pinned.load_pinned(name)
                problems = pinned.differences((embeds, image), old)
                moved = (f"max |Δ conditioning| {np.abs(embeds - old[0]).max():.3g}, max |Δ pixel| "
                         f"{np.abs(image.astype(int) - old[1]).max()}" if embeds.shape == old[0].shape
                         and image.shape == old[1].shape else "shape changed")
                print(f"{name}: {'OUTSIDE the bounds: ' + '; '.join(problems) if problems else 'inside the bounds'}"
                      f" ({moved})")
            else:
                problems = ["not pinned yet"]
                print(f"{name}: not pinned yet")
            if args.check or not (args.all or name in args.names or (not args.names and problems)):
                continue
            meta = {"recipe": json.dumps(fields), "size": json.dumps(pinned.SIZE), "prompt": pinned.PROMPT,
                    "torch": torch.__version__, "transformers": transformers.__version__}
            pinned.DATA.mkdir(parents=True, exist_ok=True)
            atomic_write(tensors, lambda t: save_file({"embeds": np.ascontiguousarray(embeds)}, str(t), metadata=meta))
            atomic_write(png, lambda t: Image.fromarray(image).save(t, format="PNG"))
            repinned.append(name)
    if repinned:
        log = pinned.DATA / "CHANGES.md"
        text = log.read_text(encoding="utf-8") if log.exists() else "# Re-pins of tests/data/pinned (newest last)\n\n"
        day = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
        atomic_write_text(log, text + f"- {day}: {', '.join(repinned)}: {args.why.strip()}\n")
        print(f"re-pinned {', '.join(repinned)}; reason recorded in {log.relative_to(TESTS.parent)}")
    elif not args.check:
        print("nothing to re-pin")
    return 0


if __name__ == "__main__":
    sys.exit(main())
