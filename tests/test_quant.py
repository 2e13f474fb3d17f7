"""Quantization transforms: close to float, generation works, saved checkpoints reload as they were."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from qwen2vl import ConfigError, Qwen2VL, Qwen2VLModel, SamplingParams
from qwen2vl.loading import load_model
from qwen2vl.quant import Int4Linear, Int8Linear, quantize
from qwen2vl.quant.int4 import kernel, pack, unpack
from qwen2vl.quant.transform import MARKER, save_quantized_checkpoint

IDS = torch.tensor([[151644, 872, 100, 200, 151645]])


def relative_error(approx, exact):
    return ((approx - exact).norm() / exact.norm()).item()


def test_int8_linear_is_close_to_the_float_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(512, 256)
    x = torch.randn(7, 512)
    assert relative_error(Int8Linear.from_linear(linear)(x), linear(x)) < 0.02


def test_int4_packing_maps_each_groups_largest_weight_exactly_and_the_rest_to_a_nearby_step():
    torch.manual_seed(0)
    weight = torch.randn(8, 128)
    packed, scales = pack(weight)
    assert packed.shape == (8, 64) and packed.dtype == torch.uint8 and scales.shape == (8, 4)
    restored = unpack(packed, scales)
    groups, back = weight.view(8, 4, 32), restored.view(8, 4, 32)
    largest = groups.abs().argmax(-1, keepdim=True)
    assert torch.equal(groups.gather(-1, largest), back.gather(-1, largest))
    error, step = (groups - back).abs(), scales.abs()[..., None]
    assert (error <= step + 1e-6).all()  # half a step, or one where +8 steps is clamped to +7
    assert (error <= step / 2 + 1e-6).float().mean() > 0.95


def test_int4_linear_is_close_to_the_float_linear_at_one_and_many_rows():
    torch.manual_seed(0)
    linear = torch.nn.Linear(512, 256)
    quantized = Int4Linear.from_linear(linear)
    for rows in (1, 5, 40):  # the kernel up to 16 rows, unpacked blocks and a float32 GEMM beyond
        x = torch.randn(rows, 512)
        assert relative_error(quantized(x), linear(x)) < 0.12


def test_int4_quantizing_in_row_blocks_packs_what_one_pass_packs(monkeypatch):
    import qwen2vl.quant.int4 as int4

    linear = torch.nn.Linear(64, 100)
    packed, scales = pack(linear.weight)
    monkeypatch.setattr(int4, "PACK_BYTES", 64 * 4 * 7)  # 7 rows at a time
    blocked = Int4Linear.from_linear(linear)
    assert torch.equal(blocked.weight_packed, packed) and torch.equal(blocked.weight_scale, scales)


def int8_rounded_per_32(x):
    """x [M, K] with each 32 values rounded to int8 steps of their own scale (largest magnitude / 127)."""
    groups = x.view(x.shape[0], -1, 32)
    largest = groups.abs().amax(-1, keepdim=True)
    steps = torch.where(largest > 0, torch.round(groups * 127 / largest), torch.zeros_like(groups))
    return (steps * largest / 127).view_as(x)


@pytest.mark.parametrize("groups", [1, 3, 10, 48])  # odd counts end in a group without a partner
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_int4_kernel_is_the_product_of_int8_rounded_activations_and_the_unpacked_weights(groups, rows):
    compiled = kernel()
    if compiled is None:
        pytest.skip("no AVX2 kernel on this machine")
    torch.manual_seed(groups * 10 + rows)
    packed, scales = pack(torch.randn(37, 32 * groups))
    x = torch.randn(rows, 32 * groups)
    exact = int8_rounded_per_32(x).double() @ unpack(packed, scales).double().T
    assert relative_error(compiled.int4_matvec(x, packed, scales).double(), exact) < 1e-6


def test_int4_many_rows_use_exactly_the_unpacked_weights():
    torch.manual_seed(0)
    quantized = Int4Linear.from_linear(torch.nn.Linear(256, 96, bias=False))
    x = torch.randn(33, 256)
    torch.testing.assert_close(quantized(x), x @ unpack(quantized.weight_packed, quantized.weight_scale).T)


def test_int8_swaps_decoder_vision_and_head_projections(tiny_checkpoint):
    model = Qwen2VLModel.from_pretrained(tiny_checkpoint)
    names = quantize(model, "int8")
    assert "model.layers.0.self_attn.q_proj" in names and "visual.blocks.0.attn.qkv" in names
    assert "lm_head" in names  # the tied head gets an int8 copy of the embedding matrix
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())


def test_int4_swaps_decoder_and_head_projections_and_leaves_the_vision_tower_exact(tiny_checkpoint):
    model = Qwen2VLModel.from_pretrained(tiny_checkpoint)
    names = quantize(model, "int4")
    assert "model.layers.0.mlp.down_proj" in names and "lm_head" in names
    assert not any(name.startswith("visual.") for name in names)
    assert isinstance(model.visual.blocks[0].attn.qkv, torch.nn.Linear)


def test_an_unknown_method_is_refused(tiny_checkpoint):
    with pytest.raises(ConfigError, match="int3"):
        Qwen2VL.from_pretrained(tiny_checkpoint, quantize="int3")


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_engine_generates(tiny_checkpoint, method):
    llm = Qwen2VL.from_pretrained(tiny_checkpoint, quantize=method)
    result = llm.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(max_tokens=5, temperature=0))[0]
    assert len(result.token_ids) == 5


@pytest.mark.parametrize("method,layer", [("int8", Int8Linear), ("int4", Int4Linear)])
def test_saved_quantized_checkpoint_reloads_without_requantizing(tiny_checkpoint, tmp_path, method, layer):
    out = subprocess.run([sys.executable, "-m", "qwen2vl.cli", "quantize", str(tiny_checkpoint), str(tmp_path / "q"),
                          "--method", method], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "q" / MARKER).is_file()
    reloaded = Qwen2VLModel.from_pretrained(str(tmp_path / "q"))
    assert isinstance(reloaded.model.layers[0].mlp.up_proj, layer)
    quantized = load_model(tiny_checkpoint, quantize=method)
    with torch.inference_mode():
        assert torch.equal(reloaded(input_ids=IDS), quantized(input_ids=IDS))


def test_a_saved_int8_checkpoint_cannot_be_loaded_as_int4(tiny_checkpoint, tmp_path):
    model = load_model(tiny_checkpoint, quantize="int8")
    save_quantized_checkpoint(model, tmp_path / "q", tiny_checkpoint)
    with pytest.raises(ConfigError, match="saved in int8"):
        load_model(str(tmp_path / "q"), quantize="int4")
