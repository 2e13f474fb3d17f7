"""Train the demo model: a small Qwen2-VL that answers synthetic visual questions, from scratch.

1. Generate each stage's training data and a held-out set (another seed) with qwen2vl.synthetic.
2. Build the small tokenizer from the training texts and write a random starting checkpoint.
3. Full fine-tuning with our trainer (the vision tower where a stage says), stage after stage, each
   continuing from the last (see STAGES). Boxes come first, from the random start: a lone shape's
   box (a model that first learned anything else learned boxes far worse). Then which half of the
   picture a named shape is in, alone (the side question: it answers for a shape picked at random
   for a few hundred steps, then binds the words to the named shape's place; drawn beside box
   questions from the start it did not bind in 3,000 steps). Then boxes among several shapes
   with side questions kept in a quarter of the draws, in two stages, the second at half the rate
   (without them a box lands on another shape as often as on the named one; with them, under one
   in ten).
   The video direction follows, then naming, colours and shapes, each with boxes and side questions
   (and the direction) kept in the mix so they are not forgotten; a mixture of every task trains
   the rest (the colour of a named shape comes with the binding, but not the shape of a named
   colour: a random pick among the shapes drawn). Then the shape question with colour questions and
   a lone shape's box beside it (it binds in 1,200 steps of its own at the full rate, not in 800 at
   a gentler one), and a mixture at a gentler rate to bring back what those steps made the model
   forget, with counting drawn in 10 of its 24 draws and lone boxes in 2. Then reading alone
   (numbers need steps of their own), and a mixture with reading in 12 of its 34 draws to keep what
   it read. Last, 43,200 examples of counting in 6 of 21 draws, boxes in 6 and reading in 2, beside
   one of every other question: counting and boxes climb with steps of their own once the visual
   tokens carry what the object targets teach (below), and this stage brings them to their targets.
   Every stage trains with object targets (finetune/object_targets.py, weight 3): every visual
   token of a shape is told its shape's box, and each shape has one marked cell; from the `all`
   stage on each shape's colour and kind too. With them the side question binds two to three times
   faster, the box stages place 85-88% of boxes against 74-78%, and the later stages take far
   less of the boxes; told what a shape is, the tokens carry what counting and the shape of a
   named colour need (in the stages that train the tower the colour and kind cost boxes, so they
   start where it is frozen).
   The vision tower trains in the first six stages and in the two reading stages; in the other
   four it is frozen (no backward pass through it: a step costs about two thirds, and the scores
   hold), and three of those take 16 examples a step (the same learning per example, about a sixth
   less time: Muon's orthogonalization costs the same whatever the batch).
   Every stage trains with Muon (TrainSettings.optimizer="muon": the weight matrices' updates
   orthogonalized, AdamW for the rest), which learned each task tried alone from random weights in
   about half of AdamW's steps or fewer.
   From the side stage on, the loss is averaged over examples, not answer tokens: under the
   token average a one- or two-token answer (a side, a direction, a colour, a count) weighs a
   sixteenth of a box answer and is drowned (the lone-box stage keeps the token average: its
   answers are all about the same length). Batches are plain shuffled (length-grouped batches hold
   one kind of task each, which learned more slowly). The reasons and the runs behind each choice:
   docs/demo_model_experiments.md.
4. Score on the held-out set after every stage (scores.json in each stage's directory, so the
   log shows what each stage taught and what it made the model forget), and the finished model on
   a second held-out set of another seed (second-scores.json): recipes are chosen by the first
   set, which flatters the chosen one by a few questions, and the second is the check on that.
5. With --publish DIR: copy the Hub file set, the scores and the training logs there (this is how
   models/qwen2vl-demo is made).

    .venv/bin/python examples/train_demo_model.py --output runs/demo --publish models/qwen2vl-demo
"""

from __future__ import annotations

import argparse
import json
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from qwen2vl import Qwen2VL
from qwen2vl.demo_model import corpus_from, report_lines, score, scores_report, write_base_checkpoint
from qwen2vl.finetune import TrainSettings, finetune
from qwen2vl.synthetic import write_dataset
from qwen2vl.weights import copy_hub_files

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT / "tests" / "fixtures" / "qwen2vl_common"


@dataclass(frozen=True)
class Stage:
    name: str
    tasks: tuple[str, ...]  # drawn in turn, so a task named twice comes up twice as often
    steps: int
    seed: int
    loss_per: str = "example"  # the trainer's loss average: "example" (short answers count) or "token"
    lr: float | None = None  # None: the recipe's --lr
    train_vision: bool = True  # False: the tower frozen (merger, decoder and embeddings train), a third less per step
    batch_size: int = 8  # examples a step, all processes together
    object_tags: bool = False  # the object targets tell each shape's colour and kind, not only its box


OBJECT_LOSS_WEIGHT = 3.0  # the object targets' weight beside the answers' loss, in every stage
MIXTURE = ("name", "colour", "colour", "shape", "count", "count", "describe", "ocr", "ocr", "grounding", "grounding",
           "side", "compare", "direction")
LAST_MIXTURE = MIXTURE + ("count",) * 8 + ("lone-grounding",) * 2  # counting in 10 of 24 draws, lone boxes in 2
COUNT_BOX_MIXTURE = ("count",) * 6 + ("grounding",) * 5 + ("lone-grounding", "ocr", "ocr", "side", "colour", "shape",
                                                           "name", "compare", "direction", "describe")  # 6 and 6 of 21
BOX_MIXTURE = ("side", "grounding", "grounding", "lone-grounding")  # side questions keep boxes on the named shape
STAGES = (
    Stage("lone-boxes", ("lone-grounding",), 750, seed=5, loss_per="token"),
    Stage("side", ("side",), 1800, seed=9),
    Stage("boxes", BOX_MIXTURE, 1500, seed=7),
    Stage("boxes-again", BOX_MIXTURE, 1500, seed=17, lr=5e-4),
    Stage("direction", ("direction", "direction", "grounding", "side"), 1300, seed=6),
    Stage("shapes", ("name", "describe", "colour", "shape", "grounding", "grounding", "side", "direction",
                     "direction"), 1000, seed=4),
    Stage("all", MIXTURE, 1450, seed=1, train_vision=False, batch_size=16, object_tags=True),
    Stage("shape", ("shape", "shape", "colour", "lone-grounding"), 1200, seed=8, train_vision=False, object_tags=True),
    Stage("all-again", LAST_MIXTURE, 650, seed=9, lr=3e-4, train_vision=False, batch_size=16, object_tags=True),
    Stage("reading", ("ocr",), 1000, seed=12, lr=3e-4, object_tags=True),
    Stage("all-reading", LAST_MIXTURE + ("ocr",) * 10, 1000, seed=13, lr=3e-4, object_tags=True),
    Stage("counting-boxes", COUNT_BOX_MIXTURE, 2700, seed=57, lr=3e-4, train_vision=False, batch_size=16,
          object_tags=True),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--heldout", type=int, default=360, help="held-out samples (40 per task)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--publish", type=Path, help="copy the finished model, scores and logs here")
    parser.add_argument("--resume", action="store_true", help="skip finished stages, continue the unfinished one")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's); the sums round by it")
    parser.add_argument("--processes", type=int, default=2,
                        help="training processes, one a core (faster than threads for this small model; the "
                             "shipped model was trained at 2, and another count rounds differently)")
    args = parser.parse_args()
    if args.processes < 1 or any(stage.batch_size % args.processes for stage in STAGES):
        parser.error("--processes must divide every stage's batch size (each process takes an equal share)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    data = args.output / "data"
    with ProcessPoolExecutor(2) as pool:  # rendering pictures is a few minutes of the budget: both cores
        heldout_job = pool.submit(write_dataset, data, args.heldout, seed=2, name="heldout.jsonl")
        second_job = pool.submit(write_dataset, data, args.heldout, seed=3, name="second-heldout.jsonl")
        stage_jobs = [pool.submit(write_dataset, data, stage.steps * stage.batch_size, seed=stage.seed,
                                  tasks=stage.tasks, name=f"{stage.name}.jsonl", object_tags=stage.object_tags)
                      for stage in STAGES]
        heldout, second, stage_data = heldout_job.result(), second_job.result(), [job.result() for job in stage_jobs]
    mixture = next(path for stage, path in zip(STAGES, stage_data) if stage.name == "all")  # every task's texts
    start = write_base_checkpoint(args.output / "base", corpus_from(mixture), OFFICIAL)
    for stage, train in zip(STAGES, stage_data):
        output = args.output / stage.name
        if not (args.resume and (output / "model.safetensors").is_file()):
            finetune(start, train, TrainSettings(output=output, mode="full", train_vision=stage.train_vision,
                                                 train_merger=True, batch_size=stage.batch_size // args.processes,
                                                 max_steps=stage.steps,
                                                 lr=stage.lr or args.lr,
                                                 warmup_ratio=0.02, weight_decay=0.01, save_every=2000,
                                                 max_length=1024, group_by_length=False, loss_per=stage.loss_per,
                                                 optimizer="muon", object_loss_weight=OBJECT_LOSS_WEIGHT),
                     resume=args.resume, processes=args.processes)
        start = output
        if not (args.resume and (output / "scores.json").is_file()):
            write_scores(output, heldout)
    write_scores(start, second, "second-scores.json")
    report = json.loads((start / "scores.json").read_text())
    print("\n".join(report_lines(report, sorted(report))))
    if args.publish is not None:
        publish(args.output, start, args.publish)


def write_scores(model_dir: Path, heldout: Path, name: str = "scores.json") -> None:
    """Held-out scores of one stage's model, written beside it (as `name`) and printed in one line."""
    scores = score(Qwen2VL.from_pretrained(model_dir), heldout)
    (model_dir / name).write_text(json.dumps(scores_report(scores), indent=2))
    print(model_dir.name, name, " ".join(f"{task} {100 * s.accuracy:.0f}%" for task, s in sorted(scores.items())),
          flush=True)


def publish(run: Path, model_dir: Path, target: Path) -> None:
    """The checkpoint as users get it (Hub file set), with its held-out scores and every stage's log."""
    target.mkdir(parents=True, exist_ok=True)
    copy_hub_files(model_dir, target)
    for name in ("model.safetensors", "scores.json", "second-scores.json"):
        shutil.copyfile(model_dir / name, target / name)
    for stage in STAGES:
        shutil.copyfile(run / stage.name / "metrics.jsonl", target / f"metrics-{stage.name}.jsonl")
        shutil.copyfile(run / stage.name / "scores.json", target / f"scores-{stage.name}.json")


if __name__ == "__main__":
    main()
