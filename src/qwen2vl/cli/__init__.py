"""The `qwen2vl` command: one entry point with a subcommand per job.

Owns: the top-level parser and turning expected failures into a one-line error and exit code 2.
Does not own: any subcommand (each module registers its own).
"""

from __future__ import annotations

import argparse
import sys

from ..errors import Qwen2VLError
from . import bench, chat, finetune, generate, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen2vl", description="Run Qwen2-VL vision-language models.")
    subparsers = parser.add_subparsers(title="commands", dest="command", required=True)
    for module in (generate, chat, serve, finetune, bench):
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except Qwen2VLError as error:
        print(f"qwen2vl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
