"""Errors a user can cause, as data: which input, which value, what is wrong and the fix.

The engine and the schema raise them with plain field names ("image", "alpha"); each front end
renders them in its own words: `--image ref.png: no such file` on the command line, "Reference
ref.png: no such file" in the workbench, `alpha 1.5: …` for a TOML file. `str(err)` is the plain
rendering. Anything that is not a UserError is a bug and keeps its traceback (log, or --debug).

A failed run keeps its error as data too (`RunRecord.error_data`: kind, field, value, message, fix, where; see
`UserError.to_data`), so the worker stores no front end's words: each front end words a stored failure with one
function (`cli.common.failure_text`, `tui.wording.failure_text`), both through `word_failure` here.
"""

from __future__ import annotations

from typing import Any, Callable

_UNSET: Any = object()


class UserError(Exception):
    """A bad input. `field` names it (a Recipe field, or an input: image, prompt, out, …); `where` is the
    context a front end adds (a file, an experiment config); `fix` says what to do."""

    def __init__(self, problem: str, *, field: str | None = None, value: Any = _UNSET, fix: str | None = None,
                 where: str | None = None):
        self.problem = problem
        self.field = field
        self.value = value
        self.fix = fix
        self.where = where
        super().__init__(problem)

    @property
    def has_value(self) -> bool:
        return self.value is not _UNSET

    def render(self, name: Callable[[str], str] | None = None) -> str:
        """The one line a user reads; `name` maps a field to the front end's word for it (a flag, a label)."""
        head = ""
        if self.field is not None:
            head = name(self.field) if name is not None else self.field
            if self.has_value:
                head += f" {show_value(self.value)}"
        parts = [p for p in (self.where, head) if p]
        text = ": ".join([*parts, self.problem]) if parts else self.problem
        return f"{text}; {self.fix}" if self.fix else text

    def to_data(self, kind: str = "input") -> dict[str, Any]:
        """The error as a record stores it (JSON): kind (records.FAILURES), message (the problem), and field, value,
        fix, where when it has them. `UserError.from_data` reads it back; the rendering is the same."""
        data: dict[str, Any] = {"kind": kind, "message": self.problem}
        if self.field is not None:
            data["field"] = self.field
        if self.has_value:
            data["value"] = _jsonable(self.value)
        if self.fix:
            data["fix"] = self.fix
        if self.where:
            data["where"] = self.where
        return data

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> "UserError":
        return cls(str(data.get("message") or "failed"), field=data.get("field"), value=data.get("value", _UNSET),
                   fix=data.get("fix"), where=data.get("where"))

    def within(self, where: str) -> "UserError":
        """The same error in a context (a file, a config); the innermost context stays next to the field."""
        combined = where if not self.where else f"{where}: {self.where}"
        err = type(self)(self.problem, field=self.field, value=self.value, fix=self.fix, where=combined)
        err.__cause__ = self.__cause__
        return err

    def __str__(self) -> str:
        return self.render()


class CaptionTooLong(UserError):
    """The conditioning is longer than the DiT's caption budget (a CUDA device-side assert on GPU)."""


def show_value(value: Any) -> str:
    """A value as it appears in a message: bare when unambiguous, quoted when empty or spaced."""
    if isinstance(value, str):
        if len(value) > 200:  # a pasted essay; paths stay whole
            value = value[:199] + "…"
        return repr(value) if (not value or not value.isprintable() or any(c.isspace() for c in value)) else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(show_value(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def _jsonable(value: Any) -> Any:
    """`value` as JSON keeps it (a path, a number, a list of them); anything else as its text."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def word_failure(line: str | None, data: Any, name: Callable[[str], str] | None = None) -> str | None:
    """A stored failure in a front end's words (`name`: its word for a field: a flag, a form label). An input error
    stored as data (it names a field) is rendered from the data; anything else reads as its stored line: the other
    kinds carry no field to word, and rows recorded before errors were data (`data` None) keep their text."""
    if not isinstance(data, dict) or data.get("field") is None or not data.get("message"):
        return line
    return one_line(UserError.from_data(data).render(name))


def one_line(reason: Any, limit: int = 1000) -> str:
    """The first non-empty line of `reason`, capped: what queues, histories and results show."""
    text = str(reason).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "") or "failed"
    return line if len(line) <= limit else line[: limit - 1] + "…"


class Interrupt(Exception):
    """Raised from a step callback to stop a job; jobs.execute lets it through to the caller. Here, not in jobs, so
    the engine (which imports only the foundations) can let it pass too."""
