"""Moved to vlbench.analysis.stats (the numbers over rows) and vlbench.analysis.folders (a run folder's scored
images as rows); this name stays for code written against it (`from vlbench.stats import folder_rows, summarize`)."""

from vlbench.analysis.folders import *  # noqa: F401,F403
from vlbench.analysis.stats import *  # noqa: F401,F403
