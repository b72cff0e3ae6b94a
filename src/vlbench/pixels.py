"""A reference image as the camera meant it: upright per its EXIF orientation, and 8-bit RGB read from its type's
nominal range (16-bit 0-65535, float 0-1), never stretched to the data's own min-max and never clipped to two values.

Every reference is read through `as_rgb` (vlbench.engine.extract.load_image for files, the Ray actor for the bytes
the head sends), so the VL, the record's source_sizes and the extraction cache all see the same pixels. What was done
to an image that was not already upright 8-bit is said in its notes ("rotated 90° per EXIF (clockwise)"), which the
run record keeps; a mode that cannot be converted faithfully is one UserError line. Torch-free (PIL and numpy).
"""

from __future__ import annotations

from typing import Any

from vlbench.errors import UserError

READING = 1  # how references are read; part of the extraction cache key of every image with a note (issue 26)

# EXIF orientation -> what exif_transpose does to show the image upright
ORIENTATIONS = {
    2: "mirrored left-right per EXIF",
    3: "rotated 180° per EXIF",
    4: "mirrored top-bottom per EXIF",
    5: "mirrored and rotated 90° per EXIF (transposed)",
    6: "rotated 90° per EXIF (clockwise)",
    7: "mirrored and rotated 270° per EXIF (transversed)",
    8: "rotated 270° per EXIF (90° counter-clockwise)",
}
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
EXIF_ORIENTATION = 0x0112


def as_rgb(img: Any, name: str = "") -> tuple[Any, list[str]]:
    """(the upright 8-bit RGB image, notes on what was done to read it so) for an opened PIL image.

    `name` is the reference's path for the error line. Raises UserError(field="image") for a mode with no faithful
    8-bit reading (32-bit integers, a float image holding NaN, a mode PIL cannot convert)."""
    from PIL import ImageOps

    notes: list[str] = []
    orientation = _orientation(img, notes)
    if orientation in ORIENTATIONS:
        img = ImageOps.exif_transpose(img)
        notes.append(ORIENTATIONS[orientation])
    mode = img.mode
    if mode in SIXTEEN_BIT or mode == "I" and _bits(img) == 16:
        return _from_array(_sixteen_bit(img, name), notes, "16-bit grey read as 8-bit (0–65535 → 0–255)")
    if mode == "I":
        raise UserError(f"a {_bits(img) or 32}-bit integer image has no agreed range to read as 8-bit", field="image",
                        value=name or None, fix="save it as an 8- or 16-bit PNG")
    if mode == "F":
        return _from_array(_float(img, name, notes), notes, "float grey read as 8-bit (0–1 → 0–255)")
    if mode == "RGB":
        return img, notes
    try:
        return img.convert("RGB"), notes
    except (ValueError, OSError) as exc:
        raise UserError(f"its colour mode {mode} cannot be converted to RGB ({exc})", field="image",
                        value=name or None, fix="save it as an 8-bit RGB PNG or JPEG") from None


def _orientation(img: Any, notes: list[str]) -> int:
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 — a damaged EXIF block: the pixels are still good, say how they were used
        notes.append("its EXIF could not be read: used as stored")
        return 1
    return value if isinstance(value, int) else 1


def _bits(img: Any) -> int | None:
    """Bits per sample of a mode-"I" image where the format says it: TIFF's BitsPerSample, PGM/PPM and PNG (PIL
    reads their 16-bit samples as "I", 0-65535)."""
    if img.format in ("PPM", "PNG"):
        return 16
    tags = getattr(img, "tag_v2", None)
    if tags is not None:
        bits = tags.get(258)
        bits = bits[0] if isinstance(bits, tuple) and bits else bits
        return int(bits) if isinstance(bits, int) else None
    return None


def _sixteen_bit(img: Any, name: str):
    import numpy as np

    data = np.asarray(img).astype(np.float64)
    if data.min() < 0 or data.max() > 65535:  # an "I" image said to be 16-bit must hold 16-bit values
        raise UserError("its 16-bit samples are out of the 0–65535 range", field="image", value=name or None,
                        fix="save it as an 8- or 16-bit PNG")
    return np.rint(data / 257.0).astype(np.uint8)  # 65535 / 255 = 257 exactly: 0 -> 0, 65535 -> 255


def _float(img: Any, name: str, notes: list[str]):
    import numpy as np

    data = np.asarray(img).astype(np.float64)
    if not np.isfinite(data).all():
        raise UserError("its float samples hold NaN or infinity", field="image", value=name or None,
                        fix="save it with finite values in 0–1, or as an 8-bit PNG")
    outside = int(((data < 0) | (data > 1)).sum())
    if outside:
        notes.append(f"{outside} of {data.size} float samples outside 0–1 clipped "
                     f"(range {data.min():.4g} to {data.max():.4g})")
    return np.rint(np.clip(data, 0.0, 1.0) * 255.0).astype(np.uint8)


def _from_array(grey, notes: list[str], note: str) -> tuple[Any, list[str]]:
    from PIL import Image

    notes.insert(len([n for n in notes if "EXIF" in n]), note)  # after the orientation note, before a clip note
    return Image.fromarray(grey).convert("RGB"), notes  # uint8 [H, W]: mode L
