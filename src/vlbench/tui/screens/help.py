"""The help screen (F1, ?, or ctrl+g ?): every key, where it works, what it does, and its id for config.toml
[keys]. Every way to a command is listed: its keys as configured, then ctrl+g and its letter (the way
that works in every terminal). The command's text comes last, so the narrow columns stay in view."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label

from vlbench.tui import keys


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q,question_mark", "close", "Close", id="help.close")]

    def __init__(self, overrides: dict[str, str] | None = None, config_path: str = "config.toml") -> None:
        super().__init__()
        self.overrides = overrides or {}
        self.config_path = config_path

    def compose(self) -> ComposeResult:
        with Vertical(id="help", classes="dialog"):
            yield Label("vlbench key bindings", id="help-title")
            yield DataTable(id="help-table", cursor_type="row", zebra_stripes=True)
            yield Label(Text(f"Keys that tmux or an SSH client swallows (F-keys, ctrl+⏎): use the ctrl or ctrl+g "
                             f"one. Rebind any command in {self.config_path} under [keys], by id. Esc closes."),
                        classes="dialog-hint")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_column("keys", width=32)
        table.add_column("id", width=22)
        table.add_column("where", width=16)
        table.add_column("command")
        for where, commands in keys.every_command():
            for c in commands:
                table.add_row(Text(keys.with_go(c, self.overrides.get(c.id))), c.id, where, Text(c.help))
        from vlbench.tui.screens.image_view import ImageView

        for binding in ImageView.BINDINGS:  # the full-screen view's own keys (issue 25: `a` was missing)
            table.add_row(keys.display_keys(binding.key), binding.id or "", "full screen",
                          Text(binding.tooltip or binding.description))
        for key, where, text in keys.BUILTIN:
            table.add_row(key, "", where, text)
        table.focus()

    def action_close(self) -> None:
        self.dismiss(None)
