"""int8 weights as a transform on a built model, run by fbgemm's dynamic-quantised linear (CPU).

Owns: `Int8Linear` (weights int8 with one float scale per output channel, activations quantised
per call by fbgemm), swapping a model's projections for it (`quantize_int8`), the same swap on a
meta-device model so a saved int8 checkpoint loads without re-quantising (`int8_structure`), and
the checkpoint marker file. Does not own: loading tensors (weights.py) or deciding when to quantise
(loading.py, the CLI).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..weights import copy_hub_files, save_checkpoint

MARKER = "quantization_config.json"
METHOD = "int8-per-channel-dynamic"


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
        out = torch.ops.quantized.linear_dynamic(x.float().contiguous(), self._pack(), False)
        return out.to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def _quantizable(model: nn.Module, include_vision: bool) -> list[tuple[str, nn.Linear]]:
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and (include_vision or not name.startswith("visual.")):
            names.append((name, module))
    return names


def quantize_int8(model: nn.Module, include_vision: bool = True) -> list[str]:
    """Swap the decoder's (and by default the vision tower's) projections and the LM head for
    Int8Linear, in place; a tied LM head gets its own int8 copy. Returns the swapped names."""
    if next(model.parameters()).device.type != "cpu":
        raise ConfigError("int8 quantization runs on the CPU (fbgemm); load the model with device='cpu'")
    swapped = []
    for name, linear in _quantizable(model, include_vision):
        _replace(model, name, Int8Linear.from_linear(linear))
        swapped.append(name)
    if getattr(model, "lm_head", "absent") is None:  # tied: the head reads the embedding matrix
        head = nn.Linear(model.config.text.hidden_size, model.config.text.vocab_size, bias=False)
        head.weight = model.model.embed_tokens.weight
        model.lm_head = Int8Linear.from_linear(head)
        swapped.append("lm_head")
    return swapped


def int8_structure(model: nn.Module, names: list[str]) -> None:
    """On a meta-device model: put empty Int8Linear modules where a saved int8 checkpoint has them."""
    for name in names:
        if name == "lm_head" and model.lm_head is None:
            text = model.config.text
            model.lm_head = Int8Linear(text.hidden_size, text.vocab_size, bias=False)
            continue
        linear = model.get_submodule(name)
        _replace(model, name, Int8Linear(linear.in_features, linear.out_features, linear.bias is not None))


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attribute, module)


def quantized_modules(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, Int8Linear)]


def write_marker(directory: Path, names: list[str]) -> None:
    (directory / MARKER).write_text(json.dumps({"method": METHOD, "modules": names}, indent=2), encoding="utf-8")


def read_marker(directory: Path) -> list[str] | None:
    path = directory / MARKER
    if not path.is_file():
        return None
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("method") != METHOD:
        raise ConfigError(f"{path}: unsupported quantization method {raw.get('method')!r}")
    return list(raw["modules"])


def save_int8_checkpoint(model: nn.Module, output: Path, base_dir: Path) -> None:
    """The quantized model in the Hub file set plus the marker: it reloads as int8 without re-quantizing."""
    names = quantized_modules(model)
    tied = model.config.text.tie_word_embeddings and "lm_head" not in names
    tensors = {name: p.detach().contiguous().cpu() for name, p in model.named_parameters()
               if not (tied and name == "lm_head.weight")}
    save_checkpoint(tensors, output, max_shard_bytes=4_000_000_000)
    copy_hub_files(base_dir, output)
    write_marker(output, names)
