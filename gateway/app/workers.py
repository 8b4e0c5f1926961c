"""``serve --workers N``: N gateway processes sharing one port through ``SO_REUSEPORT``.

The parent forks the workers before any gRPC object exists (gRPC's core does not survive a
fork once started), so this module must not import grpc. Each worker builds its own server,
upstream client and cache; the kernel spreads incoming connections across them. With
``--metrics-listen HOST:PORT``, worker *k* serves its metrics on ``PORT + k``.

The parent only supervises: SIGTERM or SIGINT is passed on to every worker (which drain as a
single process would), and if a worker dies on its own, the others are stopped too and the
parent exits non-zero, so the orchestrator restarts the whole set.

    exit_code = run_workers(config, workers=2)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from types import FrameType

from gateway.app.config import GatewayConfig, split_host_port

log = logging.getLogger(__name__)


def worker_config(config: GatewayConfig, index: int) -> GatewayConfig:
    """Worker ``index``'s configuration: a shared port, and its own metrics port."""
    metrics = config.metrics_listen
    if metrics is not None:
        host, port = split_host_port(metrics, "--metrics-listen")
        shown = f"[{host}]" if ":" in host else host
        metrics = f"{shown}:{port + index}"
    return dataclasses.replace(config, reuse_port=True, metrics_listen=metrics)


def run_workers(config: GatewayConfig, workers: int) -> int:
    """Fork ``workers`` gateway processes and supervise them; returns the exit status."""
    children: dict[int, int] = {}  # pid -> worker index
    for index in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker
            os._exit(_run_worker(worker_config(config, index)))
        children[pid] = index
    log.info("started %d workers", workers, extra={"fields": {"pids": sorted(children)}})

    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            _signal(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while children:
        pid, wait_status = os.wait()
        if pid not in children:
            continue
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if code != 0:
            status = 1
        if not stopping:
            log.error("worker %d (pid %d) exited with %d: stopping the others", index, pid, code)
            stopping = True
            status = 1
            for other in children:
                _signal(other, signal.SIGTERM)
    return status


def _run_worker(config: GatewayConfig) -> int:
    # Restore default signal handling: serve() installs its own on the worker's event loop.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        from gateway.app.server import serve  # grpc is first imported here, after the fork

        asyncio.run(serve(config))
    except OSError as error:
        print(f"identity-gateway worker: {error}", file=sys.stderr)
        return 1
    except BaseException:
        log.exception("worker crashed")
        return 1
    finally:
        logging.shutdown()
    return 0


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it has just exited
        os.kill(pid, signum)
