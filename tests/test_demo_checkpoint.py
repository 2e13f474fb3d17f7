"""The shipped demo model (models/qwen2vl-demo): the Hub file set within 25 MB, loaded through
from_pretrained like an official checkpoint, answering freshly generated questions, and read the
same way by transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import load_reference_model, load_reference_processor, reference_greedy_tokens
from qwen2vl import Qwen2VL, SamplingParams
from qwen2vl.config import ModelConfig
from qwen2vl.demo_model import SPECIAL_TOKENS, is_right, read_questions, score
from qwen2vl.synthetic import write_dataset

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "qwen2vl-demo"
BUNDLED_QUESTIONS = ROOT / "examples" / "demo" / "questions.jsonl"
HUB_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.json",
             "preprocessor_config.json", "generation_config.json"}
# Tasks the shipped model answers at >= 95% on its held-out set (README "Demo model"), and a seed
# no training or held-out set uses.
STRONG_TASKS = ("name", "colour", "shape", "ocr", "compare", "direction")
FRESH_SEED = 2026
GREEDY = SamplingParams(max_tokens=48, temperature=0)


@pytest.fixture(scope="module")
def demo():
    return Qwen2VL.from_pretrained(DEMO)


def test_demo_checkpoint_is_the_hub_file_set_within_25_mb():
    files = [f for f in DEMO.iterdir() if f.is_file()]
    assert HUB_FILES <= {f.name for f in files}
    assert sum(f.stat().st_size for f in files) <= 25 * 10**6  # with its training logs and scores


def test_demo_config_names_the_tokenizers_qwen_special_token_ids():
    config = ModelConfig.from_file(DEMO / "config.json")
    vocab = {t["content"]: t["id"] for t in json.loads((DEMO / "tokenizer.json").read_text())["added_tokens"]}
    assert set(SPECIAL_TOKENS) <= set(vocab)
    named = (config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id)
    assert named == (vocab["<|image_pad|>"], vocab["<|video_pad|>"], vocab["<|vision_start|>"],
                     vocab["<|vision_end|>"])


def test_demo_model_answers_fresh_generated_questions(demo, tmp_path):
    questions = write_dataset(tmp_path, 8 * len(STRONG_TASKS), seed=FRESH_SEED, tasks=STRONG_TASKS)
    correct = {task: s.correct for task, s in score(demo, questions).items()}
    assert correct.keys() == set(STRONG_TASKS)
    assert sum(correct.values()) >= 0.9 * len(STRONG_TASKS) * 8, f"right of 8 per task: {correct}"


def test_demo_model_is_right_on_most_bundled_quick_start_questions(demo):
    questions = read_questions(BUNDLED_QUESTIONS)
    results = demo.generate([question for _, question in questions], GREEDY)
    right = [is_right(row, question, result.text) for (row, question), result in zip(questions, results)]
    assert sum(right) > len(right) / 2


def test_transformers_reads_the_demo_checkpoint_and_answers_the_same_tokens(demo):
    processor = load_reference_processor(DEMO)
    reference = load_reference_model(DEMO)
    image_questions = [q for row, q in read_questions(BUNDLED_QUESTIONS) if row["task"] != "direction"]
    for question in image_questions:
        our_inputs = demo.engine.prepare(question)
        text = processor.apply_chat_template(question, add_generation_prompt=True, tokenize=False)
        theirs = processor(text=[text], images=pictures_of(question), return_tensors="pt")
        assert torch.equal(theirs["input_ids"], our_inputs["input_ids"])
        our_tokens = demo.generate([question], GREEDY)[0].token_ids
        assert reference_greedy_tokens(reference, theirs, GREEDY.max_tokens) == our_tokens


def pictures_of(question: list[dict]) -> list[Image.Image]:
    """The pictures a question shows, read into memory with their files closed."""
    pictures = []
    for part in question[0]["content"]:
        if part.get("type") == "image":
            with Image.open(part["image"]) as picture:
                pictures.append(picture.copy())
    return pictures
