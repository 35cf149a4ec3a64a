"""Router processes of one port telling each other their metrics, so that any of them can
answer a scrape for all (router/metrics_merge.py).

The supervisor (router/serve.py) gives every process the same private directory (mode 0700,
removed when it stops). Each process listens on ``router-<index>.sock`` there and answers a
connection with its registry's exposition, then closes it. The process that takes a scrape
connects to every sibling's socket at once and waits at most ``SIBLING_TIMEOUT_S``: one that is
restarting, or too busy to answer, is left out of that scrape (the merged exposition counts the
processes it holds). Nothing here runs per request: only when /metrics is scraped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

SIBLING_TIMEOUT_S = 2.0  # a scrape waits this long for the slowest sibling
_MAX_EXPOSITION_BYTES = 64 << 20


def socket_path(directory: str, index: int) -> Path:
    return Path(directory) / f"router-{index}.sock"


class SiblingMetrics:
    """``render()``: this process's exposition (text format); ``index`` of ``processes``."""

    def __init__(self, directory: str, index: int, processes: int,
                 render: Callable[[], bytes]):
        self.directory, self.index, self.processes = directory, index, processes
        self._render = render
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        path = socket_path(self.directory, self.index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a socket left by this index's previous process (restarted)
        self._server = await asyncio.start_unix_server(self._answer, path=str(path))
        os.chmod(path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                socket_path(self.directory, self.index).unlink()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self._render())
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the asking process gave up (timed out, or stopped)
        finally:
            writer.close()

    async def gather(self) -> dict[int, str]:
        """Every process's exposition that arrived in time, this one's included."""
        others = [i for i in range(self.processes) if i != self.index]
        texts = await asyncio.gather(*(self._ask(i) for i in others))
        found = {i: t for i, t in zip(others, texts, strict=True) if t is not None}
        found[self.index] = self._render().decode()
        return found

    async def _ask(self, index: int) -> str | None:
        try:
            return await asyncio.wait_for(self._read(index), SIBLING_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError, UnicodeDecodeError) as e:
            log.info("router process %d left out of this scrape: %s", index,
                     e or type(e).__name__)
            return None

    async def _read(self, index: int) -> str:
        reader, writer = await asyncio.open_unix_connection(
            str(socket_path(self.directory, index)))
        try:
            data = bytearray()
            while chunk := await reader.read(1 << 20):
                data += chunk
                if len(data) > _MAX_EXPOSITION_BYTES:
                    raise OSError(f"exposition over {_MAX_EXPOSITION_BYTES} bytes")
        finally:
            writer.close()
        return data.decode()
