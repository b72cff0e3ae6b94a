"""`python -m vlbench.tui`: the workbench alone (the same as `vlbench tui`)."""

import sys

from vlbench.cli import main

sys.exit(main(["tui", *sys.argv[1:]]))
