"""Qwen2-VL grounding: boxes in model text <-> pixel boxes on the original image, and drawing them.

Owns: parsing `<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>` spans
(coordinates normalised to 0-1000 over the image, as Qwen2-VL writes them) into pixel boxes, skipping
malformed spans; writing boxes back as prompt text; mapping boxes between image sizes (the original
and the resized model input); drawing labelled boxes. Does not own: generating the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image, ImageDraw

SCALE = 1000
_SPAN = re.compile(
    r"(?:<\|object_ref_start\|>(?P<label>.*?)<\|object_ref_end\|>\s*)?"
    r"<\|box_start\|>\s*\(\s*(?P<x1>-?\d+(?:\.\d+)?)\s*,\s*(?P<y1>-?\d+(?:\.\d+)?)\s*\)\s*,\s*"
    r"\(\s*(?P<x2>-?\d+(?:\.\d+)?)\s*,\s*(?P<y2>-?\d+(?:\.\d+)?)\s*\)\s*<\|box_end\|>",
    re.DOTALL,
)
_REF_ONLY = re.compile(r"<\|object_ref_start\|>(?P<label>.*?)<\|object_ref_end\|>", re.DOTALL)


@dataclass(frozen=True)
class Box:
    """A box in pixels of some image: left, top, right, bottom; with the phrase it refers to."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str | None = None

    @property
    def area(self) -> float:
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)

    def iou(self, other: "Box") -> float:
        inner = Box(max(self.x1, other.x1), max(self.y1, other.y1), min(self.x2, other.x2), min(self.y2, other.y2))
        union = self.area + other.area - inner.area
        return inner.area / union if union > 0 else 0.0


def parse_boxes(text: str, image_size: tuple[int, int]) -> list[Box]:
    """Every well-formed box span in `text`, in pixels of an image of `image_size` (width, height).

    A box without its own phrase takes the phrase of the box before it when both follow one
    reference; coordinates are clamped to the image; spans with bad numbers or no area are skipped.
    """
    width, height = image_size
    boxes: list[Box] = []
    last_label, last_end = None, -1
    for match in _SPAN.finditer(text):
        label = match.group("label")
        if label is None and last_end >= 0 and not text[last_end:match.start()].strip():
            label = last_label
        last_label, last_end = label, match.end()
        x1, y1, x2, y2 = (min(SCALE, max(0.0, float(match.group(k)))) for k in ("x1", "y1", "x2", "y2"))
        if x2 <= x1 or y2 <= y1:
            continue
        boxes.append(Box(x1 * width / SCALE, y1 * height / SCALE, x2 * width / SCALE, y2 * height / SCALE,
                         label.strip() if label else None))
    return boxes


def referenced_phrases(text: str) -> list[str]:
    """The phrases inside object_ref spans, boxed or not."""
    return [m.group("label").strip() for m in _REF_ONLY.finditer(text)]


def normalised(box: Box, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """A pixel box in Qwen2-VL's 0-1000 coordinates over the image (x1, y1, x2, y2), unrounded."""
    width, height = image_size
    return box.x1 * SCALE / width, box.y1 * SCALE / height, box.x2 * SCALE / width, box.y2 * SCALE / height


def box_to_text(box: Box, image_size: tuple[int, int]) -> str:
    """A pixel box (and its phrase) as the span Qwen2-VL reads and writes."""
    coords = [min(SCALE, max(0, round(c))) for c in normalised(box, image_size)]
    ref = f"<|object_ref_start|>{box.label}<|object_ref_end|>" if box.label else ""
    return f"{ref}<|box_start|>({coords[0]},{coords[1]}),({coords[2]},{coords[3]})<|box_end|>"


def rescale_box(box: Box, from_size: tuple[int, int], to_size: tuple[int, int]) -> Box:
    """The same region on an image resized from `from_size` to `to_size` (both width, height)."""
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return Box(box.x1 * sx, box.y1 * sy, box.x2 * sx, box.y2 * sy, box.label)


def draw_boxes(image: Image.Image, boxes: list[Box], width: int = 3) -> Image.Image:
    """A copy of the image with each box outlined and labelled."""
    canvas = image.convert("RGB")  # a new image, even when the picture is RGB already
    draw = ImageDraw.Draw(canvas)
    colours = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]
    for i, box in enumerate(boxes):
        colour = colours[i % len(colours)]
        draw.rectangle((box.x1, box.y1, box.x2, box.y2), outline=colour, width=width)
        if box.label:
            top = max(0, box.y1 - 12)
            draw.rectangle((box.x1, top, box.x1 + 6 * len(box.label) + 4, top + 12), fill=colour)
            draw.text((box.x1 + 2, top), box.label, fill="white")
    return canvas
