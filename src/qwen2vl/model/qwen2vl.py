"""Qwen2VLModel: embed tokens, encode and scatter vision features, run the decoder, project to logits.

Owns: the HF-compatible tensor forward (`model(input_ids=..., pixel_values=..., ...) -> logits`)
and the steps an engine composes itself (encode_vision, embed, decode, logits).
Module attribute names follow the Hub checkpoint keys (`visual.*`, `model.*`, `lm_head.*`).
Does not own: weight loading (weights.py), preprocessing, caches or sampling.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import InvalidInputError
from .language import KVCache, Qwen2Decoder
from .layers import Linear, causal_padded_mask, project
from .positions import VisionLayout, rope_positions
from .rope import mrope_cos_sin
from .vision import VisionTransformer


class Qwen2VLModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.layout = VisionLayout.from_config(config)
        self.visual = VisionTransformer(config.vision)
        self.model = Qwen2Decoder(config.text)
        text = config.text
        self.lm_head = None if text.tie_word_embeddings else Linear(text.hidden_size, text.vocab_size, bias=False)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The activations' dtype: the norms' (projection weights may be stored narrower, see bf16_weights)."""
        return self.model.norm.weight.dtype

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device = "cpu",
        revision: str | None = None,
    ) -> "Qwen2VLModel":
        """Load a local checkpoint directory or a Hub id; see `qwen2vl.loading.load_model`."""
        from ..loading import load_model  # loading builds this class, so it is imported on use

        return load_model(name, dtype=dtype, device=device, revision=revision)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Full-prompt forward without a cache. Returns logits [B, T, vocab]."""
        return self.logits(self.hidden_states(input_ids, attention_mask, pixel_values, image_grid_thw,
                                              pixel_values_videos, video_grid_thw))

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final normed hidden states [B, T, hidden] of a full-prompt forward (training takes
        logits only where there are labels)."""
        image_features = self.encode_vision(pixel_values, image_grid_thw, "image")
        video_features = self.encode_vision(pixel_values_videos, video_grid_thw, "video")
        embeds = self.embed(input_ids, image_features, video_features)
        positions, _ = rope_positions(self.layout, input_ids, attention_mask, image_grid_thw, video_grid_thw)
        key_valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        mask = causal_padded_mask(key_valid, 0, input_ids.shape[1])  # None exactly when nothing is padding
        return self.decode(embeds, positions, mask, tokens=None if mask is None else key_valid)

    def encode_vision(self, pixels: torch.Tensor | None, grid_thw: torch.Tensor | None, kind: str) -> torch.Tensor | None:
        """Vision features [sum(t*h*w)/4, hidden] for all images (or videos) of a batch, or None."""
        if pixels is None and grid_thw is None:
            return None
        if pixels is None or grid_thw is None:
            raise InvalidInputError(f"{kind} pixels and {kind}_grid_thw must be given together")
        grid_thw = grid_thw.to(pixels.device)
        expected_rows = int(grid_thw.prod(-1).sum())
        if pixels.dim() != 2 or pixels.shape != (expected_rows, self.config.vision.patch_input_dim):
            raise InvalidInputError(
                f"{kind} pixel values have shape {tuple(pixels.shape)}, expected "
                f"({expected_rows}, {self.config.vision.patch_input_dim}) from {kind}_grid_thw"
            )
        merge = self.config.vision.spatial_merge_size
        if bool(((grid_thw[:, 1:] % merge) != 0).any()):
            raise InvalidInputError(f"{kind}_grid_thw heights and widths must be multiples of {merge}")
        return self.visual(pixels, grid_thw)

    def embed(
        self,
        input_ids: torch.Tensor,
        image_features: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings [B, T, hidden] with placeholder tokens replaced by vision features, in order."""
        embeds = self.embed_tokens(input_ids)
        for token_id, features, kind in (
            (self.config.image_token_id, image_features, "image"),
            (self.config.video_token_id, video_features, "video"),
        ):
            slots = input_ids == token_id
            count = int(slots.sum())
            available = 0 if features is None else features.shape[0]
            if count != available:
                raise InvalidInputError(
                    f"the prompt has {count} {kind} placeholder tokens but the {kind} inputs give {available} features"
                )
            if count:
                embeds = embeds.masked_scatter(slots.unsqueeze(-1), features.to(embeds.dtype))
        return embeds

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Plain token embeddings [B, T, hidden]: placeholders stay tokens (how generated tokens are read
        back, as in transformers, so a model that emits <|image_pad|> does not fail its request)."""
        vocab = self.config.text.vocab_size
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
            raise InvalidInputError(f"token ids must lie in [0, {vocab}), got {int(input_ids.min())}..{int(input_ids.max())}")
        return self.model.embed_tokens(input_ids).to(self.compute_dtype)

    def decode(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None = None,
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decoder over embeds [B, T, hidden] at M-RoPE positions [3, B, T]. Returns normed hidden states
        (zeros at padding when tokens, bool [B, T], names the real ones: see Qwen2Decoder)."""
        text = self.config.text
        cos, sin = mrope_cos_sin(positions, text.head_dim, text.rope_theta, text.mrope_section, embeds.dtype)
        return self.model(embeds, cos, sin, mask, cache, tokens)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is not None:
            return self.lm_head(hidden)
        return project(hidden, self.model.embed_tokens.weight)  # tied embeddings
