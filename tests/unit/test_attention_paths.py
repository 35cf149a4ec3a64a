"""Every attention path over the paged cache agrees with plain causal attention over each
sequence's whole context: chunks after cached context, and the decoding sequences of a step
that also prefills, batched into one call."""

import torch
import torch.nn.functional as F

from engine.model.layers.attention import AttentionMetadata, paged_attention, write_kv

HEADS, KV_HEADS, DIM, BLOCK = 4, 2, 8, 4


def reference(q_rows: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor) -> torch.Tensor:
    """q_rows [n, H, D] are the last n positions of a context k_all/v_all [L, KV, D]."""
    n, length = q_rows.shape[0], k_all.shape[0]
    group = HEADS // KV_HEADS
    k = k_all.repeat_interleave(group, 1).transpose(0, 1)  # [H, L, D]
    v = v_all.repeat_interleave(group, 1).transpose(0, 1)
    mask = torch.arange(length)[None, :] <= torch.arange(length - n, length)[:, None]
    o = F.scaled_dot_product_attention(q_rows.transpose(0, 1), k, v, attn_mask=mask,
                                       scale=DIM ** -0.5)
    return o.transpose(0, 1)


def test_mixed_step_matches_per_sequence_reference():
    g = torch.Generator().manual_seed(0)
    # (context before this step, new tokens this step): a chunk after cached context, two
    # decoding sequences, and a fresh prompt.
    shapes = [(9, 6), (13, 1), (5, 1), (0, 7)]
    blocks_per_seq = 6
    k_cache = torch.zeros(len(shapes) * blocks_per_seq, KV_HEADS, BLOCK, DIM)
    v_cache = torch.zeros_like(k_cache)
    tables, seq_lens, loc, slots, qs, ks, vs, refs = [], [], [0], [], [], [], [], []
    for i, (cached, new) in enumerate(shapes):
        length = cached + new
        table = list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq))
        k_all = torch.randn(length, KV_HEADS, DIM, generator=g)
        v_all = torch.randn(length, KV_HEADS, DIM, generator=g)
        cached_slots = torch.tensor([table[p // BLOCK] * BLOCK + p % BLOCK for p in range(cached)],
                                    dtype=torch.long)
        write_kv(k_cache, v_cache, k_all[:cached], v_all[:cached], cached_slots, BLOCK)
        q = torch.randn(new, HEADS, DIM, generator=g)
        refs.append(reference(q, k_all, v_all))
        qs.append(q), ks.append(k_all[cached:]), vs.append(v_all[cached:])
        slots += [table[p // BLOCK] * BLOCK + p % BLOCK for p in range(cached, length)]
        tables.append(table), seq_lens.append(length), loc.append(loc[-1] + new)
    q, k, v = torch.cat(qs), torch.cat(ks), torch.cat(vs)
    slot_mapping = torch.tensor(slots, dtype=torch.long)
    write_kv(k_cache, v_cache, k, v, slot_mapping, BLOCK)
    expected = torch.cat(refs)

    def run(batch_decodes: bool) -> torch.Tensor:
        meta = AttentionMetadata(slot_mapping, loc, seq_lens, tables, BLOCK)
        if batch_decodes:
            decoding = [1, 2]
            meta.block_table_tensor = torch.tensor([tables[b] for b in decoding],
                                                   dtype=torch.int32)
            meta.seq_lens_tensor = torch.tensor([seq_lens[b] for b in decoding],
                                                dtype=torch.int32)
            meta.decode_seqs = frozenset(decoding)
            meta.decode_rows = torch.tensor([loc[b] for b in decoding])
        return paged_attention(q, k, v, k_cache, v_cache, meta, DIM ** -0.5)

    torch.testing.assert_close(run(batch_decodes=False), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run(batch_decodes=True), expected, atol=1e-5, rtol=1e-5)
