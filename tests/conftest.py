"""Shared fixtures: the tiny random models, built once per test session into a temp cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# A test waits for behaviour, never against a clock: the wait helpers (test_tui.wait_for, test_headless._until,
# the tmux driver's wait_for) give a condition at least this long before calling it a hang, so a machine under
# load (CI; two suites at once) is slow, not red. They return as soon as the condition holds.
PATIENCE_S = float(os.environ.get("VLBENCH_TEST_PATIENCE_S", "60"))

# Ray starts its workers (the tests' actors) at nice 15, its `worker_niceness` default; on a machine whose cores are
# busy with nice-0 processes (CI's other pytest worker, a second suite) the actors then get a few percent of a core
# and the Ray tests wait minutes for them. The tests' Ray instances (started in this process or in a command it
# runs, which inherit this) run their workers at nice 0, as the local executor runs its jobs. Nothing else changes.
os.environ.setdefault("RAY_worker_niceness", "0")

# Torch on one intra-op thread in every test process and every process a test starts (they inherit
# OMP_NUM_THREADS, which torch reads when it is imported). Under `pytest -n 2` on two cores each worker and each
# subprocess ran a pool as large as the machine, whose threads spun waiting for each other: the tiny models' ops ran
# 10–40× slower (a resumed search 163 s → 23 s, measured 2026-12-08). The product's own thread policy is unchanged; a
# test about it sets the counts it needs (test_layout_cuts) or removes this variable (test_headless).
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported before this file (a plugin): the variable came too late for it
    sys.modules["torch"].set_num_threads(1)


def patience(seconds: float) -> float:
    """How long a wait helper waits for a condition: `seconds`, but never less than PATIENCE_S."""
    return max(float(seconds), PATIENCE_S)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """(vl_dir, zimage_dir) of the tiny models; also exported so `--tiny` in CLI tests finds the same build."""
    from vlbench.engine.tiny import ensure_tiny_models

    root = Path(os.environ.get("VLBENCH_TEST_CACHE") or tmp_path_factory.mktemp("cache"))
    os.environ["VLBENCH_CACHE_DIR"] = str(root)
    models = ensure_tiny_models(root / "tiny")
    return models


@pytest.fixture(scope="session")
def tiny_spec(tiny_dirs):
    from vlbench.modelspec import ModelSpec

    return ModelSpec(zimage=str(tiny_dirs.zimage), vl=str(tiny_dirs.vl), device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def engine(tiny_spec):
    """One Engine for the session: models load once, as in a real sweep."""
    from vlbench.engine.engine import Engine
    from vlbench.engine.models import Models

    return Engine(Models(tiny_spec))


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path, monkeypatch):
    """Every test gets its own data dir: no test writes to the user's real store."""
    monkeypatch.setenv("VLBENCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VLBENCH_CONFIG_DIR", str(tmp_path / "config"))


def make_image(path: Path, size=(96, 64), color=(200, 40, 40), pattern: bool = True) -> Path:
    from PIL import Image

    img = Image.new("RGB", size, color)
    if pattern:  # a little structure so different images give different hidden states
        for x in range(0, size[0], 8):
            for y in range(0, size[1], 8):
                if (x // 8 + y // 8) % 2:
                    img.putpixel((x, y), (x * 2 % 256, y * 3 % 256, 90))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


@pytest.fixture
def ref_image(tmp_path) -> Path:
    return make_image(tmp_path / "ref.png")


@pytest.fixture(scope="module")
def ref_pipe(tiny_dirs):
    """Z-Image loaded by diffusers alone (with its own Qwen3 text encoder): the reference the engine must equal."""
    import torch
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(tiny_dirs.zimage, torch_dtype=torch.float32).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    """One 96×64 reference (modules that need several define their own `refs`)."""
    from vlbench.engine.engine import Reference

    return [Reference.open(make_image(tmp_path_factory.mktemp("ref") / "ref.png", size=(96, 64)))]
