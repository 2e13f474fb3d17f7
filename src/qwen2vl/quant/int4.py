"""4-bit weights for the decoder: groups of 32 weights along the input with one float32 scale each
(4.5 bits a weight, llama.cpp's Q4_0 layout of the numbers), run by our C++ kernel.

Decode streams every decoder weight once per token, so it runs at the rate bytes come from memory:
4.5 bits instead of bfloat16's 16 is what makes it faster. The kernel (int4_matvec.cpp) rounds each
32 activations to int8 too and forms the products in integers, as llama.cpp does. Many rows
(prefill) unpack the weights to float32 a block of rows at a time and use the float32 GEMM.

Owns: `Int4Linear` (packing a float linear's weights, the product). Does not own: which layers are
swapped or how checkpoints record it (transform.py), building the kernel (model/matvec.py).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from ..model.bf16_weights import product_in_blocks
from ..model.matvec import KERNEL_MAX_ROWS, compiled

GROUP = 32  # weights sharing one scale, along the input dimension
PACK_BYTES = 64 << 20  # float32 size of the rows packed at a time when quantizing


@functools.cache
def kernel():
    """The 4-bit kernel, or None where it cannot be had (looked up once: it is asked on every product)."""
    return compiled("qwen2vl_int4", Path(__file__).with_name("int4_matvec.cpp"),
                    "4-bit weights are unpacked to float32 by torch instead (same results, much slower)")


def pack(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] (K a multiple of 32) -> packed [N, K/2] uint8 and scales [N, K/32] float32.

    Each group's largest-magnitude weight maps to -8 exactly (its scale is that weight / -8) and the
    others round to the nearest of the 16 steps, clamped at +7. Byte j of a group holds weights j
    (low nibble) and j + 16 (high nibble), each stored as q + 8."""
    n, k = weight.shape
    groups = weight.detach().float().reshape(n, k // GROUP, GROUP)  # [N, G, 32]
    extreme = groups.gather(-1, groups.abs().argmax(-1, keepdim=True))  # [N, G, 1]
    scale = extreme / -8.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    stored = (torch.round(groups / scale).clamp_(-8, 7) + 8).to(torch.uint8)  # [N, G, 32]
    packed = stored[..., : GROUP // 2] | (stored[..., GROUP // 2:] << 4)  # [N, G, 16]
    return packed.reshape(n, k // 2).contiguous(), scale.squeeze(-1).contiguous()


def unpack(packed: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The float32 weights [N, K] that packed [N, K/2] and scales [N, K/32] stand for."""
    compiled_kernel = kernel()
    if compiled_kernel is not None:
        return compiled_kernel.int4_unpack(packed, scales)
    n, groups = scales.shape
    nibbles = packed.reshape(n, groups, GROUP // 2)  # [N, G, 16]
    stored = torch.cat([nibbles & 0x0F, nibbles >> 4], dim=-1).float() - 8.0  # [N, G, 32]
    return (stored * scales[..., None]).reshape(n, groups * GROUP)


class Int4Linear(nn.Module):
    """y = x W^T + b with W in 4 bits (groups of 32, float32 scales); x float32 for the product."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        if in_features % GROUP:
            raise ValueError(f"Int4Linear needs in_features divisible by {GROUP}, got {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.weight_packed = nn.Parameter(torch.zeros(out_features, in_features // 2, dtype=torch.uint8),
                                          requires_grad=False)
        self.weight_scale = nn.Parameter(torch.ones(out_features, in_features // GROUP), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int4Linear":
        module = cls(linear.in_features, linear.out_features, linear.bias is not None)
        step = max(1, PACK_BYTES // (4 * linear.in_features))  # rows packed at a time: bounded float32 temporaries
        with torch.no_grad():
            for start in range(0, linear.out_features, step):
                packed, scales = pack(linear.weight[start:start + step])
                module.weight_packed[start:start + step] = packed
                module.weight_scale[start:start + step] = scales
            if linear.bias is not None:
                module.bias.copy_(linear.bias.detach().float())
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype, width = x.dtype, x.shape[-1]
        rows = x.numel() // width if x.numel() else 0
        flat = x.reshape(rows, width).float().contiguous()  # [M, K]
        compiled_kernel = kernel()
        if rows <= KERNEL_MAX_ROWS and compiled_kernel is not None:
            out = compiled_kernel.int4_matvec(flat, self.weight_packed, self.weight_scale)
        else:
            out = product_in_blocks(flat, self.out_features, lambda start, stop: unpack(
                self.weight_packed[start:stop], self.weight_scale[start:stop]))
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features).to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {GROUP}"
