"""Serving the router: one process, or N processes on one port.

With ``--workers N`` the command becomes a small supervisor and N router processes, each
binding the port itself with SO_REUSEPORT. The kernel then spreads incoming connections across
the N listening sockets by a hash of the connection, so each process accepts only its own and
none is woken for connections another takes. The alternative, one socket that the parent binds
and every child accepts from (uvicorn's ``--workers``), wakes every idle process per connection
and hands most connections to whichever wakes first, so with few long-lived client connections
the spread can be very uneven; it also needs an import string rather than the config object.

Each process builds its own RouterState from the one frozen RouterConfig built here at the edge
(pickled to the children by multiprocessing): it follows the registry and the KV-event stream
itself, so the prefix index needs no state shared across processes. Connections are sticky to a
process; /health and /v1/cluster answer for the process that got the connection (``pid`` in
the body, ``x-pdserve-router-pid`` on every response). /metrics answers for all of them: the
process that takes the scrape asks the others over unix sockets in a private directory the
supervisor makes (router/sibling_metrics.py) and merges their expositions
(router/metrics_merge.py), so counters do not jump between processes from scrape to scrape.

Children are started with ``spawn``, not ``fork``: the parent never imports grpc or the
tokenizer, and a forked gRPC runtime is a known hazard. SIGINT/SIGTERM to the supervisor reach
every child as SIGTERM (uvicorn's graceful shutdown), and whatever has not exited after the
grace period is killed; each child also asks the kernel for SIGTERM if the supervisor dies, so
no router process outlives it. A child that dies on its own is restarted, unless it died within
its first seconds (a bad port, a bad model): then the supervisor stops everything and fails.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time

from router import heap
from router.config import RouterConfig
from router.process_header import process_headers

log = logging.getLogger("router.serve")
GRACEFUL_SHUTDOWN_S = 5  # uvicorn lets requests in flight finish this long
_KILL_AFTER_S = GRACEFUL_SHUTDOWN_S + 10
_CRASH_LOOP_S = 10.0  # a child dying sooner than this after its start is not restarted
_PR_SET_PDEATHSIG = 1


def serve(config: RouterConfig, log_level: str) -> int:
    if config.processes <= 1:
        import uvicorn

        from router.app import create_app
        from router.joined_head import HeadJoiningHttpToolsProtocol

        app = create_app(config)
        heap.settle()  # the process serves from here on (router/heap.py)
        uvicorn.run(app, host=config.host, port=config.port, log_level=log_level,
                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, headers=process_headers(),
                    http=HeadJoiningHttpToolsProtocol)
        return 0
    return _Supervisor(config, log_level).run()


def bind_reuseport(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)  # uvicorn's default backlog
    return sock


def _child_main(config: RouterConfig, log_level: str, index: int, parent_pid: int) -> None:
    try:  # die with the supervisor, even if it is SIGKILLed
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
        return
    import uvicorn

    from router.app import create_app
    from router.joined_head import HeadJoiningHttpToolsProtocol

    logging.basicConfig(level=log_level.upper(),
                        format=f"%(asctime)s %(levelname)s [router {index} pid {os.getpid()}] "
                               f"%(name)s: %(message)s")
    sock = bind_reuseport(config.host, config.port)
    app = create_app(config)
    heap.settle()  # the process serves from here on (router/heap.py)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level,
                                           timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                                           headers=process_headers(),
                                           http=HeadJoiningHttpToolsProtocol))
    server.run(sockets=[sock])


class _Supervisor:
    def __init__(self, config: RouterConfig, log_level: str):
        self.config = config
        self.log_level = log_level
        self.ctx = multiprocessing.get_context("spawn")
        self.children: dict[int, tuple[multiprocessing.Process, float]] = {}
        self.stopping = False
        self.sibling_dir = ""  # made in run(), removed when it returns

    def _start(self, index: int) -> None:
        config = dataclasses.replace(self.config, process_index=index,
                                     sibling_dir=self.sibling_dir)
        process = self.ctx.Process(target=_child_main, name=f"pdserve-router-{index}",
                                   args=(config, self.log_level, index, os.getpid()))
        process.start()
        self.children[index] = (process, time.monotonic())
        log.info("router process %d started (pid %d)", index, process.pid)

    def run(self) -> int:
        def on_signal(signum, frame):
            self.stopping = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        log.info("starting %d router processes on %s:%d (SO_REUSEPORT)",
                 self.config.processes, self.config.host, self.config.port)
        code = 0
        self.sibling_dir = tempfile.mkdtemp(prefix="pdserve-router-")  # mode 0700
        try:
            for index in range(self.config.processes):
                self._start(index)
            while not self.stopping:
                time.sleep(0.2)
                for index, (process, started) in list(self.children.items()):
                    if process.is_alive() or self.stopping:
                        continue
                    if time.monotonic() - started < _CRASH_LOOP_S:
                        log.error("router process %d exited with code %s right after starting; "
                                  "stopping", index, process.exitcode)
                        self.stopping, code = True, 1
                        break
                    log.warning("router process %d exited with code %s; restarting it",
                                index, process.exitcode)
                    self._start(index)
        finally:
            self._stop_children()
            shutil.rmtree(self.sibling_dir, ignore_errors=True)
        return code

    def _stop_children(self) -> None:
        processes = [p for p, _ in self.children.values()]
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + _KILL_AFTER_S
        for process in processes:
            process.join(timeout=max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("router process pid %d did not stop in %ds; killing it",
                            process.pid, _KILL_AFTER_S)
                process.kill()
                process.join()
