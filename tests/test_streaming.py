"""Text out: incremental detokenization, multi-byte characters, stop strings, streaming == non-streaming."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from conftest import COMMON
from qwen2vl import Qwen2VL, SamplingParams
from qwen2vl.engine.detokenizer import IncrementalText

TOKENIZER = Tokenizer.from_file(str(COMMON / "tokenizer.json"))
TEXT = "Price: 42€ — 你好，世界！🦜🪿🫎 ꙮ naïve café. The end."


def decode(ids):
    return TOKENIZER.decode(list(ids), skip_special_tokens=True)


def stream_all(ids, stop=()):
    text = IncrementalText(decode, stop)
    deltas = [text.push(token) for token in ids]
    deltas.append(text.finish())
    return deltas, text


def test_byte_level_tokens_split_multibyte_characters():
    ids = TOKENIZER.encode(TEXT, add_special_tokens=False).ids
    assert any("\ufffd" in decode([token]) for token in ids), "the test text must split some characters"


def test_deltas_never_split_a_character_and_add_up_to_the_text():
    ids = TOKENIZER.encode(TEXT, add_special_tokens=False).ids
    deltas, text = stream_all(ids)
    assert all("\ufffd" not in delta for delta in deltas)
    assert "".join(deltas) == TEXT == text.text


def test_stop_string_spanning_tokens_is_honoured_and_stripped():
    ids = TOKENIZER.encode(TEXT, add_special_tokens=False).ids
    deltas, text = stream_all(ids, stop=["世界！🦜🪿"])
    assert text.stopped
    assert "".join(deltas) == text.text == "Price: 42€ — 你好，"


def test_no_partial_stop_string_is_ever_emitted():
    ids = TOKENIZER.encode("alpha beta gamma delta", add_special_tokens=False).ids
    deltas, text = stream_all(ids, stop=["gamma delta epsilon"])  # its prefix appears, the whole never does
    emitted = ""
    for delta in deltas[:-1]:
        emitted += delta
        assert not emitted.endswith(("gamma", "gamma ", "gamma delta"))
    assert "".join(deltas) == "alpha beta gamma delta" and not text.stopped


def test_earliest_of_several_stop_strings_wins():
    ids = TOKENIZER.encode("one two three four", add_special_tokens=False).ids
    _, text = stream_all(ids, stop=["four", "two"])
    assert text.text == "one "


@pytest.fixture(scope="module")
def llm(tiny_checkpoint):
    return Qwen2VL.from_pretrained(tiny_checkpoint, max_model_len=1024)


PROMPT = [{"role": "user", "content": "Write anything at all."}]


def test_streamed_text_equals_the_generated_text(llm):
    generated = llm.chat(PROMPT, max_tokens=40, temperature=0)
    streamed = list(llm.stream(PROMPT, max_tokens=40, temperature=0))
    assert "".join(streamed) == generated
    assert len(streamed) > 5


def test_seeded_sampled_stream_equals_seeded_generation(llm):
    options = dict(max_tokens=30, temperature=1.0, top_k=-1, top_p=1.0, seed=9)
    assert "".join(llm.stream(PROMPT, **options)) == llm.chat(PROMPT, **options)


def test_engine_stops_on_a_string_spanning_tokens_and_strips_it(llm):
    full = llm.generate([PROMPT], SamplingParams(max_tokens=40, temperature=0))[0]
    pieces = [decode([t]) for t in full.token_ids]
    cut = len(pieces[0]) + len(pieces[1])
    stop = full.text[cut - 2: cut + 3]  # from inside token 2 into token 3
    assert len(stop) == 5
    stopped = llm.generate([PROMPT], SamplingParams(max_tokens=40, temperature=0, stop=[stop]))[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.index(stop)]
    streamed = "".join(llm.stream(PROMPT, max_tokens=40, temperature=0, stop=[stop]))
    assert streamed == stopped.text
