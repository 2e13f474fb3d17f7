"""Score a model on a freshly generated held-out set of synthetic questions: accuracy per task.

The recipe (examples/train_demo_model.py) scores every stage on 40 questions a task of seed 2 and
the finished model on 40 of seed 3; `--per-task 40 --seed 2` with every task (the default) writes
that same first set (the questions are drawn in turn from one seeded stream, so asking fewer tasks
draws other questions from the same seed). Forty
questions are a noisy measure: a rerun of the same recipe moves a task by a few of them
(docs/demo_model_experiments.md; two sets of 200 still disagree by several), so recipes are
better compared on more questions of the tasks in doubt, e.g.
`--per-task 400 --tasks count grounding`. Answers are greedy and checked as the recipe checks
them (qwen2vl.demo_model.score: exact text, or IoU >= 0.5 for a box).

    .venv/bin/python examples/score_demo_model.py [--model DIR] [--per-task 40] [--seed 2] [--tasks T ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from qwen2vl import Qwen2VL
from qwen2vl.demo_model import report_lines, score, scores_report
from qwen2vl.errors import Qwen2VLError
from qwen2vl.synthetic import TASKS, write_dataset

DEMO_MODEL = Path(__file__).resolve().parents[1] / "models" / "qwen2vl-demo"


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEMO_MODEL), help="a checkpoint directory (default: the demo model)")
    parser.add_argument("--per-task", type=positive, default=40, help="questions per task (default: 40)")
    parser.add_argument("--seed", type=int, default=2, help="the set's seed (2: the recipe's held-out set)")
    parser.add_argument("--tasks", nargs="+", choices=tuple(TASKS), default=tuple(TASKS), metavar="TASK",
                        help=f"tasks to ask (default: all of {', '.join(TASKS)})")
    parser.add_argument("--data", type=Path, help="keep the generated questions here (default: a temporary "
                                                  "directory, removed after)")
    parser.add_argument("--json", type=Path, help="also write the scores here as JSON")
    parser.add_argument("--threads", type=positive, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    try:
        llm = Qwen2VL.from_pretrained(args.model)
        with tempfile.TemporaryDirectory() as scratch:
            directory = args.data or Path(scratch)
            start = time.perf_counter()
            questions = write_dataset(directory, args.per_task * len(args.tasks), seed=args.seed,
                                      tasks=tuple(args.tasks), name="heldout.jsonl")
            scores = score(llm, questions)
        seconds = time.perf_counter() - start
        report = scores_report(scores)
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2))
    except (Qwen2VLError, OSError) as error:  # OSError: --data or --json not writable where given
        print(f"score_demo_model: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(report_lines(report, args.tasks)))
    print(f"{sum(s.total for s in scores.values())} questions of seed {args.seed} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
