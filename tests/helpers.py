"""Small helpers shared by tests (no fakes)."""

from __future__ import annotations

import torch

from engine.llm_engine import LLMEngine
from engine.runner.model_runner import StepInput


def engine_prompt_logits(engine: LLMEngine, token_ids: list[int]) -> torch.Tensor:
    """Logits at every prompt position, computed by the engine's paged path in one step.

    Writes blocks 0.. directly, bypassing the pool, so the prefix cache is dropped first:
    cached blocks would otherwise keep hashes of contents this overwrites.
    """
    bs = engine.config.block_size
    n = len(token_ids)
    num_blocks = (n + bs - 1) // bs
    assert engine.pool.reset_prefix_cache(), "engine must be idle"
    step = StepInput(
        token_ids=list(token_ids),
        positions=list(range(n)),
        slot_mapping=list(range(n)),
        query_start_loc=[0, n],
        seq_lens=[n],
        block_tables=[list(range(num_blocks))],
        logits_indices=list(range(n)),
    )
    return engine.runner.execute(step).float()


def random_prompts(num: int, vocab: int, min_len: int, max_len: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (num,), generator=g).tolist()
    # Skip the low ids that tiny configs use as EOS so prompts are ordinary text.
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]
