"""Quantization transforms applied to a built model (gpt-fast style)."""

from .int4 import Int4Linear
from .int8 import Int8Linear
from .transform import quantize

__all__ = ["Int4Linear", "Int8Linear", "quantize"]
