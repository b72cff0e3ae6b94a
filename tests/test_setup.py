"""Issue 24: scripts/setup installs the torch build the driver can run, from pinned versions, and falls back to
today's default install when it detects nothing or cannot reach PyTorch's index.

The other indexes cannot be exercised here (these machines reach only PyPI): the selection runs on recorded
`nvidia-smi` outputs (tests/data/nvidia-smi/) and the tests check the pip command it would run; the shell glue
runs as a dry run against a local HTTP server standing in for the index.
"""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMI = Path(__file__).resolve().parent / "data" / "nvidia-smi"
sys.path.insert(0, str(ROOT / "scripts"))

import torch_select  # noqa: E402

CONSTRAINTS = ROOT / "constraints" / "test.txt"


def pinned(name: str) -> str:
    return next(line.strip() for line in CONSTRAINTS.read_text().splitlines() if line.startswith(f"{name}=="))


@pytest.mark.parametrize("recorded, build", [("580_cuda13.0", "default"), ("570_cuda12.8", "cu128"),
                                             ("550_cuda12.4", "cu126"), ("535_cuda12.2", "cu126"),
                                             ("470_cuda11.4", "cpu")])
def test_the_driver_picks_the_build_and_the_pip_command(recorded, build):
    smi = (SMI / f"{recorded}.txt").read_text()
    asked = []
    choice = torch_select.choose("auto", smi, constraints=CONSTRAINTS, reachable=lambda url: asked.append(url) or True)
    assert choice.build == build
    assert recorded.split("_cuda")[1] in choice.line()  # says which CUDA version it read
    if build == "default":
        assert choice.pip_args == () and asked == []  # the plain `pip install -e .`: nothing asked of any index
    else:
        url = f"https://download.pytorch.org/whl/{build}"
        assert choice.pip_args == (pinned("torch"), pinned("torchvision"), "--index-url", url)
        assert asked == [url]


@pytest.mark.parametrize("smi", [None, "no_driver"])
def test_nothing_detected_is_the_default_install_said_in_one_line(smi):
    text = None if smi is None else (SMI / f"{smi}.txt").read_text()
    choice = torch_select.choose("auto", text, constraints=CONSTRAINTS, reachable=lambda url: True)
    assert (choice.build, choice.pip_args) == ("default", ())
    assert "\n" not in choice.line() and "default install" in choice.line()


def test_an_unreachable_index_falls_back_to_the_default_install():
    smi = (SMI / "535_cuda12.2.txt").read_text()
    choice = torch_select.choose("auto", smi, constraints=CONSTRAINTS, reachable=lambda url: False)
    assert (choice.build, choice.pip_args) == ("default", ())
    assert "cu126 wanted" in choice.line() and "cannot be reached" in choice.line()


@pytest.mark.parametrize("build", ["cpu", "cu126", "cu128", "cu130"])
def test_a_requested_build_overrides_the_driver(build):
    choice = torch_select.choose(build, (SMI / "580_cuda13.0.txt").read_text(), constraints=CONSTRAINTS,
                                 reachable=lambda url: True)
    assert choice.pip_args[-2:] == ("--index-url", f"https://download.pytorch.org/whl/{build}")
    assert torch_select.choose("default", None, reachable=lambda url: 1 / 0).pip_args == ()


def test_unpinned_builds_use_pyprojects_ranges():
    """The ranges torch_select falls back to are pyproject.toml's, word for word."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for spec in torch_select.RANGES.values():
        assert spec in declared
    choice = torch_select.choose("cpu", None, constraints=None, reachable=lambda url: True)
    assert choice.pip_args[:2] == tuple(torch_select.RANGES.values())


def test_the_constraints_pin_every_package_within_pyprojects_ranges():
    """constraints/test.txt is a pip freeze (one == each, no editable vlbench) that satisfies pyproject.toml."""
    from packaging.requirements import Requirement

    lines = [line.strip() for line in CONSTRAINTS.read_text().splitlines() if line.strip() and not line.startswith("#")]
    pins = {}
    for line in lines:
        name, _, version = line.partition("==")
        assert version and " " not in line and not line.startswith("-e"), line
        pins[name.lower().replace("_", "-")] = version
    assert "vlbench" not in pins
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for text in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        req = Requirement(text)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned"
        assert req.specifier.contains(pins[name], prereleases=True), (text, pins[name])


# ---------------------------------------------------------------- the shell glue (dry run)
@pytest.fixture
def repo(tmp_path):
    """scripts/setup, torch_select.py and the constraints in a bare folder: no .venv, nothing installed."""
    for part in ("scripts/setup", "scripts/torch_select.py", "constraints/test.txt"):
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / part, tmp_path / part)
    return tmp_path


@pytest.fixture
def index(tmp_path):
    """A local stand-in for download.pytorch.org/whl: answers for /cu126/torch/ and the other builds."""
    served = tmp_path / "served"
    for build in torch_select.BUILDS:
        (served / build / "torch").mkdir(parents=True)
        (served / build / "torch" / "index.html").write_text("<html></html>")
    quiet = type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: quiet(*a, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def run_setup(repo: Path, tmp_path: Path, *args: str, smi: str | None, **env: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if smi is not None:  # a fake nvidia-smi on PATH printing a recorded output
        fake = bin_dir / "nvidia-smi"
        fake.write_text(f"#!/bin/sh\ncat '{SMI / (smi + '.txt')}'\n")
        fake.chmod(0o755)
    path = f"{bin_dir}:/usr/bin:/bin"  # no real nvidia-smi on it
    return subprocess.run(["bash", str(repo / "scripts" / "setup"), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PATH": path, "PYTHON": sys.executable,
                                            "VLBENCH_SETUP_DRY_RUN": "1", **env})


def test_setup_with_no_driver_runs_todays_install(repo, tmp_path):
    proc = run_setup(repo, tmp_path, smi=None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["would run: .venv/bin/python -m pip install -q -e .[test] -c constraints/test.txt"]
    assert len(proc.stderr.splitlines()) == 1 and "no nvidia-smi found" in proc.stderr


def test_setup_on_a_cuda_12_driver_installs_the_cu126_build_first(repo, tmp_path, index):
    proc = run_setup(repo, tmp_path, smi="535_cuda12.2", VLBENCH_TORCH_INDEX=index)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"would run: .venv/bin/python -m pip install -q {pinned('torch')} {pinned('torchvision')} "
        f"--index-url {index}/cu126",
        "would run: .venv/bin/python -m pip install -q -e .[test] -c constraints/test.txt"]
    assert proc.stderr.splitlines() == [
        "setup: torch build cu126: the driver supports CUDA 12.2 (< 12.8): the CUDA 12.6 build"]


def test_setup_falls_back_when_the_index_cannot_be_reached(repo, tmp_path):
    proc = run_setup(repo, tmp_path, "--torch", "cu128", smi=None, VLBENCH_TORCH_INDEX="http://127.0.0.1:9")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["would run: .venv/bin/python -m pip install -q -e .[test] -c constraints/test.txt"]
    assert "cannot be reached" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_setup_unpinned_and_bad_flags(repo, tmp_path, index):
    proc = run_setup(repo, tmp_path, "--unpinned", "--torch", "cpu", smi=None, VLBENCH_TORCH_INDEX=index)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        f"would run: .venv/bin/python -m pip install -q torch>=2.11,<2.15 torchvision>=0.26,<0.30 "
        f"--index-url {index}/cpu", "would run: .venv/bin/python -m pip install -q -e .[test]"]
    bad = run_setup(repo, tmp_path, "--torch", "gpu", smi=None)
    assert bad.returncode == 2 and bad.stderr.splitlines() == [
        "setup: --torch gpu: give one of auto, default, cpu, cu126, cu128, cu130"]
