"""Errors a user can cause: one clear line naming the input and what to do.

Anything else is a bug and keeps its traceback (in the log, or on screen with --debug).
"""


class UserError(Exception):
    """A bad input. `str(err)` is the whole message shown to the user."""


class CaptionTooLong(UserError):
    """The conditioning is longer than the DiT's caption budget (a CUDA device-side assert on GPU)."""
