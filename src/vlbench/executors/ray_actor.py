"""The Ray actor: one per GPU, an Engine over its own models, running jobs through the one job path.

Each actor builds its Engine once (engine.build.open_engine, its share of the node's threads) (models load on its first job, as in the local runner) and
keeps its extraction cache. For a job it returns the finished RunRecord and the PNG's bytes (encoded, while
its next job generates, with the same metadata the local runner writes); the head writes the file.
References travel as bytes (`ray.put`), so nothing depends on a shared filesystem.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from vlbench.engine.build import open_engine
from vlbench.errors import one_line
from vlbench.jobs import execute, execute_batch
from vlbench.logs import quiet_libraries
from vlbench.modelspec import ModelSpec
from vlbench.pixels import as_rgb
from vlbench.pngs import encode_png
from vlbench.records import RunRecord


class VLBenchActor:
    """Generation runs on one thread (jobs in arrival order, one at a time); PNG encoding on another."""

    def __init__(self, spec: dict, slot: int, threads: int | None = None):
        model_spec = ModelSpec(**spec)
        if model_spec.tiny and not (Path(model_spec.zimage).is_dir() and Path(model_spec.vl).is_dir()):
            model_spec = replace(model_spec, zimage="", vl="")  # another host: Models builds its own copy
        self.slot = slot
        self.engine = open_engine(model_spec, threads=threads or None)
        self.refs: dict[str, Any] = {}
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlbench-gen")
        self._png = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlbench-png")

    async def ready(self) -> dict:
        import ray
        import torch

        env = self.engine.environment()
        return {"slot": self.slot, "host": socket.gethostname(), "node": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(), "device": str(self.engine.models.device), "gpu": env.get("gpu"),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": torch.get_num_threads(),
                "environment": env}

    async def run(self, task: dict) -> dict:
        loop = asyncio.get_running_loop()
        await self._references(loop, task)
        out, image = await loop.run_in_executor(self._gpu, self._generate, task)
        return await self._png_of(loop, out, image)

    async def run_batch(self, tasks: list[dict]) -> list[dict]:
        """Jobs of one batch shape (vlbench.engine.batching.batch_key) in shared DiT calls, as `--batch` runs them
        locally (jobs.execute_batch): one result per task, in order, each as `run` returns it. Every done record's
        environment says its batch ({size, position}; a job run alone: size 1)."""
        loop = asyncio.get_running_loop()
        for task in tasks:
            await self._references(loop, task)
        outs = await loop.run_in_executor(self._gpu, self._generate_batch, tasks)
        return [await self._png_of(loop, out, image) for out, image in outs]

    async def _references(self, loop, task: dict) -> None:
        for sha, (path, holder) in task["refs"].items():  # the bytes travel once per actor (nested ObjectRefs)
            if sha not in self.refs:
                data = await holder[0]
                self.refs[sha] = await loop.run_in_executor(self._gpu, _reference, path, data, sha)

    async def _png_of(self, loop, out: dict, image) -> dict:
        if image is not None:
            try:
                out["png"] = await loop.run_in_executor(self._png, _encode, image, out["record"])
            except Exception as exc:  # noqa: BLE001

                out["record"].update(status="failed", error=f"PNG: {one_line(exc)}", failure="bug")
        return out

    def _generate_batch(self, tasks: list[dict]) -> list[tuple[dict, Any]]:
        records = [RunRecord.from_json(t["record"]) for t in tasks]
        refs = [[self.refs[r["sha256"]] for r in record.references] for record in records]
        if len(records) == 1:
            outcomes = [execute(self.engine, records[0], refs[0])]
            if outcomes[0].record.status == "done":  # as the local executor marks a job run alone under --batch
                rec = outcomes[0].record
                rec.environment = {**rec.environment, "batch": {"size": 1, "position": 0}}
        else:
            outcomes = execute_batch(self.engine, records, refs)
        for task in tasks:
            for shas, text in task.get("release", ()):
                self.engine.release_extraction_by_sha(tuple(shas), text)
        return [({"record": o.record.to_json(), "slot": self.slot, "fatal": o.failure is not None and o.failure.fatal},
                 o.image) for o in outcomes]

    def _generate(self, task: dict) -> tuple[dict, Any]:
        fault = task.get("fault")
        if fault == "exit-before":
            os._exit(3)

        def on_step(i: int, n: int) -> None:  # tests: the process dies, or CUDA breaks, in the middle of this job
            if fault in ("exit", "exit-always"):
                os._exit(3)
            if fault == "cuda-error":
                raise RuntimeError("CUDA error: device-side assert triggered (simulated)")

        record = RunRecord.from_json(task["record"])
        refs = [self.refs[r["sha256"]] for r in record.references]
        outcome = execute(self.engine, record, refs, on_step=on_step if fault else None)
        for shas, text in task.get("release", ()):  # the head knows no queued job reads it any more
            self.engine.release_extraction_by_sha(tuple(shas), text)
        out = {"record": outcome.record.to_json(), "slot": self.slot,
               "fatal": outcome.failure is not None and outcome.failure.fatal}
        return out, outcome.image

    async def release(self, pairs: list) -> int:
        """Drop these (reference sha256s, VL text) extractions (a run ended with them still held)."""
        loop = asyncio.get_running_loop()
        engine = self.engine
        return sum([await loop.run_in_executor(self._gpu, engine.release_extraction_by_sha, tuple(shas), text)
                    for shas, text in pairs])


def _encode(image, record: dict) -> bytes:
    """The exact bytes the local runner writes (the same function, the same metadata)."""
    return encode_png(image, RunRecord.from_json(record).png_metadata())


def _reference(path: str, data: bytes, sha: str):
    """A Reference from the head's bytes, opened exactly as load_image opens a file."""
    from PIL import Image

    from vlbench.engine.engine import Reference

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        image, notes = as_rgb(img, path)
        return Reference(path, image, sha, notes)
