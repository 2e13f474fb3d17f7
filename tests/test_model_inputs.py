"""The tensor forward rejects inconsistent inputs with one-line InvalidInputErrors."""

import pytest
import torch

from qwen2vl import InvalidInputError

START, END, IMAGE, VIDEO = 151652, 151653, 151655, 151656


def _prompt(*middle):
    return torch.tensor([[151644, 872, *middle, 151645]])


def test_placeholder_count_must_match_the_image_features(tiny_model):
    ids = _prompt(START, *[IMAGE] * 3, END)  # the grid below yields 4 features
    with pytest.raises(InvalidInputError, match="3 image placeholder tokens but the image inputs give 4 features"):
        tiny_model(input_ids=ids, pixel_values=torch.zeros(16, 1176), image_grid_thw=torch.tensor([[1, 4, 4]]))


def test_video_placeholders_without_video_inputs_are_rejected(tiny_model):
    ids = _prompt(START, *[VIDEO] * 4, END)
    with pytest.raises(InvalidInputError, match="4 video placeholder tokens but the video inputs give 0 features"):
        tiny_model(input_ids=ids)


def test_pixel_rows_must_match_the_grid(tiny_model):
    ids = _prompt(START, *[IMAGE] * 4, END)
    with pytest.raises(InvalidInputError, match=r"image pixel values have shape \(15, 1176\), expected \(16, 1176\)"):
        tiny_model(input_ids=ids, pixel_values=torch.zeros(15, 1176), image_grid_thw=torch.tensor([[1, 4, 4]]))


def test_grid_sides_must_be_multiples_of_the_merge_size(tiny_model):
    ids = _prompt(START, *[IMAGE] * 4, END)
    with pytest.raises(InvalidInputError, match="multiples of 2"):
        tiny_model(input_ids=ids, pixel_values=torch.zeros(15, 1176), image_grid_thw=torch.tensor([[1, 3, 5]]))


def test_pixels_without_a_grid_are_rejected(tiny_model):
    with pytest.raises(InvalidInputError, match="must be given together"):
        tiny_model(input_ids=_prompt(), pixel_values=torch.zeros(16, 1176))


def test_token_ids_outside_the_vocabulary_are_rejected(tiny_model):
    with pytest.raises(InvalidInputError, match=r"token ids must lie in \[0, 151936\)"):
        tiny_model(input_ids=torch.tensor([[1, 151936]]))


def test_text_only_forward_returns_logits_for_every_position(tiny_model):
    ids = _prompt(100, 200)
    with torch.inference_mode():
        logits = tiny_model(input_ids=ids)
    assert logits.shape == (1, ids.shape[1], 151936)
    assert torch.isfinite(logits).all()
