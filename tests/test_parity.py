"""Logit parity with transformers' Qwen2VLForConditionalGeneration on random-weight checkpoints.

Each checkpoint is written in the official Hub layout from a real config (tiny; 2B and 7B at their
real widths with 2 decoder layers and 2 vision blocks), fed the same tensors transformers' own
processor makes, and compared position by position in float32.
"""

from __future__ import annotations

import gc
import warnings

import pytest
import torch

from conftest import load_reference_model, parity_params, random_image, random_video
from qwen2vl import Qwen2VLModel


def _conversation(*items):
    content = []
    for item in items:
        content.append({"type": "text", "text": item} if isinstance(item, str) else {"type": item[0]})
    return [{"role": "user", "content": content}]


def _cases():
    """name -> (conversations, images, videos)."""
    odd = random_image(517, 333, seed=1)
    small = random_image(120, 200, seed=2)
    video = random_video(6, 84, 112, seed=3)
    return {
        "text_only": ([_conversation("Describe the weather in three words.")], None, None),
        "one_odd_image": ([_conversation(("image",), "What is in this picture?")], [odd], None),
        "two_images": ([_conversation(("image",), ("image",), "Compare them.")], [odd, small], None),
        "one_video": ([_conversation(("video",), "What happens?")], None, [video]),
        "image_and_video": ([_conversation(("image",), "and", ("video",), "Same scene?")], [small], [video]),
        "padded_batch": (
            [_conversation(("image",), "Short?"), _conversation("A much longer question about", ("image",), "this one?")],
            [odd, small], None,
        ),
    }


CASES = list(_cases())


def _inputs(processor, conversations, images, videos):
    processor.tokenizer.padding_side = "left"
    texts = [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dict(processor(text=texts, images=images, videos=videos, padding=True, return_tensors="pt"))


@pytest.fixture(scope="module", params=parity_params())
def parity_run(request, parity_checkpoint, reference_processor):
    """Logits of both implementations for every case, computed one model at a time to bound memory."""
    directory = parity_checkpoint(request.param)
    inputs = {name: _inputs(reference_processor, *case) for name, case in _cases().items()}
    reference = load_reference_model(directory)
    with torch.inference_mode():
        expected = {name: reference(**x).logits for name, x in inputs.items()}
    del reference
    gc.collect()
    ours = Qwen2VLModel.from_pretrained(str(directory), dtype=torch.float32)
    with torch.inference_mode():
        actual = {name: ours(**x) for name, x in inputs.items()}
    del ours
    gc.collect()
    return inputs, expected, actual


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(parity_run, case):
    inputs, expected, actual = parity_run
    valid = inputs[case]["attention_mask"].bool()
    ours, theirs = actual[case][valid], expected[case][valid]  # [valid tokens, vocab]
    assert ours.shape == theirs.shape
    tolerance = 1e-4 * theirs.abs().max().item()
    assert (ours - theirs).abs().max().item() <= tolerance
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_outputs_depend_on_the_image(parity_run):
    """A parity test on a model that ignores its input would prove nothing."""
    inputs, _, actual = parity_run
    image_logits = actual["one_odd_image"][0, -1]
    text_logits = actual["text_only"][0, -1]
    assert not torch.allclose(image_logits, text_logits)
    first, second = actual["padded_batch"][:, -1].argmax(-1).tolist()
    assert inputs["padded_batch"]["image_grid_thw"].shape == (2, 3)
    assert actual["two_images"][0].argmax(-1).unique().numel() > 5, "predictions should vary token by token"
    assert first != second or not torch.allclose(actual["padded_batch"][0, -1], actual["padded_batch"][1, -1])
