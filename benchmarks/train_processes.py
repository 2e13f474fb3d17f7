"""Training throughput: one process using every core as threads against a process per core.

The demo model's recipe mixture (every synthetic task, full fine-tuning with the vision tower
trained, loss per example, plainly shuffled batches) from its random starting checkpoint, at the same
global batch either way: the figure is each run's median tokens/s over its steps after the first
five, with the ratio processes / threads (above 1: the processes are faster). The data and the
checkpoint are generated once into runs/bench_train/.

    .venv/bin/python benchmarks/train_processes.py [--steps 100] [--batch 8]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from train_demo_model import MIXTURE, OFFICIAL  # noqa: E402

from qwen2vl.demo_model import corpus_from, write_base_checkpoint  # noqa: E402
from qwen2vl.finetune import TrainSettings, finetune  # noqa: E402
from qwen2vl.finetune.launch import cores  # noqa: E402
from qwen2vl.synthetic import write_dataset  # noqa: E402


def inputs(directory: Path, examples: int) -> tuple[Path, Path]:
    data, base = directory / "mixture.jsonl", directory / "base"
    if not data.exists():
        write_dataset(directory, examples, seed=1, tasks=MIXTURE, name=data.name)
    if not (base / "model.safetensors").exists():
        write_base_checkpoint(base, corpus_from(data), OFFICIAL)
    return base, data


def tokens_per_second(base: Path, data: Path, output: Path, steps: int, batch: int, processes: int,
                      optimizer: str = "adamw", train_vision: bool = True) -> float:
    shutil.rmtree(output, ignore_errors=True)
    settings = TrainSettings(output=output, mode="full", train_vision=train_vision, train_merger=True,
                             batch_size=batch // processes, max_steps=steps, lr=1e-3, warmup_ratio=0.02,
                             weight_decay=0.01, max_length=1024, group_by_length=False, loss_per="example",
                             optimizer=optimizer)
    rows = finetune(base, data, settings, processes=processes)
    return statistics.median(row["tokens_per_second"] for row in rows[5:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8, help="global batch (a multiple of the core count)")
    args = parser.parse_args()
    n = cores()
    if n < 2 or args.batch % n:
        parser.error(f"needs at least 2 cores and a batch that is a multiple of them (cores: {n})")
    directory = ROOT / "runs" / "bench_train"
    base, data = inputs(directory, args.steps * args.batch)
    torch.set_num_threads(n)
    threads = tokens_per_second(base, data, directory / "threads", args.steps, args.batch, 1)
    processes = tokens_per_second(base, data, directory / "processes", args.steps, args.batch, n)
    print(f"{n} cores, global batch {args.batch}, {args.steps} steps of the demo mixture")
    print(f"| one process, {n} threads | {threads:.0f} tokens/s |")
    print(f"| {n} processes, 1 thread each | {processes:.0f} tokens/s |")
    print(f"| ratio | {processes / threads:.2f}x |")


if __name__ == "__main__":
    main()
