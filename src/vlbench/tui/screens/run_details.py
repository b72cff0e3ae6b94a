"""A run's full record: inputs, recipe, the exact token ids and decoded VL input, timings, memory, files."""

from __future__ import annotations

import json

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from vlbench.records import vl_extractions
from vlbench.store import RunRow
from vlbench.tui.format import human_bytes, run_label, when
from vlbench.tui.wording import failure_text


class RunDetails(ModalScreen[str | None]):
    """Dismisses with "requeue" or "load" when the user asks for that, else None."""

    BINDINGS = [
        Binding("escape,q", "close", "Close", id="details.close"),
        Binding("r", "choose('requeue')", "Re-queue", id="details.requeue"),
        Binding("l", "choose('load')", "Load into form", id="details.load"),
    ]

    def __init__(self, run: RunRow) -> None:
        super().__init__()
        self.run = run

    def compose(self) -> ComposeResult:
        run = self.run
        with Vertical(id="details", classes="dialog"):
            yield Label(Text(f"run {run.id} · {run.status} · {run_label(run)}"), id="details-title")
            with VerticalScroll(id="details-body"):
                yield Static(self._overview(), id="details-overview")
                yield Label("recipe", classes="details-heading")
                yield Static(self._recipe(), id="details-recipe")
                for name, block in self._conditioning():
                    yield Label(Text(name), classes="details-heading")
                    yield Static(block, classes="details-conditioning")
            yield Label("r: re-queue · l: load into the form · Esc: close", classes="dialog-hint")

    def _overview(self) -> Table:
        run = self.run
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        rows = [
            ("prompt", Text(run.prompt)),
            ("references", "\n".join(run.reference_paths) or "none"),
            ("experiment", run.experiment or "—"),
            ("config", run.name or "—"),
            ("seed", str(run.seed)),
            ("queued", when(run.created_at)),
            ("started", when(run.started_at) or "—"),
            ("finished", when(run.finished_at) or "—"),
            ("output", run.image or "—"),
            ("error", Text(failure_text(run.error, run.error_data), style="red") if run.error else "—"),
            ("timings", ", ".join(f"{k} {v:.3f} s" for k, v in run.timings.items() if isinstance(v, (int, float)))
             or "—"),
            ("peak memory", human_bytes(run.peak_memory_bytes) if run.status == "done" else "—"),
        ]
        env = run.environment or {}
        if env:
            rows.append(("environment", ", ".join(f"{k} {v}" for k, v in env.items() if not isinstance(v, dict))))
        for key, value in rows:  # Text, not str: a Rich table reads strings as markup
            table.add_row(key, value if isinstance(value, Text) else Text(str(value)))
        return table

    def _recipe(self) -> Text:
        return Text("\n".join(f"{k} = {json.dumps(v)}" for k, v in self.run.recipe.items()))

    def _conditioning(self) -> list[tuple[str, Text]]:
        cond = self.run.conditioning or {}
        out = []
        if cond.get("length") is not None:
            summary = Text(f"caption length {cond.get('length')} × {cond.get('width')}")
            if cond.get("role_counts"):
                summary.append("\nroles: " + ", ".join(f"{k} {v}" for k, v in cond["role_counts"].items()))
            out.append(("conditioning", summary))
        titles = {"vl": "Qwen3-VL input", "vl_style": "Qwen3-VL input (style pass)", "qwen3": "Qwen3-4B input"}
        for name in [k for k, _ in vl_extractions(cond)] + ["qwen3"]:
            title = titles.get(name) or f"Qwen3-VL input (reference {name.removeprefix('vl_ref')})"
            part = cond.get(name)
            if not isinstance(part, dict):
                continue
            text = Text()
            text.append("decoded: ", style="bold")
            text.append(str(part.get("decoded", "")) + "\n")
            if part.get("image_sizes"):
                text.append("image sizes: ", style="bold")
                text.append(f"{part.get('image_sizes')} (from {part.get('source_sizes')})\n")
            ids = part.get("input_ids") or []
            text.append(f"token ids ({len(ids)}): ", style="bold")
            text.append(" ".join(str(i) for i in ids), style="dim")
            out.append((title, text))
        if not out:
            out.append(("conditioning", Text("recorded when the run finishes", style="dim")))
        return out

    def action_close(self) -> None:
        self.dismiss(None)

    def action_choose(self, what: str) -> None:
        self.dismiss(what)
