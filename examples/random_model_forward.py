"""Run Qwen2-VL end to end on a checkpoint this script writes with RANDOM weights.

There is no trained model in the repository yet and the official weights need the network, so
this writes a random-weight checkpoint in the official Hub layout (tiny by default, or the real
2B shape with 2 layers with --shape 2b-shallow) together with the real Qwen2-VL tokenizer, chat
template and preprocessor files, then does what a user does with a real checkpoint: loads it with
`from_pretrained`, turns a conversation with an image into tensors with the Processor, and runs
the model. The predictions are meaningless: the weights are random. Pass --model DIR (a real
checkpoint directory) to run a real model through the same code.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from qwen2vl import Qwen2VLModel
from qwen2vl.hub import resolve_model_dir
from qwen2vl.processing import Processor
from qwen2vl.random_checkpoint import TINY_CONFIG, shallow, write_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
COMMON = ROOT / "tests" / "fixtures" / "qwen2vl_common"


def sample_picture() -> Image.Image:
    """A 640x480 picture with a few coloured shapes."""
    image = Image.new("RGB", (640, 480), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((60, 80, 220, 240), fill="red")
    draw.rectangle((300, 200, 520, 420), fill="blue")
    draw.polygon([(420, 40), (600, 180), (360, 170)], fill="green")
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a real checkpoint directory or Hub id (default: write a random one)")
    parser.add_argument("--shape", choices=["tiny", "2b-shallow"], default="tiny")
    parser.add_argument("--image", help="an image path or URL (default: a generated picture of shapes)")
    parser.add_argument("--prompt", default="What shapes are in this picture?")
    args = parser.parse_args()

    name = args.model
    if name is None:
        name = str(ROOT / "runs" / f"random-{args.shape}")
        config = TINY_CONFIG if args.shape == "tiny" else shallow(
            json.loads((ROOT / "tests/fixtures/Qwen2-VL-2B-Instruct.config.json").read_text()))
        if not Path(name, "tokenizer.json").is_file():
            write_random_checkpoint(name, config, seed=0, copy_files_from=COMMON)
        print(f"RANDOM WEIGHTS ({name}): the predictions below are meaningless; shapes and speed are real.")

    start = time.perf_counter()
    model = Qwen2VLModel.from_pretrained(name)
    processor = Processor.from_pretrained(resolve_model_dir(name))
    loaded = time.perf_counter() - start

    conversation = [{"role": "user", "content": [
        {"type": "image", "image": args.image or sample_picture()},
        {"type": "text", "text": args.prompt},
    ]}]
    start = time.perf_counter()
    inputs = processor(conversation)
    prepared = time.perf_counter() - start
    start = time.perf_counter()
    with torch.inference_mode():
        logits = model(**inputs)
    forward = time.perf_counter() - start

    t, h, w = inputs["image_grid_thw"][0].tolist()
    visual = t * h * w // 4
    print(f"loaded in {loaded:.2f} s ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")
    print(f"image grid {t}x{h}x{w} patches -> {visual} visual tokens; prompt {inputs['input_ids'].shape[1]} tokens; "
          f"preprocessing {prepared * 1000:.0f} ms; forward {forward:.2f} s")
    top = logits[0, -1].topk(5).indices.tolist()
    print("most likely next tokens:", ", ".join(repr(processor.decode([i], skip_special_tokens=False)) for i in top))


if __name__ == "__main__":
    main()
