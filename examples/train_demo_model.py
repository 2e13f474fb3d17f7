"""Train the demo model: a small Qwen2-VL that answers synthetic visual questions, from scratch.

1. Generate training data and a held-out set (another seed) with qwen2vl.synthetic.
2. Build the small tokenizer from the training texts and write a random starting checkpoint.
3. Full fine-tuning with our trainer (vision tower and merger included).
4. Score on the held-out set and write scores.json beside the model.

    .venv-test/bin/python examples/train_demo_model.py --output runs/demo --train 20000 --steps 6000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qwen2vl import Qwen2VL
from qwen2vl.demo_model import corpus_from, score, write_base_checkpoint
from qwen2vl.finetune import TrainSettings, finetune
from qwen2vl.synthetic import write_dataset

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT / "tests" / "fixtures" / "qwen2vl_common"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--train", type=int, default=20000, help="training samples")
    parser.add_argument("--heldout", type=int, default=350, help="held-out samples (50 per task)")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    data = args.output / "data"
    train = write_dataset(data, args.train, seed=1, name="train.jsonl")
    heldout = write_dataset(data, args.heldout, seed=2, name="heldout.jsonl")
    base = write_base_checkpoint(args.output / "base", corpus_from(train), OFFICIAL)
    model_dir = args.output / "model"
    finetune(base, train, TrainSettings(output=model_dir, mode="full", train_vision=True, train_merger=True,
                                        batch_size=args.batch_size, max_steps=args.steps, lr=args.lr,
                                        warmup_ratio=0.02, weight_decay=0.01, save_every=500, max_length=1024))
    scores = score(Qwen2VL.from_pretrained(model_dir), heldout)
    report = {task: {"correct": s.correct, "total": s.total, "accuracy": s.accuracy} for task, s in scores.items()}
    (model_dir / "scores.json").write_text(json.dumps(report, indent=2))
    for task, s in sorted(scores.items()):
        print(f"{task:10s} {s.correct:4d}/{s.total:<4d} {100 * s.accuracy:5.1f}%")


if __name__ == "__main__":
    main()
