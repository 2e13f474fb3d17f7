"""bfloat16 weights (the checkpoint's own precision) multiplied in float32 arithmetic, on the CPU.

A bfloat16 number widens to float32 exactly, so `x @ W.float().T` with float32 `x` is the float32
model's own product: keeping the decoder's weights in bfloat16 halves the bytes each decode step
streams without changing any product, only the order of float32 sums.

Owns: building the C++ kernel (`bf16_matvec.cpp`) on first use, or falling back without it (not
x86-64, no compiler, no AVX2); `bf16_project`, which picks the kernel for a few rows (decode) and
widens the weights block by block into a small float32 buffer for many rows (prefill), where the
CPU's float32 GEMM does the arithmetic. Does not own: which parameters stay bfloat16 (loading.py)
or the dispatch on dtypes (layers.project).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import warnings
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

KERNEL_MAX_ROWS = 16  # up to this many rows the kernel streams the weights once for all of them
BLOCK_BYTES = 8 << 20  # float32 size of one widened block: measured as fast as one whole float32 GEMM


@functools.cache
def kernel() -> ModuleType | None:
    """The compiled kernel, built once per machine (cached by torch), or None where it cannot be had."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        from torch.utils.cpp_extension import load

        _put_ninja_on_path()
        source = Path(__file__).with_name("bf16_matvec.cpp")
        module = load("qwen2vl_bf16_matvec", [str(source)], extra_cflags=["-O3", "-fopenmp"],
                      extra_ldflags=["-fopenmp"])
    except Exception as error:  # no compiler, no ninja, no headers: the fallback is exact, only slower
        message = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        warnings.warn(f"qwen2vl: the bfloat16 kernel could not be built ({message}); "
                      "bfloat16 weights are widened block by block instead (exact, slower decode)")
        return None
    return module if module.supported() else None


def _put_ninja_on_path() -> None:
    """torch builds with the `ninja` on PATH; the pip package's copy is not there unless the venv is active."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


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
    step = max(16, BLOCK_BYTES // (4 * k))
    out = torch.empty(flat.shape[0], n, dtype=torch.float32)
    block = torch.empty(min(step, n), k, dtype=torch.float32)
    for start in range(0, n, step):
        count = min(step, n - start)
        block[:count].copy_(weight[start:start + count])
        torch.mm(flat, block[:count].T, out=out[:, start:start + count])  # BLAS writes the column slice in place
    return out

