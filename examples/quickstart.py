"""Ask Qwen2-VL about a picture, end to end, on a checkpoint this script writes with RANDOM weights.

There is no trained model in the repository yet and the official weights need the network, so by
default this writes a random-weight checkpoint in the official Hub layout (tiny, or the real 2B
shape with 2 layers with --shape 2b-shallow) together with the real Qwen2-VL tokenizer, chat
template, preprocessor and generation files, then does exactly what a user does with a real
checkpoint: `Qwen2VL.from_pretrained`, a conversation with a picture, a generated answer. The
answer is gibberish because the weights are random; the pipeline, token counts and speed are real.
Pass --model DIR (a real checkpoint directory) or a Hub id to ask a real model the same way.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from PIL import Image, ImageDraw

from qwen2vl import Qwen2VL, SamplingParams
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
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()

    name = args.model
    if name is None:
        name = str(ROOT / "runs" / f"random-{args.shape}")
        config = TINY_CONFIG if args.shape == "tiny" else shallow(
            json.loads((ROOT / "tests/fixtures/Qwen2-VL-2B-Instruct.config.json").read_text()))
        if not Path(name, "generation_config.json").is_file():
            write_random_checkpoint(name, config, seed=0, copy_files_from=COMMON)
        print(f"RANDOM WEIGHTS ({name}): the answer below is gibberish; the pipeline and speed are real.")

    start = time.perf_counter()
    llm = Qwen2VL.from_pretrained(name)
    print(f"loaded in {time.perf_counter() - start:.2f} s")
    conversation = [{"role": "user", "content": [
        {"type": "image", "image": args.image or sample_picture()},
        {"type": "text", "text": args.prompt},
    ]}]
    start = time.perf_counter()
    result = llm.generate([conversation], SamplingParams(max_tokens=args.max_tokens))[0]
    seconds = time.perf_counter() - start
    usage = result.usage
    print(f"Q: {args.prompt}\nA: {result.text}")
    print(f"[{usage.prompt_tokens} prompt tokens ({usage.visual_tokens} visual), {usage.completion_tokens} generated "
          f"in {seconds:.2f} s, finish: {result.finish_reason}]")


if __name__ == "__main__":
    main()
