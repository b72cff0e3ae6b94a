"""open_engine: the one way an Engine is built — by the workbench's and `vlbench worker`'s thread, the commands, a Ray
actor and a Ray head. What differs between them is an argument: the thread policy, the extraction cache's folder, the
status callback, the model files a command's input checks already read.

Torch-free when imported (the worker imports it on the workbench's UI thread); open_engine imports torch.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable

from vlbench.logs import quiet_libraries

log = logging.getLogger("vlbench.engine")

# open_engine(threads=SPARE_CORE): on CPU, torch's intra-op threads at most the cores less one
SPARE_CORE = "spare_core"


def cpu_threads(default: int, cores: int | None = None) -> int:
    """The intra-op threads a CPU worker uses: torch's default, at most the cores less one, at least one."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(default, cores - 1)) if cores > 1 else 1


def open_engine(spec, *, on_status: Callable[[str], None] | None = None, cache_dir=None, files: Any = None,
                threads: int | str | None = None):
    """An Engine over `spec` (a ModelSpec) whose Models load each part on first use, with the libraries' progress
    bars and notices off (vlbench reports loads itself, through `on_status`).

    `threads`, torch's intra-op threads: None keeps torch's default (a command that has the machine to itself);
    SPARE_CORE caps them on the CPU at the cores less one (a worker beside other threads of its process: the
    workbench's UI, a heartbeat, a viewer; a pool as large as the machine thrashed against them and ran a headless
    worker 10–17× slower); an int sets exactly that many (a Ray actor's share of its node).
    `cache_dir`: keep extractions on disk there too. `files`: precheck's ModelFiles, whose processor and tokenizer
    the input checks already read (reused, not read again)."""
    import torch

    from vlbench.engine.engine import Engine
    from vlbench.engine.models import Models

    quiet_libraries()
    if isinstance(threads, int):
        torch.set_num_threads(threads)
    elif threads == SPARE_CORE:
        if spec.device == "cpu" or (spec.device is None and not torch.cuda.is_available()):
            torch.set_num_threads(cpu_threads(torch.get_num_threads()))
            log.info("torch threads on CPU: %d (of %d cores)", torch.get_num_threads(), os.cpu_count() or 1)
    elif threads is not None:
        raise ValueError(f"threads: {threads!r}; use None, SPARE_CORE or a count")
    return Engine(Models(spec, on_status=on_status, files=files), cache_dir=cache_dir)
