"""`python -m vlbench.tui`: the workbench alone."""

import sys

from vlbench.tui.launch import main

sys.exit(main())
