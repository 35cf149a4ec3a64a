"""Closes the loop on the prefix index: compares each remote prefill's predicted cached tokens
with what the prefill worker reports, exports the accuracy, and warns loudly when the index
looks stale (workers evicting faster than events arrive, or not publishing events at all)."""

from __future__ import annotations

import logging
import time
from collections import deque

log = logging.getLogger(__name__)


class IndexAccuracy:
    def __init__(self, window: int = 64, warn_share: float = 0.5, min_samples: int = 16,
                 warn_every_s: float = 60.0):
        self.samples: deque[tuple[int, int]] = deque(maxlen=window)
        self.warn_share = warn_share
        self.min_samples = min_samples
        self.warn_every_s = warn_every_s
        self._last_warning = 0.0
        self.last_verdict = "ok"
        # Samples in the window that predicted exactly / too many / too few cached tokens,
        # kept as they enter and leave (recounting the window cost ~3 passes a prefill).
        self._tally = [0, 0, 0]

    def record(self, predicted: int, realised: int) -> None:
        if len(self.samples) == self.samples.maxlen:
            self._tally[_kind(*self.samples[0])] -= 1
        self.samples.append((predicted, realised))
        self._tally[_kind(predicted, realised)] += 1
        verdict = self.verdict()
        if verdict != "ok" and time.time() - self._last_warning > self.warn_every_s:
            self._last_warning = time.time()
            log.warning("PREFIX INDEX LOOKS STALE (%s) over the last %d prefills: %s",
                        verdict, len(self.samples), _ADVICE[verdict])
        self.last_verdict = verdict

    @property
    def exact_share(self) -> float:
        if not self.samples:
            return 1.0
        return self._tally[_EXACT] / len(self.samples)

    def verdict(self) -> str:
        n = len(self.samples)
        if n < self.min_samples:
            return "ok"
        if self._tally[_OVER] / n >= self.warn_share:
            return "over-predicting"
        if self._tally[_UNDER] / n >= self.warn_share:
            return "under-predicting"
        return "ok"


_EXACT, _OVER, _UNDER = 0, 1, 2


def _kind(predicted: int, realised: int) -> int:
    return _EXACT if predicted == realised else _OVER if predicted > realised else _UNDER


_ADVICE = {
    "over-predicting": "the index promised cache hits the workers no longer had; their KV "
                       "events arrive late or are lost (check Redis and the event streams)",
    "under-predicting": "workers report cache hits the index never heard of; are the workers "
                        "publishing KV events to this router's Redis and key prefix?",
}
