"""The L2 prefetch of the next weight (engine/kernels/l2_prefetch.py) moves bytes into the
cache and nothing else: the same engine, its CUDA graphs captured with the prefetches and then
without, gives bit-identical logits and tokens (bf16 dense, FP8 weights with an FP8 KV cache,
MoE; batch 1 through the GEMVs and a 12-row batch through the skinny GEMM and grouped
kernels). A prefetch the hardware rejected (a misaligned address or size) would fault here."""

import pytest
import torch

from tests.gpu.test_pdl import MODELS, outputs_on_and_off

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("model,extra", MODELS)
def test_graphs_with_and_without_l2_prefetch_give_identical_outputs(model, extra, monkeypatch):
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the bulk L2 prefetch needs a Hopper or later GPU")
    from engine.kernels import l2_prefetch  # needs Triton, which CPU installs lack

    monkeypatch.setattr(l2_prefetch, "ENABLED", True)
    assert l2_prefetch.applies(torch.device("cuda")), "prefetch should apply on this GPU"
    with_prefetch, without = outputs_on_and_off(model, extra, l2_prefetch, "ENABLED",
                                                monkeypatch)
    assert with_prefetch == without


def test_plan_covers_the_bytes_once_with_a_slot_a_thread(monkeypatch):
    """Every chunk of the range has exactly one (program, slot), and no program holds fewer
    slots than threads (a smaller tensor would be replicated, each copy prefetching)."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the bulk L2 prefetch needs a Hopper or later GPU")
    from engine.kernels import l2_prefetch

    weight = torch.empty(4096, 4100, dtype=torch.float8_e4m3fn, device="cuda")
    monkeypatch.setattr(l2_prefetch, "ENABLED", True)
    (_, nbytes), flags = l2_prefetch.plan(weight, None, 256, 4, weight)
    assert nbytes == weight.numel() // 16 * 16
    slots, chunk = flags["PF_SLOTS"], flags["PF_CHUNK"]
    assert slots >= 128
    chunks = sorted(p + s * 256 for p in range(256) for s in range(slots)
                    if (p + s * 256) * chunk < nbytes)
    assert chunks == list(range(-(-nbytes // chunk)))
