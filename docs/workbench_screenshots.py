"""Make the README's workbench screenshots (docs/workbench.svg at 160×48, docs/workbench-100.svg at 100×30).

Real runs on the tiny random models (their images are noise, as the header says): a reference, three seeds
queued with F6, an experiment batch waiting behind a paused queue, the newest image in the Preview.

    .venv/bin/python docs/workbench_screenshots.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent


async def shoot(size: tuple[int, int], out: Path, root: Path) -> None:
    from PIL import Image, ImageDraw

    from vlbench.config import parse_settings
    from vlbench.tui.app import VlbenchApp

    ref = root / "lighthouse.png"
    image = Image.new("RGB", (160, 120), (32, 48, 96))
    draw = ImageDraw.Draw(image)
    draw.rectangle((70, 30, 90, 110), fill=(230, 230, 220))
    draw.polygon([(64, 30), (96, 30), (80, 12)], fill=(200, 40, 40))
    image.save(ref)
    app = VlbenchApp(parse_settings({"recipe": {"width": 256, "height": 96, "steps": 4},
                                     "ui": {"preview": "halfcell"}}))
    async with app.run_test(size=size) as pilot:
        app.inputs.add_reference(str(ref))
        app.inputs.prompt = "a lighthouse at dusk, oil painting"
        app.query_one("#p-layer").value = "-5"
        app.queue_runs([0, 1, 2])
        while app.store.counts_by_status()["done"] < 3:
            await pilot.pause(0.2)
        await pilot.press("f8")  # paused: the experiment stays queued, grouped in one row
        types = app._experiment_types()
        layer_sweep = next(t for t in types if t.name == "layer_sweep")
        app.queue_experiment(layer_sweep.name, quick=True)
        await pilot.pause(1.0)
        app.query_one("#prompt").focus()
        for widget in app.query("Input, TextArea"):
            widget.cursor_blink = False
        app.clear_notifications()
        await pilot.pause(0.5)
        app.save_screenshot(str(out))
    app.close()


def main() -> None:
    for size, name in (((160, 48), "workbench.svg"), ((100, 30), "workbench-100.svg")):
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["VLBENCH_DATA_DIR"] = str(Path(tmp) / "data")
            os.environ["VLBENCH_CONFIG_DIR"] = str(Path(tmp) / "config")
            asyncio.run(shoot(size, DOCS / name, Path(tmp)))
        print(f"wrote {DOCS / name}")


if __name__ == "__main__":
    main()
