"""Training throughput: AdamW against Muon (TrainSettings.optimizer), the rest equal.

Muon orthogonalizes each weight matrix's update with a few matrix products a step, a cost that does
not shrink with the batch; for a model as small as the demo model it is a large part of a step. This
measures it: the demo model's recipe mixture from its random starting checkpoint, full fine-tuning at
the recipe's global batch in a process per core, with the vision tower trained and frozen, both
optimizers in one run. Each figure is the median tokens/s over the steps after the first five; the
ratio is Muon / AdamW (below 1: Muon's steps are slower). What Muon buys back in steps is in
docs/demo_model_experiments.md. The data and checkpoint are shared with train_processes.py.

    .venv/bin/python benchmarks/train_optimizer.py [--steps 60] [--batch 8]
"""

from __future__ import annotations

import argparse

from train_processes import ROOT, inputs, tokens_per_second

from qwen2vl.finetune.launch import cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8, help="global batch (a multiple of the core count)")
    args = parser.parse_args()
    n = cores()
    if args.batch % n:
        parser.error(f"the batch must be a multiple of the core count ({n})")
    directory = ROOT / "runs" / "bench_train"
    base, data = inputs(directory, args.steps * args.batch)
    print(f"{n} processes, global batch {args.batch}, {args.steps} steps of the demo mixture")
    print("| vision tower | AdamW | Muon | ratio |")
    for train_vision in (True, False):
        adamw, muon = (tokens_per_second(base, data, directory / optimizer, args.steps, args.batch, n, optimizer,
                                         train_vision) for optimizer in ("adamw", "muon"))
        print(f"| {'trained' if train_vision else 'frozen'} | {adamw:.0f} tokens/s | {muon:.0f} | {muon / adamw:.2f}x |")


if __name__ == "__main__":
    main()
