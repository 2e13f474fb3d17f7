"""Rotary embeddings: M-RoPE tables for the decoder and 2-D tables for the vision tower.

Owns: turning positions into cos/sin tables and applying them rotate-half style.
Does not own: computing the positions themselves (`positions.py`), nor caching tables.
Tables are recomputed per forward from plain tensors: no buffers, no state on modules.
"""

from __future__ import annotations

from typing import Sequence

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin; cos/sin broadcast against x."""
    return x * cos + rotate_half(x) * sin


def inverse_frequencies(dim: int, theta: float, device: torch.device | None = None) -> torch.Tensor:
    """[dim/2] float32 inverse frequencies theta^(-2i/dim)."""
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
    return 1.0 / (theta ** exponents)


def mrope_cos_sin(
    positions: torch.Tensor,
    head_dim: int,
    theta: float,
    mrope_section: Sequence[int],
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE tables.

    positions: [3, B, T] (t, h, w) integer positions.
    Returns cos, sin of shape [B, 1, T, head_dim] in `dtype`: frequency channel f takes its
    angle from the axis whose `mrope_section` chunk contains f, duplicated rotate-half style.
    """
    inv_freq = inverse_frequencies(head_dim, theta, positions.device)  # [D/2]
    angles = positions.float()[..., None] * inv_freq  # [3, B, T, D/2]
    axis_of_channel = torch.repeat_interleave(
        torch.arange(len(mrope_section), device=positions.device),
        torch.tensor(list(mrope_section), device=positions.device),
    )  # [D/2]: which of t/h/w drives each channel
    index = axis_of_channel.view(1, 1, 1, -1).expand(1, *angles.shape[1:])
    chosen = angles.gather(0, index).squeeze(0)  # [B, T, D/2]
    emb = torch.cat((chosen, chosen), dim=-1).unsqueeze(1)  # [B, 1, T, D]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def vision_patch_coordinates(grid_thw: torch.Tensor, merge_size: int) -> torch.Tensor:
    """(row, col) of every patch, in the processor's 2x2 merge-window order.

    grid_thw: [N_items, 3] (t, h, w) in patches. Returns [sum(t*h*w), 2] int64.
    """
    coords = []
    for t, h, w in grid_thw.tolist():
        rows = torch.arange(h).view(h, 1).expand(h, w)
        cols = torch.arange(w).view(1, w).expand(h, w)
        # [h, w] -> [h/m, m, w/m, m] -> [h/m, w/m, m, m]: patches listed window by window
        def window_order(grid: torch.Tensor) -> torch.Tensor:
            return grid.reshape(h // merge_size, merge_size, w // merge_size, merge_size).permute(0, 2, 1, 3).flatten()

        frame = torch.stack((window_order(rows), window_order(cols)), dim=-1)  # [h*w, 2]
        coords.append(frame.repeat(t, 1))
    return torch.cat(coords, dim=0).to(grid_thw.device)


def vision_cos_sin(
    grid_thw: torch.Tensor, head_dim: int, merge_size: int, theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D rotary tables for the vision tower: [N_patches, head_dim] float32 cos and sin.

    Half the rotary channels follow the row index, half the column index.
    """
    coords = vision_patch_coordinates(grid_thw, merge_size)  # [N, 2]
    inv_freq = inverse_frequencies(head_dim // 2, theta, grid_thw.device)  # [head_dim/4]
    angles = coords.float()[..., None] * inv_freq  # [N, 2, head_dim/4]
    angles = angles.flatten(1)  # [N, head_dim/2]: row angles then column angles
    emb = torch.cat((angles, angles), dim=-1)  # [N, head_dim]
    return emb.cos(), emb.sin()
