"""Config parsing: the flat Hub layout, transformers 5's nested layout, defaults and errors."""


import pytest

from conftest import real_config
from qwen2vl import ConfigError, ModelConfig


@pytest.mark.parametrize("size, hidden, layers, heads, kv_heads, vocab, tied", [
    ("2B", 1536, 28, 12, 2, 151936, True),
    ("7B", 3584, 28, 28, 4, 152064, False),
    ("72B", 8192, 80, 64, 8, 152064, False),
])
def test_official_flat_configs_parse_to_the_published_architecture(size, hidden, layers, heads, kv_heads, vocab, tied):
    config = ModelConfig.from_dict(real_config(size))
    text, vision = config.text, config.vision
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (
        hidden, layers, heads, kv_heads)
    assert (text.vocab_size, text.tie_word_embeddings, text.head_dim, text.mrope_section) == (vocab, tied, 128, (16, 24, 24))
    assert (vision.depth, vision.embed_dim, vision.num_heads, vision.head_dim, vision.out_hidden_size) == (
        32, 1280, 16, 80, hidden)
    assert (vision.patch_input_dim, vision.hidden_act, text.rope_theta) == (1176, "quick_gelu", 1e6)
    assert (config.image_token_id, config.video_token_id, config.vision_start_token_id) == (151655, 151656, 151652)


def _nested_v5(flat: dict) -> dict:
    """The nested layout transformers 5 writes: text fields under text_config, rope_parameters."""
    text_keys = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "rms_norm_eps", "vocab_size", "hidden_act", "max_position_embeddings"]
    text = {k: flat[k] for k in text_keys}
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": flat["rope_theta"],
                               "mrope_section": flat["rope_scaling"]["mrope_section"]}
    rest = {k: v for k, v in flat.items() if k not in text_keys and k not in ("rope_theta", "rope_scaling")}
    return {**rest, "text_config": text, "dtype": "bfloat16"}


def test_nested_transformers5_config_parses_like_the_flat_one():
    flat = real_config("7B")
    nested = ModelConfig.from_dict(_nested_v5(flat))
    expected = ModelConfig.from_dict(flat)
    assert nested.text == expected.text
    assert nested.vision == expected.vision
    assert nested.torch_dtype == "bfloat16"


def test_unknown_fields_are_ignored():
    raw = real_config("2B")
    raw["some_future_field"] = {"x": 1}
    raw["vision_config"]["another_new_field"] = 3
    assert ModelConfig.from_dict(raw) == ModelConfig.from_dict(real_config("2B"))


def test_missing_required_field_names_it():
    raw = real_config("2B")
    del raw["num_hidden_layers"]
    with pytest.raises(ConfigError, match="'num_hidden_layers' is missing"):
        ModelConfig.from_dict(raw)


def test_missing_vision_token_id_names_it():
    raw = real_config("2B")
    del raw["image_token_id"]
    with pytest.raises(ConfigError, match="'image_token_id' is missing"):
        ModelConfig.from_dict(raw)


def test_mrope_section_that_does_not_cover_half_the_head_dim_is_rejected():
    raw = real_config("2B")
    raw["rope_scaling"]["mrope_section"] = [16, 24, 16]
    with pytest.raises(ConfigError, match="mrope_section"):
        ModelConfig.from_dict(raw)


def test_wrongly_typed_field_names_it():
    raw = real_config("2B")
    raw["hidden_size"] = "big"
    with pytest.raises(ConfigError, match="'hidden_size' must be int"):
        ModelConfig.from_dict(raw)


def test_unreadable_config_file_is_a_config_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable JSON config"):
        ModelConfig.from_file(path)


def test_config_is_frozen():
    config = ModelConfig.from_dict(real_config("2B"))
    with pytest.raises(Exception):
        config.text.hidden_size = 1  # type: ignore[misc]
