"""Engine invariants: cached decoding, continuous batching, the vision cache, n > 1, context limits."""

from __future__ import annotations

import pytest
import torch

from conftest import random_image
from qwen2vl import InvalidInputError, Qwen2VL, SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    return Qwen2VL.from_pretrained(tiny_checkpoint, max_model_len=2048, max_batch_size=4)


def picture_question(seed=1, question="What is here?"):
    return [{"role": "user", "content": [{"type": "image", "image": random_image(200, 260, seed=seed)},
                                         {"type": "text", "text": question}]}]


def text_question(text):
    return [{"role": "user", "content": text}]


def test_cached_decode_logits_equal_a_full_forward(llm):
    engine = llm.engine
    inputs = engine.prepare(picture_question())
    rid = engine.add_request(inputs, SamplingParams(max_tokens=6, temperature=0.0))
    step_logits = []
    runner_decode = engine.runner.decode

    def recording_decode(seqs):
        logits = runner_decode(seqs)
        step_logits.append(logits[0].clone())
        return logits

    engine.runner.decode = recording_decode
    try:
        while engine.has_unfinished():
            engine.step()
    finally:
        engine.runner.decode = runner_decode
    tokens = engine.release(rid)[0].output_ids
    # the logits of decode step i are those of the prompt followed by tokens[: i + 1]
    for i, cached in enumerate(step_logits):
        ids = torch.cat([inputs["input_ids"], torch.tensor([tokens[: i + 1]])], dim=1)
        full_inputs = {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with torch.inference_mode():
            full = llm.model(**full_inputs)[0, -1]
        assert (cached - full).abs().max() <= 1e-4 * full.abs().max()


def test_a_request_joining_mid_way_gets_the_tokens_it_gets_alone(llm):
    first, second = picture_question(1), text_question("Count to ten, please.")
    alone = llm.generate([second], GREEDY)[0].token_ids
    engine = llm.engine
    a = engine.add_request(engine.prepare(first), SamplingParams(max_tokens=20, temperature=0.0))
    for _ in range(5):
        engine.step()
    b = engine.add_request(engine.prepare(second), GREEDY)
    while engine.has_unfinished():
        engine.step()
    joined = engine.release(b)[0].output_ids
    engine.release(a)
    assert joined == alone


def test_each_request_finishes_on_its_own(llm):
    results = llm.generate([text_question("Hi"), text_question("Hello")],
                           [SamplingParams(max_tokens=3, temperature=0), SamplingParams(max_tokens=9, temperature=0)])
    assert [len(r.token_ids) for r in results] == [3, 9]
    assert all(r.finish_reason == "length" for r in results)


def test_usage_counts_prompt_completion_and_visual_tokens(llm):
    result = llm.generate([picture_question()], SamplingParams(max_tokens=4, temperature=0))[0]
    inputs = llm.engine.prepare(picture_question())
    t, h, w = inputs["image_grid_thw"][0].tolist()
    assert result.usage.visual_tokens == t * h * w // 4
    assert result.usage.prompt_tokens == inputs["input_ids"].shape[1]
    assert result.usage.completion_tokens == 4


def test_second_chat_turn_about_the_same_image_skips_the_vision_tower(tiny_checkpoint):
    cached = Qwen2VL.from_pretrained(tiny_checkpoint, max_model_len=2048)
    uncached = Qwen2VL.from_pretrained(tiny_checkpoint, max_model_len=2048, vision_cache_mb=0)
    image = random_image(200, 260, seed=5)
    turn1 = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}]}]
    answer = cached.chat(turn1, max_tokens=5, temperature=0)
    turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": "Are you sure?"}]
    encodes_before = cached.engine.runner.vision_encodes
    second = cached.generate([turn2], GREEDY)[0].token_ids
    assert cached.engine.runner.vision_encodes == encodes_before
    assert second == uncached.generate([turn2], GREEDY)[0].token_ids


def test_a_different_image_with_the_same_layout_is_not_confused(tiny_checkpoint):
    llm = Qwen2VL.from_pretrained(tiny_checkpoint, max_model_len=2048)
    first = llm.generate([picture_question(seed=1)], GREEDY)[0].token_ids
    encodes = llm.engine.runner.vision_encodes
    other = llm.generate([picture_question(seed=2)], GREEDY)[0].token_ids  # same size, other pixels
    assert llm.engine.runner.vision_encodes == encodes + 1
    assert other != first


def test_prompt_longer_than_the_context_fails_before_any_compute(tiny_checkpoint):
    llm = Qwen2VL.from_pretrained(tiny_checkpoint, max_model_len=64)
    with pytest.raises(InvalidInputError, match=r"the prompt is \d+ tokens \(\d+ visual\) but max_model_len is 64"):
        llm.generate([picture_question()], GREEDY)
    assert llm.engine.runner.vision_encodes == 0
    assert not llm.engine.has_unfinished()


def test_generation_stops_at_the_context_length(tiny_checkpoint):
    llm = Qwen2VL.from_pretrained(tiny_checkpoint, max_model_len=40)
    result = llm.generate([text_question("Hi")], SamplingParams(temperature=0))[0]
    assert result.finish_reason == "length"
    assert result.usage.prompt_tokens + len(result.token_ids) == 40


def test_n_samples_share_the_prompt_and_differ(llm):
    results = llm.generate([text_question("Tell me a story.")],
                           SamplingParams(n=3, max_tokens=8, temperature=1.0, top_k=-1, top_p=1.0, seed=3))
    assert len(results) == 3
    assert len({tuple(r.token_ids) for r in results}) == 3
    again = llm.generate([text_question("Tell me a story.")], SamplingParams(n=3, max_tokens=8, temperature=1.0, top_k=-1, top_p=1.0, seed=3))
    assert [r.token_ids for r in again] == [r.token_ids for r in results]


def test_logprobs_are_reported_per_token(llm):
    result = llm.generate([text_question("Hi")], SamplingParams(max_tokens=4, temperature=0, logprobs=3))[0]
    assert len(result.logprobs) == 4
    for token, (logprob, top) in zip(result.token_ids, result.logprobs):
        assert len(top) == 3 and top[0][0] == token  # greedy picks the most likely token
        assert logprob == pytest.approx(top[0][1]) and logprob <= 0


def test_aborted_stream_frees_its_slot(llm):
    stream = llm.stream(text_question("Go on and on."), max_tokens=50, temperature=0)
    next(stream)
    stream.close()
    assert not llm.engine.has_unfinished()
    assert len(llm.engine.scheduler.free_slots) == 4


def test_a_generated_placeholder_token_is_read_back_as_a_plain_token(llm):
    runner, pad = llm.engine.runner, llm.model.config.image_token_id
    sample = runner.sample
    runner.sample = lambda seq, logits: (pad, None) if not seq.output_ids else sample(seq, logits)
    try:
        result = llm.generate([text_question("Hello")], SamplingParams(max_tokens=3, temperature=0.0))[0]
    finally:
        runner.sample = sample
    assert result.token_ids[0] == pad and len(result.token_ids) == 3
