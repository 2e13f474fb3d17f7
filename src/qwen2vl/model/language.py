"""The Qwen2 decoder: embeddings, GQA attention with QKV bias and M-RoPE, SwiGLU, RMSNorm.

Owns: input embeddings -> final normed hidden states; with a KV cache passed in by the caller,
attention is delegated to it (it stores the new keys/values and attends over each sequence). A padded
batch can name its real tokens: projections, MLPs and norms then run on those tokens only, and just
attention sees the padded layout (a shuffled training batch is ~30% padding).
Does not own: positions, rotary tables, masks, vision features or the LM head (qwen2vl.py), nor cache
storage (the engine).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ..config import TextConfig
from .layers import Linear, RMSNorm, SwiGLU
from .rope import apply_rotary


class KVCache(Protocol):
    """What the decoder needs from a cache: store this step's keys/values and attend over all of them."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, heads, T, D], k/v [B, kv_heads, T, D] for the new tokens; returns [B, heads, T, D],
        each sequence attending causally over its cached tokens and the new ones."""
        ...


class DecoderAttention(nn.Module):
    def __init__(self, config: TextConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = Linear(config.hidden_size, self.num_heads * self.head_dim, bias=True)
        self.k_proj = Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.v_proj = Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=True)
        self.o_proj = Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, T, hidden], or with tokens (bool [B, T]) x [N, hidden] of the real tokens only."""
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if tokens is not None:
            q, k, v = (scatter_tokens(t, tokens) for t in (q, k, v))  # [N, C] -> [B, T, C]
        batch, length, _ = q.shape
        # [B, T, heads*D] -> [B, heads, T, D]
        q = q.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            out = cache.attend(self.layer, q, k, v)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=mask,
                is_causal=mask is None and length > 1,
                enable_gqa=self.num_kv_heads != self.num_heads,
            )  # [B, heads, T, D]
        out = out.transpose(1, 2).reshape(batch, length, -1)  # [B, T, heads*D]
        return self.o_proj(out if tokens is None else out[tokens])  # [B, T, hidden] or [N, hidden]


class DecoderLayer(nn.Module):
    def __init__(self, config: TextConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DecoderAttention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size, config.hidden_act)

    def forward(self, x, cos, sin, mask, cache, tokens=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, tokens)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Decoder(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False  # training only: recompute each layer in the backward pass

    def forward(
        self,
        embeds: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None = None,
        tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """embeds [B, T, hidden]; cos/sin [B, 1, T, D]; mask [B, 1, T, T_total] or None (causal);
        tokens: bool [B, T], the real tokens of a padded batch (their outputs only; padding gives zeros)."""
        x = embeds if tokens is None else embeds[tokens]  # [B, T, hidden] -> [N, hidden]
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, cache, tokens, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, tokens)
        x = self.norm(x)
        return x if tokens is None else scatter_tokens(x, tokens)


def scatter_tokens(values: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """values [N, C] of the True places of tokens [B, T] -> [B, T, C], zeros elsewhere."""
    padded = values.new_zeros(*tokens.shape, values.shape[-1])
    return padded.index_put((tokens,), values)
