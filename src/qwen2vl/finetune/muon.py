"""Muon for the hidden weight matrices, AdamW for everything else, as one torch optimizer.

Owns: the update rule selected by TrainSettings.optimizer="muon" (Jordan et al., 2024: momentum
whose update is orthogonalized by a quintic Newton-Schulz iteration, so every direction of a matrix
moves at the same rate), its split of the parameters (2-D weights of the linear layers to Muon;
embeddings, the output head, norms, biases and the patch convolution to AdamW), and its state
(saved and resumed with the trainer's checkpoints like AdamW's). The orthogonal update is scaled by
0.2 * sqrt(max(rows, cols)) so its RMS matches an AdamW update's and both halves share one learning
rate and one schedule. Does not own: the schedule or the loop (trainer.py).

On the demo model Muon learned reading numbers from random weights in about two fifths of AdamW's steps
(docs/demo_model_experiments.md). Same-shaped matrices are orthogonalized together in one batched
iteration, in float32 (on a CPU without native bfloat16 that is both faster and exact enough); in
data-parallel training each process orthogonalizes a share of the matrices.
"""

from __future__ import annotations

import math

import torch

from .distributed import Distributed

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)  # quintic coefficients: steepest slope at zero that still converges
NEWTON_SCHULZ_STEPS = 5
ADAMW_RMS = 0.2  # the RMS of a typical AdamW update, which the orthogonal update is scaled to


def is_hidden_matrix(name: str, parameter: torch.Tensor) -> bool:
    """Whether Muon trains this parameter: a linear layer's 2-D weight, not the token embedding or
    an output head (the language model's or the training-only object head: those are a lookup and
    classifiers, for which AdamW is the rule)."""
    return parameter.ndim == 2 and not any(part in name for part in ("embed_tokens", "lm_head", "object_head"))


def orthogonalize(matrices: torch.Tensor, steps: int = NEWTON_SCHULZ_STEPS) -> torch.Tensor:
    """U S' V^T with S' near 1 for each [rows, cols] matrix of a [batch, rows, cols] stack (the
    quintic iteration does not converge exactly: S' lands in about 0.7-1.2, which trains as well)."""
    a, b, c = NEWTON_SCHULZ
    wide = matrices.size(-2) > matrices.size(-1)
    x = matrices.float()
    if wide:
        x = x.transpose(-2, -1)  # [batch, small, large]: the Gram matrix is the small side squared
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-7)  # spectral norm <= Frobenius norm <= 1
    x = x.contiguous()  # the batched products below run faster on a contiguous stack
    for _ in range(steps):
        gram = x @ x.transpose(-2, -1)  # [batch, small, small]
        polynomial = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b * gram + c * gram @ gram
        x = torch.baddbmm(x, polynomial, x, beta=a)  # a * x + polynomial @ x
    if wide:
        x = x.transpose(-2, -1)
    return x.to(matrices.dtype)


def share_out(shapes: list[torch.Size], world: int) -> list[int]:
    """The process that orthogonalizes each matrix: the costliest first, each to the least loaded
    (the same answer on every process, since it depends on the shapes alone)."""
    loads, owners = [0.0] * world, [0] * len(shapes)
    for i in sorted(range(len(shapes)), key=lambda i: -_iteration_flops(shapes[i])):
        owners[i] = min(range(world), key=loads.__getitem__)
        loads[owners[i]] += _iteration_flops(shapes[i])
    return owners


def _iteration_flops(shape: torch.Size) -> float:
    small, large = sorted(shape)
    return 4.0 * small * small * large + 2.0 * small ** 3


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer over two kinds of groups: {"muon": True} groups of 2-D matrices and AdamW groups.

    Every group reads the same lr (so LambdaLR schedules both); weight decay is decoupled in both."""

    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float = 0.0,
                 momentum: float = 0.95, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 distributed: Distributed | None = None):
        self.distributed = distributed or Distributed()
        matrices = [p for n, p in named_params if is_hidden_matrix(n, p)]
        others = [p for n, p in named_params if not is_hidden_matrix(n, p)]
        groups = [{"params": matrices, "muon": True}, {"params": others, "muon": False}]
        super().__init__([g for g in groups if g["params"]], dict(lr=lr, weight_decay=weight_decay,
                                                                 momentum=momentum, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._muon if group["muon"] else self._adamw)(group, params)
        return loss

    def _muon(self, group: dict, params: list[torch.Tensor]) -> None:
        momentum = group["momentum"]
        directions = []
        for p in params:
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buffer = state["momentum_buffer"]
            buffer.lerp_(p.grad, 1 - momentum)
            directions.append(p.grad.lerp(buffer, momentum))  # Nesterov
        for p, update in zip(params, self._orthogonalized(directions)):
            p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(update, alpha=-group["lr"] * ADAMW_RMS * math.sqrt(max(p.shape)))

    def _orthogonalized(self, directions: list[torch.Tensor]) -> list[torch.Tensor]:
        """Every direction orthogonalized. With several processes (which hold the same summed
        gradients) each orthogonalizes its share and one sum over a flat buffer hands out the rest."""
        rank, world = self.distributed.rank, self.distributed.world
        owners = share_out([d.shape for d in directions], world)
        mine = [i for i, owner in enumerate(owners) if owner == rank]
        results: list[torch.Tensor | None] = [None] * len(directions)
        by_shape: dict[torch.Size, list[int]] = {}
        for i in mine:
            by_shape.setdefault(directions[i].shape, []).append(i)
        for indices in by_shape.values():
            stacked = orthogonalize(torch.stack([directions[i] for i in indices]))  # [same-shaped, rows, cols]
            for i, update in zip(indices, stacked):
                results[i] = update
        return self.distributed.sum_all([r if r is not None else torch.zeros_like(d)
                                         for r, d in zip(results, directions)])

    def _adamw(self, group: dict, params: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros(())
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            step = float(state["step"])
            state["exp_avg"].lerp_(p.grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denominator = (state["exp_avg_sq"] / (1 - beta2 ** step)).sqrt_().add_(group["eps"])
            p.mul_(1 - group["lr"] * group["weight_decay"])
            p.addcdiv_(state["exp_avg"], denominator, value=-group["lr"] / (1 - beta1 ** step))
