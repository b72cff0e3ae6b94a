"""How the five panes share the terminal, by its width: the breakpoints and what each one shows.

wide (>= 160 columns): the five panes side by side as designed; medium (100-159): three columns, the
Preview in the middle with at least 40 % of the width, Queue over History on the right; narrow (< 100,
down to 80×24): one pane at a time, filling the screen, each one key away (alt+1..5, or ctrl+g and its
number); the panes lie side by side, one screen wide each, and a switch scrolls to the one shown. The
classes go on the Screen (Textual's HORIZONTAL_BREAKPOINTS); vlbench.tcss lays them out.
"""

from __future__ import annotations

MEDIUM, WIDE = 100, 160
BREAKPOINTS = [(0, "-narrow"), (MEDIUM, "-medium"), (WIDE, "-wide")]
# narrow: the panes lie side by side in this order (#main's children, #left holding two), one screen wide each
NARROW_PAGES = ("inputs", "parameters", "preview", "queue", "history")
MIN_PREVIEW = 24  # columns: narrower than this the Preview is not shown at all


def mode_for(width: int) -> str:
    """'narrow', 'medium' or 'wide' for a terminal this many columns wide."""
    return "wide" if width >= WIDE else "medium" if width >= MEDIUM else "narrow"
