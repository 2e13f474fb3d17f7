"""Checkpoint loading: key layouts, sharding, tying, dtypes, named errors, model names, memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from qwen2vl import CheckpointError, ModelNotFoundError, Qwen2VLModel
from qwen2vl.random_checkpoint import TINY_CONFIG, random_weights, write_random_checkpoint
from qwen2vl.config import ModelConfig
from qwen2vl.model.layers import project

UNTIED_CONFIG = {**TINY_CONFIG, "tie_word_embeddings": False}


def _source_tensors(directory):
    tensors = {}
    for file in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def _assert_loaded_exactly(model, expected, dtype):
    state = model.state_dict()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor.to(dtype)), name


@pytest.mark.parametrize("layout", ["hub", "v5"])
@pytest.mark.parametrize("shard", [None, 4_000_000], ids=["single", "sharded"])
def test_every_key_layout_single_or_sharded_loads_every_parameter(tmp_path, layout, shard):
    write_random_checkpoint(tmp_path, TINY_CONFIG, seed=1, max_shard_bytes=shard, key_layout=layout)
    assert ((tmp_path / "model.safetensors.index.json").is_file()) == (shard is not None)
    model = Qwen2VLModel.from_pretrained(str(tmp_path))
    expected = random_weights(ModelConfig.from_dict(TINY_CONFIG), seed=1)
    _assert_loaded_exactly(model, expected, torch.float32)


def test_untied_checkpoint_loads_its_own_lm_head(tmp_path):
    write_random_checkpoint(tmp_path, UNTIED_CONFIG, seed=2)
    model = Qwen2VLModel.from_pretrained(str(tmp_path))
    source = _source_tensors(tmp_path)
    assert torch.equal(model.lm_head.weight, source["lm_head.weight"])
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_tied_checkpoint_projects_with_the_embedding_matrix(tmp_path):
    write_random_checkpoint(tmp_path, TINY_CONFIG, seed=2)
    model = Qwen2VLModel.from_pretrained(str(tmp_path))
    hidden = torch.randn(1, 3, TINY_CONFIG["hidden_size"])
    assert model.lm_head is None
    assert torch.equal(model.logits(hidden), project(hidden, model.model.embed_tokens.weight))


@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("target", ["float32", "bfloat16", "float16"])
def test_any_stored_dtype_loads_into_any_target_dtype(tmp_path, stored, target):
    write_random_checkpoint(tmp_path, TINY_CONFIG, seed=3, dtype=stored)
    model = Qwen2VLModel.from_pretrained(str(tmp_path), dtype=target)
    dtype = getattr(torch, target)
    assert {p.dtype for p in model.parameters()} == {dtype}
    _assert_loaded_exactly(model, _source_tensors(tmp_path), dtype)


def test_auto_dtype_uses_the_checkpoint_config(tmp_path):
    write_random_checkpoint(tmp_path, {**TINY_CONFIG, "torch_dtype": "bfloat16"}, seed=3, dtype=torch.bfloat16)
    model = Qwen2VLModel.from_pretrained(str(tmp_path), dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16


def _rewrite(directory, edit):
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def test_wrong_shape_names_the_tensor_and_both_shapes(tmp_path):
    write_random_checkpoint(tmp_path, TINY_CONFIG)
    _rewrite(tmp_path, lambda t: t.update({"model.norm.weight": torch.ones(65)}))
    with pytest.raises(CheckpointError, match=r"wrong shape: model\.norm\.weight \[65\] \(expected \[64\]\)"):
        Qwen2VLModel.from_pretrained(str(tmp_path))


def test_missing_tensor_is_named(tmp_path):
    write_random_checkpoint(tmp_path, TINY_CONFIG)
    _rewrite(tmp_path, lambda t: t.pop("visual.merger.ln_q.bias"))
    with pytest.raises(CheckpointError, match=r"missing: visual\.merger\.ln_q\.bias"):
        Qwen2VLModel.from_pretrained(str(tmp_path))


def test_extra_tensor_is_named(tmp_path):
    write_random_checkpoint(tmp_path, TINY_CONFIG)
    _rewrite(tmp_path, lambda t: t.update({"model.layers.9.mlp.up_proj.weight": torch.ones(2, 2)}))
    with pytest.raises(CheckpointError, match=r"unexpected: model\.layers\.9\.mlp\.up_proj\.weight"):
        Qwen2VLModel.from_pretrained(str(tmp_path))


def test_one_error_names_every_offending_key(tmp_path):
    write_random_checkpoint(tmp_path, TINY_CONFIG)

    def break_three(tensors):
        tensors.pop("model.norm.weight")
        tensors["extra.weight"] = torch.ones(1)
        tensors["visual.merger.ln_q.weight"] = torch.ones(3)

    _rewrite(tmp_path, break_three)
    with pytest.raises(CheckpointError) as error:
        Qwen2VLModel.from_pretrained(str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert all(key in message for key in ("model.norm.weight", "extra.weight", "visual.merger.ln_q.weight"))


def test_directory_without_weights_is_a_checkpoint_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    with pytest.raises(CheckpointError, match="no model.safetensors or model.safetensors.index.json"):
        Qwen2VLModel.from_pretrained(str(tmp_path))


def test_shard_index_pointing_at_a_missing_file_names_it(tmp_path):
    write_random_checkpoint(tmp_path, TINY_CONFIG, max_shard_bytes=4_000_000)
    victim = sorted(tmp_path.glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        Qwen2VLModel.from_pretrained(str(tmp_path))


def test_loaded_model_does_not_depend_on_the_files_afterwards(tmp_path):
    write_random_checkpoint(tmp_path, TINY_CONFIG, seed=4)
    model = Qwen2VLModel.from_pretrained(str(tmp_path))
    before = model.model.norm.weight.clone()
    write_random_checkpoint(tmp_path, TINY_CONFIG, seed=5)  # overwrites the same file
    assert torch.equal(model.model.norm.weight, before)


def test_directory_without_config_is_not_a_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        Qwen2VLModel.from_pretrained(str(tmp_path))


def test_nonexistent_path_is_not_a_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a model directory and not a Hub id"):
        Qwen2VLModel.from_pretrained(str(tmp_path / "nowhere" / "deeper"))


def test_offline_hub_id_says_to_pass_a_local_directory(tmp_path):
    script = textwrap.dedent("""
        from qwen2vl import Qwen2VLModel, ModelNotFoundError
        try:
            Qwen2VLModel.from_pretrained("Qwen/Qwen2-VL-2B-Instruct")
        except ModelNotFoundError as error:
            print(error)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout + out.stderr
    assert "Qwen/Qwen2-VL-2B-Instruct" in lines[0] and "local directory" in lines[0]


def test_peak_memory_while_loading_stays_under_1_3x_the_weights(tmp_path):
    """The rise in peak RSS over the weights' own size, in a fresh process.

    A tiny checkpoint is loaded first, so the one-time cost of paging in torch's own code
    (about 150 MB, whatever the model size) is not counted against this load.
    """
    config = {**UNTIED_CONFIG, "hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4,
              "num_key_value_heads": 2, "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
              "vision_config": {**TINY_CONFIG["vision_config"], "hidden_size": 256}}
    big, tiny = tmp_path / "big", tmp_path / "tiny"
    write_random_checkpoint(big, config, dtype=torch.bfloat16, max_shard_bytes=100_000_000)
    write_random_checkpoint(tiny, TINY_CONFIG, dtype=torch.bfloat16)
    script = textwrap.dedent(f"""
        import torch, qwen2vl
        def kb(field):
            return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])
        qwen2vl.Qwen2VLModel.from_pretrained({str(tiny)!r}, dtype="float32")
        open("/proc/self/clear_refs", "w").write("5")
        before = kb("VmRSS:")
        model = qwen2vl.Qwen2VLModel.from_pretrained({str(big)!r}, dtype="float32")
        weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 1024
        print((kb("VmHWM:") - before) / weights)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) <= 1.3
