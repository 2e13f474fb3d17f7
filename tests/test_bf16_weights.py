"""bfloat16 weights with float32 arithmetic: the kernel, the blocked fallback, and what loading keeps."""

from __future__ import annotations

import platform
import shutil

import pytest
import torch
import torch.nn.functional as F

from conftest import COMMON, load_reference_model, random_image, reference_greedy_tokens
from qwen2vl import Qwen2VL, SamplingParams
from qwen2vl.finetune.lora import LoraSettings, apply_lora, lora_modules, merge_lora, save_adapter
from qwen2vl.loading import load_model
from qwen2vl.model import bf16_weights
from qwen2vl.model.bf16_weights import bf16_project, widened_in_blocks
from qwen2vl.model.matvec import kernel
from qwen2vl.random_checkpoint import TINY_CONFIG, write_random_checkpoint


def _operands(rows: int, width: int, outputs: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=generator)
    weight = (torch.randn(outputs, width, generator=generator) * 0.05).to(torch.bfloat16)
    return x, weight


def _exact(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.double() @ weight.double().T


def _float32_error_bound(x: torch.Tensor, weight: torch.Tensor) -> float:
    """What float32 summation may lose over K terms: K * 2^-24 * sum |x||w|, per output, at most."""
    magnitude = x.abs().double() @ weight.abs().double().T
    return float((magnitude * x.shape[1] * 2.0**-24).max())


BUILDABLE = platform.machine().lower() in ("x86_64", "amd64") and shutil.which("c++") is not None
needs_kernel = pytest.mark.skipif(not BUILDABLE, reason="not x86-64, or no C++ compiler")


@needs_kernel
def test_the_kernel_builds_where_there_is_a_compiler():
    assert kernel() is not None


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 16])
@pytest.mark.parametrize("width,outputs", [(1536, 2048), (37, 7), (1536 + 11, 130)])
def test_kernel_equals_the_exact_product_up_to_float32_rounding(rows, width, outputs):
    x, weight = _operands(rows, width, outputs)
    out = kernel().bf16_matvec(x, weight)
    assert out.dtype == torch.float32 and out.shape == (rows, outputs)
    assert (out.double() - _exact(x, weight)).abs().max().item() <= _float32_error_bound(x, weight)


@needs_kernel
def test_kernel_agrees_with_float32_linear_on_widened_weights():
    x, weight = _operands(3, 1536, 1000)
    torch.testing.assert_close(kernel().bf16_matvec(x, weight), F.linear(x, weight.float()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width,outputs", [(1536, 700), (8960, 100), (5, 3)])
def test_blocked_widening_equals_the_exact_product_up_to_float32_rounding(width, outputs):
    x, weight = _operands(40, width, outputs, seed=1)
    out = widened_in_blocks(x, weight)
    assert out.shape == (40, outputs)
    assert (out.double() - _exact(x, weight)).abs().max().item() <= _float32_error_bound(x, weight)


def test_project_without_the_kernel_gives_the_same_numbers(monkeypatch):
    x, weight = _operands(2, 256, 96, seed=2)
    bias = torch.randn(96)
    with_kernel = bf16_project(x.reshape(1, 2, 256), weight, bias)
    monkeypatch.setattr(bf16_weights, "kernel", lambda: None)
    without = bf16_project(x.reshape(1, 2, 256), weight, bias)
    assert without.shape == (1, 2, 96)
    torch.testing.assert_close(with_kernel, without, rtol=1e-5, atol=1e-5)


def test_project_keeps_gradients_for_training():
    x, weight = _operands(3, 64, 8, seed=3)
    x.requires_grad_(True)
    bf16_project(x, weight).sum().backward()
    torch.testing.assert_close(x.grad, weight.float().sum(0).expand(3, 64))


def test_project_of_no_rows_is_empty():
    x, weight = _operands(0, 64, 8)
    assert bf16_project(x, weight).shape == (0, 8)


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny-bf16"), TINY_CONFIG, seed=5, dtype=torch.bfloat16,
                                   copy_files_from=COMMON)


def test_default_load_keeps_a_bfloat16_checkpoints_decoder_weights_in_bfloat16(bf16_checkpoint):
    model = load_model(bf16_checkpoint)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["model.embed_tokens.weight"] == torch.bfloat16
    assert dtypes["model.layers.0.mlp.down_proj.weight"] == torch.bfloat16
    assert dtypes["model.layers.0.self_attn.q_proj.bias"] == torch.float32
    assert dtypes["model.norm.weight"] == torch.float32
    assert all(dtype == torch.float32 for name, dtype in dtypes.items() if name.startswith("visual."))
    assert model.compute_dtype == torch.float32


def test_asking_for_float32_loads_every_weight_in_float32(bf16_checkpoint):
    model = load_model(bf16_checkpoint, dtype="float32")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_a_float32_checkpoint_loads_in_float32_by_default(tiny_checkpoint):
    assert {p.dtype for p in load_model(tiny_checkpoint).parameters()} == {torch.float32}


def _image_question():
    image = random_image(112, 140, seed=4)
    return [{"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": "What is in this picture?"}]}]


def test_bfloat16_weights_give_transformers_float32_logits(bf16_checkpoint):
    llm = Qwen2VL.from_pretrained(bf16_checkpoint)
    inputs = llm.engine.prepare(_image_question())
    with torch.inference_mode():
        ours = llm.model(**inputs)[0]
        theirs = load_reference_model(bf16_checkpoint)(**inputs).logits[0]
    assert (ours - theirs).abs().max().item() <= 1e-4 * theirs.abs().max().item()
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_greedy_decoding_on_bfloat16_weights_equals_transformers_float32(bf16_checkpoint):
    llm = Qwen2VL.from_pretrained(bf16_checkpoint)
    inputs = llm.engine.prepare(_image_question())
    ours = llm.generate([_image_question()], SamplingParams(max_tokens=24, temperature=0.0))[0].token_ids
    assert ours == reference_greedy_tokens(load_reference_model(bf16_checkpoint), inputs, 24)
    assert len(set(ours)) > 3


def test_an_adapter_is_merged_into_float32_weights_not_rounded_to_bfloat16(bf16_checkpoint, tmp_path):
    model = load_model(bf16_checkpoint, dtype="float32")
    settings = LoraSettings(r=2, alpha=4.0, dropout=0.0, target_modules=("q_proj",))
    apply_lora(model, settings)
    for module in lora_modules(model).values():
        torch.nn.init.normal_(module.lora_B, std=1e-3)
    save_adapter(model, tmp_path / "adapter", settings, base_model=str(bf16_checkpoint))
    merge_lora(model)
    llm = Qwen2VL.from_pretrained(bf16_checkpoint, lora=tmp_path / "adapter")
    merged = llm.model.model.layers[0].self_attn.q_proj.weight
    assert merged.dtype == torch.float32
    assert torch.equal(merged, model.model.layers[0].self_attn.q_proj.weight)
