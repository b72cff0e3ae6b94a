"""Issue 29: the Ray executor on a cluster of several nodes — the code path a second host takes — proven on a local
cluster of a head and two worker nodes on this machine (ray.cluster_utils.Cluster, CPU, tiny models, loopback only).

The head node offers no CPU, so each of the two actors runs in a worker node's own raylet and object store: the
references travel to it as Ray objects, its results come back the same way, and this process writes every file,
exactly as with a worker on another machine (nothing in the path reads the node's filesystem but the models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_image

pytestmark = pytest.mark.xdist_group("ray")  # with -n: on the Ray worker, never beside test_ray.py's instance

SMALL = {"steps": 2, "width": 64, "height": 64}
PROMPT = "a red square"


@pytest.fixture(scope="module")
def cluster(tiny_dirs):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from vlbench.executors.ray_connect import _loopback_only

    assert not ray.is_initialized()
    with _loopback_only():  # every node's servers on 127.0.0.1, as the one-host instance
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1",
                                                          "include_dashboard": False})
        workers = [c.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
        c.wait_for_nodes()
    yield c, {w.node_id for w in workers}, c.head_node.node_id
    ray.shutdown()
    c.shutdown()


def test_the_executor_runs_a_sweep_on_two_worker_nodes_of_a_cluster(cluster, engine, tiny_spec, tmp_path):
    import torch

    from vlbench.engine.engine import Engine, Reference
    from vlbench.executors.ray_connect import head_engine
    from vlbench.executors.ray_executor import RayExecutor
    from vlbench.experiments.runner import run_experiment
    from vlbench.experiments.spec import load_type

    c, worker_ids, head_id = cluster
    experiment = load_type("vl_layer_by_token")
    recipes = experiment.recipes(quick=True, overrides=SMALL)
    ref = Reference.open(make_image(tmp_path / "ref.png"))
    local = run_experiment(Engine(engine.models), experiment, recipes, [ref], [PROMPT], tmp_path / "local", seeds=[1])
    executor = RayExecutor.start(tiny_spec, address=c.address, actors=2, threads=torch.get_num_threads())
    try:
        actors = executor.describe()["actors"]
        assert {a["node_id"] for a in actors} == worker_ids and head_id not in {a["node_id"] for a in actors}
        summary = run_experiment(head_engine(tiny_spec), experiment, recipes, [ref], [PROMPT], tmp_path / "ray",
                                 seeds=[1], executor=executor)
        done = {s.index: s.done for s in executor.slots}
    finally:
        executor.close()
    assert (summary.jobs, summary.done, summary.failed) == (local.jobs, local.jobs, 0)
    assert all(n > 0 for n in done.values()), done  # both nodes ran jobs
    rows = [json.loads(line) for line in (tmp_path / "ray" / "results.jsonl").read_text().splitlines()]
    assert len({r["key"] for r in rows}) == len(rows) == local.jobs
    for row in rows:  # the bytes each node sent equal the local images
        assert (tmp_path / "ray" / row["image"]).read_bytes() == (tmp_path / "local" / row["image"]).read_bytes()
    psutil = pytest.importorskip("psutil")  # the test's cluster stayed on loopback (no traffic off this machine)
    me = psutil.Process()
    pids = {me.pid, *(p.pid for p in me.children(recursive=True))}
    listening = {c.laddr.ip.removeprefix("::ffff:") for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in pids}
    assert listening and all(ip.startswith("127.") or ip == "::1" for ip in listening), listening
