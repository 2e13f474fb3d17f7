"""M-RoPE positions for a batch of prompts: a pure function, the original `get_rope_index` rule.

Owns: (token ids, attention mask, image/video grids) -> positions [3, B, T] and per-sequence
rope deltas. Text tokens share one value on all three axes, continuing from the previous
maximum + 1; a vision block starting at text offset s gets (t + s, h + s, w + s) over its merged
grid; padding takes no position (it is filled with 1, as the reference does).
While decoding, a new token's position on every axis is `cache_length + rope_delta`.
Does not own: rotary tables (rope.py) or where the deltas are stored (the request).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import ModelConfig
from ..errors import InvalidInputError


@dataclass(frozen=True)
class VisionLayout:
    """The token ids and merge size that decide where vision blocks sit in a prompt."""

    image_token_id: int
    video_token_id: int
    vision_start_token_id: int
    spatial_merge_size: int

    @classmethod
    def from_config(cls, config: ModelConfig) -> "VisionLayout":
        return cls(config.image_token_id, config.video_token_id, config.vision_start_token_id,
                   config.vision.spatial_merge_size)


def rope_positions(
    layout: VisionLayout,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns positions [3, B, T] int64 and rope_deltas [B] int64 (max position + 1 - T)."""
    ids = input_ids.detach().cpu().numpy()
    batch, length = ids.shape
    valid = np.ones_like(ids, dtype=bool) if attention_mask is None else attention_mask.detach().cpu().numpy().astype(bool)
    grids = {
        layout.image_token_id: _grid_list(image_grid_thw),
        layout.video_token_id: _grid_list(video_grid_thw),
    }
    used = {layout.image_token_id: 0, layout.video_token_id: 0}
    positions = np.ones((3, batch, length), dtype=np.int64)
    deltas = np.zeros(batch, dtype=np.int64)
    for b in range(batch):
        seq_positions = _sequence_positions(layout, ids[b][valid[b]], grids, used, b)  # [3, n_valid]
        positions[:, b, valid[b]] = seq_positions
        top = int(seq_positions.max()) if seq_positions.size else -1
        deltas[b] = top + 1 - length
    for token, name in ((layout.image_token_id, "image"), (layout.video_token_id, "video")):
        if used[token] != len(grids[token]):
            raise InvalidInputError(
                f"{len(grids[token])} {name} grids given but the prompts hold {used[token]} {name} blocks"
            )
    device = input_ids.device
    return torch.from_numpy(positions).to(device), torch.from_numpy(deltas).to(device)


def _grid_list(grid_thw: torch.Tensor | None) -> list[tuple[int, int, int]]:
    return [] if grid_thw is None else [tuple(row) for row in grid_thw.detach().cpu().tolist()]


def _sequence_positions(
    layout: VisionLayout,
    tokens: np.ndarray,
    grids: dict[int, list[tuple[int, int, int]]],
    used: dict[int, int],
    row: int,
) -> np.ndarray:
    """Positions [3, len(tokens)] of one unpadded sequence; consumes grids in prompt order."""
    n = len(tokens)
    starts = np.flatnonzero(tokens[:-1] == layout.vision_start_token_id)
    block_kinds = tokens[starts + 1]
    remaining = {kind: int((block_kinds == kind).sum()) for kind in grids}
    occurrences = {kind: np.flatnonzero(tokens == kind) for kind in grids}
    merge = layout.spatial_merge_size
    chunks: list[np.ndarray] = []
    cursor, next_position = 0, 0
    for _ in range(sum(remaining.values())):
        # The next block is whichever placeholder kind occurs first at or after the cursor.
        first = {}
        for kind, where in occurrences.items():
            k = np.searchsorted(where, cursor)
            first[kind] = int(where[k]) if remaining[kind] > 0 and k < len(where) else n + 1
        kind = min(first, key=first.get)
        block_start = first[kind]
        if used[kind] >= len(grids[kind]):
            name = "image" if kind == layout.image_token_id else "video"
            raise InvalidInputError(f"sequence {row}: more {name} blocks than {name}_grid_thw rows")
        t, h, w = grids[kind][used[kind]]
        used[kind] += 1
        remaining[kind] -= 1
        gh, gw = h // merge, w // merge
        text_len = block_start - cursor
        chunks.append(np.arange(text_len, dtype=np.int64)[None].repeat(3, 0) + next_position)
        grid = np.stack(np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")).reshape(3, -1)
        chunks.append(grid.astype(np.int64) + next_position + text_len)  # [3, t*gh*gw]
        next_position = int(chunks[-1].max()) + 1
        cursor = block_start + t * gh * gw
        if cursor > n:
            raise InvalidInputError(f"sequence {row}: a vision block of {t * gh * gw} tokens runs past the end of the prompt")
    if cursor < n:
        chunks.append(np.arange(n - cursor, dtype=np.int64)[None].repeat(3, 0) + next_position)
    return np.concatenate(chunks, axis=1) if chunks else np.zeros((3, 0), dtype=np.int64)
