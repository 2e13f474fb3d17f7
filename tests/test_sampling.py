"""Sampling: support restriction on controlled logits, penalties, seeds, defaults and validation."""

from __future__ import annotations

import pytest
import torch

from conftest import COMMON
from qwen2vl import InvalidInputError, Qwen2VL, SamplingParams
from qwen2vl.engine.sampling import GenerationDefaults, apply_penalties, choose, restrict

LOGITS = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, -1.0])


def support(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits).nonzero().flatten().tolist()


def test_top_k_keeps_the_k_most_likely():
    assert support(restrict(LOGITS, SamplingParams(temperature=1.0, top_k=3))) == [0, 1, 2]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.softmax(LOGITS, -1)  # 0.636, 0.234, 0.086, ...
    assert support(restrict(LOGITS, SamplingParams(temperature=1.0, top_p=0.5))) == [0]
    assert support(restrict(LOGITS, SamplingParams(temperature=1.0, top_p=float(probs[0] + 0.01)))) == [0, 1]
    assert support(restrict(LOGITS, SamplingParams(temperature=1.0, top_p=0.95))) == [0, 1, 2]  # 0.953 >= 0.95
    assert support(restrict(LOGITS, SamplingParams(temperature=1.0, top_p=0.96))) == [0, 1, 2, 3]


def test_min_p_keeps_tokens_within_a_fraction_of_the_best():
    # p_i / p_max = e^(x_i - 4): 1, 0.37, 0.14, 0.05, ...
    assert support(restrict(LOGITS, SamplingParams(temperature=1.0, min_p=0.1))) == [0, 1, 2]


def test_temperature_sharpens_and_flattens():
    cold = torch.softmax(restrict(LOGITS, SamplingParams(temperature=0.5)), -1)
    hot = torch.softmax(restrict(LOGITS, SamplingParams(temperature=2.0)), -1)
    assert cold[0] > torch.softmax(LOGITS, -1)[0] > hot[0]


def test_draws_stay_inside_the_support():
    params = SamplingParams(temperature=1.0, top_k=2)
    generator = torch.Generator().manual_seed(0)
    draws = {choose(LOGITS, params, generator) for _ in range(300)}
    assert draws == {0, 1}


def test_top_k_1_is_greedy_whatever_the_temperature():
    generator = torch.Generator().manual_seed(0)
    assert {choose(LOGITS.flip(0), SamplingParams(temperature=5.0, top_k=1), generator) for _ in range(50)} == {5}


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([2.0, -2.0, 2.0, -2.0])
    out = apply_penalties(logits, SamplingParams(repetition_penalty=2.0), torch.tensor([0]), torch.tensor([1]))
    assert out.tolist() == [1.0, -4.0, 2.0, -2.0]


def test_presence_and_frequency_penalties_count_generated_tokens():
    logits = torch.zeros(4)
    out = apply_penalties(logits, SamplingParams(presence_penalty=0.5, frequency_penalty=0.25),
                          torch.tensor([3]), torch.tensor([1, 1, 2]))
    assert out.tolist() == [0.0, -1.0, -0.75, 0.0]


@pytest.mark.parametrize("bad, message", [
    (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"), (dict(top_k=0), "top_k"),
    (dict(min_p=2), "min_p"), (dict(max_tokens=0), "max_tokens"), (dict(n=0), "n must"),
    (dict(presence_penalty=3), "presence_penalty"), (dict(stop=[""]), "stop strings"),
])
def test_invalid_parameters_are_rejected(bad, message):
    with pytest.raises(InvalidInputError, match=message):
        SamplingParams(**bad)


def test_unknown_sampling_options_are_rejected():
    with pytest.raises(InvalidInputError, match="unknown sampling option"):
        SamplingParams.from_kwargs(temprature=0.5)


def test_official_generation_config_defaults_are_greedy_equivalent():
    defaults = GenerationDefaults.from_file(COMMON / "generation_config.json")
    params = SamplingParams().with_defaults(defaults)
    assert (params.top_k, params.top_p, params.temperature) == (1, 0.001, 0.01)
    assert params.greedy and params.stop_token_ids == (151645, 151643)


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    return Qwen2VL.from_pretrained(tiny_checkpoint, max_model_len=1024)


PROMPT = [{"role": "user", "content": "Say something surprising."}]
SAMPLED = dict(max_tokens=10, temperature=1.0, top_k=-1, top_p=1.0)


def test_seeded_sampling_reproduces(llm):
    first = llm.generate([PROMPT], SamplingParams(seed=42, **SAMPLED))[0].token_ids
    second = llm.generate([PROMPT], SamplingParams(seed=42, **SAMPLED))[0].token_ids
    other = llm.generate([PROMPT], SamplingParams(seed=43, **SAMPLED))[0].token_ids
    assert first == second != other


def test_top_k_1_sampling_equals_greedy_generation(llm):
    greedy = llm.generate([PROMPT], SamplingParams(max_tokens=10, temperature=0))[0].token_ids
    sampled = llm.generate([PROMPT], SamplingParams(max_tokens=10, temperature=1.5, top_k=1, seed=1))[0].token_ids
    assert sampled == greedy
