"""The demo model's pieces: a small tokenizer, its architecture, a random starting checkpoint, scoring.

Owns: a byte-level BPE tokenizer trained on the synthetic corpus that carries every Qwen chat, vision
and grounding special token (digits are single tokens, so numbers and box coordinates are spelled
digit by digit); a small Qwen2-VL config whose token ids are the tokenizer's; writing the random
starting checkpoint with the full Hub file set; scoring a model on held-out synthetic samples
(exact answers; IoU >= 0.5 for boxes), with the scores' JSON report and printed lines. Does not
own: the tasks (synthetic.py) or training (finetune/).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .finetune.data import line_messages
from .grounding import parse_boxes
from .random_checkpoint import write_random_checkpoint

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
MAX_PIXELS = 280 * 280  # the largest training pictures: bigger ones are scaled down to this budget
# Qwen's 1e6 leaves the row and column sections of M-RoPE (the lowest frequencies) all but unrotated
# at this head size (32): 1e6 ** (-10 / 16) = 2e-4 rad per column. 100 gives 0.013-0.056.
ROPE_THETA = 100.0


def build_tokenizer(corpus: list[str], vocab_size: int = 640) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def demo_config(tokenizer: Tokenizer) -> dict:
    """A Qwen2-VL of 2.7 M parameters (11 MB in float32)."""
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"], "hidden_act": "silu", "hidden_size": 192,
        "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 6, "num_key_value_heads": 2,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-06, "rope_theta": ROPE_THETA,
        "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]}, "tie_word_embeddings": True,
        "torch_dtype": "float32", "vocab_size": tokenizer.get_vocab_size(),
        "vision_config": {"depth": 4, "embed_dim": 128, "mlp_ratio": 2, "num_heads": 4, "in_chans": 3,
                          "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
                          "temporal_patch_size": 2, "hidden_size": 192},
    }


def write_base_checkpoint(directory: Path, corpus: list[str], official_files: Path, seed: int = 0) -> Path:
    """The random starting point in the Hub file set, with the small tokenizer."""
    tokenizer = build_tokenizer(corpus)
    config = demo_config(tokenizer)
    write_random_checkpoint(directory, config, seed=seed)
    tokenizer.save(str(directory / "tokenizer.json"))
    special = {str(tokenizer.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                               "single_word": False, "special": True} for t in SPECIAL_TOKENS}
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": special, "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "model_max_length": 4096, "tokenizer_class": "Qwen2Tokenizer", "clean_up_tokenization_spaces": False,
    }, indent=2))
    (directory / "generation_config.json").write_text(json.dumps({
        "eos_token_id": [config["eos_token_id"], config["bos_token_id"]], "pad_token_id": config["bos_token_id"],
        "do_sample": False}, indent=2))
    shutil.copyfile(official_files / "chat_template.json", directory / "chat_template.json")
    preprocessor = json.loads((official_files / "preprocessor_config.json").read_text(encoding="utf-8"))
    (directory / "preprocessor_config.json").write_text(json.dumps({**preprocessor, "max_pixels": MAX_PIXELS},
                                                                   indent=2), encoding="utf-8")
    return directory


def corpus_from(jsonl: Path) -> list[str]:
    """Every text the model will read or write in a training file."""
    texts = []
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        for message in json.loads(line)["messages"]:
            content = message["content"]
            texts += [content] if isinstance(content, str) else [p["text"] for p in content if "text" in p]
    return texts + ["You are a helpful assistant.", "system", "user", "assistant"]


@dataclass(frozen=True)
class Score:
    task: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def scores_report(scores: dict[str, Score]) -> dict[str, dict]:
    """Scores as the JSON the recipe keeps beside each stage (scores.json): task -> correct, total, accuracy."""
    return {task: {"correct": s.correct, "total": s.total, "accuracy": s.accuracy} for task, s in scores.items()}


def report_lines(report: dict[str, dict], tasks: list[str]) -> list[str]:
    """One printed line per task of a scores report, in the order of `tasks`: "count  32/40  80.0%"."""
    return [f"{task:10s} {report[task]['correct']:4d}/{report[task]['total']:<4d} "
            f"{100 * report[task]['accuracy']:5.1f}%" for task in tasks]


def read_questions(jsonl: Path) -> list[tuple[dict, list[dict]]]:
    """Each line of a synthetic JSONL file (task, answer, messages) with its question: the
    conversation without the answer, media paths made absolute."""
    rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(row, line_messages(row["messages"][:-1], jsonl.parent)) for row in rows]


def score(llm, jsonl: Path, batch: int = 8) -> dict[str, Score]:
    """Per-task accuracy of `llm` (a Qwen2VL) on a synthetic JSONL file: exact answers (case and
    surrounding space ignored), grounding by IoU >= 0.5 against the true box."""
    from .engine import SamplingParams

    questions = read_questions(jsonl)
    results: dict[str, list[bool]] = {}
    greedy = SamplingParams(max_tokens=48, temperature=0)
    for start in range(0, len(questions), batch):
        chunk = questions[start:start + batch]
        for (row, question), result in zip(chunk, llm.generate([q for _, q in chunk], greedy)):
            results.setdefault(row["task"], []).append(is_right(row, question, result.text))
    return {task: Score(task, sum(oks), len(oks)) for task, oks in results.items()}


def is_right(row: dict, question: list[dict], answer: str) -> bool:
    """Whether `answer` answers a synthetic question (its JSONL row and the conversation asked):
    the same text (case, surrounding space and a final period ignored), or for grounding a first box
    with IoU >= 0.5 against the true one in the picture's pixels."""
    if row["task"] != "grounding":
        return answer.strip().lower().rstrip(".") == row["answer"].strip().lower()
    with Image.open(question[0]["content"][0]["image"]) as image:
        size = image.size
    truth, got = parse_boxes(row["answer"], size), parse_boxes(answer, size)
    return bool(got) and truth[0].iou(got[0]) >= 0.5

