"""bfloat16 weights (the checkpoint's own precision) multiplied in float32 arithmetic, on the CPU.

A bfloat16 number widens to float32 exactly, so `x @ W.float().T` with float32 `x` is the float32
model's own product: keeping the decoder's weights in bfloat16 halves the bytes each decode step
streams without changing any product, only the order of float32 sums.

Owns: `bf16_project`, which picks the C++ kernel (matvec.py) for a few rows (decode) and
widens the weights block by block into a small float32 buffer for many rows (prefill), where the
CPU's float32 GEMM does the arithmetic (`product_in_blocks`, which int4's prefill shares).
Does not own: which parameters stay bfloat16 (loading.py) or the dispatch on dtypes (layers.project).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .matvec import KERNEL_MAX_ROWS, kernel

BLOCK_BYTES = 8 << 20  # float32 size of one widened block: measured as fast as one whole float32 GEMM


def bf16_project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] float32 times weight [N, K] bfloat16, transposed, plus bias: [..., N] float32."""
    rows, width = x.numel() // x.shape[-1] if x.numel() else 0, x.shape[-1]
    flat = x.reshape(rows, width)  # [M, K]
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        out = F.linear(flat, weight.float())
    elif rows <= KERNEL_MAX_ROWS and (compiled := kernel()) is not None:
        out = compiled.bf16_matvec(flat.contiguous(), weight.contiguous())
    else:
        out = widened_in_blocks(flat, weight)
    out = out.reshape(*x.shape[:-1], weight.shape[0])
    return out if bias is None else out + bias


def widened_in_blocks(flat: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """flat [M, K] @ weight [N, K]^T, widening BLOCK_BYTES of weight rows at a time. Returns [M, N]."""
    n, k = weight.shape
    buffer = torch.empty(min(max(16, BLOCK_BYTES // (4 * k)), n), k, dtype=torch.float32)
    return product_in_blocks(flat, n, lambda start, stop: buffer[:stop - start].copy_(weight[start:stop]))


def product_in_blocks(flat: torch.Tensor, n: int,
                      rows: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """flat [M, K] @ W^T for weights W [N, K] held in some narrower form, `rows(start, stop)` giving
    W[start:stop] in float32, BLOCK_BYTES of them at a time. Returns [M, N]."""
    step = max(16, BLOCK_BYTES // (4 * flat.shape[1]))
    out = torch.empty(flat.shape[0], n, dtype=torch.float32)
    for start in range(0, n, step):
        stop = min(start + step, n)
        torch.mm(flat, rows(start, stop).T, out=out[:, start:stop])  # BLAS writes the column slice in place
    return out
