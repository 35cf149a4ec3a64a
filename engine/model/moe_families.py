"""The mixture-of-experts families: Qwen3-MoE, Qwen2-MoE and Mixtral.

Their attention, norms and residual stream are the Llama family's (engine/model/llama.py);
only the MLP differs: a layer is sparse (engine/model/layers/moe.py) unless the config keeps it
dense (Qwen's ``mlp_only_layers`` / ``decoder_sparse_step``). Parameter names equal
transformers 5's in-memory names (``mlp.experts.gate_up_proj`` stacked over experts,
``mlp.gate.weight`` the router), so ``hf_state_dict`` loads into the HF model as is.
"""

from __future__ import annotations

from engine.model.config import ModelConfig
from engine.model.layers.moe import SparseMoeBlock
from engine.model.llama import LlamaForCausalLM


class MoEForCausalLM(LlamaForCausalLM):
    def __init__(self, config: ModelConfig, max_positions: int):
        assert config.moe is not None, "MoEForCausalLM needs config.moe"
        super().__init__(config, max_positions)
        # Built on the meta device by the loaders, so the dense MLPs replaced here cost nothing.
        for idx, layer in enumerate(self.model.layers):
            if config.moe.is_sparse(idx):
                layer.mlp = SparseMoeBlock(config)
