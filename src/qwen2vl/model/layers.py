"""Building blocks shared by the vision tower and the decoder.

Owns: RMSNorm, the SwiGLU MLP, activation lookup, and the attention kernels
(causal/padded decoder attention and block-diagonal vision attention).
Does not own: projections, rotary embeddings or caches.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .bf16_weights import bf16_project


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "quick_gelu": quick_gelu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(f"config.json: unsupported activation '{name}' (known: {', '.join(_ACTIVATIONS)})") from None


SMALL_BATCH_ROWS = 16


def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias. For a few rows (decode steps) on the CPU it is computed as
    (weight @ x.T).T: the same products and sums, but a GEMM shape the CPU BLAS runs near memory
    speed, where its small-M path streams the weights two to three times slower. bfloat16 weights
    with float32 activations are multiplied in float32 (bf16_weights)."""
    if weight.dtype == torch.bfloat16 and x.dtype == torch.float32 and x.device.type == "cpu":
        return bf16_project(x, weight, bias)
    rows = x.numel() // x.shape[-1] if x.numel() else 0
    if 1 < rows <= SMALL_BATCH_ROWS and x.device.type == "cpu":
        out = (weight @ x.reshape(rows, -1).T).T.reshape(*x.shape[:-1], weight.shape[0])
        return out if bias is None else out + bias
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear whose few-row products take the fast path of `project`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return project(x, self.weight, self.bias)


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, scaled in the input dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class SwiGLU(nn.Module):
    """down(act(gate(x)) * up(x)), no biases."""

    def __init__(self, dim: int, hidden: int, act: str = "silu"):
        super().__init__()
        self.gate_proj = Linear(dim, hidden, bias=False)
        self.up_proj = Linear(dim, hidden, bias=False)
        self.down_proj = Linear(hidden, dim, bias=False)
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[tuple[int, int]]) -> torch.Tensor:
    """Bidirectional attention inside consecutive segments, never across them.

    q, k, v: [N, heads, head_dim] for all patches of all items, concatenated.
    lengths: (count, length) runs: `count` consecutive segments of `length` tokens each
    (one run per image or video: t frames of h*w patches). Each run is one batched SDPA
    call, so no N x N mask is ever built.
    Returns [N, heads, head_dim].
    """
    out = torch.empty_like(q)
    start = 0
    for count, length in lengths:
        end = start + count * length
        # [count*length, H, D] -> [count, H, length, D]
        def blocks(x: torch.Tensor) -> torch.Tensor:
            return x[start:end].view(count, length, *x.shape[1:]).transpose(1, 2)

        attended = F.scaled_dot_product_attention(blocks(q), blocks(k), blocks(v))
        out[start:end] = attended.transpose(1, 2).reshape(end - start, *q.shape[1:])
        start = end
    return out


def causal_padded_mask(key_valid: torch.Tensor, query_offset: int, query_len: int) -> torch.Tensor | None:
    """Boolean attention mask [B, 1, Tq, Tk] (True = may attend), or None when plain causal suffices.

    key_valid: [B, Tk] bool, False on padding. Query i sits at key index query_offset + i.
    A padded query that could see nothing is allowed to see itself, so no row is all-False
    (its output is never used, but it stays finite).
    """
    batch, key_len = key_valid.shape
    if bool(key_valid.all()) and query_offset == 0 and query_len == key_len:
        return None
    device = key_valid.device
    query_index = torch.arange(query_offset, query_offset + query_len, device=device)
    key_index = torch.arange(key_len, device=device)
    causal = key_index[None, :] <= query_index[:, None]  # [Tq, Tk]
    mask = causal[None] & key_valid[:, None, :]  # [B, Tq, Tk]
    mask |= (key_index[None, :] == query_index[:, None])[None]
    return mask[:, None]
