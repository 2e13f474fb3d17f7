"""Inputs: conversations with images and videos -> the model's tensors, as the reference makes them."""

from .chat import ChatTemplate, MediaItem, normalize_conversation
from .image import VisionSettings, smart_resize
from .limits import MediaLimits
from .processor import Processor

__all__ = ["ChatTemplate", "MediaItem", "MediaLimits", "Processor", "VisionSettings", "normalize_conversation",
           "smart_resize"]
