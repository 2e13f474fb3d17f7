"""Ask the bundled demo model about the bundled example pictures: offline, in seconds.

models/qwen2vl-demo is a Qwen2-VL of 2.7 M parameters trained from random weights by
examples/train_demo_model.py on synthetic pictures (README "Demo model" says what it gets right and
what it does not). examples/demo/questions.jsonl holds one question of every kind the generator
makes (qwen2vl.synthetic, seed 11) with the true answer. This script loads the model exactly as a
user loads an official checkpoint (`Qwen2VL.from_pretrained`), asks every question in one batch,
prints each answer beside the true one, and draws the box answer on its picture (--draw-boxes).

    --model DIR | Qwen/Qwen2-VL-2B-Instruct    ask a real model the same questions, the same way
    --image PATH --prompt TEXT                 ask your own question instead
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from PIL import Image

from qwen2vl import Qwen2VL, SamplingParams
from qwen2vl.demo_model import is_right, read_questions
from qwen2vl.errors import Qwen2VLError
from qwen2vl.grounding import draw_boxes, parse_boxes

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "models" / "qwen2vl-demo"
QUESTIONS = ROOT / "examples" / "demo" / "questions.jsonl"
BOXES_OUT = Path("runs") / "quickstart-boxes.png"


def ask_bundled(llm: Qwen2VL, max_tokens: int, boxes_out: Path) -> None:
    """Every bundled question in one batch; answers printed beside the generator's true answers."""
    questions = read_questions(QUESTIONS)
    start = time.perf_counter()
    results = llm.generate([question for _, question in questions], SamplingParams(max_tokens=max_tokens))
    seconds = time.perf_counter() - start
    right = 0
    for (row, question), result in zip(questions, results):
        ok = is_right(row, question, result.text)
        right += ok
        prompt = question[0]["content"][-1]["text"]
        print(f"[{row['task']}] {prompt}\n    answer: {result.text}\n    true:   {row['answer']}  "
              f"({'right' if ok else 'wrong'})")
        if row["task"] == "grounding":
            draw_grounding(question[0]["content"][0]["image"], result.text, boxes_out)
    print(f"{right} of {len(questions)} right, {len(questions)} questions answered in {seconds:.2f} s")


def draw_grounding(image_path: str, answer: str, out: Path) -> None:
    """The answer's boxes drawn on the picture it is about, saved as `out`."""
    with Image.open(image_path) as image:
        boxes = parse_boxes(answer, image.size)
        drawn = draw_boxes(image, boxes)  # an RGB copy
    out.parent.mkdir(parents=True, exist_ok=True)
    drawn.save(out)
    print(f"    drew {len(boxes)} box(es) on {out}")


def ask_own(llm: Qwen2VL, image: str | None, prompt: str, max_tokens: int) -> None:
    """One question, about one picture or none, with its token counts and time."""
    content = ([{"type": "image", "image": image}] if image else []) + [{"type": "text", "text": prompt}]
    start = time.perf_counter()
    result = llm.generate([[{"role": "user", "content": content}]], SamplingParams(max_tokens=max_tokens))[0]
    seconds = time.perf_counter() - start
    usage = result.usage
    print(f"Q: {prompt}\nA: {result.text}")
    print(f"[{usage.prompt_tokens} prompt tokens ({usage.visual_tokens} visual), {usage.completion_tokens} generated "
          f"in {seconds:.2f} s, finish: {result.finish_reason}]")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEMO_MODEL), help="a checkpoint directory or Hub id (default: the "
                                                                  "bundled demo model)")
    parser.add_argument("--image", help="an image path or URL for your own question")
    parser.add_argument("--prompt", help="your own question (default: the bundled questions)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--draw-boxes", type=Path, default=BOXES_OUT, metavar="PNG",
                        help=f"where to draw the box question's answer (default: {BOXES_OUT})")
    args = parser.parse_args()

    try:
        start = time.perf_counter()
        llm = Qwen2VL.from_pretrained(args.model)
        print(f"loaded {args.model} in {time.perf_counter() - start:.2f} s")
        if args.prompt is None and args.image is None:
            ask_bundled(llm, args.max_tokens, args.draw_boxes)
        else:
            ask_own(llm, args.image, args.prompt or "Describe the picture from left to right.", args.max_tokens)
    except Qwen2VLError as error:
        print(f"quickstart: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
