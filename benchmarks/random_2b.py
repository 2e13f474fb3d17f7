"""The random-weight Qwen2-VL-2B checkpoint the benchmarks share (official config and file set).

    python benchmarks/random_2b.py [--dir runs/random-2b]   # writes it once (about 4.4 GB, bfloat16)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from qwen2vl.random_checkpoint import write_random_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tests" / "fixtures" / "Qwen2-VL-2B-Instruct.config.json"
COMMON = ROOT / "tests" / "fixtures" / "qwen2vl_common"
DEFAULT_DIR = ROOT / "runs" / "random-2b"


def ensure_random_2b(directory: Path = DEFAULT_DIR) -> Path:
    """Write the checkpoint unless a complete one is already there; returns its directory."""
    if not (directory / "generation_config.json").is_file():
        print(f"writing the random-weight 2B checkpoint to {directory} (once) ...", flush=True)
        write_random_checkpoint(directory, json.loads(CONFIG.read_text()), dtype=torch.bfloat16,
                                max_shard_bytes=4_000_000_000, copy_files_from=COMMON)
    return directory


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    print(ensure_random_2b(parser.parse_args().dir))
