"""Filesystem completion for path fields: the Input shows the rest of the first matching entry.

Directories complete with a trailing slash so the next keystroke continues inside them; with
`suffixes` set, only those files (and directories) are offered. Right arrow accepts, as in any
Textual Input with a suggester.
"""

from __future__ import annotations

import os
from pathlib import Path

from textual.suggester import Suggester

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
RECIPE_SUFFIXES = (".toml",)


class PathSuggester(Suggester):
    def __init__(self, suffixes: tuple[str, ...] | None = None) -> None:
        # Paths are case sensitive; directory listings change, so results are not cached.
        super().__init__(use_cache=False, case_sensitive=True)
        self.suffixes = suffixes

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        expanded = os.path.expanduser(value)
        if os.sep in expanded:
            folder, stem = expanded.rsplit(os.sep, 1)
            base = Path(folder or os.sep)
        else:
            base, stem = Path("."), expanded
        try:
            entries = sorted(os.scandir(base), key=lambda e: e.name)
        except OSError:
            return None
        for entry in entries:
            if not entry.name.startswith(stem) or (entry.name.startswith(".") and not stem.startswith(".")):
                continue
            is_dir = _is_dir(entry)
            if not is_dir and self.suffixes and not entry.name.lower().endswith(self.suffixes):
                continue
            if entry.name == stem and not is_dir:
                continue  # already complete
            # Keep what the user typed (e.g. "~/") and append the rest of the name.
            return value + entry.name[len(stem):] + (os.sep if is_dir else "")
        return None


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False
