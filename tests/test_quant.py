"""int8 quantization: close to float, generation works, saved int8 checkpoints reload as they were."""

from __future__ import annotations

import subprocess
import sys

import torch

from qwen2vl import Qwen2VL, Qwen2VLModel, SamplingParams
from qwen2vl.quant import Int8Linear, quantize_int8
from qwen2vl.quant.int8 import MARKER


def test_int8_linear_is_close_to_the_float_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(512, 256)
    x = torch.randn(7, 512)
    exact = linear(x)
    approx = Int8Linear.from_linear(linear)(x)
    assert (approx - exact).norm() / exact.norm() < 0.02


def test_quantize_swaps_decoder_vision_and_head_projections(tiny_checkpoint):
    model = Qwen2VLModel.from_pretrained(tiny_checkpoint)
    names = quantize_int8(model)
    assert "model.layers.0.self_attn.q_proj" in names and "visual.blocks.0.attn.qkv" in names
    assert "lm_head" in names  # the tied head gets an int8 copy of the embedding matrix
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())


def test_int8_engine_generates(tiny_checkpoint):
    llm = Qwen2VL.from_pretrained(tiny_checkpoint, quantize="int8")
    result = llm.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(max_tokens=5, temperature=0))[0]
    assert len(result.token_ids) == 5


def test_saved_int8_checkpoint_reloads_without_requantizing(tiny_checkpoint, tmp_path):
    out = subprocess.run([sys.executable, "-m", "qwen2vl.cli", "quantize", str(tiny_checkpoint), str(tmp_path / "q")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "q" / MARKER).is_file()
    quantized = Qwen2VLModel.from_pretrained(tiny_checkpoint)
    quantize_int8(quantized)
    reloaded = Qwen2VLModel.from_pretrained(str(tmp_path / "q"))
    assert isinstance(reloaded.model.layers[0].mlp.up_proj, Int8Linear)
    ids = torch.tensor([[151644, 872, 100, 200, 151645]])
    with torch.inference_mode():
        assert torch.equal(reloaded(input_ids=ids), quantized(input_ids=ids))
