"""The decode GEMV kernel against F.linear (CUDA only)."""

import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("shape", [(4096, 4096), (6144, 4096), (4096, 14336), (1024, 512)])
def test_gemv_matches_linear(shape):
    from engine.kernels.gemv import DecodeLinear, applies

    n, k = shape
    torch.manual_seed(0)
    linear = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
    assert applies(linear)
    linear.__class__ = DecodeLinear
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    want = F.linear(x.float(), linear.weight.float())  # fp32 reference
    got = linear(x).float()
    # fp32 accumulation, one rounding to bf16: within a bf16 step of the exact sum.
    assert ((got - want).abs() <= 2 ** -7 * want.abs() + 1e-3).all()
    batch = torch.randn(3, k, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(linear(batch), F.linear(batch, linear.weight))  # rows > 1: cuBLAS


def test_gemv_does_not_apply_to_fp32_or_biased_or_ragged():
    from engine.kernels.gemv import applies

    assert not applies(torch.nn.Linear(512, 64, bias=False, dtype=torch.float32))
    assert not applies(torch.nn.Linear(512, 64, bias=True, dtype=torch.bfloat16))
    assert not applies(torch.nn.Linear(500, 64, bias=False, dtype=torch.bfloat16))
