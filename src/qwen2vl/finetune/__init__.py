"""Fine-tuning: LoRA and full SFT on image/video conversations, PEFT-format adapters, torchrun DDP."""

from .api import finetune
from .checkpoint import load_trained_adapter
from .lora import LoraSettings
from .trainer import TrainSettings

__all__ = ["LoraSettings", "TrainSettings", "finetune", "load_trained_adapter"]
