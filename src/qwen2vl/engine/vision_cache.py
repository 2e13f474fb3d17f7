"""A memory-bounded LRU of vision-tower outputs, keyed by a hash of the preprocessed pixels and grid.

Owns: looking up and storing encoded images/videos so an item already seen (e.g. the same picture in
every turn of a chat) skips the vision tower; counting tower runs. Does not own: running the tower.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch


def content_key(kind: str, pixels: torch.Tensor, grid: tuple[int, int, int]) -> str:
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{kind}:{grid}:{pixels.dtype}:{tuple(pixels.shape)}".encode())
    digest.update(pixels.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


class VisionCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> torch.Tensor | None:
        features = self.entries.get(key)
        if features is None:
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return features

    def put(self, key: str, features: torch.Tensor) -> None:
        size = features.numel() * features.element_size()
        if size > self.max_bytes or key in self.entries:
            return
        while self.bytes + size > self.max_bytes:
            _, evicted = self.entries.popitem(last=False)
            self.bytes -= evicted.numel() * evicted.element_size()
        self.entries[key] = features
        self.bytes += size
