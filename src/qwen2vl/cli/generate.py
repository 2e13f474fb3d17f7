"""`qwen2vl generate`: one question about some images and videos, answered once.

Owns: building the conversation from flags and printing the answer (streamed or whole) to stdout,
the speed summary to stderr. Does not own: option parsing shared with other commands (common.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InvalidInputError
from ..grounding import draw_boxes, parse_boxes
from ..processing.media import load_image
from .common import (add_media_arguments, add_model_arguments, add_sampling_arguments, answer, load,
                     media_defaults_from, media_part, sampling_from)

EXAMPLES = """examples:
  qwen2vl generate Qwen/Qwen2-VL-2B-Instruct --image invoice.png --prompt "What is the total?"
  qwen2vl generate ./Qwen2-VL-7B-Instruct --image a.jpg --image b.jpg --prompt "What differs?" --stream
  qwen2vl generate ./model --video clip.mp4::fps=1,max_pixels=200000 --prompt "What happens?" --max-tokens 200
  qwen2vl generate ./model --image street.jpg --prompt "Find the red car" --draw-boxes boxes.png
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="answer one prompt about images and videos",
                                   description="Answer one prompt about images and videos.", epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--prompt", required=True, help="the question or instruction")
    parser.add_argument("--image", action="append", default=[], help="an image path, URL or data URI (repeatable)")
    parser.add_argument("--video", action="append", default=[], help="a video path or URL (repeatable)")
    parser.add_argument("--system", help="a system prompt (default: the template's)")
    parser.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    parser.add_argument("--draw-boxes", type=Path, metavar="PNG",
                        help="draw the boxes the answer gives onto the first image and save it here")
    add_sampling_arguments(parser)
    add_media_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    content = [media_part("image", spec) for spec in args.image] + [media_part("video", spec) for spec in args.video]
    content.append({"type": "text", "text": args.prompt})
    conversation = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": content}]
    params = sampling_from(args)
    llm = load(args)

    def show(delta: str) -> None:
        if args.stream:
            sys.stdout.write(delta)
            sys.stdout.flush()

    text, summary = answer(llm, conversation, params, media_defaults_from(args), show)
    sys.stdout.write("\n" if args.stream else text + "\n")
    print(summary, file=sys.stderr)
    if args.draw_boxes is not None:
        draw(args, text, llm)
    return 0


def draw(args: argparse.Namespace, text: str, llm) -> None:
    """Save the first image with the answer's boxes (normalised 0-1000) drawn in its own pixels."""
    if not args.image:
        raise InvalidInputError("--draw-boxes needs an --image to draw on")
    image = load_image(args.image[0].partition("::")[0], "image 1", llm.processor.limits)
    boxes = parse_boxes(text, image.size)
    draw_boxes(image, boxes).save(args.draw_boxes)
    print(f"drew {len(boxes)} box(es) on {args.draw_boxes}", file=sys.stderr)
