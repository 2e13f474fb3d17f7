"""Preprocessing time: qwen2vl's Processor against qwen-vl-utils + transformers' Qwen2VLProcessor.

Inputs (generated once into runs/bench_media/): a 4000x3000 JPEG photo, a 1240x1754 scanned page
(PNG), and a 60-second 1280x720 30 fps H.264 video. Each pipeline turns a one-message conversation
into model tensors; the figure is the median of --repeat runs, reported with the ratio
reference / ours (above 1 means we are faster). Needs the test environment (the references).

    .venv-test/bin/python benchmarks/preprocessing.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from media_factory import pattern, write_video  # noqa: E402

from qwen2vl.processing import Processor  # noqa: E402

COMMON = ROOT / "tests" / "fixtures" / "qwen2vl_common"


def make_inputs(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    photo, page, video = directory / "photo.jpg", directory / "page.png", directory / "video.mp4"
    if not photo.exists():
        Image.fromarray(pattern(3000, 4000, seed=1)).save(photo, quality=92)
    if not page.exists():
        scan = Image.new("L", (1240, 1754), 250)
        draw = ImageDraw.Draw(scan)
        for line in range(60):
            draw.text((80, 60 + line * 27), f"Line {line:02d}: invoice item {line * 37 % 1000:>4} qty {line % 7} EUR", fill=20)
        scan.save(page)
    if not video.exists():
        print("encoding the 60 s 720p test video (once) ...", flush=True)
        write_video(video, 60, 1280, 720, 30)
    return {"photo 4000x3000": photo, "scanned page 1240x1754": page, "video 60 s 720p": video}


def conversation(kind: str, path: Path) -> list[dict]:
    return [{"role": "user", "content": [{"type": kind, kind: str(path)}, {"type": "text", "text": "Describe."}]}]


def run_reference(processor, messages):
    from qwen_vl_utils import process_vision_info

    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    images, videos = process_vision_info(messages)
    return processor(text=[text], images=images, videos=videos, padding=True, return_tensors="pt")


def median_seconds(function, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--media", default=str(ROOT / "runs" / "bench_media"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from transformers import Qwen2VLProcessor

    reference = Qwen2VLProcessor.from_pretrained(str(COMMON))
    ours = Processor.from_pretrained(COMMON)
    print("| input | reference (s) | qwen2vl (s) | speed-up |")
    print("|---|---|---|---|")
    for name, path in make_inputs(Path(args.media)).items():
        messages = conversation("video" if path.suffix == ".mp4" else "image", path)
        ours(messages), run_reference(reference, messages)  # warm-up: imports, first-call allocations
        theirs = median_seconds(lambda: run_reference(reference, messages), args.repeat)
        mine = median_seconds(lambda: ours(messages), args.repeat)
        print(f"| {name} | {theirs:.3f} | {mine:.3f} | {theirs / mine:.2f}x |", flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
