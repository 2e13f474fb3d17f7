"""A static KV cache: one preallocated slot per concurrent sequence, as in gpt-fast.

Owns: per-layer key/value storage [slots, kv_heads, max_len, head_dim] and attention over it for a
step's sequences. Each sequence attends over exactly its own tokens: a decode step whose sequences
hold a run of consecutive slots attends in one call over that run, with every position past a
sequence's own length masked out (weight exactly zero); any other step attends one sequence at a
time. Storage is allocated with torch.empty, so memory pages are only touched as tokens are
written; the positions a batched step masks out are zeroed first if nothing was ever written there
(uninitialised memory may hold NaN, and a zero weight times NaN is NaN).
Does not own: which sequence has which slot (scheduler) or positions (runner).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import TextConfig

INITIALISE_CHUNK = 128  # positions zeroed at a time ahead of a sequence in a batched decode step


class StaticKVCache:
    def __init__(self, config: TextConfig, slots: int, max_len: int, dtype: torch.dtype, device: torch.device):
        shape = (slots, config.num_key_value_heads, max_len, config.head_dim)
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.max_len = max_len
        self.gqa = config.num_key_value_heads != config.num_attention_heads
        self.initialised = [0] * slots  # per slot: positions [0, n) have held a written or zeroed value

    def step(self, slots: list[int], cached: list[int]) -> "CacheStep":
        """A view for one forward: sequence b lives in slots[b] and already holds cached[b] tokens."""
        return CacheStep(self, slots, cached)

    def copy_slot(self, source: int, target: int, length: int) -> None:
        """Give `target` the first `length` cached tokens of `source` (n > 1 samples share a prompt)."""
        for keys, values in zip(self.keys, self.values):
            keys[target, :, :length] = keys[source, :, :length]
            values[target, :, :length] = values[source, :, :length]
        self.initialised[target] = max(self.initialised[target], length)

    def initialise(self, slot: int, length: int) -> None:
        """Make sure positions [0, length) of `slot` hold finite values: zero the ones nothing was
        ever written to, up to the next multiple of INITIALISE_CHUNK (so this runs once in that many
        decode steps, not at every one)."""
        start = self.initialised[slot]
        if start < length:
            stop = min(self.max_len, -(-length // INITIALISE_CHUNK) * INITIALISE_CHUNK)
            for keys, values in zip(self.keys, self.values):
                keys[slot, :, start:stop] = 0
                values[slot, :, start:stop] = 0
            self.initialised[slot] = stop


@dataclass(frozen=True)
class BatchedDecode:
    """One new token for each sequence of a run of consecutive slots, attended in one call."""

    run: slice  # the slots, in slot order
    rows: torch.Tensor  # [B] the slot of each sequence, in batch order
    positions: torch.Tensor  # [B] where each sequence's new token goes, in batch order
    order: torch.Tensor | None  # [B] the batch sorted by slot, or None when it already is
    inverse: torch.Tensor | None  # [B] back from slot order to batch order
    mask: torch.Tensor  # [B, 1, 1, L] each slot's own positions, in slot order; L = the longest length


def batched_decode(cache: StaticKVCache, slots: list[int], cached: list[int]) -> BatchedDecode | None:
    """The batched form of a decode step, or None when its slots are not one run (or it has one sequence)."""
    first = min(slots)
    order = sorted(range(len(slots)), key=slots.__getitem__)
    if len(slots) < 2 or [slots[b] for b in order] != list(range(first, first + len(slots))):
        return None
    device = cache.keys[0].device
    length = max(cached) + 1
    for slot in slots:
        cache.initialise(slot, length)
    in_slot_order = torch.tensor([cached[b] for b in order], device=device)
    mask = torch.arange(length, device=device)[None, :] <= in_slot_order[:, None]  # [B, L]
    ordered = order == list(range(len(slots)))
    order_tensor = None if ordered else torch.tensor(order, device=device)
    return BatchedDecode(
        slice(first, first + len(slots)), torch.tensor(slots, device=device), torch.tensor(cached, device=device),
        order_tensor, None if ordered else order_tensor.argsort(), mask[:, None, None, :],
    )


class CacheStep:
    """Implements the decoder's KVCache protocol for one forward pass."""

    def __init__(self, cache: StaticKVCache, slots: list[int], cached: list[int]):
        self.cache, self.slots, self.cached = cache, slots, cached
        self.batched = batched_decode(cache, slots, cached)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.shape[2] == 1 and self.batched is not None:
            return self._attend_batched(layer, q, k, v)
        return self._attend_each(layer, q, k, v)

    def _attend_batched(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        keys, values, step = self.cache.keys[layer], self.cache.values[layer], self.batched
        keys[step.rows, :, step.positions] = k[:, :, 0]  # k [B, kv_heads, 1, D] -> [B, kv_heads, D]
        values[step.rows, :, step.positions] = v[:, :, 0]
        length = step.mask.shape[-1]
        out = F.scaled_dot_product_attention(  # [B, heads, 1, D], in slot order
            q if step.order is None else q[step.order], keys[step.run, :, :length], values[step.run, :, :length],
            attn_mask=step.mask, enable_gqa=self.cache.gqa,
        )
        return out if step.inverse is None else out[step.inverse]

    def _attend_each(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        new = q.shape[2]
        outputs = []
        for b, (slot, start) in enumerate(zip(self.slots, self.cached)):
            end = start + new
            keys[slot, :, start:end] = k[b]
            values[slot, :, start:end] = v[b]
            self.cache.initialised[slot] = max(self.cache.initialised[slot], end)
            # [1, heads, new, D] over [1, kv_heads, end, D]; causal among the new tokens (prefill)
            mask = None
            if new > 1 and start > 0:
                mask = torch.ones(new, end, dtype=torch.bool, device=q.device).tril(start)
            outputs.append(F.scaled_dot_product_attention(
                q[b:b + 1], keys[slot:slot + 1, :, :end], values[slot:slot + 1, :, :end],
                attn_mask=mask, is_causal=new > 1 and start == 0, enable_gqa=self.cache.gqa,
            ))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)
