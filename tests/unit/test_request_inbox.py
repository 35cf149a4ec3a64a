"""A request's inbox: outputs taken in batches, and its one deadline timer, armed once and kept
across takes, still ends a wait that outlives it, however the consumer was placed when it
fired; closing the inbox disarms it."""

import asyncio

import pytest

from proto import pdserve_pb2 as pb
from router.request_inbox import OutputsLost, RequestInbox
from router.token_events import merge_outputs


def output(token: int, text: str, finish: str = "") -> pb.RequestOutput:
    return pb.RequestOutput(request_id="r", token_ids=[token], text=text, finish_reason=finish)


def test_takes_batch_what_arrived_and_reuse_one_timer():
    async def main():
        loop = asyncio.get_running_loop()
        inbox = RequestInbox({})
        deadline = loop.time() + 60
        inbox.push(output(1, "a"))
        inbox.push(output(2, "b"))
        assert [o.token_ids[0] for o in await inbox.take(deadline)] == [1, 2]
        loop.call_soon(inbox.push, output(3, "c", "stop"))
        taken = await inbox.take(deadline)  # waited: the timer is armed now
        timer = inbox._timer
        assert [o.token_ids[0] for o in taken] == [3] and timer is not None
        loop.call_soon(inbox.push, output(4, "d"))
        await inbox.take(deadline)
        assert inbox._timer is timer  # the same deadline: not re-armed per take
        inbox.close()
        assert timer.cancelled() and inbox._timer is None

    asyncio.run(main())


def test_a_wait_past_the_deadline_ends_even_if_it_fired_between_takes():
    async def main():
        loop = asyncio.get_running_loop()
        inbox = RequestInbox({})
        deadline = loop.time() + 0.05
        loop.call_soon(inbox.push, output(1, "a"))
        await inbox.take(deadline)  # arms the timer
        await asyncio.sleep(0.1)  # it fires while nobody waits
        with pytest.raises(OutputsLost, match="DEADLINE_EXCEEDED"):
            await asyncio.wait_for(inbox.take(deadline), 2)
        # A later deadline (a migration's new attempt) is armed afresh.
        later = loop.time() + 0.05
        with pytest.raises(OutputsLost, match="DEADLINE_EXCEEDED"):
            await asyncio.wait_for(inbox.take(later), 2)
        inbox.close()

    asyncio.run(main())


def test_merge_outputs_joins_a_batch_up_to_its_finish():
    event, error = merge_outputs([output(1, "a"), output(2, "b", "stop"), output(3, "c")])
    assert (event.token_ids, event.text, event.finish_reason, error) == ([1, 2], "ab", "stop",
                                                                       None)
    single, _ = merge_outputs([output(7, "x")])
    assert single.token_ids == [7] and isinstance(single.token_ids, list)
