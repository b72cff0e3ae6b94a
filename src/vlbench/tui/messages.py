"""Every custom Message of the workbench, in one place (as Posting does).

Panes talk to the app through these; the worker thread's events arrive as WorkerEvent, posted
with `App.post_message`, which is safe to call from another thread.
"""

from __future__ import annotations

from typing import Any

from textual.message import Message


class WorkerEvent(Message):
    """An event of the background worker (vlbench.worker: ModelStatus, JobStarted, JobProgress, ...)."""

    def __init__(self, event: Any) -> None:
        super().__init__()
        self.event = event


class StoreChanged(Message):
    """Runs were queued, moved, removed or finished: the Queue and History panes re-read the store."""

    def __init__(self, run_id: int | None = None) -> None:
        super().__init__()
        self.run_id = run_id


class RecipeChanged(Message):
    """The Parameters pane's values changed: `recipe` is None while a field is invalid, `error` says why."""

    def __init__(self, recipe: Any, error: str | None, seeds: list[int]) -> None:
        super().__init__()
        self.recipe = recipe
        self.error = error
        self.seeds = seeds


class InputsChanged(Message):
    """The Inputs pane changed: the VL text choice (the recipe's `vl_text`), or the references (vl_text None)."""

    def __init__(self, vl_text: str | None) -> None:
        super().__init__()
        self.vl_text = vl_text


class RunHighlighted(Message):
    """The cursor of the Queue or History pane moved onto a run: the Preview shows it."""

    def __init__(self, run_id: int | None, source: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.source = source


class OpenRun(Message):
    """Enter on a run: show its details."""

    def __init__(self, run_id: int) -> None:
        super().__init__()
        self.run_id = run_id


class PlanChecked(Message):
    """A plan's queue-time checks ended (on a thread): `error` is the refusal (a UserError), or None to queue it."""

    def __init__(self, ticket: int, error: Any) -> None:
        super().__init__()
        self.ticket = ticket
        self.error = error
