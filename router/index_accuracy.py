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

    def record(self, predicted: int, realised: int) -> None:
        self.samples.append((predicted, realised))
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
        return sum(p == r for p, r in self.samples) / len(self.samples)

    def verdict(self) -> str:
        n = len(self.samples)
        if n < self.min_samples:
            return "ok"
        over = sum(p > r for p, r in self.samples) / n
        under = sum(p < r for p, r in self.samples) / n
        if over >= self.warn_share:
            return "over-predicting"
        if under >= self.warn_share:
            return "under-predicting"
        return "ok"


_ADVICE = {
    "over-predicting": "the index promised cache hits the workers no longer had; their KV "
                       "events arrive late or are lost (check Redis and the event streams)",
    "under-predicting": "workers report cache hits the index never heard of; are the workers "
                        "publishing KV events to this router's Redis and key prefix?",
}
