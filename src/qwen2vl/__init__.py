"""qwen2vl: Qwen2-VL vision-language models in plain PyTorch, exact to the reference."""

from .config import ModelConfig, TextConfig, VisionConfig
from .errors import CheckpointError, ConfigError, InvalidInputError, ModelNotFoundError, Qwen2VLError
from .loading import load_model
from .model import Qwen2VLModel

__all__ = [
    "CheckpointError", "ConfigError", "InvalidInputError", "ModelConfig", "ModelNotFoundError",
    "Qwen2VLError", "Qwen2VLModel", "TextConfig", "VisionConfig", "load_model",
]
