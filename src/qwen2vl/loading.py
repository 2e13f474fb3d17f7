"""from_pretrained for the network: a model name -> a Qwen2VLModel with its weights, ready to run.

Owns: resolving the name, parsing the config once, choosing dtype and device, building the model
on the meta device and filling it from the checkpoint. Does not own: the tokenizer, processor or
engine (they load their own files from the same directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from .config import ModelConfig
from .errors import ConfigError
from .hub import resolve_model_dir
from .model import Qwen2VLModel
from .model.layers import Linear
from .quant.transform import LAYERS, quantize as quantize_model, quantized_structure, read_marker
from .weights import load_weights

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype | None, config: ModelConfig) -> torch.dtype:
    """None -> float32 (exact on every device); "auto" -> the checkpoint's own dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ConfigError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
        return dtype
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        return _DTYPES.get(config.torch_dtype or "float32", torch.float32)
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ConfigError(f"unsupported dtype '{dtype}'; use float32, bfloat16, float16 or auto") from None


def load_model(
    name: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    quantize: str | None = None,
) -> Qwen2VLModel:
    """`progress(done_bytes, total_bytes)` is called while weights load. `quantize` ("int8" or
    "int4") swaps layers for quantized ones after loading (quant/transform.py); a checkpoint saved
    quantized loads that way directly. The default (dtype None: exact float32 arithmetic) keeps a
    bfloat16 checkpoint's decoder weights in bfloat16 on the CPU: the same products, half the bytes
    per decode step; int4 starts from that too and leaves the vision tower exact."""
    directory = resolve_model_dir(name, revision)
    config = ModelConfig.from_file(directory / "config.json")
    saved = read_marker(directory)
    if quantize not in (None, *LAYERS):
        raise ConfigError(f"unsupported quantization '{quantize}' (supported: {', '.join(LAYERS)})")
    if saved and quantize and quantize != saved.method:
        raise ConfigError(f"{directory} is saved in {saved.method}; it cannot be loaded as {quantize}")
    method = saved.method if saved else quantize
    target = torch.float32 if method == "int8" else parse_dtype(dtype, config)
    with torch.device("meta"):
        model = Qwen2VLModel(config)
        if saved:
            quantized_structure(model, saved)
    ignored = frozenset({"lm_head.weight"}) if config.text.tie_word_embeddings else frozenset()
    exact_on_cpu = dtype is None and method != "int8" and torch.device(device).type == "cpu"
    keep = bf16_parameter_names(model) if exact_on_cpu else frozenset()
    load_weights(model, directory, target, torch.device(device), ignored, progress, keep)
    if quantize and not saved:
        quantize_model(model, quantize)
    model.requires_grad_(False)
    return model.eval()


def bf16_parameter_names(model: Qwen2VLModel) -> frozenset[str]:
    """The weights a decode step streams: the decoder's projections, its embedding (which a tied LM
    head also reads) and an untied LM head. The vision tower stays float32: it runs once per image,
    compute-bound, where widening its weights on every call would cost time and save nothing."""
    names = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, Linear)}
    return frozenset(names | {"model.embed_tokens.weight"})


def hold_in_compute_dtype(model: Qwen2VLModel) -> None:
    """Widen the parameters held narrower than the activations (exact mode's bfloat16 decoder
    weights) to the compute dtype, one at a time: weights about to be changed in place, as when an
    adapter is merged in, must not have the change rounded to bfloat16."""
    dtype = model.compute_dtype
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.is_floating_point() and parameter.dtype != dtype:
                parameter.data = parameter.data.to(dtype)
