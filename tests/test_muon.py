"""Muon: the orthogonalized update, which parameters it trains, its AdamW half, and training with it."""

from __future__ import annotations

import os

import pytest
import torch

from finetune_data import write_colour_dataset
from qwen2vl.errors import ConfigError
from qwen2vl.finetune import TrainSettings, finetune
from qwen2vl.finetune.muon import MuonAdamW, is_hidden_matrix, orthogonalize, share_out


@pytest.mark.parametrize("shape", [(48, 48), (32, 80), (80, 32)])
def test_orthogonalized_matrices_have_singular_values_near_one(shape):
    matrix = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    values = torch.linalg.svdvals(orthogonalize(matrix)[0])
    assert orthogonalize(matrix).shape == matrix.shape
    assert 0.6 < float(values.min()) and float(values.max()) < 1.25


def test_orthogonalizing_a_stack_equals_orthogonalizing_each_alone():
    stack = torch.randn(3, 24, 40, generator=torch.Generator().manual_seed(1))
    alone = torch.stack([orthogonalize(m[None])[0] for m in stack])
    torch.testing.assert_close(orthogonalize(stack), alone, atol=1e-5, rtol=1e-5)


def test_orthogonalizing_keeps_the_gradients_directions():
    matrix = torch.randn(1, 16, 24, generator=torch.Generator().manual_seed(2))
    assert float((orthogonalize(matrix) * matrix).sum()) > 0.5 * float(matrix.norm() * 16 ** 0.5)


def test_linear_weights_are_hidden_matrices_and_lookups_heads_norms_biases_and_convolutions_are_not():
    assert is_hidden_matrix("model.layers.0.mlp.up_proj.weight", torch.zeros(8, 4))
    assert is_hidden_matrix("visual.merger.mlp.0.weight", torch.zeros(8, 4))
    assert not is_hidden_matrix("model.embed_tokens.weight", torch.zeros(8, 4))
    assert not is_hidden_matrix("lm_head.weight", torch.zeros(8, 4))
    assert not is_hidden_matrix("model.norm.weight", torch.zeros(8))
    assert not is_hidden_matrix("model.layers.0.self_attn.q_proj.bias", torch.zeros(8))
    assert not is_hidden_matrix("visual.patch_embed.proj.weight", torch.zeros(8, 3, 2, 14, 14))


def _named(**tensors) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, torch.nn.Parameter(t.clone())) for name, t in tensors.items()]


def test_a_muon_step_moves_a_matrix_by_about_an_adamw_steps_rms():
    ((_, weight),) = params = _named(**{"layer.weight": torch.zeros(64, 96)})
    weight.grad = torch.randn(64, 96, generator=torch.Generator().manual_seed(3))
    MuonAdamW(params, lr=1e-2).step()
    assert float(weight.detach().pow(2).mean().sqrt()) == pytest.approx(0.2 * 1e-2, rel=0.25)


def test_weight_decay_is_decoupled_from_the_gradient_in_both_halves():
    params = _named(**{"layer.weight": torch.ones(4, 6), "norm.weight": torch.ones(6)})
    for _, p in params:
        p.grad = torch.zeros_like(p)
    MuonAdamW(params, lr=0.1, weight_decay=0.5).step()
    for _, p in params:
        torch.testing.assert_close(p.detach(), torch.full_like(p, 1 - 0.1 * 0.5))


def test_the_other_parameters_follow_adamw_exactly():
    start = {"norm.weight": torch.randn(6), "proj.bias": torch.randn(3), "embed_tokens.weight": torch.randn(5, 4)}
    ours, theirs = _named(**start), _named(**start)
    muon = MuonAdamW(ours, lr=1e-2, weight_decay=0.1)
    adamw = torch.optim.AdamW([p for _, p in theirs], lr=1e-2, weight_decay=0.1)
    generator = torch.Generator().manual_seed(4)
    for _ in range(3):
        for (_, a), (_, b) in zip(ours, theirs):
            a.grad = b.grad = torch.randn(a.shape, generator=generator)
        muon.step()
        adamw.step()
    for (_, a), (_, b) in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_parameters_without_a_gradient_are_left_alone():
    params = _named(**{"layer.weight": torch.ones(4, 6), "norm.weight": torch.ones(6)})
    MuonAdamW(params, lr=0.1, weight_decay=0.5).step()
    assert all(bool((p == 1).all()) for _, p in params)


def test_each_process_orthogonalizes_a_balanced_share_the_same_on_every_process():
    shapes = [torch.Size(s) for s in [(512, 512)] + [(192, 512)] * 5 + [(512, 192)] * 8 + [(64, 192)] * 8]
    owners = share_out(shapes, 2)
    assert owners == share_out(list(shapes), 2)
    flops = [4 * min(s) ** 2 * max(s) + 2 * min(s) ** 3 for s in shapes]  # one Newton-Schulz iteration
    cost = [sum(f for f, o in zip(flops, owners) if o == rank) for rank in range(2)]
    assert max(cost) < 1.2 * min(cost)
    assert share_out(shapes, 1) == [0] * len(shapes)


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return write_colour_dataset(tmp_path_factory.mktemp("muon-data"), 24)


def _full(output, **overrides) -> TrainSettings:
    return TrainSettings(**{**dict(output=output, mode="full", batch_size=4, max_steps=30, lr=5e-3, warmup_ratio=0.1,
                                   seed=1, optimizer="muon"), **overrides})


def test_full_training_with_muon_halves_the_loss(tiny_checkpoint, colours, tmp_path):
    rows = finetune(tiny_checkpoint, colours, _full(tmp_path))
    first, last = (sum(r["loss"] for r in part) / 5 for part in (rows[:5], rows[-5:]))
    assert last < 0.5 * first


def test_resuming_muon_training_gives_the_uninterrupted_losses(tiny_checkpoint, colours, tmp_path):
    full = finetune(tiny_checkpoint, colours, _full(tmp_path / "a", max_steps=6, save_every=3))
    resumed_dir = tmp_path / "b"
    resumed_dir.mkdir()
    os.rename(tmp_path / "a" / "checkpoint-3", resumed_dir / "checkpoint-3")
    resumed = finetune(tiny_checkpoint, colours, _full(resumed_dir, max_steps=6, save_every=3), resume=True)
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full[3:]], rel=1e-6)


def test_an_unknown_optimizer_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="optimizer"):
        _full(tmp_path, optimizer="sgd")


def test_two_processes_train_with_muon_as_one_process(tiny_checkpoint, colours, tmp_path):
    one = finetune(tiny_checkpoint, colours, _full(tmp_path / "one", max_steps=4))
    two = finetune(tiny_checkpoint, colours, _full(tmp_path / "two", max_steps=4, batch_size=2), processes=2)
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("one", "two"))
    assert a.keys() == b.keys()
    assert all((a[k] - b[k]).abs().max() <= 1e-3 * a[k].abs().max() + 1e-6 for k in a)
