"""Build vlbench's `photos` eval set from the sample photographs inside scikit-image's wheel (issue 22).

scikit-image is not a vlbench dependency: download its wheel without installing it and point this script at
its data folder. Each photograph is converted to RGB, cropped where photos.toml says, downscaled so its longer
side is at most 512 px and saved as JPEG (quality 90), so the set stays small; photos.toml records each image's
source, licence and changes.

    python -m pip download --no-deps scikit-image -d /tmp/skimg
    unzip -q /tmp/skimg/scikit_image-*.whl 'skimage/data/*' -d /tmp/skimg/x
    .venv/bin/python scripts/make_photo_evalset.py /tmp/skimg/x/skimage/data
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SET = ROOT / "src" / "vlbench" / "evalsets"
MAX_SIDE = 512


def main(data: Path) -> int:
    spec = tomllib.loads((SET / "photos.toml").read_text(encoding="utf-8"))
    for item in spec["photos"]:
        im = Image.open(data / item["skimage_file"]).convert("RGB")
        if "crop" in item:  # [left, top, right, bottom] in the original's pixels
            im = im.crop(tuple(item["crop"]))
        scale = min(1.0, MAX_SIDE / max(im.size))
        if scale < 1.0:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        out = SET / "photos" / item["file"]
        im.save(out, format="JPEG", quality=90, optimize=True)
        print(f"{out.relative_to(ROOT)}: {im.width}×{im.height}, {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
