"""Quantization as a transform on a built model (gpt-fast style), and how a checkpoint records it.

Owns: which layers each method swaps (`quantize`): int8 takes the decoder's and the vision tower's
projections and the LM head; int4 takes the decoder's projections and the LM head (decode streams
those; the vision tower runs once per image, compute-bound, and stays exact). A tied LM head gets
its own quantized copy. Also: the same swap on a meta-device model so a saved quantized checkpoint
loads without re-quantising (`quantized_structure`), the marker file, and saving. Does not own: the
quantized layers (int8.py, int4.py), loading tensors (weights.py), when to quantize (loading.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import ConfigError
from ..weights import copy_hub_files, save_checkpoint
from .int4 import GROUP, Int4Linear
from .int8 import Int8Linear

MARKER = "quantization_config.json"
LAYERS = {"int8": Int8Linear, "int4": Int4Linear}
MARKED = {"int8": "int8-per-channel-dynamic", "int4": f"int4-groups-of-{GROUP}"}  # method -> marker name


@dataclass(frozen=True)
class SavedQuantization:
    method: str  # a key of LAYERS
    modules: tuple[str, ...]


def _swappable(model: nn.Module, method: str) -> list[tuple[str, nn.Linear]]:
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if method == "int4" and (name.startswith("visual.") or module.in_features % GROUP):
            continue
        names.append((name, module))
    return names


def quantize(model: nn.Module, method: str) -> list[str]:
    """Swap the method's layers for quantized ones, in place. Returns the swapped names."""
    if method not in LAYERS:
        raise ConfigError(f"unsupported quantization '{method}' (supported: {', '.join(LAYERS)})")
    if next(model.parameters()).device.type != "cpu":
        raise ConfigError(f"{method} quantization runs on the CPU; load the model with device='cpu'")
    layer = LAYERS[method]
    swapped = []
    for name, linear in _swappable(model, method):
        _replace(model, name, layer.from_linear(linear))
        swapped.append(name)
    if getattr(model, "lm_head", "absent") is None:  # tied: the head reads the embedding matrix
        head = nn.Linear(model.config.text.hidden_size, model.config.text.vocab_size, bias=False)
        head.weight = model.model.embed_tokens.weight
        model.lm_head = layer.from_linear(head)
        swapped.append("lm_head")
    return swapped


def quantized_structure(model: nn.Module, saved: SavedQuantization) -> None:
    """On a meta-device model: put empty quantized layers where a saved checkpoint has them."""
    layer = LAYERS[saved.method]
    for name in saved.modules:
        if name == "lm_head" and model.lm_head is None:
            text = model.config.text
            model.lm_head = layer(text.hidden_size, text.vocab_size, bias=False)
            continue
        linear = model.get_submodule(name)
        _replace(model, name, layer(linear.in_features, linear.out_features, linear.bias is not None))


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attribute, module)


def quantized_modules(model: nn.Module) -> SavedQuantization | None:
    """The method and names of the quantized layers in `model`, or None."""
    found = {method: [name for name, module in model.named_modules() if isinstance(module, layer)]
             for method, layer in LAYERS.items()}
    methods = [method for method, names in found.items() if names]
    return SavedQuantization(methods[0], tuple(found[methods[0]])) if methods else None


def read_marker(directory: Path) -> SavedQuantization | None:
    path = directory / MARKER
    if not path.is_file():
        return None
    raw = json.loads(path.read_text(encoding="utf-8"))
    methods = {marked: method for method, marked in MARKED.items()}
    if raw.get("method") not in methods:
        raise ConfigError(f"{path}: unsupported quantization method {raw.get('method')!r}")
    return SavedQuantization(methods[raw["method"]], tuple(raw["modules"]))


def save_quantized_checkpoint(model: nn.Module, output: Path, base_dir: Path) -> None:
    """The quantized model in the Hub file set plus the marker: it reloads quantized without
    re-quantizing."""
    saved = quantized_modules(model)
    if saved is None:
        raise ConfigError("the model has no quantized layers to save")
    tied = model.config.text.tie_word_embeddings and "lm_head" not in saved.modules
    tensors = {name: p.detach().contiguous().cpu() for name, p in model.named_parameters()
               if not (tied and name == "lm_head.weight")}
    save_checkpoint(tensors, output, max_shard_bytes=4_000_000_000)
    copy_hub_files(base_dir, output)
    marker = {"method": MARKED[saved.method], "modules": list(saved.modules)}
    (output / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
