"""Moved to vlbench.analysis.crossed (issue 24: the analysis package); this name stays for code written against it."""

from vlbench.analysis.crossed import *  # noqa: F401,F403
