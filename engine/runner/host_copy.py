"""Small host lists onto the device without waiting for the GPU."""

from __future__ import annotations

import torch


def to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``values`` as a tensor on ``device``. On CUDA the copy is staged in pinned memory and
    does not block: a pageable copy would make the host wait for all queued GPU work."""
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)
