#!/usr/bin/env python3
"""Which torch build scripts/setup installs, and why (README "Install notes": which build for which driver).

    python scripts/torch_select.py [--torch auto|default|cpu|cu126|cu128|cu130] [--constraints FILE]
                                   [--nvidia-smi-output FILE] [--offline]

Prints one line on stderr (the build and the reason) and, on stdout, the pip arguments that install torch and
torchvision from that build's index, or nothing when the default install (torch from PyPI through
`pip install -e .`) is the one to run. Standard library only: it runs before the venv has anything.

auto (the default) reads the highest CUDA version the driver supports from `nvidia-smi`'s banner
("CUDA Version: 12.2") and picks: 13.x -> default (PyPI's build is CUDA 13); 12.8, 12.9 -> cu128; 12.0-12.7 ->
cu126; older -> cpu (no torch in the tested range runs on it). When nothing is detected (no nvidia-smi, no driver
answering) or the chosen index cannot be reached, it falls back to the default install and says so in the line.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# PyTorch's package indexes, one per build (VLBENCH_TORCH_INDEX: a mirror of them, e.g. a company proxy)
INDEX = "https://download.pytorch.org/whl"
BUILDS = ("default", "cpu", "cu126", "cu128", "cu130")
# pyproject.toml's ranges: used when no constraints file pins them
RANGES = {"torch": "torch>=2.11,<2.15", "torchvision": "torchvision>=0.26,<0.30"}


@dataclass(frozen=True)
class Choice:
    build: str  # one of BUILDS
    reason: str
    pip_args: tuple[str, ...]  # `pip install` arguments for torch + torchvision; () = the default install

    def line(self) -> str:
        return f"setup: torch build {self.build}: {self.reason}"


def fallback(reason: str) -> Choice:
    return Choice("default", reason + "; the default install instead (PyPI's build, as `pip install -e .`)", ())


def cuda_version(smi_output: str | None) -> tuple[int, int] | None:
    """The driver's highest CUDA version from `nvidia-smi`'s banner, or None (no driver answered)."""
    found = re.search(r"CUDA Version\s*:\s*(\d+)\.(\d+)", smi_output or "")
    return (int(found.group(1)), int(found.group(2))) if found else None


def build_for(cuda: tuple[int, int]) -> tuple[str, str]:
    """(build, why) for a driver supporting CUDA `cuda`."""
    shown = f"{cuda[0]}.{cuda[1]}"
    if cuda >= (13, 0):
        return "default", f"the driver supports CUDA {shown}: PyPI's default build (CUDA 13) runs on it"
    if cuda >= (12, 8):
        return "cu128", f"the driver supports CUDA {shown} (< 13): the CUDA 12.8 build"
    if cuda >= (12, 0):
        return "cu126", f"the driver supports CUDA {shown} (< 12.8): the CUDA 12.6 build"
    return "cpu", (f"the driver supports only CUDA {shown}: no torch in the tested range runs on it (update the "
                   f"driver to 525+); the CPU build")


def pins(constraints: Path | None) -> list[str]:
    """torch and torchvision requirements: the constraints file's pins, else pyproject's ranges."""
    pinned = {}
    if constraints is not None and constraints.is_file():
        for line in constraints.read_text(encoding="utf-8").splitlines():
            name = re.match(r"\s*([A-Za-z0-9_.-]+)\s*==", line)
            if name and name.group(1).lower() in RANGES:
                pinned[name.group(1).lower()] = line.split("#", 1)[0].strip()
    return [pinned.get(name, spec) for name, spec in RANGES.items()]


def index_reachable(url: str, timeout: float = 10.0) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "/torch/", method="HEAD"), timeout=timeout):
            return True
    except Exception:  # noqa: BLE001 — no network, a proxy, a 404: the index cannot serve this install
        return False


def choose(requested: str, smi_output: str | None, *, constraints: Path | None = None,
           reachable=index_reachable) -> Choice:
    """The build to install. `requested`: auto or one of BUILDS; `smi_output`: nvidia-smi's output (None: no
    nvidia-smi); `reachable(url)`: whether a PyTorch index answers."""
    if requested == "auto":
        cuda = cuda_version(smi_output)
        if cuda is None:
            what = "no nvidia-smi found" if smi_output is None else "nvidia-smi reported no CUDA version"
            return fallback(f"{what} (--torch cpu installs a CPU-only build without ~6 GB of CUDA libraries)")
        build, why = build_for(cuda)
    elif requested in BUILDS:
        build, why = requested, "asked for with --torch"
    else:
        raise ValueError(f"--torch {requested}: one of auto, {', '.join(BUILDS)}")
    if build == "default":
        return Choice("default", why, ())
    url = f"{os.environ.get('VLBENCH_TORCH_INDEX', INDEX).rstrip('/')}/{build}"
    if not reachable(url):
        return fallback(f"{build} wanted ({why}), but {url} cannot be reached")
    return Choice(build, why, (*pins(constraints), "--index-url", url))


def nvidia_smi() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout + done.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--torch", default="auto", choices=("auto", *BUILDS))
    parser.add_argument("--constraints", type=Path, help="pins for torch and torchvision (constraints/test.txt)")
    parser.add_argument("--nvidia-smi-output", type=Path, help="read this recorded output instead of running it")
    parser.add_argument("--offline", action="store_true", help="treat every PyTorch index as unreachable")
    args = parser.parse_args(argv)
    smi = args.nvidia_smi_output.read_text(encoding="utf-8") if args.nvidia_smi_output else nvidia_smi()
    choice = choose(args.torch, smi, constraints=args.constraints,
                    reachable=(lambda url: False) if args.offline else index_reachable)
    print(choice.line(), file=sys.stderr)
    if choice.pip_args:
        print(shlex.join(choice.pip_args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
