"""A modal file picker: a path field with completion above a directory tree.

Used for reference images (open), recipe files (open) and recipe files (save as). Enter in the
field (which takes a completion it shows, unless saving: PathField) or on a file in the tree
chooses it; Escape cancels. Dismisses with the chosen path or None.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DirectoryTree, Input, Label

from vlbench.tui.screens.confirm import Confirm
from vlbench.tui.suggest import PathSuggester
from vlbench.tui.widgets.path_field import PathField


class FilteredTree(DirectoryTree):
    """Folders and files with the given suffixes; hidden entries left out."""

    def __init__(self, path: str | Path, suffixes: tuple[str, ...] | None, **kwargs) -> None:
        self.suffixes = suffixes
        super().__init__(path, **kwargs)

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        for path in paths:
            if path.name.startswith("."):
                continue
            if self.suffixes and not path.name.lower().endswith(self.suffixes):
                try:
                    if not path.is_dir():
                        continue
                except OSError:
                    continue
            yield path


class FilePicker(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="picker.cancel")]

    def __init__(self, title: str, *, start: str | Path | None = None, suffixes: tuple[str, ...] | None = None,
                 save: bool = False) -> None:
        super().__init__()
        self.title_text = title
        self.suffixes = suffixes
        self.save = save
        start = Path(start).expanduser() if start else Path.cwd()
        self.initial = str(start) if start.is_file() or save else (str(start) + os.sep if start.is_dir() else "")
        folder = start if start.is_dir() else start.parent
        self.folder = folder if folder.is_dir() else Path.cwd()

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Label(Text(self.title_text), id="picker-title")
            yield PathField(self.initial, placeholder="path (→ completes)", id="picker-path",
                            suggester=PathSuggester(self.suffixes), complete_on_enter=not self.save)
            yield FilteredTree(self.folder, self.suffixes, id="picker-tree")
            hint = "Enter: save here" if self.save else "Enter: choose"
            yield Label(f"{hint} · Tab: tree · Esc: cancel", id="picker-hint")

    def on_mount(self) -> None:
        self.query_one("#picker-path", Input).focus()

    @on(Input.Submitted, "#picker-path")
    def _submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        if not value:
            return
        path = Path(value).expanduser()
        if path.is_dir():
            tree = self.query_one(FilteredTree)
            tree.path = path
            return
        if not self.save and not path.is_file():
            self.notify(f"{value}: no such file", severity="error")
            return
        if self.save and not path.parent.is_dir():
            # The dialog stays, with the typed path: create the folder, or edit the path.

            def create(yes: bool | None) -> None:
                if not yes:
                    self.query_one("#picker-path", Input).focus()
                    return
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    self.notify(f"{path.parent}: cannot create it ({exc.strerror})", severity="error")
                    return
                self.dismiss(str(path))

            self.app.push_screen(Confirm(f"Folder {path.parent} does not exist. Create it?"), create)
            return
        self.dismiss(str(path))

    @on(DirectoryTree.FileSelected)
    def _file_selected(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        if self.save:
            self.query_one("#picker-path", Input).value = str(event.path)
            self.query_one("#picker-path", Input).focus()
        else:
            self.dismiss(str(event.path))

    def action_cancel(self) -> None:
        self.dismiss(None)
