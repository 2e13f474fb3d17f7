"""The static KV cache: a decode step over several sequences attends as each sequence would alone
(and the scheduler keeps running sequences in consecutive slots, where that step is one call)."""

import pytest
import torch

from qwen2vl.config import ModelConfig
from qwen2vl.engine.kv_cache import StaticKVCache
from qwen2vl.engine.sampling import SamplingParams
from qwen2vl.engine.scheduler import Scheduler
from qwen2vl.engine.sequence import Sequence
from qwen2vl.random_checkpoint import TINY_CONFIG

CONFIG = ModelConfig.from_dict(TINY_CONFIG).text  # 4 query heads over 2 key/value heads of 16, 2 layers


def _cache_holding(prompt_lengths: dict[int, int], garbage: float) -> StaticKVCache:
    """A cache whose unwritten storage holds `garbage`, with a prompt of the given length in each slot."""
    cache = StaticKVCache(CONFIG, slots=6, max_len=32, dtype=torch.float32, device=torch.device("cpu"))
    for keys, values in zip(cache.keys, cache.values):
        keys.fill_(garbage)
        values.fill_(garbage)
    generator = torch.Generator().manual_seed(0)
    for slot, length in prompt_lengths.items():
        step = cache.step([slot], [0])
        for layer in range(CONFIG.num_hidden_layers):
            q, k, v = (torch.randn(1, heads, length, 16, generator=generator) for heads in (4, 2, 2))
            step.attend(layer, q, k, v)
    return cache


def _decode_each_alone(cache: StaticKVCache, slots, cached, q, k, v) -> torch.Tensor:
    return torch.cat([cache.step([slot], [start]).attend(0, q[b:b + 1], k[b:b + 1], v[b:b + 1])
                      for b, (slot, start) in enumerate(zip(slots, cached))])


@pytest.mark.parametrize("slots", [[1, 2, 3], [3, 1, 2], [0, 2, 5]], ids=["a run", "a run out of order", "gaps"])
def test_a_decode_step_over_several_sequences_attends_as_each_alone(slots):
    lengths = {1: 7, 2: 3, 3: 11, 0: 5, 5: 2}
    cached = [lengths[slot] for slot in slots]
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(len(slots), heads, 1, 16, generator=generator) for heads in (4, 2, 2))
    together = _cache_holding(lengths, garbage=0.0).step(slots, cached).attend(0, q, k, v)
    alone = _decode_each_alone(_cache_holding(lengths, garbage=0.0), slots, cached, q, k, v)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


def test_never_written_cache_memory_cannot_reach_a_batched_step():
    lengths = {1: 7, 2: 3, 3: 11}
    generator = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(3, heads, 1, 16, generator=generator) for heads in (4, 2, 2))
    out = _cache_holding(lengths, garbage=float("nan")).step([1, 2, 3], [7, 3, 11]).attend(0, q, k, v)
    assert torch.isfinite(out).all()


def test_the_new_tokens_are_stored_at_each_sequence_s_own_position():
    cache = _cache_holding({1: 4, 2: 6}, garbage=0.0)
    k = torch.arange(2 * 2 * 16, dtype=torch.float32).reshape(2, 2, 1, 16)
    cache.step([2, 1], [6, 4]).attend(0, torch.zeros(2, 4, 1, 16), k, -k)
    assert torch.equal(cache.keys[0][2, :, 6], k[0, :, 0]) and torch.equal(cache.keys[0][1, :, 4], k[1, :, 0])
    assert torch.equal(cache.values[0][1, :, 4], -k[1, :, 0])


def test_a_freed_slot_is_handed_out_lowest_first_so_running_slots_stay_one_run():
    scheduler = Scheduler(slots=4)
    sequences = [_sequence(str(i)) for i in range(4)]
    for seq in sequences:
        scheduler.add([seq])
    scheduler.schedule()
    scheduler.release(sequences[1])
    scheduler.release(sequences[3])
    late = _sequence("late")
    scheduler.add([late])
    scheduler.schedule()
    assert late.slot == 1


def _sequence(request_id: str) -> Sequence:
    return Sequence(request_id, 0, [1, 2], 0, SamplingParams(), text=None)
