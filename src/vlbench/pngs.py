"""PNG files with their run record: encoded once, written whole, verified on resume. Torch-free (PIL)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlbench.records import RunRecord

from vlbench.files import atomic_write_bytes

KEY = "vlbench"  # the PNG text chunk that holds RunRecord.png_metadata()


def encode_png(image, metadata: dict[str, Any]) -> bytes:
    """The PNG's bytes, `metadata` as JSON in its text chunk."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(KEY, json.dumps(metadata, sort_keys=True, default=str))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def write_png(path: str | Path, data: bytes) -> str:
    """Write encoded PNG bytes atomically (fsynced before the caller records it); returns their sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def write_run_png(path: str | Path, image, record: "RunRecord", *, name: str | None = None) -> "RunRecord":
    """The one way a finished run's image is saved: `image` (a PIL image, or the PNG bytes already encoded with this
    record's metadata, as a Ray actor sends them) encoded with `record.png_metadata()`, written whole and fsynced at
    `path`. Returns the record that points at it: `image` is `name` (default: `path` as given) and `image_sha256`
    the bytes' hash. Every caller appends the record's row (the store, results.jsonl) only after this returns, so
    no row ever says done before its PNG is on disk."""
    data = image if isinstance(image, bytes) else encode_png(image, record.png_metadata())
    sha = write_png(path, data)
    return record.replace(image=str(path) if name is None else name, image_sha256=sha)


def save_png(image, path: str | Path, metadata: dict[str, Any]) -> Path:
    write_png(path, encode_png(image, metadata))
    return Path(path)


def read_png_metadata(path: str | Path) -> dict:
    from PIL import Image

    with Image.open(path) as img:
        return json.loads(img.text.get(KEY, "{}"))


def png_ok(path: str | Path, sha256: str | None = None) -> bool:
    """Is the file there and whole: its bytes match `sha256` when known, else it decodes as an image."""
    path = Path(path)
    try:
        if sha256 is not None:
            with open(path, "rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest() == sha256
        from PIL import Image

        with Image.open(path) as img:
            img.load()
        return True
    except Exception:  # noqa: BLE001 — any failure to read it means: redo it
        return False
