"""``n`` > 1: one prompt, n choices, one prefill.

Choice 0 goes through the cluster as any request (remote prefill, KV pulled by a decode
worker). Once its first decode output arrives, that worker holds the prompt's full blocks in
its prefix cache (a pull registers them there), so choices 1..n-1 are pinned to the same
worker and prefilled there: each hits those blocks by hash and computes only the prompt's
last partial block before sampling its own first token. The prefill pool sees one prefill
(StatsResponse.prefills_served); every choice samples on its own (a seed, if given, is offset
by the choice's index so seeded choices differ and stay reproducible).

Events come out as (choice index, event) in arrival order; any choice's failure ends them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

from router.dispatcher import Dispatcher, GenerateRequest
from router.token_events import TokenEvent

_END = object()


def choice_request(req: GenerateRequest, index: int, decode_worker_id: str | None
                   ) -> GenerateRequest:
    seed = req.params.seed
    params = req.params if seed is None else dataclasses.replace(req.params, seed=seed + index)
    return dataclasses.replace(req, request_id=f"{req.request_id}-{index}", params=params,
                               decode_worker_id=decode_worker_id)


async def generate_choices(dispatcher: Dispatcher, req: GenerateRequest, n: int
                           ) -> AsyncIterator[tuple[int, TokenEvent]]:
    queue: asyncio.Queue = asyncio.Queue()
    tasks: list[asyncio.Task] = []

    async def run(index: int, r: GenerateRequest) -> None:
        try:
            async with contextlib.aclosing(dispatcher.generate(r)) as events:
                async for event in events:
                    queue.put_nowait((index, event))
        except BaseException as e:  # noqa: B036 - handed to the consumer, which re-raises
            queue.put_nowait((index, e))
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            queue.put_nowait((index, _END))

    def start_rest(worker_id: str | None) -> None:
        for i in range(1, n):
            tasks.append(asyncio.ensure_future(run(i, choice_request(req, i, worker_id))))

    tasks.append(asyncio.ensure_future(run(0, req)))
    placement: str | None = None
    first_events = 0  # of choice 0, until the rest are started
    open_choices = n
    try:
        while open_choices:
            index, item = await queue.get()
            if item is _END:
                open_choices -= 1
                if index == 0 and len(tasks) == 1:
                    start_rest(placement)  # choice 0 ended early (e.g. at its first token)
                continue
            if isinstance(item, BaseException):
                raise item
            if index == 0 and len(tasks) == 1:
                first_events += 1
                placement = placement or dispatcher.placements.get(req.request_id)
                if first_events == 2 or item.finish_reason:
                    start_rest(placement)  # choice 0's KV is now on its decode worker
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
