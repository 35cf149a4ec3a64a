"""A spawned process driven by (command, args) messages over two queues; shared by the test
peers that hold a KV connector or a whole engine in a process of their own."""

from __future__ import annotations

import multiprocessing as mp


class QueueProcess:
    def __init__(self, target, args: tuple, ready_kind: str, timeout: float):
        ctx = mp.get_context("spawn")
        self.commands, self.results = ctx.Queue(), ctx.Queue()
        self.process = ctx.Process(target=target, daemon=True,
                                   args=(self.commands, self.results, *args))
        self.process.start()
        self.timeout = timeout
        kind, self.ready_value = self.results.get(timeout=timeout)
        assert kind == ready_kind, kind

    def call(self, cmd: str, args=None, timeout: float | None = None):
        self.commands.put((cmd, args))
        kind, value = self.results.get(timeout=timeout or self.timeout)
        if kind == "error":
            raise RuntimeError(value)
        return value

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                self.call("stop", timeout=30)
            except Exception:
                pass
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
