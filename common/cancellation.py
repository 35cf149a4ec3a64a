"""Ending a loop whose task was cancelled, even when a library swallowed the CancelledError.

On Python 3.11, redis-py's asyncio client sometimes swallows a cancellation that lands inside a
command: the command returns as usual and the coroutine goes on. Measured here (session 12):
a ``while True: await r.smembers(...)`` task ran 3,000-5,000 more iterations after
``task.cancel()`` within the first few cancellations, with redis-py 6.4, 7.1, 8.1 and 8.2,
against redis-server and fakeredis alike; never in 300 on Python 3.12 or 3.13. A router whose
registry loop lives on hangs in shutdown (the router supervisor then kills it), and a worker
presence whose heartbeat loop lives on never stops.

The task's count of cancel requests (``Task.cancelling()``, Python 3.11+) stays up even when
the error was swallowed, so the background loops that await Redis call ``raise_if_cancelled``
after each call. On 3.10 there is no count to read and it does nothing.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelled() -> None:
    """Raise ``CancelledError`` if the current task has been asked to stop and has not
    taken the request back (``Task.uncancel``), wherever the error itself went."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError
