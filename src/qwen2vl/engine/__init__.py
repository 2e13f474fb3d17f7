"""Generation: sampling, request state, continuous batching, KV cache, model runner, public API."""

from .engine import Engine, StepOutput, Usage
from .llm import Qwen2VL, Result
from .sampling import GenerationDefaults, SamplingParams

__all__ = ["Engine", "GenerationDefaults", "Qwen2VL", "Result", "SamplingParams", "StepOutput", "Usage"]
