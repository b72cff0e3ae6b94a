"""The help screen (F1 or ?): every key binding, where it works, and its id for config.toml [keys]."""

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
            yield Label(Text(f"Rebind any command in {self.config_path} under [keys], by id. Esc closes."),
                        classes="dialog-hint")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("keys", "where", "command", "id")
        for where, commands in (("anywhere", keys.APP), ("Queue", keys.QUEUE), ("History", keys.HISTORY)):
            for c in commands:
                table.add_row(keys.display_keys(self.overrides.get(c.id, c.keys)), where, c.help, c.id)
        for key, text in keys.BUILTIN:
            table.add_row(key, "anywhere", text, "")
        table.focus()

    def action_close(self) -> None:
        self.dismiss(None)
