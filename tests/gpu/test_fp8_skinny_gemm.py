"""The FP8 GEMM for 2-64 rows against ``torch._scaled_mm`` on the same e4m3 operands and
row-wise scales: the same products in fp32, summed in another order, so within two bf16
roundings of the output's scale; and the FP8 linear taking that path at those row counts."""

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("rows", [2, 17, 64])
@pytest.mark.parametrize("n,k", [(96, 4096), (4096, 14336), (28672, 512)])
def test_skinny_gemm_matches_scaled_mm(rows, n, k):
    from engine.kernels.fp8_quant import quantize_rows
    from engine.kernels.fp8_skinny_gemm import skinny_gemm
    from engine.kernels.gemv_tiles import skinny_tiles
    from engine.model.layers.fp8_linear import quantize_per_row

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(rows)
    w, ws = quantize_per_row(0.02 * torch.randn(n, k, generator=g, device=dev))
    ws = ws.reshape(1, -1).contiguous()
    bias = torch.randn(n, generator=g, device=dev).to(torch.bfloat16)
    x = torch.randn(rows, k, generator=g, device=dev).to(torch.bfloat16)
    xq, xs = quantize_rows(x, pad_rows_to=16)
    ref = torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=ws, bias=bias,
                           out_dtype=torch.bfloat16)[:rows].float()
    got = skinny_gemm(xq[:rows], xs, w, ws, bias, torch.bfloat16,
                      **(skinny_tiles(n, k) or {})).float()
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= 2 * 2 ** -7 * ref.abs().max()
