"""A scheduled batch as the runner's input: token ids, positions, KV slots, block tables.

Both decode loops build their steps here (the engine's synchronous step and the overlapped
one), so what a row of the model's input means is defined once.
"""

from __future__ import annotations

from engine.core.scheduler import ScheduledBatch
from engine.runner.model_runner import StepInput


def build_step_input(batch: ScheduledBatch, block_size: int) -> StepInput:
    """The forward pass over each sequence's next ``num_new_tokens`` tokens; logits are asked
    for only where a sequence's last token is computed (it then needs a sampled token)."""
    bs = block_size
    token_ids, positions, slots, loc, seq_lens, tables, logits_rows = [], [], [], [0], [], [], []
    for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
        start = seq.num_computed_tokens
        end = start + n
        token_ids.extend(seq.all_token_ids[start:end])
        positions.extend(range(start, end))
        slots.extend(seq.block_ids[p // bs] * bs + p % bs for p in range(start, end))
        loc.append(loc[-1] + n)
        seq_lens.append(end)
        tables.append(seq.block_ids)
        if end == seq.num_tokens:
            logits_rows.append(loc[-1] - 1)
    return StepInput(token_ids, positions, slots, loc, seq_lens, tables, logits_rows)
