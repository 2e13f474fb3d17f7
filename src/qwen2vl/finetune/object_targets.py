"""Object targets: a training-only loss that tells every visual token about the objects it shows.

A JSONL line may carry "objects": one list per image of the conversation (in order), each object
{"box": [x1, y1, x2, y2], "tags": ["red", "circle"]} with the box in Qwen2-VL's grounding
coordinates (0-1000 over the image, so it holds for the resized model input too). From them every
merged visual token (cell) of an image gets targets:
- a cell whose centre lies inside an object's box (the smallest, where boxes overlap): that object's
  box (0-1000 divided by 100) and its tags;
- the first such cell of each object in reading order (the cell under the box's centre for an object
  too small to hold a cell's centre): an "anchor" mark, one per object.
The images of lines without "objects" get no targets (their cells are left out of the loss).
A linear head (zero at the start) on the RMS-normed visual tokens as the merger hands them to the
decoder predicts these; the loss is the boxes' squared error (times 0.1) and the binary
cross-entropies of anchors and tags, summed over cells. The head lives only while training:
checkpoints keep the official architecture. In the demo model's box stages, box and anchor targets
like these placed 85-88% of boxes among several shapes against 74-78% without
(docs/demo_model_experiments.md).
Owns: validating the "objects" field, the tag vocabulary, the per-cell targets and the head's loss.
Does not own: reading the data (data.py) or the loop that adds the loss (trainer.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError
from ..grounding import SCALE  # Qwen2-VL's grounding coordinates run 0-1000 over the image

BOX_UNIT = 100  # box targets in tenths of the image (0-10)


@dataclass(frozen=True)
class ObjectBox:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in 0-1000 coordinates
    tags: tuple[str, ...]


@dataclass(frozen=True)
class CellTargets:
    """Per-cell targets of a batch's images, cells in the order the merger emits them: [N] or [N, k]."""

    boxes: torch.Tensor  # [N, 4]
    annotated: torch.Tensor  # [N] bool: the cell's image has objects listed (perhaps none)
    inside: torch.Tensor  # [N] bool: the cell shows an object
    anchors: torch.Tensor  # [N] 0/1
    tags: torch.Tensor  # [N, V] 0/1


def parse_objects(value: Any, images: int) -> tuple[tuple[ObjectBox, ...], ...]:
    """A line's "objects" field, checked: one list per image, each object a box and a list of tags."""
    if not isinstance(value, list) or len(value) != images:
        found = f"{len(value)} lists" if isinstance(value, list) else type(value).__name__
        raise InvalidInputError(f"objects must be a list with one list per image ({images}), not {found}")
    parsed = []
    for i, per_image in enumerate(value):
        if not isinstance(per_image, list):
            raise InvalidInputError(f"the objects of image {i + 1} must be a list")
        parsed.append(tuple(_parse_object(obj, i) for obj in per_image))
    return tuple(parsed)


def _parse_object(obj: Any, image: int) -> ObjectBox:
    where = f"an object of image {image + 1}"
    if not isinstance(obj, dict) or not isinstance(obj.get("box"), list) or len(obj["box"]) != 4:
        raise InvalidInputError(f"{where} needs a box [x1, y1, x2, y2]")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj["box"]):
        raise InvalidInputError(f"{where} has a box that is not four numbers: {obj['box']}")
    x1, y1, x2, y2 = (float(v) for v in obj["box"])
    if not (0 <= x1 < x2 <= SCALE and 0 <= y1 < y2 <= SCALE):
        raise InvalidInputError(f"{where} has box {obj['box']}: it must lie in 0-{SCALE} with x1 < x2 and y1 < y2")
    tags = obj.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise InvalidInputError(f"{where} has tags that are not a list of words: {tags}")
    return ObjectBox((x1, y1, x2, y2), tuple(tags))


def tag_vocabulary(objects: list[tuple[tuple[ObjectBox, ...], ...]]) -> tuple[str, ...]:
    """Every tag of a dataset's objects, sorted (the same on every process)."""
    return tuple(sorted({tag for per_line in objects for per_image in per_line for obj in per_image
                         for tag in obj.tags}))


def cell_targets(objects: list[tuple[ObjectBox, ...] | None], grids: list[tuple[int, int, int]], merge: int,
                 vocabulary: tuple[str, ...]) -> CellTargets:
    """The targets of every cell of `grids` (t, h, w in patches, one per image; one image or more),
    whose objects are `objects` (one tuple per image, in the same order; None: not annotated)."""
    if len(objects) != len(grids):
        raise InvalidInputError(f"{len(grids)} images but objects for {len(objects)}")
    index = {tag: i for i, tag in enumerate(vocabulary)}
    parts = [_image_targets(per_image, t, h // merge, w // merge, index) for per_image, (t, h, w)
             in zip(objects, grids)]
    return CellTargets(*(torch.cat(tensors) for tensors in zip(*parts)))


def _image_targets(objects: tuple[ObjectBox, ...] | None, frames: int, rows: int, columns: int,
                   index: dict[str, int]) -> tuple[torch.Tensor, ...]:
    cells = rows * columns
    annotated = torch.full((cells * frames,), objects is not None)
    boxes, inside = torch.zeros(cells, 4), torch.zeros(cells, dtype=torch.bool)
    anchors, tags = torch.zeros(cells), torch.zeros(cells, len(index))
    owner_area = torch.full((cells,), float("inf"))
    centre_x = (torch.arange(columns) + 0.5) * SCALE / columns  # [columns]
    centre_y = (torch.arange(rows) + 0.5) * SCALE / rows  # [rows]
    for obj in objects or ():
        x1, y1, x2, y2 = obj.box
        hits = ((centre_y[:, None] >= y1) & (centre_y[:, None] <= y2)
                & (centre_x[None, :] >= x1) & (centre_x[None, :] <= x2)).flatten()  # [rows * columns]
        if not bool(hits.any()):
            row = min(rows - 1, int((y1 + y2) / 2 * rows / SCALE))
            column = min(columns - 1, int((x1 + x2) / 2 * columns / SCALE))
            hits[row * columns + column] = True
        anchors[int(hits.nonzero()[0])] = 1.0
        area = (x2 - x1) * (y2 - y1)
        mine = hits & (area < owner_area)  # overlapping boxes: the smallest owns the cell
        owner_area[mine] = area
        boxes[mine] = torch.tensor(obj.box) / BOX_UNIT
        inside |= mine
        tags[mine] = 0.0
        for tag in obj.tags:
            tags[mine, index[tag]] = 1.0
    # an image's cells repeat for each of its frames (a picture is one frame)
    return boxes.repeat(frames, 1), annotated, inside.repeat(frames), anchors.repeat(frames), tags.repeat(frames, 1)


class ObjectHead(torch.nn.Module):
    """The training-only head: box (4), anchor (1) and tags (V) per visual token."""

    def __init__(self, hidden: int, tags: int):
        super().__init__()
        self.proj = torch.nn.Linear(hidden, 5 + tags)
        torch.nn.init.zeros_(self.proj.weight)
        torch.nn.init.zeros_(self.proj.bias)

    def loss_sum(self, features: torch.Tensor, targets: CellTargets) -> torch.Tensor:
        """The summed loss over the cells of `features` [N, hidden] (the merger's output)."""
        out = self.proj(F.rms_norm(features, (features.shape[-1],)))  # [N, 5 + V]
        inside, annotated = targets.inside.to(out.device), targets.annotated.to(out.device)
        box_error = ((out[:, :4] - targets.boxes.to(out.device)) ** 2).sum(-1)[inside].sum()
        anchor_error = F.binary_cross_entropy_with_logits(out[annotated, 4], targets.anchors.to(out.device)[annotated],
                                                          reduction="sum")
        tag_error = F.binary_cross_entropy_with_logits(out[inside, 5:], targets.tags.to(out.device)[inside],
                                                       reduction="sum")
        return 0.1 * box_error + anchor_error + tag_error
