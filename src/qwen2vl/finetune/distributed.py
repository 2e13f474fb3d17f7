"""Data-parallel helpers over torch.distributed (gloo on CPU, nccl on CUDA), inert in one process.

Owns: joining the process group torchrun (or launch.py) describes in the environment, summing tensors
(a model's gradients in one collective) and gathering Python objects across ranks, and barriers.
Does not own: what is summed (trainer.py) or starting processes (launch.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1

    @classmethod
    def from_env(cls, device: torch.device) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), world)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_grads_(self, parameters: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of `parameters` across ranks in one collective over a flat buffer (one
        call per tensor cost a round trip each, about 100 a step for the demo model, which made two
        one-thread processes on the CPU slower than one). A rank without a gradient for a tensor (no
        examples in its share) adds zeros; a gradient stays None only where no rank had one."""
        if self.world == 1 or not parameters:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        present = torch.tensor([float(p.grad is not None) for p in parameters], device=parameters[0].device)
        *sums, anyone = self.sum_all(grads + [present])
        for parameter, grad, had in zip(parameters, sums, anyone.tolist()):
            parameter.grad = grad if had else None

    def sum_all(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor summed across ranks, all in one collective over a flat buffer."""
        if self.world == 1:
            return tensors
        flat = torch.cat([t.reshape(-1) for t in tensors])  # [sum of numels]
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        return [part.view_as(t).to(t.dtype) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
