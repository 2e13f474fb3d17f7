"""Synthetic visual tasks, seeded and reproducible: the training and test data of the demo model.

Owns: rendering scenes of coloured shapes, text and moving balls at varied sizes and aspect ratios,
and turning them into conversations with one checkable answer each:
- colour of a named shape, shape of a named colour, counting shapes of a colour;
- naming the one shape in a picture, describing every shape from left to right (dense supervision
  that teaches the vision tower shapes and colours; the demo recipe starts with these);
- reading a rendered number or short word (OCR);
- grounding: the box of a named shape in Qwen2-VL's format (coordinates normalised to 0-1000),
  and as a stepping stone the same with one shape in the picture (where before which: from
  scratch, boxes among several shapes did not move in 1,500 steps, a lone shape's reached 88%);
- which half of the picture a named shape is in (a stepping stone towards boxes among several
  shapes: which shape is named, with the simplest answer about where; the demo recipe's second stage);
- comparing two pictures (which has more shapes);
- a short video: which way the ball moves (needs the frames' order).
The world is made easy to learn for a model of a few million parameters trained for an hour on a CPU:
shapes sit on the grid of 28-pixel cells that visual tokens cover (after the merger), never two in
one cell (from the same start, 1,000 steps of colour and shape questions reached 72%/70% against
58%/38% with shapes on the 14-pixel patch grid), text starts on the patch grid in one font size
(one character per cell read numbers no better, likely worse; sizes 24-48 no better than 36),
the ball moves a few pixels per frame (so each two-frame video patch shows the motion), and the
background shifts colour across the picture (RoPE alone carries no absolute position, and at the
demo's head size M-RoPE's row and column rotations are slow; the tint tells a small model where it
is looking).
`write_dataset` writes the images and a JSONL file in the fine-tuning format, with each line's task
and answer beside its messages, and each picture's shapes as the trainer's objects.
Does not own: training or scoring models.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .grounding import Box, box_to_text, normalised

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 20),
           "purple": (140, 60, 180), "orange": (245, 130, 30)}
SHAPES = ("circle", "square", "triangle")
WORDS = ("cat", "sun", "map", "box", "red", "tree", "fish", "milk", "star", "door", "moon", "book")
DIRECTIONS = ("left", "right", "up", "down")
PATCH = 14  # the vision tower's patch side in pixels
CELL = 2 * PATCH  # the side of the pixels one visual token covers (the merger joins 2x2 patches)
OCR_FONT_SIZE = 36
VIDEO_MIN_PIXELS = 112 * 112  # frames keep their size instead of growing to the 128-token video default


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    box: tuple[int, int, int, int]  # pixels: left, top, right, bottom


@dataclass(frozen=True)
class Sample:
    task: str
    messages: list[dict]
    answer: str
    images: dict[str, Image.Image]  # file name -> picture (frames of a video included)
    shapes: dict[str, tuple[Shape, ...]] = field(default_factory=dict)  # file name -> the shapes drawn on it


def _size(rng: random.Random) -> tuple[int, int]:
    """Width and height between 112 and 280 pixels, aspect ratios from 1:2 to 2:1."""
    width = rng.randrange(112, 281, 28)
    height = max(112, min(280, int(width * rng.choice((0.5, 0.75, 1.0, 1.33, 2.0))) // 28 * 28))
    return width, height


def _place(rng: random.Random, size: tuple[int, int], count: int) -> list[tuple]:
    """Up to `count` square boxes on the grid of visual-token cells (sides of 2 or 3 cells), a cell
    apart at least: no visual token shows parts of two shapes."""
    columns, rows = size[0] // CELL, size[1] // CELL
    placed: list[tuple] = []
    for _ in range(count * 40):
        if len(placed) == count:
            break
        side = rng.randint(2, max(2, min(3, min(columns, rows) // 2)))
        x, y = rng.randint(0, columns - side), rng.randint(0, rows - side)
        box = (x * CELL, y * CELL, (x + side) * CELL, (y + side) * CELL)
        if all(box[2] < b[0] or b[2] < box[0] or box[3] < b[1] or b[3] < box[1] for b in placed):
            placed.append(box)
    return placed


def canvas(size: tuple[int, int]) -> Image.Image:
    """A light background whose colour shifts from left to right (red) and top to bottom (green):
    the cue a small, briefly trained model can use to tell where in the picture something is."""
    return _background(size).copy()


@lru_cache(maxsize=64)
def _background(size: tuple[int, int]) -> Image.Image:
    """canvas() made once per size (the generator uses a few dozen sizes; making one took most of a
    sample's time). Bounded: canvas() is public and callers may ask for any size."""
    width, height = size
    across = np.linspace(0.0, 1.0, width)[None, :].repeat(height, 0)  # (height, width)
    down = np.linspace(0.0, 1.0, height)[:, None].repeat(width, 1)
    pixels = np.stack([200 + 55 * across, 200 + 55 * down, np.full((height, width), 230.0)], axis=-1)
    return Image.fromarray(pixels.round().astype(np.uint8), "RGB")


def _scene(rng: random.Random, shapes: list[tuple[str, str]], size: tuple[int, int]) -> tuple[Image.Image, list[Shape]]:
    image = canvas(size)
    draw = ImageDraw.Draw(image)
    drawn = []
    for (kind, colour), box in zip(shapes, _place(rng, size, len(shapes))):
        fill = COLOURS[colour]
        if kind == "circle":
            draw.ellipse(box, fill=fill)
        elif kind == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([((box[0] + box[2]) // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=fill)
        drawn.append(Shape(kind, colour, box))
    return image, drawn


def _pictured(task: str, key: str, text: str, answer: str, image: Image.Image, shapes: list[Shape]) -> Sample:
    """A question about one picture (named after the sample's key) and the shapes drawn on it."""
    return Sample(task, _question([f"{key}.png"], text), answer, {f"{key}.png": image}, {f"{key}.png": tuple(shapes)})


def _question(image_names: list[str], text: str, video: list[str] | None = None) -> list[dict]:
    parts = [{"type": "image", "image": name} for name in image_names]
    if video is not None:
        parts.append({"type": "video", "video": video})
    return [{"role": "user", "content": parts + [{"type": "text", "text": text}]}]


def _distinct_shapes(rng: random.Random, count: int) -> list[tuple[str, str]]:
    kinds = rng.sample(SHAPES, min(count, len(SHAPES)))
    colours = rng.sample(list(COLOURS), len(kinds))
    return list(zip(kinds, colours))


def colour_task(rng: random.Random, key: str) -> Sample:
    image, shapes = _scene(rng, _distinct_shapes(rng, rng.randint(1, 3)), _size(rng))
    target = rng.choice(shapes)
    return _pictured("colour", key, f"What colour is the {target.kind}?", target.colour, image, shapes)


def shape_task(rng: random.Random, key: str) -> Sample:
    image, shapes = _scene(rng, _distinct_shapes(rng, rng.randint(1, 3)), _size(rng))
    target = rng.choice(shapes)
    return _pictured("shape", key, f"What shape is {target.colour}?", target.kind, image, shapes)


def count_task(rng: random.Random, key: str) -> Sample:
    colour = rng.choice(list(COLOURS))
    others = [c for c in COLOURS if c != colour]
    wanted = rng.randint(0, 4)
    items = [(rng.choice(SHAPES), colour) for _ in range(wanted)]
    items += [(rng.choice(SHAPES), rng.choice(others)) for _ in range(rng.randint(0, 3))]
    rng.shuffle(items)
    image, shapes = _scene(rng, items, (rng.randrange(224, 281, 28), rng.randrange(196, 281, 28)))
    count = sum(1 for s in shapes if s.colour == colour)
    return _pictured("count", key, f"How many {colour} shapes are there?", str(count), image, shapes)


def _named(shape: Shape) -> str:
    return f"{'an' if shape.colour[0] in 'aeiou' else 'a'} {shape.colour} {shape.kind}"


def _the(shape: Shape) -> str:
    """The phrase a question names a shape by: "the blue circle"."""
    return f"the {shape.colour} {shape.kind}"


def name_task(rng: random.Random, key: str) -> Sample:
    image, shapes = _scene(rng, _distinct_shapes(rng, 1), _size(rng))
    return _pictured("name", key, "What is in the picture?", _named(shapes[0]), image, shapes)


def describe_task(rng: random.Random, key: str) -> Sample:
    items = [(rng.choice(SHAPES), rng.choice(list(COLOURS))) for _ in range(rng.randint(1, 4))]
    image, shapes = _scene(rng, items, _size(rng))
    ordered = sorted(shapes, key=lambda s: (s.box[0] + s.box[2], s.box[1]))
    words = [_named(s) for s in ordered]
    answer = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return _pictured("describe", key, "Describe the picture from left to right.", answer, image, shapes)


def ocr_task(rng: random.Random, key: str) -> Sample:
    text = rng.choice(WORDS) if rng.random() < 0.5 else str(rng.randint(0, 999))
    width, height = _size(rng)
    image = canvas((width, height))
    font = ImageFont.load_default(size=OCR_FONT_SIZE)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = PATCH * rng.randint(0, max(0, width - (right - left) - 4) // PATCH)  # text starts on a patch edge
    y = PATCH * rng.randint(0, max(0, height - (bottom - top) - 4) // PATCH)
    draw.text((x - left, y - top), text, font=font, fill=(20, 20, 20))
    return _pictured("ocr", key, "What is written in the picture?", text, image, [])


def grounding_task(rng: random.Random, key: str, most: int = 3) -> Sample:
    image, shapes = _scene(rng, _distinct_shapes(rng, rng.randint(1, most)), _size(rng))
    target = rng.choice(shapes)
    phrase = _the(target)
    answer = box_to_text(Box(*target.box, label=phrase), image.size)
    return _pictured("grounding", key, f"Locate {phrase}.", answer, image, shapes)


def lone_grounding_task(rng: random.Random, key: str) -> Sample:
    """Grounding with one shape in the picture: where, without which (a curriculum stepping stone)."""
    return grounding_task(rng, key, most=1)


def side_task(rng: random.Random, key: str) -> Sample:
    """Which half of the picture a named shape is in, among one to three shapes (a curriculum
    stepping stone: which shape the words name, with the simplest answer about where it is)."""
    while True:
        image, shapes = _scene(rng, _distinct_shapes(rng, rng.randint(1, 3)), _size(rng))
        target = rng.choice(shapes)
        offset = (target.box[0] + target.box[2]) / 2 - image.size[0] / 2
        if abs(offset) >= CELL / 2:
            break
    return _pictured("side", key, f"Is {_the(target)} on the left or the right?", "left" if offset < 0 else "right",
                     image, shapes)


def compare_task(rng: random.Random, key: str) -> Sample:
    counts = rng.sample(range(1, 6), 2)
    pictures, drawn = {}, {}
    for i, count in enumerate(counts):
        items = [(rng.choice(SHAPES), rng.choice(list(COLOURS))) for _ in range(count)]
        image, shapes = _scene(rng, items, (rng.randrange(112, 225, 28), rng.randrange(112, 225, 28)))
        counts[i] = len(shapes)
        pictures[f"{key}-{i}.png"] = image
        drawn[f"{key}-{i}.png"] = tuple(shapes)
    answer = "the first" if counts[0] > counts[1] else "the second"
    if counts[0] == counts[1]:
        return compare_task(rng, key)
    return Sample("compare", _question(list(pictures), "Which picture has more shapes?"), answer, pictures, drawn)


def direction_task(rng: random.Random, key: str) -> Sample:
    direction = rng.choice(DIRECTIONS)
    width, height = rng.choice(((168, 112), (112, 168), (168, 168)))
    radius, frames = 12, 4
    dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[direction]
    step = rng.randint(5, 9)  # pixels per frame: the motion shows inside each two-frame video patch
    span_x, span_y = abs(dx) * step * (frames - 1), abs(dy) * step * (frames - 1)
    start_x = rng.randint(radius + (span_x if dx < 0 else 0), width - radius - (span_x if dx > 0 else 0))
    start_y = rng.randint(radius + (span_y if dy < 0 else 0), height - radius - (span_y if dy > 0 else 0))
    colour = COLOURS[rng.choice(list(COLOURS))]
    pictures = {}
    for f in range(frames):
        frame = canvas((width, height))
        cx, cy = start_x + dx * step * f, start_y + dy * step * f
        ImageDraw.Draw(frame).ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
        pictures[f"{key}-f{f}.png"] = frame
    messages = _question([], "Which way does the ball move?", video=list(pictures))
    messages[0]["content"][0]["min_pixels"] = VIDEO_MIN_PIXELS
    return Sample("direction", messages, direction, pictures)


TASKS: dict[str, Callable[[random.Random, str], Sample]] = {
    "name": name_task, "colour": colour_task, "shape": shape_task, "count": count_task, "describe": describe_task,
    "ocr": ocr_task, "grounding": grounding_task, "compare": compare_task, "direction": direction_task,
}


# Easier forms of a task for a training curriculum; not part of the scored set.
STEPPING_STONES: dict[str, Callable[[random.Random, str], Sample]] = {"lone-grounding": lone_grounding_task,
                                                                      "side": side_task}


def samples(count: int, seed: int, tasks: tuple[str, ...] = tuple(TASKS)) -> Iterator[Sample]:
    """`count` samples cycling through `tasks` (TASKS or STEPPING_STONES), made one at a time, the
    same for the same seed."""
    rng = random.Random(seed)
    makers = {**TASKS, **STEPPING_STONES}
    return (makers[tasks[i % len(tasks)]](rng, f"s{seed}-{i:06d}") for i in range(count))


def _object(shape: Shape, size: tuple[int, int], tags: bool) -> dict:
    """A drawn shape as one of the trainer's objects: its box in 0-1000 coordinates, with its colour
    and kind as tags (or no tags)."""
    return {"box": [round(c, 2) for c in normalised(Box(*shape.box), size)],
            "tags": [shape.colour, shape.kind] if tags else []}


def write_dataset(directory: str | Path, count: int, seed: int, tasks: tuple[str, ...] = tuple(TASKS),
                  name: str = "data.jsonl", object_tags: bool = True) -> Path:
    """Images under directory/media/<name without .jsonl>/ (so datasets sharing a directory keep
    their own pictures) and one JSONL line per sample: messages (with the answer as the assistant
    turn, media paths relative to the file), task, answer, and the shapes of each image as the
    trainer's objects (box in 0-1000 coordinates, tags colour and kind unless object_tags is False:
    finetune/object_targets.py; none for a picture of text)."""
    directory = Path(directory)
    media = f"media/{Path(name).stem}"
    (directory / media).mkdir(parents=True, exist_ok=True)
    lines = []
    for sample in samples(count, seed, tasks):
        for file, image in sample.images.items():
            image.save(directory / media / file, compress_level=1)  # lossless either way; 2x faster than 6
        messages = json.loads(json.dumps(sample.messages))
        objects = []
        for part in messages[0]["content"]:
            if part.get("type") == "image":
                objects.append([_object(shape, sample.images[part["image"]].size, object_tags)
                                for shape in sample.shapes.get(part["image"], ())])
                part["image"] = f"{media}/{part['image']}"
            elif part.get("type") == "video":
                part["video"] = [f"{media}/{frame}" for frame in part["video"]]
        messages.append({"role": "assistant", "content": sample.answer})
        lines.append(json.dumps({"task": sample.task, "answer": sample.answer, "messages": messages,
                                 "objects": objects}))
    path = directory / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
