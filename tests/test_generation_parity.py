"""Greedy generation equals transformers' generate(do_sample=False), token for token, 32 new tokens."""

from __future__ import annotations

import gc

import pytest

from conftest import load_reference_model, parity_params, random_image, random_video, reference_greedy_tokens
from qwen2vl import Qwen2VL, SamplingParams

NEW_TOKENS = 32
GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)


def _frames(seed):
    from PIL import Image

    return [Image.fromarray(frame) for frame in random_video(4, 84, 112, seed)]


def _conversations():
    odd, small = random_image(517, 333, seed=1), random_image(120, 200, seed=2)

    def user(*parts):
        return [{"role": "user", "content": list(parts)}]

    text = {"type": "text", "text": "Tell me what you see, in detail."}
    return {
        "text_only": user({"type": "text", "text": "Write a short poem about the sea."}),
        "one_image": user({"type": "image", "image": odd}, text),
        "two_images": user({"type": "image", "image": odd}, {"type": "image", "image": small}, text),
        "video": user({"type": "video", "video": _frames(3)}, text),
        "image_and_video": user({"type": "image", "image": small}, {"type": "video", "video": _frames(4)}, text),
    }


CASES = list(_conversations())


@pytest.fixture(scope="module", params=parity_params())
def generations(request, parity_checkpoint):
    """Token ids from transformers and from us for every case, one model in memory at a time."""
    directory = parity_checkpoint(request.param)
    llm = Qwen2VL.from_pretrained(directory, max_model_len=4096, max_batch_size=4)
    conversations = _conversations()
    inputs = {name: llm.engine.prepare(c) for name, c in conversations.items()}
    ours = {name: llm.generate([c], GREEDY)[0].token_ids for name, c in conversations.items()}
    batch = [conversations[name] for name in ("text_only", "one_image", "image_and_video")]
    together = [r.token_ids for r in llm.generate(batch, GREEDY)]
    del llm
    gc.collect()
    reference = load_reference_model(directory)
    theirs = {name: reference_greedy_tokens(reference, x, NEW_TOKENS) for name, x in inputs.items()}
    del reference
    gc.collect()
    return ours, theirs, together


@pytest.mark.parametrize("case", CASES)
def test_greedy_tokens_equal_transformers_generate(generations, case):
    ours, theirs, _ = generations
    assert ours[case] == theirs[case]


def test_generations_are_long_and_varied(generations):
    """Guards the test itself: a random model that stops at once or repeats one token proves nothing."""
    ours, _, _ = generations
    assert all(len(tokens) == NEW_TOKENS for tokens in ours.values())
    assert all(len(set(tokens)) >= 3 for tokens in ours.values())
    assert len({tuple(tokens) for tokens in ours.values()}) == len(ours)


def test_a_batch_of_three_equals_each_conversation_alone(generations):
    ours, _, together = generations
    assert together == [ours["text_only"], ours["one_image"], ours["image_and_video"]]
