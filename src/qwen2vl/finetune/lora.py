"""LoRA as a transform on a built model, in PEFT's format on disk.

Owns: wrapping target projections with low-rank adapters (W x + (alpha/r) B A dropout(x)),
freezing the rest, merging adapters into the base weights, and saving/loading adapters as PEFT
does (adapter_config.json + adapter_model.safetensors, keys
`base_model.model.<transformers module path>.lora_A.weight`), so that transformers + peft load
ours and we load theirs. Does not own: training (trainer.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError
from ..weights import canonical_key

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = field(default=DEFAULT_TARGETS)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


class LoraLinear(nn.Module):
    """A frozen base projection plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, settings: LoraSettings):
        super().__init__()
        self.base = base
        self.scaling = settings.scaling
        self.dropout = nn.Dropout(settings.dropout) if settings.dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(settings.r, base.in_features, dtype=base.weight.dtype,
                                               device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, settings.r, dtype=base.weight.dtype,
                                               device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as PEFT initialises A; B starts at zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        return self.base.weight + (self.lora_B @ self.lora_A) * self.scaling


def _targets(model: nn.Module, settings: LoraSettings) -> list[tuple[str, nn.Module, str, nn.Linear]]:
    """(full name, parent, attribute, linear) of every decoder projection named in target_modules."""
    found = []
    for name, module in model.named_modules():
        if not name.startswith("model.layers."):
            continue
        for attribute, child in module.named_children():
            if attribute in settings.target_modules and isinstance(child, nn.Linear):
                found.append((f"{name}.{attribute}", module, attribute, child))
    return found


def apply_lora(model: nn.Module, settings: LoraSettings) -> list[str]:
    """Freeze the model and wrap its target projections; returns the wrapped module names."""
    model.requires_grad_(False)
    names = []
    for name, parent, attribute, linear in _targets(model, settings):
        setattr(parent, attribute, LoraLinear(linear, settings))
        names.append(name)
    if not names:
        raise CheckpointError(f"no decoder projection matches target_modules {list(settings.target_modules)}")
    return names


def lora_modules(model: nn.Module) -> dict[str, LoraLinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLinear)}


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight and unwrap it (the model is plain again)."""
    for name, module in lora_modules(model).items():
        parent_name, _, attribute = name.rpartition(".")
        with torch.no_grad():
            module.base.weight.copy_(module.merged_weight())
        setattr(model.get_submodule(parent_name), attribute, module.base)


def _hf_path(name: str) -> str:
    """Our module path -> transformers 4.5x's (`model.layers.*` -> `model.language_model.layers.*`)."""
    return "model.language_model." + name[len("model."):] if name.startswith("model.") else name


def save_adapter(model: nn.Module, directory: Path, settings: LoraSettings, base_model: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, module in lora_modules(model).items():
        key = PEFT_PREFIX + _hf_path(name)
        tensors[f"{key}.lora_A.weight"] = module.lora_A.detach().contiguous().cpu()
        tensors[f"{key}.lora_B.weight"] = module.lora_B.detach().contiguous().cpu()
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": settings.r, "lora_alpha": settings.alpha, "lora_dropout": settings.dropout,
        "target_modules": sorted(settings.target_modules), "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "modules_to_save": None, "use_rslora": False,
        "use_dora": False, "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
        "alpha_pattern": {},
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")


def read_adapter_settings(directory: Path) -> LoraSettings:
    try:
        raw = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory}: no readable {CONFIG_FILE} ({exc})") from None
    unsupported = [k for k in ("use_dora", "use_rslora") if raw.get(k)] + (
        ["rank_pattern"] if raw.get("rank_pattern") else []) + (["alpha_pattern"] if raw.get("alpha_pattern") else [])
    if raw.get("peft_type", "LORA") != "LORA" or unsupported:
        raise CheckpointError(f"{directory}: only plain LoRA adapters are supported (found {raw.get('peft_type')}"
                              f"{', ' + ', '.join(unsupported) if unsupported else ''})")
    targets = raw.get("target_modules") or DEFAULT_TARGETS
    targets = tuple(targets) if isinstance(targets, list) else (targets,)
    return LoraSettings(r=int(raw["r"]), alpha=float(raw.get("lora_alpha", raw["r"])),
                        dropout=float(raw.get("lora_dropout", 0.0)), target_modules=targets)


def load_adapter(model: nn.Module, directory: str | Path) -> LoraSettings:
    """Wrap the model's targets and fill the adapters from a PEFT (or our) adapter directory."""
    directory = Path(directory)
    settings = read_adapter_settings(directory)
    names = set(apply_lora(model, settings))
    tensors = load_file(str(directory / WEIGHTS_FILE))
    modules = lora_modules(model)
    loaded = set()
    for key, tensor in tensors.items():
        stem = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if stem.endswith(suffix) or stem.endswith(f".{part}.default.weight"):
                name = canonical_key(stem.rsplit(f".{part}.", 1)[0])
                if name not in modules:
                    raise CheckpointError(f"{directory}: adapter tensor {key} matches no target module")
                target = getattr(modules[name], part)
                if tuple(tensor.shape) != tuple(target.shape):
                    raise CheckpointError(f"{directory}: {key} has shape {list(tensor.shape)}, expected {list(target.shape)}")
                with torch.no_grad():
                    target.copy_(tensor.to(target.dtype))
                loaded.add((name, part))
    missing = sorted(f"{n}.{p}" for n in names for p in ("lora_A", "lora_B") if (n, p) not in loaded)
    if missing:
        raise CheckpointError(f"{directory}: adapter weights missing for {', '.join(missing[:8])}"
                              f"{' ...' if len(missing) > 8 else ''}")
    for module in modules.values():
        module.dropout = nn.Identity()
    return settings
