"""Moved to vlbench.analysis.heatmap (issue 24: the analysis package); this name stays for code written against it."""

from vlbench.analysis.heatmap import *  # noqa: F401,F403
