"""The paged decode kernel's merge done by the last split of each head group (``fused_merge``)
against the two-pass kernel: the same output to the last bit (the same fp32 sums in the same
order), one split writing its output itself, and the counters back at zero after every launch
(also across CUDA graph replays, where a counter left at 1 would merge too early)."""

import pytest
import torch

pytestmark = pytest.mark.gpu


def kernel():
    from engine.kernels import decode_attention  # Triton: only where CUDA is

    return decode_attention


def case(dtype, num_seqs=6, hq=32, hkv=8, d=128, block=16, blocks=512):
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    cache = torch.randn(blocks, hkv, 2, block, d, generator=g, device=dev).to(dtype)
    k_cache, v_cache = cache[:, :, 0], cache[:, :, 1]
    lens = torch.tensor([1, 17, 1024, 333, 64, 900][:num_seqs], dtype=torch.int32, device=dev)
    max_blocks = (int(lens.max()) + block - 1) // block
    tables = torch.randint(0, blocks, (num_seqs, max_blocks), generator=g, device=dev,
                           dtype=torch.int32)
    q = torch.randn(num_seqs, hq, d, generator=g, device=dev, dtype=torch.bfloat16)
    return q, k_cache, v_cache, tables, lens, d ** -0.5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
@pytest.mark.parametrize("splits", [1, 2, 7, 32])
def test_fused_merge_equals_the_two_pass_kernel(dtype, splits):
    paged_decode_attention = kernel().paged_decode_attention
    q, k, v, tables, lens, scale = case(dtype)
    two_pass = paged_decode_attention(q, k, v, tables, lens, scale, splits, fused_merge=False)
    for _ in range(3):
        fused = paged_decode_attention(q, k, v, tables, lens, scale, splits, fused_merge=True)
        assert torch.equal(fused, two_pass)
    torch.cuda.synchronize()
    assert not kernel()._counter_buffer(q.device).any()


def test_fused_merge_replays_in_a_cuda_graph():
    paged_decode_attention = kernel().paged_decode_attention
    q, k, v, tables, lens, scale = case(torch.bfloat16)
    expected = paged_decode_attention(q, k, v, tables, lens, scale, 16, fused_merge=False)
    out = paged_decode_attention(q, k, v, tables, lens, scale, 16, fused_merge=True)  # warm
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = paged_decode_attention(q, k, v, tables, lens, scale, 16, fused_merge=True)
    for _ in range(5):
        out.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, expected)
    assert not kernel()._counter_buffer(q.device).any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_one_split_writes_what_the_merged_splits_give(dtype):
    """One split stores its output without a merge: the same attention as 4 merged splits,
    up to the order of the fp32 sums (and one bf16 rounding)."""
    paged_decode_attention = kernel().paged_decode_attention
    q, k, v, tables, lens, scale = case(dtype)
    one = paged_decode_attention(q, k, v, tables, lens, scale, 1)
    four = paged_decode_attention(q, k, v, tables, lens, scale, 4, fused_merge=False)
    torch.testing.assert_close(one.float(), four.float(), atol=2e-2, rtol=2e-2)
