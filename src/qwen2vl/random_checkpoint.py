"""Random-weight checkpoints in the official Hub layout, for tests, benchmarks and the demo command.

Owns: drawing seeded random weights for a config and writing config.json + safetensors (optionally
sharded, optionally in transformers 5's key layout), plus copying tokenizer/processor files.
Matrices are drawn with std = WEIGHT_GAIN / sqrt(fan_in) and embeddings with EMBEDDING_STD: far
larger than the usual 0.02 on small widths (DESIGN §3: a default-initialised model repeats one token
whatever it sees), yet activations stay of order one at the real widths, so float rounding is not
amplified layer after layer and logits can be compared to 1e-4.
Does not own: loading (weights.py, loading.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from .config import ModelConfig
from .model import Qwen2VLModel
from .weights import save_checkpoint

WEIGHT_GAIN = 1.5
EMBEDDING_STD = 0.02 * 8
BIAS_STD = 0.1
NORM_JITTER = 0.1

TINY_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2VLForConditionalGeneration"],
    "model_type": "qwen2_vl",
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "vocab_size": 151936,
    "vision_config": {
        "depth": 2, "embed_dim": 32, "mlp_ratio": 2, "num_heads": 2, "in_chans": 3, "patch_size": 14,
        "spatial_merge_size": 2, "spatial_patch_size": 14, "temporal_patch_size": 2, "hidden_size": 64,
    },
}


def shallow(config: Mapping[str, Any], layers: int = 2, vision_blocks: int = 2) -> dict[str, Any]:
    """The same config at its real widths with fewer decoder layers and vision blocks."""
    out = json.loads(json.dumps(config))
    out["num_hidden_layers"] = layers
    out["max_window_layers"] = layers
    out["vision_config"]["depth"] = vision_blocks
    return out


def random_weights(config: ModelConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Seeded random tensors for every parameter, keyed by Hub checkpoint names."""
    with torch.device("meta"):
        shapes = {name: p.shape for name, p in Qwen2VLModel(config).named_parameters()}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        if name.endswith("embed_tokens.weight"):
            tensor = torch.randn(shape, generator=generator) * EMBEDDING_STD
        elif len(shape) >= 2:
            fan_in = shape[1:].numel()
            tensor = torch.randn(shape, generator=generator) * (WEIGHT_GAIN / fan_in ** 0.5)
        elif name.endswith("bias"):
            tensor = torch.randn(shape, generator=generator) * BIAS_STD
        else:  # norm scales
            tensor = 1.0 + torch.randn(shape, generator=generator) * NORM_JITTER
        tensors[name] = tensor.to(dtype)
    return tensors


def write_random_checkpoint(
    directory: str | Path,
    config: Mapping[str, Any],
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_bytes: int | None = None,
    key_layout: str = "hub",
    copy_files_from: str | Path | None = None,
) -> Path:
    """Write config.json and random safetensors weights; returns the directory.

    key_layout: "hub" (`visual.*`, `model.*`) or "v5" (`model.visual.*`, `model.language_model.*`).
    copy_files_from: a directory whose tokenizer/template/processor/generation files are copied.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = random_weights(ModelConfig.from_dict(config), seed, dtype)
    if key_layout == "v5":
        tensors = {_v5_key(name): t for name, t in tensors.items()}
    elif key_layout != "hub":
        raise ValueError(f"unknown key layout '{key_layout}'")
    save_checkpoint(tensors, directory, max_shard_bytes)
    (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if copy_files_from is not None:
        for file in Path(copy_files_from).glob("*.json"):
            if file.name != "config.json":
                shutil.copyfile(file, directory / file.name)
    return directory


def _v5_key(name: str) -> str:
    if name.startswith("visual."):
        return "model." + name
    if name.startswith("model."):
        return "model.language_model." + name[len("model."):]
    return name
