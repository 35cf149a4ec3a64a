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


@pytest.mark.parametrize("rows", [2, 64])
@pytest.mark.parametrize("n,k,tiles", [
    (4096, 14336, dict(block_n=128, block_k=128, num_warps=4, num_stages=5, split_k=4)),
    (6144, 4096, dict(block_n=64, block_k=256, num_warps=4, num_stages=4, split_k=2)),
    (208, 1024, dict(block_n=64, block_k=128, num_warps=4, num_stages=3, split_k=8))])
def test_split_k_matches_scaled_mm_eager_and_in_a_graph(rows, n, k, tiles):
    """Split along K, the last split of each band adding the others' partial sums: the same
    result as _scaled_mm within the bound above, on every call (the arrival counters go back
    to zero) and on every replay of a captured graph; a ragged last band (n=208) included."""
    from engine.kernels.fp8_quant import quantize_rows
    from engine.kernels.fp8_skinny_gemm import _counters, skinny_gemm
    from engine.model.layers.fp8_linear import quantize_per_row

    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(rows + n)
    w, ws = quantize_per_row(0.02 * torch.randn(n, k, generator=g, device=dev))
    ws = ws.reshape(1, -1).contiguous()
    bias = torch.randn(n, generator=g, device=dev).to(torch.bfloat16)
    x = torch.randn(rows, k, generator=g, device=dev).to(torch.bfloat16)
    xq, xs = quantize_rows(x, pad_rows_to=16)
    ref = torch._scaled_mm(xq, w.t(), scale_a=xs, scale_b=ws, bias=bias,
                           out_dtype=torch.bfloat16)[:rows].float()
    bound = 2 * 2 ** -7 * ref.abs().max()
    for _ in range(3):
        got = skinny_gemm(xq[:rows], xs, w, ws, bias, torch.bfloat16, **tiles).float()
        assert (got - ref).abs().max() <= bound
    assert int(_counters(dev).abs().sum()) == 0
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = skinny_gemm(xq[:rows], xs, w, ws, bias, torch.bfloat16, **tiles)
    for _ in range(3):
        out.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert (out.float() - ref).abs().max() <= bound
    assert int(_counters(dev).abs().sum()) == 0
