"""What the CLI subcommands share: model, sampling and media options, the load progress bar, and
running one request with a speed summary.

Owns: argument groups and their translation into API objects; terminal presentation helpers.
Does not own: any subcommand's flow (generate.py, chat.py).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any, Callable, Mapping

from ..engine import Qwen2VL, SamplingParams
from ..errors import InvalidInputError

MEDIA_KEYS = {"min_pixels": int, "max_pixels": int, "resized_height": int, "resized_width": int, "fps": float,
              "nframes": int, "min_frames": int, "max_frames": int, "video_start": float, "video_end": float,
              "total_pixels": int}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a checkpoint directory or a Hub id such as Qwen/Qwen2-VL-2B-Instruct")
    parser.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16 or auto")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    parser.add_argument("--vision-cache-mb", type=float, default=512, help="memory for reusing image encodings")
    parser.add_argument("--lora", help="a LoRA adapter directory (PEFT format) to merge into the model")
    parser.add_argument("--quantize", choices=["int8", "int4"],
                        help="int8 weights, or 4-bit decoder weights (CPU): faster, less exact")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling (defaults: the checkpoint's generation_config.json)")
    group.add_argument("--max-tokens", type=int, default=512)
    group.add_argument("--temperature", type=float)
    group.add_argument("--top-p", type=float)
    group.add_argument("--top-k", type=int)
    group.add_argument("--min-p", type=float, default=0.0)
    group.add_argument("--repetition-penalty", type=float)
    group.add_argument("--presence-penalty", type=float, default=0.0)
    group.add_argument("--frequency-penalty", type=float, default=0.0)
    group.add_argument("--seed", type=int)
    group.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")


def add_media_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("media budgets for every image and video (per item: PATH::key=value,...)")
    group.add_argument("--min-pixels", type=int)
    group.add_argument("--max-pixels", type=int)
    group.add_argument("--fps", type=float, help="video frames sampled per second (default 2)")
    group.add_argument("--nframes", type=int, help="video frames sampled in all (instead of --fps)")
    group.add_argument("--max-frames", type=int)


def sampling_from(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty, seed=args.seed, stop=tuple(args.stop),
    )


def media_defaults_from(args: argparse.Namespace) -> dict[str, Any]:
    names = ("min_pixels", "max_pixels", "fps", "nframes", "max_frames")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def media_part(kind: str, spec: str) -> dict[str, Any]:
    """`PATH` or `PATH::key=value,key=value` -> a Qwen-form content part."""
    source, _, options = spec.partition("::")
    part: dict[str, Any] = {"type": kind, kind: source}
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key not in MEDIA_KEYS or not value:
            raise InvalidInputError(f"{spec}: unknown media option '{option}' (known: {', '.join(MEDIA_KEYS)})")
        try:
            part[key] = MEDIA_KEYS[key](value)
        except ValueError:
            raise InvalidInputError(f"{spec}: '{key}' needs a number, got '{value}'") from None
    return part


class ProgressBar:
    """Loading progress on stderr: a redrawn bar on a terminal, one line otherwise."""

    def __init__(self, label: str, stream=sys.stderr):
        self.label, self.stream, self.shown = label, stream, -1
        self.redraw = stream.isatty()

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if percent == self.shown or not (self.redraw or done >= total):
            return
        self.shown = percent
        bar = "#" * (percent // 4)
        end = "\n" if done >= total else ""
        self.stream.write(f"\r{self.label} [{bar:<25}] {percent:3d}% of {total / 2**30:.2f} GiB{end}")
        self.stream.flush()


def load(args: argparse.Namespace) -> Qwen2VL:
    return Qwen2VL.from_pretrained(args.model, dtype=args.dtype, device=args.device, max_model_len=args.max_model_len,
                                   vision_cache_mb=args.vision_cache_mb, progress=ProgressBar(f"loading {args.model}"),
                                   lora=args.lora, quantize=args.quantize)


def answer(llm: Qwen2VL, conversation: list, params: SamplingParams, media_defaults: Mapping[str, Any],
           on_delta: Callable[[str], None]) -> tuple[str, str]:
    """Run one conversation, handing text deltas to `on_delta`; returns (text, speed summary line)."""
    engine = llm.engine
    start = time.perf_counter()
    inputs = engine.prepare(conversation, media_defaults)
    request = engine.add_request(inputs, params)
    first = None
    with contextlib.closing(engine.follow(request)) as outputs:  # an interrupt aborts the request
        for out in outputs:
            first = first or time.perf_counter()
            if out.delta:
                on_delta(out.delta)
    end = time.perf_counter()
    usage = engine.usage(request)
    text = engine.release(request)[0].text.text
    prefill = first - start
    decode_rate = (usage.completion_tokens - 1) / (end - first) if end > first else 0.0
    summary = (f"[prefill {usage.prompt_tokens} tokens ({usage.visual_tokens} visual) in {prefill:.2f} s = "
               f"{usage.prompt_tokens / prefill:.1f} tok/s | decode {usage.completion_tokens} tokens at "
               f"{decode_rate:.1f} tok/s]")
    return text, summary
