"""Reaching Ray: join a cluster or start a local instance bound to this machine alone, and size the actors.

A local instance (no address) listens on 127.0.0.1 only (`_loopback_only`): nothing outside this machine can
reach it while a sweep runs. A cluster keeps its own binding and authentication (see the README's multi-host section).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import replace

from vlbench.engine.build import open_engine
from vlbench.errors import UserError, one_line


def connect(address: str | None, cpus: int) -> bool:
    """Join the cluster at `address`, or start a local Ray instance with every visible GPU. Returns whether this
    call started the connection (and so must end it). An unreachable address is a one-line UserError."""
    import ray

    if address is not None:
        _check_reachable(address)
    if ray.is_initialized():
        return False
    quiet = dict(log_to_driver=False, logging_level=logging.ERROR)
    if address is None:
        import torch

        for attempt in (1, 2):  # Ray waits a fixed 30 s for its raylet: a busy machine can miss it once
            try:
                with _loopback_only():
                    ray.init(address="local", num_gpus=torch.cuda.device_count(),
                             num_cpus=max(os.cpu_count() or 1, cpus), include_dashboard=False,
                             _node_ip_address="127.0.0.1", _temp_dir=private_temp_dir(), **quiet)
                return True
            except Exception as exc:  # noqa: BLE001 — Ray raises a bare Exception for a node start that timed out
                if "timed out during startup" not in str(exc):
                    raise
                ray.shutdown()
                if attempt == 2:
                    raise UserError(f"the local Ray instance did not start ({one_line(exc)})", field="executor",
                                    value="ray", fix="try again when the machine is less busy, or use "
                                                     "--executor local") from None
    try:
        if _is_loopback(address):  # a cluster on this machine bound to 127.0.0.1 (tests): stay on loopback
            with _loopback_only():
                ray.init(address=address, **quiet)
        else:
            ray.init(address=address, **quiet)
    except Exception as exc:  # noqa: BLE001 — ConnectionError, RuntimeError, version mismatches …
        raise UserError(f"cannot connect ({one_line(exc)})", field="ray_address", value=address,
                        fix="check the address, that the cluster runs this machine's Ray and Python versions, and, if "
                            "it uses token authentication, export RAY_AUTH_MODE=token here with its token "
                            "(~/.ray/auth_token or RAY_AUTH_TOKEN)") from None
    return True


def private_temp_dir() -> str:
    """The local instance's temp dir (sessions, logs, sockets): `ray` inside a folder of this user's alone (0700).

    Ray makes every folder it creates mode 0777 (so users of a box can share /tmp/ray); inside a 0700 parent no
    other user reaches them. The parent sits in the system temp dir, not the data folder: Ray's unix socket paths
    under it must stay within the 107-byte limit (issue 26)."""
    parent = os.path.join(tempfile.gettempdir(), f"vlbench-{os.geteuid()}")
    os.makedirs(parent, mode=0o700, exist_ok=True)
    st = os.lstat(parent)
    if not os.path.isdir(parent) or os.path.islink(parent) or st.st_uid != os.geteuid():
        raise UserError(f"{parent} is not a folder of yours", field="executor", value="ray",
                        fix=f"remove {parent} (another user or a link holds the name), or set TMPDIR elsewhere")
    if st.st_mode & 0o077:
        os.chmod(parent, 0o700)
    return os.path.join(parent, "ray")


@contextmanager
def _loopback_only():
    """A local Ray instance whose every server (GCS, raylet, object manager, workers, runtime-env agent) listens
    on 127.0.0.1 alone.

    On Linux Ray replaces `_node_ip_address="127.0.0.1"` by this machine's routable address and its gRPC servers
    then listen on every interface, with no authentication. With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Ray's
    single-machine mode, its default on macOS and Windows) the node address stays the loopback one and every
    server binds it; the processes ray.init starts inherit the variable, this one reads Ray's constant.
    tests/test_ray.py checks the listeners."""
    from ray._private import ray_constants

    key = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved_env, saved_flag = os.environ.get(key), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[key] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved_env


def _is_loopback(address: str) -> bool:
    """Whether a HOST:PORT or ray://HOST:PORT address names this machine's loopback interface."""
    host = address.removeprefix("ray://").rstrip("/").rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_reachable(address: str) -> None:
    """Fail in seconds, not Ray's minutes of retries, when nothing listens at the address."""
    if address.startswith("ray://"):
        hostport = address[len("ray://"):]
    elif address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            hostport = canonicalize_bootstrap_address("auto")
        except ConnectionError:
            raise UserError("no running Ray cluster found from this machine", field="ray_address", value="auto",
                            fix="start one with `ray start --head`, or drop it to start a local one") from None
        except Exception:  # noqa: BLE001 — Ray's private helper changed: leave it to ray.init
            return
        if not hostport:
            return
    else:
        hostport = address
    host, _, port = hostport.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise UserError("expected auto, HOST:PORT (the head's GCS port, 6379 by default) or ray://HOST:PORT "
                        "(Ray Client, 10001 by default)", field="ray_address", value=address)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise UserError(f"cannot reach {host}:{port} ({reason})", field="ray_address", value=address,
                        fix="start the cluster with `ray start --head` there, or drop it to start a local one") from None


def head_engine(spec):
    """This process's Engine for a Ray run: it loads nothing during the sweep (the actors do); the runner reads its
    spec, and diagnostics or metrics after the run use it. A head without CUDA keeps --device cuda for the actors."""
    import torch

    if spec.device and spec.device.startswith("cuda") and not torch.cuda.is_available():
        spec = replace(spec, device=None)
    return open_engine(spec)



def plan_actors(ray, spec, actors: int | None) -> tuple[int, dict, int | None]:
    """(how many actors, their Ray resource options, torch threads each)."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    device = spec.device or ""
    if device.startswith("cuda") and gpus == 0:
        raise UserError("the Ray cluster has no GPUs", field="device", value=spec.device, fix="use cpu")
    if gpus and device != "cpu":
        n = actors or gpus
        if n > gpus:
            raise UserError(f"the Ray cluster has {gpus} GPUs; one actor per GPU at most", field="ray_actors", value=n)
        return n, {"num_gpus": 1, "num_cpus": 1}, max(1, min(8, cpus // n))
    n = actors or max(1, min(2, cpus))
    if n > cpus:
        raise UserError(f"the Ray cluster has {cpus} CPUs; at most one CPU actor per CPU", field="ray_actors", value=n)
    return n, {"num_cpus": 1}, max(1, cpus // n)


def cause(exc: BaseException) -> str:
    """One line for a Ray error: its first meaningful line, without Ray's boilerplate."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else exc.__class__.__name__
    for ln in lines:
        if "exit" in ln.lower() or "died" in ln.lower() or "error" in ln.lower():
            text = ln
            break
    return f"{exc.__class__.__name__}: {text}"[:300]
