"""M-RoPE positions: our pure function equals transformers 4.57's original get_rope_index."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from conftest import real_config
from qwen2vl import InvalidInputError, ModelConfig
from qwen2vl.model.positions import VisionLayout, rope_positions

CONFIG = ModelConfig.from_dict(real_config("2B"))
LAYOUT = VisionLayout.from_config(CONFIG)
PAD = 151643
START, END = CONFIG.vision_start_token_id, CONFIG.vision_end_token_id
IMAGE, VIDEO = CONFIG.image_token_id, CONFIG.video_token_id


def reference_rope_index(input_ids, attention_mask, image_grid_thw, video_grid_thw):
    from transformers import Qwen2VLConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel as HFModel

    holder = SimpleNamespace(config=Qwen2VLConfig(**real_config("2B")))
    return HFModel.get_rope_index(holder, input_ids, image_grid_thw, video_grid_thw, attention_mask)


def random_batch(rng: random.Random):
    """A batch of 1-3 left-padded prompts mixing text, images and videos (some with long time axes)."""
    rows, images, videos = [], [], []
    for _ in range(rng.randint(1, 3)):
        tokens = []
        for _ in range(rng.randint(0, 4)):
            tokens += [rng.randint(0, 151000) for _ in range(rng.randint(0, 6))]
            kind = rng.choice(["image", "video", "text"])
            if kind == "text":
                continue
            if kind == "image":
                grid = (1, 2 * rng.randint(1, 6), 2 * rng.randint(1, 6))
                images.append(grid)
            else:  # time axis often longer than the merged rows and columns
                grid = (rng.randint(1, 14), 2 * rng.randint(1, 3), 2 * rng.randint(1, 3))
                videos.append(grid)
            count = grid[0] * grid[1] * grid[2] // 4
            tokens += [START] + [IMAGE if kind == "image" else VIDEO] * count + [END]
        tokens += [rng.randint(0, 151000) for _ in range(rng.randint(0 if len(tokens) > 1 else 2, 5))]
        rows.append(tokens)
    width = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    grid = lambda g: torch.tensor(g, dtype=torch.long) if g else None  # noqa: E731
    return ids, mask, grid(images), grid(videos)


@pytest.mark.parametrize("seed", range(250))
def test_positions_equal_the_original_get_rope_index(seed):
    ids, mask, image_grid, video_grid = random_batch(random.Random(seed))
    expected_positions, expected_deltas = reference_rope_index(ids, mask, image_grid, video_grid)
    positions, deltas = rope_positions(LAYOUT, ids, mask, image_grid, video_grid)
    assert torch.equal(positions, expected_positions)
    assert torch.equal(deltas, expected_deltas.view(-1))


def test_random_batches_cover_padding_long_videos_and_mixed_media():
    batches = [random_batch(random.Random(seed)) for seed in range(250)]
    assert sum(bool((mask == 0).any()) for _, mask, _, _ in batches) > 50
    assert sum(v is not None and i is not None for _, _, i, v in batches) > 50
    long_videos = [g for _, _, _, v in batches if v is not None for g in v.tolist() if g[0] > max(g[1], g[2]) // 2]
    assert len(long_videos) > 50


def test_text_after_a_long_video_resumes_after_its_last_frame():
    grid = torch.tensor([[8, 2, 2]])  # 8 frame pairs of one merged token each
    ids = torch.tensor([[7, START] + [VIDEO] * 8 + [END, 9]])
    positions, deltas = rope_positions(LAYOUT, ids, None, None, grid)
    assert positions[:, 0, 2:10].tolist() == [list(range(2, 10)), [2] * 8, [2] * 8]
    assert positions[:, 0, 10].tolist() == [10, 10, 10]  # not 2 + max(h, w) / 2
    assert deltas.tolist() == [12 - 12]


def test_single_token_row_in_a_padded_text_batch_keeps_the_original_delta():
    # transformers' text-only branch counts the padding fill value 1 in the row maximum, so a row
    # holding one real token gets delta 2 - T instead of 1 - T. We keep the original rule.
    ids = torch.tensor([[5, 6, 7], [PAD, PAD, 8]])
    mask = torch.tensor([[1, 1, 1], [0, 0, 1]])
    _, deltas = rope_positions(LAYOUT, ids, mask)
    _, reference = reference_rope_index(ids, mask, None, None)
    assert deltas.tolist() == [0, 1 - 3]
    assert reference.view(-1).tolist() == [0, 2 - 3]


def test_decode_position_is_cache_length_plus_delta():
    ids = torch.tensor([[START] + [IMAGE] * 16 + [END, 5]])  # 16 tokens in a 4x4 merged grid
    positions, deltas = rope_positions(LAYOUT, ids, None, torch.tensor([[1, 8, 8]]), None)
    next_position = int(positions.max()) + 1
    assert next_position == ids.shape[1] + int(deltas[0])


def test_more_blocks_than_grids_is_an_input_error():
    ids = torch.tensor([[START] + [IMAGE] * 4 + [END, START] + [IMAGE] * 4 + [END]])
    with pytest.raises(InvalidInputError, match="more image blocks than image_grid_thw rows"):
        rope_positions(LAYOUT, ids, None, torch.tensor([[1, 4, 4]]), None)


def test_unused_grids_are_an_input_error():
    ids = torch.tensor([[START] + [IMAGE] * 4 + [END]])
    with pytest.raises(InvalidInputError, match="2 image grids given but the prompts hold 1"):
        rope_positions(LAYOUT, ids, None, torch.tensor([[1, 4, 4], [1, 4, 4]]), None)
