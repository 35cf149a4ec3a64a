"""The inference engine both worker roles share."""

from engine.config import EngineConfig
from engine.llm import LLM, RequestOutput
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams

__all__ = ["LLM", "EngineConfig", "LLMEngine", "RequestOutput", "SamplingParams"]
