"""The paged decode kernel with one split (no merge pass: the program writes the output) and
with FP8 caches' narrower token tiles, against the same attention over merged splits."""

import pytest
import torch

pytestmark = pytest.mark.gpu


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
@pytest.mark.parametrize("tokens", [None, 32, 64])
def test_one_split_writes_what_the_merged_splits_give(dtype, tokens):
    """Up to the order of the fp32 sums (and one bf16 rounding)."""
    from engine.kernels.decode_attention import paged_decode_attention

    q, k, v, tables, lens, scale = case(dtype)
    one = paged_decode_attention(q, k, v, tables, lens, scale, 1, tokens=tokens)
    four = paged_decode_attention(q, k, v, tables, lens, scale, 4, tokens=64)
    torch.testing.assert_close(one.float(), four.float(), atol=2e-2, rtol=2e-2)
