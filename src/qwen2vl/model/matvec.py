"""The C++ kernels for few-row products (decode), built on first use: bfloat16 weights (matvec.cpp)
and, for the quantization transform, 4-bit weights (quant/int4_matvec.cpp).

Owns: compiling and loading an extension once per process (torch caches the build per machine),
and saying None where it cannot be had: not x86-64, no compiler or ninja, no AVX2. Does not own:
when a kernel is used (bf16_weights.py, quant/int4.py, which fall back to torch code without it).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import warnings
from pathlib import Path
from types import ModuleType

KERNEL_MAX_ROWS = 16  # up to this many rows the kernel streams the weights once for all of them


@functools.cache
def kernel() -> ModuleType | None:
    """The bfloat16 kernel, built once per machine (cached by torch), or None where it cannot be had."""
    return compiled("qwen2vl_matvec", Path(__file__).with_name("matvec.cpp"),
                    "decoding with bfloat16 weights falls back to torch (same results, slower)")


@functools.cache
def compiled(name: str, source: Path, fallback: str) -> ModuleType | None:
    """The extension `name` built from `source`, or None (with a warning saying `fallback`) where it
    cannot be had."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        from torch.utils.cpp_extension import load

        _put_ninja_on_path()
        module = load(name, [str(source)], extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"])
    except Exception as error:  # no compiler, no ninja, no headers: the fallback computes the same, slower
        message = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        warnings.warn(f"qwen2vl: the {source.name} kernel could not be built ({message}); {fallback}")
        return None
    return module if module.supported() else None


def _put_ninja_on_path() -> None:
    """torch builds with the `ninja` on PATH; the pip package's copy is not there unless the venv is active."""
    if shutil.which("ninja") is None:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
