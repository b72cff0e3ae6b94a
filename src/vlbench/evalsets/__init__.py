"""Evaluation sets: prompts and references for a standard comparison in one command.

    vlbench run --experiment X --eval-set default       # or quick | full | a folder

A named set takes the first N prompts of each group in `prompts.toml` (subjects, styles, compositions;
written for vlbench) and the first M procedural references of `references.REFERENCES` (palettes,
patterns, gradients, textures made by code). The references are rendered once into the cache
(`<cache>/evalsets/v1/NAME.png`, VLBENCH_CACHE_DIR overrides the cache) and reused. The `photos` set
pairs the `default` prompts with real photographs shipped next to this file (`photos/`, from scikit-image's
sample data; `photos.toml` records each one's source and licence). A folder works the same way: its images
(png, jpg, jpeg, webp) are the references, its optional `prompts.txt` (one prompt a line, blank and # lines
skipped) the prompts.

No torch here: numpy and PIL only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from vlbench.errors import UserError
from vlbench.files import atomic_write, read_text_file, read_toml_file

VERSION = "v1"  # bump when a reference's pixels change (its sha256, so every job key, changes with it)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
PROMPTS_FILE = Path(__file__).parent / "prompts.toml"
GROUPS = ("subjects", "styles", "compositions")
# name -> (prompts per group, references, description)
NAMED: dict[str, tuple[int, int, str]] = {
    "quick": (1, 2, "3 prompts (one per group) × 2 references: a smoke test"),
    "default": (4, 6, "12 prompts (4 subjects, 4 styles, 4 compositions) × 6 references"),
    "full": (12, 12, "36 prompts × 12 references"),
}
PHOTOS = "photos"
PHOTOS_FILE = Path(__file__).parent / "photos.toml"
PHOTOS_PER_GROUP = 4  # the `default` set's prompts
# Statistics need several seeds per config; used when a run with an eval set names none (--seed/--seeds win).
EVAL_SEEDS = (0, 1, 2, 3)


@dataclass(frozen=True)
class EvalSet:
    name: str
    references: list[Path]
    prompts: list[str]
    description: str
    seeds: tuple[int, ...] = field(default=EVAL_SEEDS)


def prompt_groups() -> dict[str, list[str]]:
    data = read_toml_file(PROMPTS_FILE)
    return {g: list(data[g]) for g in GROUPS}


def cache_dir() -> Path:
    override = os.environ.get("VLBENCH_CACHE_DIR")
    if override:
        return Path(override) / "evalsets" / VERSION

    return Path(platformdirs.user_cache_dir("vlbench")) / "evalsets" / VERSION


def ensure_references(names: list[str], root: Path | None = None) -> list[Path]:
    """The PNG of each procedural reference, rendered into `root` (default: the cache) if missing."""
    from PIL import Image

    from vlbench.evalsets.references import render

    root = Path(root) if root is not None else cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = root / f"{name}.png"
        if not path.is_file():  # a killed write never leaves half a PNG

            atomic_write(path, lambda tmp: Image.fromarray(render(name)).save(tmp, format="PNG"))
        paths.append(path)
    return paths


def photos() -> list[dict]:
    """The shipped photographs: photos.toml's entries (file, title, source, licence, …), each with its "path"."""
    entries = read_toml_file(PHOTOS_FILE)["photos"]
    return [{**e, "path": PHOTOS_FILE.parent / "photos" / e["file"]} for e in entries]


def load_eval_set(spec: str, root: Path | None = None) -> EvalSet:
    """A named set (quick, default, full, photos) or a folder of references with an optional prompts.txt."""
    from vlbench.evalsets.references import REFERENCES

    if spec == PHOTOS:
        groups = prompt_groups()
        prompts = [p for g in GROUPS for p in groups[g][:PHOTOS_PER_GROUP]]
        refs = [e["path"] for e in photos()]
        return EvalSet(PHOTOS, refs, prompts, _photos_description(len(refs)))
    if spec in NAMED:
        per_group, n_refs, description = NAMED[spec]
        groups = prompt_groups()
        prompts = [p for g in GROUPS for p in groups[g][:per_group]]
        return EvalSet(spec, ensure_references(list(REFERENCES)[:n_refs], root), prompts, description)
    folder = Path(spec)
    if not folder.exists():
        raise UserError("no such set or folder", field="eval_set", value=spec,
                        fix=f"name one of {', '.join([*NAMED, PHOTOS])}, or a folder of reference images (+ prompts.txt)")
    if not folder.is_dir():
        raise UserError("is a file", field="eval_set", value=spec,
                        fix="give a folder of reference images with an optional prompts.txt")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"has no images ({', '.join(IMAGE_SUFFIXES)})", field="eval_set", value=spec,
                        fix="put the reference images in the folder")
    prompts = read_prompt_lines(folder / "prompts.txt") if (folder / "prompts.txt").is_file() else []
    return EvalSet(folder.name, images, prompts, f"{len(images)} references from {folder}")


def read_prompt_lines(path: Path) -> list[str]:
    """One prompt a line; blank lines and lines starting with # skipped."""
    try:
        text = read_text_file(path)
    except (OSError, ValueError) as exc:  # NotAFile, UnicodeDecodeError
        raise UserError(f"cannot read {path.name} ({exc.__class__.__name__})", field="eval_set",
                        value=str(path.parent), fix="save it as UTF-8 text, one prompt a line") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _photos_description(n: int) -> str:
    return (f"{3 * PHOTOS_PER_GROUP} prompts (the default set's) × {n} real photographs (public domain / CC0, "
            "from scikit-image's sample data)")


def describe() -> list[str]:
    """One line per named set (for --help and docs)."""
    return [f"{name}: {desc}" for name, (_, _, desc) in NAMED.items()] + \
        [f"{PHOTOS}: {_photos_description(len(photos()))}"]
