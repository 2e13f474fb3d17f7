"""int8 weights run by fbgemm's dynamic-quantised linear (CPU).

Owns: `Int8Linear` (weights int8 with one float scale per output channel, activations quantised
per call by fbgemm, in 7 bits on CPUs without AVX-512 VNNI, where 8 bits saturate). Does not own: which layers are swapped or how checkpoints record it
(transform.py).
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn


class Int8Linear(nn.Module):
    """y = x W^T + b with W stored as int8 rows and per-row scales."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_int8 = nn.Parameter(torch.zeros(out_features, in_features, dtype=torch.int8), requires_grad=False)
        self.weight_scale = nn.Parameter(torch.ones(out_features, dtype=torch.float32), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self._packed = None  # fbgemm's packed form, derived from the parameters on first use

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127.0  # symmetric, one scale per output row
        with torch.no_grad():
            module.weight_int8.copy_(torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8))
            module.weight_scale.copy_(scale)
            if linear.bias is not None:
                module.bias.copy_(linear.bias.detach().float())
        return module

    def _pack(self):
        if self._packed is None:
            zero = torch.zeros(self.out_features, dtype=torch.long)
            with warnings.catch_warnings():  # fbgemm's packing takes a quantized tensor, a deprecated type
                warnings.simplefilter("ignore", UserWarning)
                quantized = torch._make_per_channel_quantized_tensor(self.weight_int8.data,
                                                                     self.weight_scale.data.double(), zero, 0)
            bias = None if self.bias is None else self.bias.data.float()
            self._packed = torch.ops.quantized.linear_prepack(quantized, bias)
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        out = torch.ops.quantized.linear_dynamic(x.float().contiguous(), self._pack(),
                                                 activations_need_reduced_range())
        return out.to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


@lru_cache(maxsize=1)
def activations_need_reduced_range() -> bool:
    """Whether fbgemm must quantise activations to 7 bits (its reduce_range) on this CPU.

    Without AVX-512 VNNI, fbgemm multiplies uint8 activations by int8 weights with vpmaddubsw, which
    adds each pair of products into a saturating int16: with 8-bit activations the outputs were 15%
    off on an AVX2 CPU, with 7 bits 1.8%. VNNI sums in int32 and keeps the full 8 bits. Unknown CPUs
    (no /proc/cpuinfo) take the safe 7 bits."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True
    return "avx512_vnni" not in flags
