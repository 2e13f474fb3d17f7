"""The vision tower: patch embedding, pre-norm ViT blocks with 2-D RoPE, and the patch merger.

Owns: pixels [N_patches, C*T*P*P] + grid_thw -> merged visual tokens [N_patches/4, hidden].
Does not own: image/video preprocessing (processing/) or placing tokens in the prompt (qwen2vl.py).
Attention is block-diagonal per frame, computed run by run (see layers.segment_attention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VisionConfig
from .layers import activation, segment_attention
from .rope import apply_rotary, vision_cos_sin


class PatchEmbed(nn.Module):
    """A Conv3d with kernel == stride and no bias, applied as the equivalent matmul."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        kernel = (config.temporal_patch_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.in_channels, config.embed_dim, kernel_size=kernel, stride=kernel, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight.flatten(1)  # [E, C, T, P, P] -> [E, C*T*P*P], same element order as a patch row
        return F.linear(pixels.to(weight.dtype), weight)


class VisionAttention(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim, bias=True)
        self.proj = nn.Linear(config.embed_dim, config.embed_dim, bias=True)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, runs: list[tuple[int, int]]) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = self.qkv(x).view(n, 3, self.num_heads, -1).unbind(1)  # each [N, H, D]
        cos, sin = cos[:, None], sin[:, None]  # [N, 1, D] float32
        q = apply_rotary(q.float(), cos, sin).to(x.dtype)
        k = apply_rotary(k.float(), cos, sin).to(x.dtype)
        out = segment_attention(q, k, v, runs)  # [N, H, D]
        return self.proj(out.reshape(n, -1))


class VisionMLP(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.embed_dim, config.mlp_hidden_dim)
        self.fc2 = nn.Linear(config.mlp_hidden_dim, config.embed_dim)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.attn = VisionAttention(config)
        self.mlp = VisionMLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, runs: list[tuple[int, int]]) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cos, sin, runs)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """LayerNorm, then each 2x2 window of patches (consecutive rows) -> one LLM-width token."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.merged_dim = config.embed_dim * config.merge_unit
        self.ln_q = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(self.merged_dim, self.merged_dim),
            nn.GELU(),
            nn.Linear(self.merged_dim, config.out_hidden_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.merged_dim))  # [N, E] -> [N/4, 4E] -> [N/4, hidden]


class VisionTransformer(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.depth))
        self.merger = PatchMerger(config)

    def forward(self, pixels: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixels: [N_patches, C*T*P*P]; grid_thw: [N_items, 3]. Returns [N_patches / 4, hidden]."""
        x = self.patch_embed(pixels)
        cos, sin = vision_cos_sin(grid_thw, self.config.head_dim, self.config.spatial_merge_size)
        runs = [(t, h * w) for t, h, w in grid_thw.tolist()]  # t frames of h*w patches per item
        for block in self.blocks:
            x = block(x, cos, sin, runs)
        return self.merger(x)
