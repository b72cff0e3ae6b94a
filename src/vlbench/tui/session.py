"""The workbench's session: the form, the theme and the pane layout, saved in the data dir, restored at start.

`session.json` holds what the user left on screen: the prompt, the references (absolute paths), the VL
text, every Parameters field as typed (an invalid value too: it is the user's work), the theme, the
pane that had focus and whether the Preview follows new results. The queue's pause is not here: it is
the store's (shared with every worker). Written atomically; a missing file means defaults, a damaged
one a one-line notice and defaults. Torch-free, standard library only.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from vlbench.files import atomic_write_json, read_text_file
from vlbench.paths import data_dir, data_file

FILE = "session.json"
VERSION = 1


@dataclass
class Session:
    prompt: str = ""
    references: list[str] = field(default_factory=list)  # absolute paths
    vl_text: str | None = None  # None: the form's default
    parameters: dict[str, Any] = field(default_factory=dict)  # field -> its editor's value (text, choice or bool)
    theme: str | None = None
    pane: str = "inputs"  # the pane that had focus (the one shown in a narrow terminal)
    follow: bool = True  # the Preview follows each new result
    version: int = VERSION


def session_path() -> Path:
    return data_dir() / FILE


def load_session(path: Path | None = None) -> tuple[Session | None, str | None]:
    """(the saved session or None, a one-line problem when the file exists but cannot be used)."""
    path = path or session_path()
    try:
        text = read_text_file(path)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:  # NotAFile, UnicodeDecodeError
        return None, f"session {path}: cannot read it ({exc.__class__.__name__}); starting with defaults"
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        known = {f.name for f in fields(Session)}
        session = Session(**{k: v for k, v in data.items() if k in known})
        _check(session)
    except (ValueError, TypeError) as exc:
        return None, f"session {path}: damaged ({exc}); starting with defaults"
    return session, None


def save_session(session: Session, path: Path | None = None) -> None:
    path = path or session_path()
    atomic_write_json(path, asdict(session))
    data_file(path)  # 0600 unless the data folder is shared on purpose (paths.data_file)


def _check(session: Session) -> None:
    if not isinstance(session.prompt, str):
        raise ValueError("prompt is not text")
    if not isinstance(session.references, list) or not all(isinstance(r, str) for r in session.references):
        raise ValueError("references is not a list of paths")
    if not isinstance(session.parameters, dict):
        raise ValueError("parameters is not a table")
    if session.vl_text is not None and not isinstance(session.vl_text, str):
        raise ValueError("vl_text is not text")
    if not isinstance(session.pane, str) or not isinstance(session.follow, bool):
        raise ValueError("pane or follow has the wrong type")
