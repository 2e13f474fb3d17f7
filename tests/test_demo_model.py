"""The demo model's starting point: small tokenizer with Qwen's special tokens, Hub file set, scoring."""

from __future__ import annotations

import json

from PIL import Image

from conftest import COMMON
from qwen2vl import Qwen2VL
from qwen2vl.config import ModelConfig
from qwen2vl.demo_model import SPECIAL_TOKENS, corpus_from, is_right, score, write_base_checkpoint
from qwen2vl.synthetic import TASKS, write_dataset


def test_small_checkpoint_carries_the_qwen_special_tokens_and_loads_like_an_official_one(tmp_path):
    train = write_dataset(tmp_path / "data", 3 * len(TASKS), seed=1)
    base = write_base_checkpoint(tmp_path / "base", corpus_from(train), COMMON)
    config = ModelConfig.from_file(base / "config.json")
    tokenizer = json.loads((base / "tokenizer.json").read_text())
    vocab = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    assert set(SPECIAL_TOKENS) <= set(vocab)
    assert (config.image_token_id, config.video_token_id) == (vocab["<|image_pad|>"], vocab["<|video_pad|>"])
    assert config.text.vocab_size < 1000
    assert sum(f.stat().st_size for f in base.iterdir()) < 25 * 2**20

    heldout = write_dataset(tmp_path / "data", len(TASKS), seed=2, name="heldout.jsonl")
    llm = Qwen2VL.from_pretrained(base)
    scores = score(llm, heldout, batch=4)
    assert sorted(scores) == sorted(TASKS)
    assert all(s.total == 1 for s in scores.values())


def test_an_answer_is_right_whatever_its_case_surrounding_space_and_final_period():
    row = {"task": "colour", "answer": "yellow"}
    assert is_right(row, [], " Yellow.\n")
    assert not is_right(row, [], "yellowish")


def test_a_box_answer_is_right_when_its_first_box_overlaps_the_true_one_by_half(tmp_path):
    Image.new("RGB", (200, 100)).save(tmp_path / "p.png")
    question = [{"role": "user", "content": [{"type": "image", "image": str(tmp_path / "p.png")}]}]
    row = {"task": "grounding", "answer": "<|box_start|>(0,0),(500,1000)<|box_end|>"}
    assert is_right(row, question, "<|box_start|>(0,0),(400,1000)<|box_end|>")  # IoU 0.8
    assert not is_right(row, question, "<|box_start|>(250,0),(750,1000)<|box_end|>")  # IoU 1/3
    assert not is_right(row, question, "a box somewhere")
