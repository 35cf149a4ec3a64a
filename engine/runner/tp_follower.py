"""The loop of tensor-parallel ranks > 0: do whatever rank 0 broadcasts until it sends None.

A follower schedules nothing. Rank 0 sends it each step to execute (and, for an overlapped
step, then the sampled tokens to feed the next one) and, between steps, KV transfer control:
start pulling this rank's head slice of a handle, or report the pulls that ended
(``kv_transfer/tp_fanout.py`` is the other side).
"""

from __future__ import annotations

from engine.runner.model_runner import ModelRunner, StepInput
from kv_transfer.connector import PullResult
from kv_transfer.tp_fanout import ControlMessage


class TPFollower:
    def __init__(self, runner: ModelRunner):
        assert runner.rank > 0 and runner.control is not None
        self.runner = runner
        self.control = runner.control
        # Pulls that failed to start: reported at the next poll, like any failed pull.
        self._failed_pulls: list[PullResult] = []

    def run(self) -> None:
        runner = self.runner
        try:
            while True:
                message = self.control.receive()
                if message is None:
                    return
                if isinstance(message, ControlMessage):
                    self._on_control(message)
                else:
                    assert isinstance(message, StepInput)
                    runner.execute(message)
                    if message.share_sampled:
                        runner.receive_sampled(message)
        finally:
            if runner.connector is not None:
                runner.connector.close()

    def _on_control(self, message: ControlMessage) -> None:
        connector = self.runner.connector
        if message.kind == "pull":
            try:
                connector.start_pull(message.pull_id, message.handle, list(message.src_block_ids),
                                     list(message.dst_block_ids))
            except Exception as e:  # reported at the next poll, like any failed pull
                self._failed_pulls.append(PullResult(message.pull_id, False, str(e)))
        elif message.kind == "poll":
            results = connector.poll_pulls() + self._failed_pulls
            self._failed_pulls = []
            self.control.all_gather(results)
