"""Train the demo model: a small Qwen2-VL that answers synthetic visual questions, from scratch.

1. Generate training data and a held-out set (another seed) with qwen2vl.synthetic.
2. Build the small tokenizer from the training texts and write a random starting checkpoint.
3. Full fine-tuning with our trainer (vision tower and merger included), in two stages: first
   only naming and describing shapes (dense supervision that teaches the vision tower shapes and
   colours; mixed with everything from the start, it did not learn shapes in 6000 steps), then
   every task, the slow learners (reading, boxes, counting) more often; batches are plain shuffled
   (length-grouped batches hold one kind of task each, which learned more slowly).
4. Score on the held-out set and write scores.json beside the model.
5. With --publish DIR: copy the Hub file set, the scores and the training log there (this is how
   models/qwen2vl-demo is to be made: about 70 minutes on a 2-core CPU with the defaults).

    .venv/bin/python examples/train_demo_model.py --output runs/demo --publish models/qwen2vl-demo
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from qwen2vl import Qwen2VL
from qwen2vl.demo_model import corpus_from, score, write_base_checkpoint
from qwen2vl.finetune import TrainSettings, finetune
from qwen2vl.synthetic import write_dataset
from qwen2vl.weights import copy_hub_files

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT / "tests" / "fixtures" / "qwen2vl_common"
# The second stage's mixture: the tasks that learn slowest (reading, boxes, counting) come up more often.
MIXTURE = ("name", "colour", "shape", "count", "count", "describe", "ocr", "ocr", "ocr", "grounding", "grounding",
           "grounding", "compare", "direction")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--train", type=int, default=50000, help="training samples")
    parser.add_argument("--heldout", type=int, default=360, help="held-out samples (40 per task)")
    parser.add_argument("--warmup-steps", type=int, default=1500, help="first stage: naming and describing")
    parser.add_argument("--steps", type=int, default=11000, help="second stage: every task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--publish", type=Path, help="copy the finished model, scores and log here")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    args = parser.parse_args()

    data = args.output / "data"
    train = write_dataset(data, args.train, seed=1, tasks=MIXTURE, name="train.jsonl")
    heldout = write_dataset(data, args.heldout, seed=2, name="heldout.jsonl")
    shapes = write_dataset(data, args.warmup_steps * args.batch_size, seed=4, tasks=("name", "describe"),
                           name="shapes.jsonl")
    base = write_base_checkpoint(args.output / "base", corpus_from(train), OFFICIAL)
    stage1, model_dir = args.output / "stage1", args.output / "model"
    for start, data_file, steps, output in ((base, shapes, args.warmup_steps, stage1),
                                            (stage1, train, args.steps, model_dir)):
        if args.resume and (output / "model.safetensors").is_file():
            continue
        finetune(start, data_file, TrainSettings(output=output, mode="full", train_vision=True, train_merger=True,
                                                 batch_size=args.batch_size, max_steps=steps, lr=args.lr,
                                                 warmup_ratio=0.02, weight_decay=0.01, save_every=2000,
                                                 max_length=1024, group_by_length=False),
                 resume=args.resume)
    scores = score(Qwen2VL.from_pretrained(model_dir), heldout)
    report = {task: {"correct": s.correct, "total": s.total, "accuracy": s.accuracy} for task, s in scores.items()}
    (model_dir / "scores.json").write_text(json.dumps(report, indent=2))
    for task, s in sorted(scores.items()):
        print(f"{task:10s} {s.correct:4d}/{s.total:<4d} {100 * s.accuracy:5.1f}%")
    if args.publish is not None:
        publish(model_dir, args.publish)


def publish(model_dir: Path, target: Path) -> None:
    """The checkpoint as users get it (Hub file set), with its held-out scores and training log."""
    target.mkdir(parents=True, exist_ok=True)
    copy_hub_files(model_dir, target)
    for name in ("model.safetensors", "scores.json", "metrics.jsonl"):
        shutil.copyfile(model_dir / name, target / name)


if __name__ == "__main__":
    main()
