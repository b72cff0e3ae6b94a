"""Issue 24's cuts: one way to build an Engine (engine.build.open_engine), one way to save a finished run's PNG
(pngs.write_run_png), and the worker package's declared interface (worker.events.QueueRunner)."""

from __future__ import annotations

import hashlib
import os

import pytest
from PIL import Image

from vlbench.pngs import encode_png, read_png_metadata, write_run_png
from vlbench.records import RunRecord


def test_write_run_png_writes_the_record_into_the_png_and_points_the_record_at_it(tmp_path):
    record = RunRecord(prompt="p", recipe={"seed": 3}, seed=3, status="done", timings={"generation": 1.0})
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    out = write_run_png(tmp_path / "sub" / "a.png", image, record, name="a.png")
    data = (tmp_path / "sub" / "a.png").read_bytes()
    assert out.image == "a.png" and out.image_sha256 == hashlib.sha256(data).hexdigest()
    assert read_png_metadata(tmp_path / "sub" / "a.png") == record.png_metadata()
    assert not list((tmp_path / "sub").glob("*.tmp")) and not list((tmp_path / "sub").glob(".*"))  # whole, no temp
    # bytes already encoded (a Ray actor's) are written as they are; name defaults to the path
    again = write_run_png(tmp_path / "b.png", encode_png(image, record.png_metadata()), record)
    assert again.image == str(tmp_path / "b.png") and again.image_sha256 == out.image_sha256


def test_open_engine_sets_the_thread_policy_it_is_given(tiny_spec):
    import torch

    from vlbench.engine.build import SPARE_CORE, cpu_threads, open_engine

    before = torch.get_num_threads()
    try:
        pool = max(2, os.cpu_count() or 1)  # a pool as large as the machine: neither call leaves it so
        torch.set_num_threads(pool)  # (the suite runs torch on one thread: conftest)
        engine = open_engine(tiny_spec, threads=1)
        assert torch.get_num_threads() == 1 and engine.models.spec.vl == tiny_spec.vl
        torch.set_num_threads(pool)
        open_engine(tiny_spec, threads=SPARE_CORE)  # tiny_spec is on the CPU
        assert torch.get_num_threads() == cpu_threads(pool) < pool
        with pytest.raises(ValueError):
            open_engine(tiny_spec, threads="all")
    finally:
        torch.set_num_threads(before)
    assert cpu_threads(8, cores=4) == 3 and cpu_threads(2, cores=1) == 1 and cpu_threads(2, cores=16) == 2


def test_the_worker_and_the_viewer_offer_the_declared_interface(tmp_path, tiny_spec):
    from vlbench.worker import QueueRunner, Viewer, Worker

    assert isinstance(Worker(tiny_spec, store_path=tmp_path / "s.sqlite3"), QueueRunner)
    assert isinstance(Viewer(tmp_path / "s.sqlite3", {"pid": 1}), QueueRunner)
