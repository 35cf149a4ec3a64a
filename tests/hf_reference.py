"""The reference implementation: HF transformers on the same weights (fp32, CPU)."""

from __future__ import annotations

import torch

from engine.llm_engine import LLMEngine


def hf_model_like(engine: LLMEngine):
    """A transformers model with the engine's architecture and exactly its weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg_dict = engine.model_config.to_hf_dict()
    cfg = AutoConfig.for_model(**cfg_dict)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa")
    state = {k: v.detach().to(torch.float32).cpu() for k, v in engine.runner.model.hf_state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all("rotary" in k for k in missing), missing
    return model.eval()


def hf_logits(model, token_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0].float()


def hf_greedy(model, token_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy continuation that never stops at EOS (like ignore_eos=True)."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([token_ids]), attention_mask=torch.ones(1, len(token_ids), dtype=torch.long),
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0,
            temperature=None, top_p=None, top_k=None,
        )
    return out[0, len(token_ids):].tolist()
