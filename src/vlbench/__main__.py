"""`python -m vlbench`: the command line, as the `vlbench` script."""

from vlbench.cli import entry

entry()
