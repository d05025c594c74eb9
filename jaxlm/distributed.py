"""Multi-host runs: every process calls `initialize(cfg)` before anything touches the devices.

    initialize(load_config("run.yaml", ["distributed.enabled=true"]))

Afterwards `jax.devices()` lists the devices of all processes, `jax.process_index()` tells this
process apart, and one mesh spans them all. On Cloud TPU VMs, Slurm, Open MPI and Kubernetes
the coordinator, process count and process id are detected; elsewhere they come from the config
or the JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID environment variables.
On the CPU, processes exchange data through gloo collectives over TCP (JAX's default
`jax_cpu_collectives_implementation`; "mpi" is the alternative).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxlm import errors
from jaxlm.config import Config
from jaxlm.errors import ConfigError, JaxlmError


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"config key 'distributed.coordinator_address': {address!r} is not host:port"
        )
    return host.strip("[]"), int(port)


def _preflight(address: str, process_id: int | None, timeout: float) -> None:
    """Checks what JAX would otherwise report by aborting the process: an unknown host, a port
    process 0 cannot serve on, a coordinator that never answers (process id known)."""
    host, port = _host_port(address)
    try:
        socket.getaddrinfo(host, port)
    except socket.gaierror:
        raise JaxlmError(f"distributed coordinator {address}: unknown host {host!r}") from None
    if process_id == 0:
        dual = socket.has_dualstack_ipv6()
        family = socket.AF_INET6 if dual else socket.AF_INET
        try:
            socket.create_server(("", port), family=family, dualstack_ipv6=dual).close()
        except OSError as e:
            raise JaxlmError(
                f"distributed coordinator {address}: process 0 cannot listen on port {port} "
                f"({os.strerror(e.errno) if e.errno else e}); choose another port"
            ) from None
        return
    if process_id is None:
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise JaxlmError(
                    f"no coordinator answered at {address} within {timeout:g}s "
                    f"(distributed.timeout_seconds): is process 0 running there?"
                ) from None
            time.sleep(0.2)


def initialize(cfg: Config) -> None:
    """Joins this process to the run's other processes when `distributed.enabled`.

    Does nothing when disabled or already initialized (a re-run notebook cell). Must run before
    any JAX computation in the process. A bad address, a busy port or a coordinator that does not
    answer within `distributed.timeout_seconds` raise a one-line `JaxlmError`; processes that
    reach the coordinator but wait in vain for the others are ended by JAX after that timeout.
    """
    dist = cfg.distributed
    if not dist.enabled or jax.distributed.is_initialized():
        return
    address = dist.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    num_processes = dist.num_processes or _env_int("JAX_NUM_PROCESSES")
    process_id = dist.process_id if dist.process_id >= 0 else _env_int("JAX_PROCESS_ID")
    if address:
        _preflight(address, process_id, dist.timeout_seconds)
    try:
        jax.distributed.initialize(
            address or None,
            num_processes,
            process_id,
            initialization_timeout=dist.timeout_seconds,
        )
    except (RuntimeError, ValueError, TypeError) as e:  # JAX runtime errors are RuntimeErrors
        jax.distributed.shutdown()  # forget the half-made connection so that a retry can work
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JaxlmError(f"distributed initialization failed: {reason[:300]}") from None


SHARED_TIMEOUT = 10.0  # seconds a process waits to see process 0's file (NFS attribute caches)


def require_shared_workdir(workdir: Path) -> None:
    """In a multi-process run, checks that every process sees the files process 0 writes in
    `workdir` (the config, the tokenizer, checkpoints): a folder all hosts share at one path.
    Otherwise every process raises the same one-line ConfigError, naming those that do not."""
    if jax.process_count() == 1:
        return
    token = multihost_utils.broadcast_one_to_all(np.random.default_rng().integers(2**31))
    marker = workdir / f".jaxlm-shared-{int(token)}"
    if jax.process_index() == 0:
        marker.write_text("written by process 0 to check that every process sees this folder\n")
    multihost_utils.sync_global_devices("jaxlm shared workdir: written")
    deadline = time.monotonic() + SHARED_TIMEOUT
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    sees = multihost_utils.process_allgather(np.int32(marker.exists()))
    multihost_utils.sync_global_devices("jaxlm shared workdir: checked")
    if jax.process_index() == 0:
        marker.unlink()
    blind = [index for index, seen in enumerate(np.ravel(sees)) if not seen]
    if blind:
        raise ConfigError(
            f"config key 'train.workdir': process(es) {', '.join(map(str, blind))} do not see "
            f"the files process 0 writes in {workdir}; a multi-host run needs a folder all "
            "hosts share at the same path (a bucket mounted with gcsfuse, or NFS)"
        )


ERROR_BYTES = 2048  # of a process-0 error's class and message, sent to the other processes


def on_process_zero(action: Callable[[], None], barrier: str) -> None:
    """Runs `action` on process 0 alone; the others wait at `barrier`. An exception it raises
    stops every process: process 0 raises it, the others a `JaxlmError` of its class (or a
    plain one) with its message, so that no process is left waiting for one that stopped."""
    if jax.process_count() == 1:
        action()
        return
    failure = None
    if jax.process_index() == 0:
        try:
            action()
        except Exception as e:  # noqa: BLE001 - passed on to every process, then raised
            failure = e
    text = "" if failure is None else f"{type(failure).__name__}\t{failure}"
    sent = np.zeros(ERROR_BYTES, np.uint8)
    encoded = np.frombuffer(text.encode()[:ERROR_BYTES], np.uint8)
    sent[: len(encoded)] = encoded
    received = multihost_utils.broadcast_one_to_all(sent)
    multihost_utils.sync_global_devices(barrier)
    if failure is not None:
        raise failure
    if text := bytes(np.asarray(received, np.uint8)).rstrip(b"\0").decode(errors="replace"):
        name, _, message = text.partition("\t")
        error = getattr(errors, name, None)
        known = isinstance(error, type) and issubclass(error, JaxlmError)
        raise (error if known else JaxlmError)(message if known else f"process 0: {message}")
