"""Run the Qwen2-VL network end to end on a checkpoint this script writes with RANDOM weights.

There is no trained model in the repository yet and the official weights need the network, so
this writes a random-weight checkpoint in the official Hub layout (tiny by default, or the real
2B shape with --shape 2b-shallow), loads it through `Qwen2VLModel.from_pretrained` exactly as a
real checkpoint would be loaded, and runs one forward over a prompt holding one image block.
The predicted tokens are meaningless: the weights are random. Pass --model DIR to run a real
checkpoint directory instead (the same code path).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from qwen2vl import Qwen2VLModel
from qwen2vl.random_checkpoint import TINY_CONFIG, shallow, write_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a real checkpoint directory or Hub id (default: write a random one)")
    parser.add_argument("--shape", choices=["tiny", "2b-shallow"], default="tiny")
    parser.add_argument("--grid", type=int, nargs=2, default=[16, 16], metavar=("H", "W"),
                        help="image size in 14-pixel patches (even numbers)")
    args = parser.parse_args()

    name = args.model
    if name is None:
        name = str(ROOT / "runs" / f"random-{args.shape}")
        config = TINY_CONFIG if args.shape == "tiny" else shallow(
            json.loads((ROOT / "tests/fixtures/Qwen2-VL-2B-Instruct.config.json").read_text()))
        if not Path(name, "config.json").is_file():
            write_random_checkpoint(name, config, seed=0)
        print(f"RANDOM WEIGHTS: wrote/using {name}; the output below shows shapes and speed, not meaning.")

    start = time.perf_counter()
    model = Qwen2VLModel.from_pretrained(name)
    loaded = time.perf_counter() - start
    cfg = model.config
    h, w = args.grid
    grid = torch.tensor([[1, h, w]])
    pixels = torch.randn(h * w, cfg.vision.patch_input_dim)  # one image: [patches, 3*2*14*14]
    visual_tokens = h * w // cfg.vision.merge_unit
    ids = torch.tensor([[151644, 872, 198, cfg.vision_start_token_id] + [cfg.image_token_id] * visual_tokens
                        + [cfg.vision_end_token_id, 151645, 198, 151644, 77091, 198]])

    start = time.perf_counter()
    with torch.inference_mode():
        logits = model(input_ids=ids, pixel_values=pixels, image_grid_thw=grid)
    forward = time.perf_counter() - start
    print(f"loaded in {loaded:.2f} s: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
    print(f"prompt: {ids.shape[1]} tokens ({visual_tokens} visual) -> logits {tuple(logits.shape)} in {forward:.2f} s")
    print(f"next-token prediction: id {int(logits[0, -1].argmax())}")


if __name__ == "__main__":
    main()
