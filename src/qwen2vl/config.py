"""Model configuration: frozen dataclasses parsed once from a checkpoint's config.json.

Owns: reading the flat Hub layout (text fields at top level, `rope_scaling`) and the
nested layout transformers 5 writes (`text_config`, `vision_config`,
`rope_parameters`), defaults, and validation with one-line `ConfigError`s.
Does not own: weights, tokenizer or preprocessor settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

_MISSING = object()


@dataclass(frozen=True)
class VisionConfig:
    depth: int
    embed_dim: int
    num_heads: int
    mlp_ratio: float
    in_channels: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    out_hidden_size: int
    hidden_act: str
    layer_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def patch_input_dim(self) -> int:
        """Values per flattened patch row: C * T * P * P (1176 for the official models)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size

    @property
    def merge_unit(self) -> int:
        """Patches merged into one LLM token (4 for a 2x2 merge)."""
        return self.spatial_merge_size ** 2


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    mrope_section: tuple[int, ...]
    hidden_act: str
    tie_word_embeddings: bool
    max_position_embeddings: int


@dataclass(frozen=True)
class ModelConfig:
    text: TextConfig
    vision: VisionConfig
    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    vision_end_token_id: int | None
    eos_token_ids: tuple[int, ...]
    torch_dtype: str | None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "ModelConfig":
        return _parse(raw)

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config.json not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: not a readable JSON config ({exc})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a config must be a JSON object")
        return _parse(raw)


class _Fields:
    """Looks fields up in an ordered list of dicts, for one-line errors that name the field."""

    def __init__(self, where: str, *sources: Mapping[str, Any]):
        self.where = where
        self.sources = [s for s in sources if isinstance(s, Mapping)]

    def get(self, *names: str, default: Any = _MISSING, kind: type = int) -> Any:
        for source in self.sources:
            for name in names:
                if name in source and source[name] is not None:
                    return self._convert(name, source[name], kind)
        if default is _MISSING:
            raise ConfigError(f"config.json: required field '{self.where}{names[0]}' is missing")
        return default

    def _convert(self, name: str, value: Any, kind: type) -> Any:
        if kind is bool:
            if isinstance(value, bool):
                return value
        elif kind is str:
            if isinstance(value, str):
                return value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if kind is int and float(value).is_integer():
                return int(value)
            if kind is float:
                return float(value)
        raise ConfigError(f"config.json: field '{self.where}{name}' must be {kind.__name__}, got {value!r}")


def _rope_dict(raw: Mapping[str, Any], text: Mapping[str, Any]) -> Mapping[str, Any]:
    for source in (text, raw):
        for key in ("rope_parameters", "rope_scaling"):
            value = source.get(key)
            if isinstance(value, Mapping):
                return value
    return {}


def _parse(raw: Mapping[str, Any]) -> ModelConfig:
    nested_text = raw.get("text_config") if isinstance(raw.get("text_config"), Mapping) else {}
    text_fields = _Fields("", raw, nested_text)
    rope = _rope_dict(raw, nested_text)

    hidden = text_fields.get("hidden_size")
    heads = text_fields.get("num_attention_heads")
    head_dim = text_fields.get("head_dim", default=None) or (hidden // heads if heads else 0)
    section = rope.get("mrope_section")
    if not isinstance(section, (list, tuple)) or not all(isinstance(s, int) for s in section):
        raise ConfigError("config.json: required field 'rope_scaling.mrope_section' is missing or not a list of ints")
    rope_theta = _Fields("rope_parameters.", rope).get("rope_theta", default=None, kind=float)
    text = TextConfig(
        vocab_size=text_fields.get("vocab_size"),
        hidden_size=hidden,
        intermediate_size=text_fields.get("intermediate_size"),
        num_hidden_layers=text_fields.get("num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=text_fields.get("num_key_value_heads", default=heads),
        head_dim=head_dim,
        rms_norm_eps=text_fields.get("rms_norm_eps", default=1e-6, kind=float),
        rope_theta=rope_theta if rope_theta is not None else text_fields.get("rope_theta", default=1e6, kind=float),
        mrope_section=tuple(section),
        hidden_act=text_fields.get("hidden_act", default="silu", kind=str),
        tie_word_embeddings=text_fields.get("tie_word_embeddings", default=False, kind=bool),
        max_position_embeddings=text_fields.get("max_position_embeddings", default=32768),
    )

    vision_raw = raw.get("vision_config")
    if not isinstance(vision_raw, Mapping):
        raise ConfigError("config.json: required field 'vision_config' is missing")
    v = _Fields("vision_config.", vision_raw)
    vision = VisionConfig(
        depth=v.get("depth"),
        embed_dim=v.get("embed_dim"),
        num_heads=v.get("num_heads"),
        mlp_ratio=v.get("mlp_ratio", default=4.0, kind=float),
        in_channels=v.get("in_chans", "in_channels", default=3),
        patch_size=v.get("patch_size", "spatial_patch_size", default=14),
        temporal_patch_size=v.get("temporal_patch_size", default=2),
        spatial_merge_size=v.get("spatial_merge_size", default=2),
        out_hidden_size=v.get("hidden_size", default=text.hidden_size),
        hidden_act=v.get("hidden_act", default="quick_gelu", kind=str),
    )

    eos = raw.get("eos_token_id", nested_text.get("eos_token_id"))
    eos_ids = tuple(eos) if isinstance(eos, list) else ((eos,) if isinstance(eos, int) else ())
    config = ModelConfig(
        text=text,
        vision=vision,
        image_token_id=text_fields.get("image_token_id"),
        video_token_id=text_fields.get("video_token_id"),
        vision_start_token_id=text_fields.get("vision_start_token_id"),
        vision_end_token_id=text_fields.get("vision_end_token_id", default=None),
        eos_token_ids=eos_ids,
        torch_dtype=text_fields.get("torch_dtype", "dtype", default=None, kind=str),
    )
    _validate(config)
    return config


def _validate(config: ModelConfig) -> None:
    t, v = config.text, config.vision
    checks = [
        (t.hidden_size > 0 and t.num_attention_heads > 0, "hidden_size and num_attention_heads must be positive"),
        (t.num_key_value_heads > 0 and t.num_attention_heads % t.num_key_value_heads == 0,
         f"num_attention_heads ({t.num_attention_heads}) must be a multiple of num_key_value_heads ({t.num_key_value_heads})"),
        (t.head_dim % 2 == 0, f"head_dim ({t.head_dim}) must be even"),
        (len(t.mrope_section) == 3 and sum(t.mrope_section) == t.head_dim // 2,
         f"rope_scaling.mrope_section {list(t.mrope_section)} must have 3 parts summing to head_dim/2 = {t.head_dim // 2}"),
        (v.num_heads > 0 and v.embed_dim % v.num_heads == 0,
         f"vision_config.embed_dim ({v.embed_dim}) must be a multiple of num_heads ({v.num_heads})"),
        (v.head_dim % 4 == 0, f"vision head dim ({v.head_dim}) must be a multiple of 4 for the 2-D rotary embedding"),
        (v.out_hidden_size == t.hidden_size,
         f"vision_config.hidden_size ({v.out_hidden_size}) must equal the text hidden_size ({t.hidden_size})"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"config.json: {message}")
