"""Batches as the panes show them: the runs one action queued (F6 seeds, F7 an experiment) share a batch id.

The Queue groups a batch under one row with its progress; the Queue and History show, for each run, the
recipe fields that differ within its batch (what a grid of those runs compares). A batch's set of
recipes never changes after it is queued, so what varies is read from the store once and kept.
"""

from __future__ import annotations

import secrets
import time

from vlbench.tui.format import differs, recipe_summary, varying_fields


def new_batch_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class Batches:
    def __init__(self, store) -> None:
        self.store = store
        self._fields: dict[str, list[str]] = {}

    def fields(self, batch: str) -> list[str]:
        """The recipe fields that differ within the batch (seed aside: it has its own column)."""
        if batch not in self._fields:
            self._fields[batch] = varying_fields(self.store.batch_recipes(batch))
        return self._fields[batch]

    def distinguishing(self, row, limit: int = 60) -> str:
        """What sets this run apart: within a batch, its values of the fields that vary there; a run queued
        alone, the fields it sets away from the defaults."""
        if row.batch:
            fields = self.fields(row.batch)
            return differs(row.recipe, fields, limit) if fields else ""
        return recipe_summary(row.recipe, limit)

    def forget(self, batch: str | None = None) -> None:
        if batch is None:
            self._fields.clear()
        else:
            self._fields.pop(batch, None)
