"""qwen2vl: Qwen2-VL vision-language models in plain PyTorch, exact to the reference."""

from .config import ModelConfig, TextConfig, VisionConfig
from .engine import Qwen2VL, Result, SamplingParams, Usage
from .errors import CheckpointError, ConfigError, InvalidInputError, ModelNotFoundError, Qwen2VLError
from .loading import load_model
from .model import Qwen2VLModel

__all__ = [
    "CheckpointError", "ConfigError", "InvalidInputError", "ModelConfig", "ModelNotFoundError", "Qwen2VL",
    "Qwen2VLError", "Qwen2VLModel", "Result", "SamplingParams", "TextConfig", "Usage", "VisionConfig", "load_model",
]
