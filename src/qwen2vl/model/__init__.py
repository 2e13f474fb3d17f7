"""The Qwen2-VL network: vision tower, merger, M-RoPE decoder and the HF-compatible forward."""

from .qwen2vl import Qwen2VLModel

__all__ = ["Qwen2VLModel"]
