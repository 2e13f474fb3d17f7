"""Small generated fine-tuning sets: pictures of one coloured square and its colour as the answer."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (240, 220, 20)}


def write_colour_dataset(directory: Path, count: int, name: str = "train.jsonl") -> Path:
    """`count` conversations in `directory/name`, images under `directory/img/` referenced relatively."""
    (directory / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        colour = list(COLOURS)[i % len(COLOURS)]
        image = Image.new("RGB", (56 + 28 * (i % 3), 56), (255, 255, 255))
        image.paste(COLOURS[colour], (8, 8, 48, 48))
        image.save(directory / "img" / f"{name}-{i}.png")
        lines.append({"messages": [
            {"role": "user", "content": [{"type": "image", "image": f"img/{name}-{i}.png"},
                                         {"type": "text", "text": "What colour is the square?"}]},
            {"role": "assistant", "content": f"The square is {colour}."},
        ]})
    path = directory / name
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path
