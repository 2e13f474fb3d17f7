"""The synthetic task generator: reproducible, answers that agree with the pictures, loadable data."""

from __future__ import annotations

import io

import numpy as np
import pytest

from qwen2vl.grounding import parse_boxes
from qwen2vl.synthetic import CELL, COLOURS, PATCH, TASKS, canvas, samples, write_dataset


def image_bytes(sample):
    out = []
    for name, image in sorted(sample.images.items()):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append((name, buffer.getvalue()))
    return out


def test_the_same_seed_gives_the_same_samples():
    first, second = list(samples(14, seed=5)), list(samples(14, seed=5))
    assert [(s.task, s.answer, s.messages) for s in first] == [(s.task, s.answer, s.messages) for s in second]
    assert [image_bytes(s) for s in first] == [image_bytes(s) for s in second]


def test_another_seed_gives_other_samples():
    assert [s.answer for s in samples(14, seed=5)] != [s.answer for s in samples(14, seed=6)]


def test_every_task_appears_and_image_sizes_vary():
    batch = list(samples(70, seed=1))
    assert {s.task for s in batch} == set(TASKS)
    sizes = {image.size for s in batch for image in s.images.values()}
    assert len(sizes) >= 8


def colour_mask(image, colour):
    pixels = np.asarray(image).astype(int)
    return (np.abs(pixels - np.array(COLOURS[colour])).sum(-1) < 10)


@pytest.mark.parametrize("seed", range(5))
def test_grounding_answers_box_the_named_shape(seed):
    sample = next(samples(1, seed=seed, tasks=("grounding",)))
    image = next(iter(sample.images.values()))
    (box,) = parse_boxes(sample.answer, image.size)
    colour = box.label.split()[1]
    mask = colour_mask(image, colour)
    ys, xs = np.nonzero(mask)
    assert box.x1 - 2 <= xs.min() and xs.max() <= box.x2 + 2 and box.y1 - 2 <= ys.min() and ys.max() <= box.y2 + 2


@pytest.mark.parametrize("seed", range(5))
def test_lone_grounding_boxes_the_only_shape_in_the_picture(seed):
    sample = next(samples(1, seed=seed, tasks=("lone-grounding",)))
    image = next(iter(sample.images.values()))
    (box,) = parse_boxes(sample.answer, image.size)
    shape_pixels = sum(colour_mask(image, colour).sum() for colour in COLOURS)
    assert sample.task == "grounding"
    assert shape_pixels == colour_mask(image, box.label.split()[1]).sum() > 0


@pytest.mark.parametrize("seed", range(8))
def test_side_answers_the_half_of_the_picture_the_named_shape_is_in(seed):
    sample = next(samples(1, seed=seed, tasks=("side",)))
    image = next(iter(sample.images.values()))
    colour = sample.messages[0]["content"][-1]["text"].split()[2]
    xs = np.nonzero(colour_mask(image, colour))[1]
    centre = (xs.min() + xs.max() + 1) / 2
    assert abs(centre - image.size[0] / 2) >= CELL / 2
    assert sample.answer == ("left" if centre < image.size[0] / 2 else "right")


@pytest.mark.parametrize("seed", range(5))
def test_colour_answers_are_in_the_picture(seed):
    sample = next(samples(1, seed=seed, tasks=("colour",)))
    assert colour_mask(next(iter(sample.images.values())), sample.answer).sum() > 100


@pytest.mark.parametrize("seed", range(5))
def test_counts_of_zero_mean_the_colour_is_absent(seed):
    sample = next(samples(1, seed=seed, tasks=("count",)))
    colour = sample.messages[0]["content"][-1]["text"].split()[2]
    present = colour_mask(next(iter(sample.images.values())), colour).sum() > 0
    assert present == (sample.answer != "0")


def ball_centres(sample):
    centres = []
    for _, frame in sorted(sample.images.items()):
        ys, xs = np.nonzero(np.asarray(frame).astype(int).sum(-1) < 600)
        centres.append((xs.mean(), ys.mean()))
    return centres


@pytest.mark.parametrize("seed", range(5))
def test_the_ball_moves_the_way_the_answer_says(seed):
    centres = ball_centres(sample := next(samples(1, seed=seed, tasks=("direction",))))
    dx, dy = centres[-1][0] - centres[0][0], centres[-1][1] - centres[0][1]
    expected = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
    assert sample.answer == expected


def test_written_dataset_loads_as_fine_tuning_data(tiny_checkpoint, tmp_path):
    from qwen2vl.finetune.data import read_records
    from qwen2vl.processing import Processor

    path = write_dataset(tmp_path, 14, seed=3)
    records, problems = read_records(path, Processor.from_pretrained(tiny_checkpoint), max_length=4096)
    assert len(records) == 14 and not problems
    assert all(r.messages[-1]["role"] == "assistant" for r in records)


def test_datasets_written_to_one_directory_with_one_seed_keep_their_own_pictures(tmp_path):
    from PIL import Image

    from qwen2vl.demo_model import read_questions

    lone = write_dataset(tmp_path, 4, seed=2, tasks=("lone-grounding",), name="lone.jsonl")
    write_dataset(tmp_path, 4, seed=2, tasks=("ocr",), name="ocr.jsonl")
    for row, question in read_questions(lone):
        with Image.open(question[0]["content"][0]["image"]) as image:
            assert colour_mask(image, row["answer"].split("the ")[1].split()[0]).any()  # the named shape is there


@pytest.mark.parametrize("seed", range(5))
def test_descriptions_name_the_pictures_colours_from_left_to_right(seed):
    sample = next(samples(1, seed=seed, tasks=("describe",)))
    image = next(iter(sample.images.values()))
    named = [item.split()[1] for item in sample.answer.replace(" and ", ", ").split(", ")]
    assert set(named) == {colour for colour in COLOURS if colour_mask(image, colour).sum() > 100}
    if len(set(named)) == len(named):
        centres = [np.nonzero(colour_mask(image, colour))[1].mean() for colour in named]
        assert centres == sorted(centres)


@pytest.mark.parametrize("seed", range(5))
def test_the_ball_moves_a_few_pixels_per_frame_so_each_video_patch_shows_the_motion(seed):
    centres = np.array(ball_centres(next(samples(1, seed=seed, tasks=("direction",)))))
    steps = np.abs(np.diff(centres, axis=0)).max(axis=1)
    assert ((steps >= 4) & (steps <= 10)).all()


def test_the_background_shifts_colour_from_left_to_right_and_top_to_bottom():
    pixels = np.asarray(canvas((168, 112))).astype(int)
    assert (np.diff(pixels[0, :, 0]) >= 0).all() and pixels[0, -1, 0] - pixels[0, 0, 0] > 40
    assert (np.diff(pixels[:, 0, 1]) >= 0).all() and pixels[-1, 0, 1] - pixels[0, 0, 1] > 40


@pytest.mark.parametrize("seed", range(5))
def test_shapes_sit_on_the_grid_of_visual_token_cells(seed):
    sample = next(samples(1, seed=seed, tasks=("colour",)))
    ys, xs = np.nonzero(colour_mask(next(iter(sample.images.values())), sample.answer))
    assert xs.min() % CELL <= 1 and ys.min() % CELL <= 1  # a circle's outline may start a pixel in


def test_no_visual_token_cell_shows_two_shapes():
    for sample in samples(20, seed=0, tasks=("count",)):  # crowded pictures, up to seven shapes
        image = next(iter(sample.images.values()))
        masks = [colour_mask(image, colour) for colour in COLOURS]  # (shapes of one colour pass unseen)
        height, width = masks[0].shape
        for top in range(0, height, CELL):
            for left in range(0, width, CELL):
                assert sum(bool(m[top:top + CELL, left:left + CELL].any()) for m in masks) <= 1


def text_ink(seed):
    """The dark pixels of one reading picture of this seed (the rendered text), as a height x width mask."""
    sample = next(samples(1, seed=seed, tasks=("ocr",)))
    return np.asarray(next(iter(sample.images.values()))).astype(int).sum(-1) < 300


@pytest.mark.parametrize("seed", range(5))
def test_written_text_starts_at_a_patch_edge(seed):
    ys, xs = np.nonzero(text_ink(seed))
    assert xs.min() % PATCH <= 3 and ys.min() % PATCH <= 3


@pytest.mark.parametrize("seed", range(10))
def test_written_text_fits_inside_its_picture(seed):
    ink = text_ink(seed)
    ys, xs = np.nonzero(ink)
    assert xs.max() < ink.shape[1] - 1 and ys.max() < ink.shape[0] - 1
