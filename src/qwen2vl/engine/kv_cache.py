"""A static KV cache: one preallocated slot per concurrent sequence, as in gpt-fast.

Owns: per-layer key/value storage [slots, kv_heads, max_len, head_dim] and attention over it for a
step's sequences (each attends over exactly its own tokens, so batching never changes a sequence's
attention). Storage is allocated with torch.empty, so memory pages are only touched as tokens are
written. Does not own: which sequence has which slot (scheduler) or positions (runner).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import TextConfig


class StaticKVCache:
    def __init__(self, config: TextConfig, slots: int, max_len: int, dtype: torch.dtype, device: torch.device):
        shape = (slots, config.num_key_value_heads, max_len, config.head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.max_len = max_len
        self.gqa = config.num_key_value_heads != config.num_attention_heads

    def step(self, slots: list[int], cached: list[int]) -> "CacheStep":
        """A view for one forward: sequence b lives in slots[b] and already holds cached[b] tokens."""
        return CacheStep(self, slots, cached)

    def copy_slot(self, source: int, target: int, length: int) -> None:
        """Give `target` the first `length` cached tokens of `source` (n > 1 samples share a prompt)."""
        for keys, values in zip(self.keys, self.values):
            keys[target, :, :length] = keys[source, :, :length]
            values[target, :, :length] = values[source, :, :length]


class CacheStep:
    """Implements the decoder's KVCache protocol for one forward pass."""

    def __init__(self, cache: StaticKVCache, slots: list[int], cached: list[int]):
        self.cache, self.slots, self.cached = cache, slots, cached

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        new = q.shape[2]
        outputs = []
        for b, (slot, start) in enumerate(zip(self.slots, self.cached)):
            end = start + new
            keys[slot, :, start:end] = k[b]
            values[slot, :, start:end] = v[b]
            # [1, heads, new, D] over [1, kv_heads, end, D]; causal among the new tokens (prefill)
            mask = None
            if new > 1 and start > 0:
                mask = torch.ones(new, end, dtype=torch.bool, device=q.device).tril(start)
            outputs.append(F.scaled_dot_product_attention(
                q[b:b + 1], keys[slot:slot + 1, :, :end], values[slot:slot + 1, :, :end],
                attn_mask=mask, is_causal=new > 1 and start == 0, enable_gqa=self.cache.gqa,
            ))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
