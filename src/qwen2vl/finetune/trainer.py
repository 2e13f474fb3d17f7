"""Supervised fine-tuning: LoRA or full, on image/video conversations, in one or many processes.

Owns: choosing what trains (LoRA adapters on the decoder projections by default; optionally the
merger, the vision tower, or everything), the loop (AdamW or Muon, warmup + cosine, gradient accumulation
and clipping, gradient checkpointing, bf16 autocast on CUDA), the loss (the mean over the global
batch's label tokens, or with loss_per="example" the mean over its examples of each answer's token
mean, so short answers weigh as much as long ones; either way N processes compute what one process
computes), evaluation, progress and JSONL metrics, checkpoints with optimizer/scheduler/RNG state,
and resuming; with object_loss_weight > 0, the training-only object targets on the visual tokens
(object_targets.py) added to the loss; float denormals are flushed to zero on the CPU while
training (they made steps 1.7x slower as the model grew confident). The up-front check of the data
runs in a process per core.
Does not own: data (data.py), adapters on disk (lora.py, checkpoint.py), process groups (distributed.py).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..model import Qwen2VLModel
from ..processing import Processor
from .checkpoint import latest_checkpoint, load_state, save_final, save_state
from .data import IGNORE, balanced_share, batch_order, collate, encode_example, invalid_lines, read_records
from .distributed import Distributed
from .launch import cores
from .lora import LoraSettings, apply_lora
from .muon import MuonAdamW
from .object_targets import ObjectHead, cell_targets, tag_vocabulary


@dataclass(frozen=True)
class TrainSettings:
    output: Path
    mode: str = "lora"  # "lora" or "full"
    lora: LoraSettings = field(default_factory=LoraSettings)
    train_merger: bool = False
    train_vision: bool = False
    max_length: int = 4096
    batch_size: int = 1  # per process and micro-batch
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    eval_every: int = 0
    save_every: int = 0
    seed: int = 0
    group_by_length: bool = True
    loss_per: str = "token"  # "token": every answer token weighs the same; "example": every example does
    optimizer: str = "adamw"  # or "muon": Muon for the linear layers' matrices, AdamW for the rest (muon.py)
    gradient_checkpointing: bool = False
    skip_invalid: bool = False
    object_loss_weight: float = 0.0  # > 0: the lines' "objects" teach the visual tokens (object_targets.py)

    def __post_init__(self) -> None:
        if not self.object_loss_weight >= 0:
            raise ConfigError(f"object_loss_weight must be 0 or more, not {self.object_loss_weight}")
        if self.loss_per not in ("token", "example"):
            raise ConfigError(f"loss_per must be 'token' or 'example', not {self.loss_per!r}")
        if self.optimizer not in ("adamw", "muon"):
            raise ConfigError(f"optimizer must be 'adamw' or 'muon', not {self.optimizer!r}")


class Trainer:
    def __init__(self, model: Qwen2VLModel, processor: Processor, settings: TrainSettings, base_dir: Path,
                 train_file: Path, eval_file: Path | None = None):
        self.model, self.processor, self.settings, self.base_dir = model, processor, settings, base_dir
        self.device = next(model.parameters()).device
        self.dist = Distributed.from_env(self.device)
        torch.manual_seed(settings.seed)
        self.trainable = self._select_trainable()
        self.train = self._records(train_file)
        self.eval = self._records(eval_file) if eval_file is not None else None
        self._features: list[torch.Tensor] = []  # what the vision tower returned this forward (object head's hook)
        self.object_head, self.tags = self._object_head()
        self.global_batch = settings.batch_size * settings.grad_accum * self.dist.world
        steps_per_epoch = math.ceil(len(self.train[0]) / self.global_batch)
        self.total_steps = settings.max_steps or max(1, math.ceil(settings.epochs * steps_per_epoch))
        self.steps_per_epoch = steps_per_epoch
        self._epoch_batches: tuple[int, list[list[int]]] = (-1, [])  # (epoch, its batches): shuffled once an epoch
        self.optimizer = self._optimizer()
        warmup = int(settings.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: _warmup_cosine(s, warmup,
                                                                                                 self.total_steps))

    def _select_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        model, s = self.model, self.settings
        if s.mode == "lora":
            apply_lora(model, s.lora)
        else:
            model.requires_grad_(True)
            model.visual.requires_grad_(False)
        model.visual.merger.requires_grad_(s.train_merger or s.train_vision or s.mode == "full")
        if s.train_vision:
            model.visual.requires_grad_(True)
        model.model.gradient_checkpointing = s.gradient_checkpointing
        model.train()
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def _optimizer(self) -> torch.optim.Optimizer:
        s = self.settings
        if s.optimizer == "muon":
            return MuonAdamW(self.trainable, lr=s.lr, weight_decay=s.weight_decay, distributed=self.dist)
        fused = self.device.type in ("cpu", "cuda")  # one kernel for every tensor: 3% of the demo model's step
        return torch.optim.AdamW([p for _, p in self.trainable], lr=s.lr, weight_decay=s.weight_decay, fused=fused)

    def _records(self, path: Path) -> tuple[list, list[int]]:
        """Records valid on every rank, and their lengths (each rank prepared the media of its shard)."""
        records, problems = read_records(path, self.processor, self.settings.max_length, skip_invalid=True,
                                         shard=(self.dist.rank, self.dist.world), workers=self._check_workers())
        shards = self.dist.gather(([(r.line, r.length) for r in records], problems))
        bad = sorted({p for _, probs in shards for p in probs})
        if bad and not self.settings.skip_invalid:
            raise invalid_lines(bad)
        valid_lines = set.intersection(*[{line for line, _ in lines} for lines, _ in shards])
        lengths = {line: length for lines, _ in shards for line, length in lines if length >= 0}
        kept = [r for r in records if r.line in valid_lines]
        if not kept:
            raise invalid_lines(bad or [f"{path.name}: no usable examples"])
        if self.dist.main:
            for problem in bad:
                print(f"skipped: {problem}", file=sys.stderr)
        return kept, [lengths[r.line] for r in kept]

    def _object_head(self) -> tuple[ObjectHead | None, tuple[str, ...]]:
        """With object_loss_weight > 0: the training-only head (its parameters train beside the
        model's, and are never saved with it) and the data's tag vocabulary; it reads the image
        features through a hook on the vision tower."""
        if self.settings.object_loss_weight == 0:
            return None, ()
        objects = [r.objects for r in self.train[0] if r.objects is not None]
        if not objects:
            raise ConfigError("object_loss_weight needs training lines with \"objects\"")
        tags = tag_vocabulary(objects)
        head = ObjectHead(self.model.config.text.hidden_size, len(tags)).to(self.device)
        self.trainable += [(f"object_head.{n}", p) for n, p in head.named_parameters()]
        self._hook = self.model.visual.register_forward_hook(lambda _m, _args, out: self._features.append(out))
        return head, tags

    def _object_loss(self, micro: list, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The object head's summed loss over a micro-batch's image cells (0 without images)."""
        features, self._features = self._features, []
        if "image_grid_thw" not in batch:
            return torch.zeros((), device=self.device)
        objects = [per_image for _, _, media in micro
                   for per_image in (media["objects"] or (None,) * len(media["images"]))]
        grids = [tuple(grid) for grid in batch["image_grid_thw"].tolist()]
        targets = cell_targets(objects, grids, self.model.config.vision.spatial_merge_size, self.tags)
        return self.object_head.loss_sum(features[0], targets)  # hidden_states encodes images before videos

    def _check_workers(self) -> int:
        """Processes for the up-front check of the data: this process's share of the cores, at most 8
        (each worker is another copy of this process)."""
        return max(1, min(8, cores() // self.dist.world))

    def run(self, resume: bool = False) -> list[dict]:
        # As a model grows confident, tiny probabilities and gradients become float denormals, which
        # the CPU handles dozens of times slower: training slowed 1.7x within 4000 steps without this.
        flush = self.device.type == "cpu" and torch.set_flush_denormal(True)
        try:
            return self._run(resume)
        finally:
            if flush:
                torch.set_flush_denormal(False)
            if self.object_head is not None:
                self._hook.remove()

    def _run(self, resume: bool) -> list[dict]:
        start = 0
        if resume:
            checkpoint = latest_checkpoint(self.settings.output)
            if checkpoint is not None:
                start = load_state(checkpoint, self.model, self.trainable, self.optimizer, self.scheduler)
        rows = []
        for step in range(start, self.total_steps):
            row = self._step(step)
            rows.append(row)
            last = step + 1 == self.total_steps
            if self.eval is not None and (last or (self.settings.eval_every and (step + 1) % self.settings.eval_every == 0)):
                row["eval_loss"] = self.evaluate()
            self._log(row)
            if self.settings.save_every and (step + 1) % self.settings.save_every == 0 and not last:
                self._save_state(step + 1)
        if self.dist.main:
            save_final(self.model, self.settings, self.base_dir)
        self.dist.barrier()
        return rows

    def _step(self, step: int) -> dict:
        started = time.perf_counter()
        epoch, position = divmod(step, self.steps_per_epoch)
        records, lengths = self.train
        if self._epoch_batches[0] != epoch:
            self._epoch_batches = (epoch, batch_order(lengths, self.global_batch, self.settings.seed, epoch,
                                                      self.settings.group_by_length))
        indices = self._epoch_batches[1][position]
        mine = [encode_example(self.processor, records[i].messages, records[i].objects)
                for i in balanced_share(indices, lengths, self.dist.rank, self.dist.world)]
        per_example = self.settings.loss_per == "example"
        local = len(mine) if per_example else sum(_label_count(ex) for ex in mine)
        denominator = self.dist.sum_(torch.tensor(float(local)))  # the global batch's examples or label tokens
        total_loss, object_total = torch.zeros(()), torch.zeros(())
        if self.object_head is not None:
            merge = self.model.config.vision.merge_unit
            local_cells = sum(t * h * w // merge for _, _, media in mine if media["objects"] is not None
                              for _, (t, h, w) in media["images"])
            cells = self.dist.sum_(torch.tensor(float(local_cells))).clamp(min=1)  # the global batch's annotated cells
        size = self.settings.batch_size
        for micro in (mine[i:i + size] for i in range(0, len(mine), size)):
            batch = collate(self.processor, micro)
            sums, counts = self._example_losses(batch)
            objective = ((sums / counts.clamp(min=1)) if per_example else sums).sum() / denominator
            total_loss += objective.detach().float().cpu()
            if self.object_head is not None:
                object_loss = self._object_loss(micro, batch) / cells
                object_total += object_loss.detach().float().cpu()
                objective = objective + self.settings.object_loss_weight * object_loss
            objective.backward()
        self.dist.sum_grads_([p for _, p in self.trainable])
        torch.nn.utils.clip_grad_norm_([p for _, p in self.trainable], self.settings.max_grad_norm)
        self.optimizer.step()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = float(self.dist.sum_(total_loss))
        tokens = self.dist.sum_(torch.tensor(float(sum(len(ids) for ids, _, _ in mine))))
        row = {"step": step + 1, "epoch": epoch + (position + 1) / self.steps_per_epoch, "loss": loss, "lr": lr,
               "tokens_per_second": float(tokens) / (time.perf_counter() - started)}
        if self.object_head is not None:
            row["object_loss"] = float(self.dist.sum_(object_total))
        return row

    def _example_losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each example's summed token loss and its number of label tokens: [B], [B]."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        labels = batch.pop("labels")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            hidden = self.model.hidden_states(**batch)  # [B, T, H]
            targets = labels[:, 1:]
            keep = targets != IGNORE  # [B, T-1]
            logits = self.model.logits(hidden[:, :-1][keep])  # only where a label follows: [N, vocab]
        token_losses = F.cross_entropy(logits.float(), targets[keep], reduction="none")  # [N]
        owner = keep.nonzero()[:, 0]  # the example of each kept token: [N]
        sums = torch.zeros(keep.shape[0], device=token_losses.device).index_add(0, owner, token_losses)
        return sums, keep.sum(1).float()

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        records, _ = self.eval
        mine = records[self.dist.rank::self.dist.world]
        total, count = torch.zeros(()), torch.zeros(())
        for record in mine:
            example = encode_example(self.processor, record.messages)
            sums, counts = self._example_losses(collate(self.processor, [example]))
            self._features = []
            total += sums.sum().float().cpu()
            count += counts.sum().cpu()
        self.model.train()
        return float(self.dist.sum_(total) / self.dist.sum_(count))

    def _log(self, row: dict) -> None:
        if not self.dist.main:
            return
        self.settings.output.mkdir(parents=True, exist_ok=True)
        with (self.settings.output / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        done = row["step"] / self.total_steps
        bar = "#" * int(25 * done)
        extra = f" eval {row['eval_loss']:.4f}" if "eval_loss" in row else ""
        print(f"[{bar:<25}] step {row['step']}/{self.total_steps} loss {row['loss']:.4f}{extra} "
              f"lr {row['lr']:.2e} {row['tokens_per_second']:.0f} tok/s", file=sys.stderr, flush=True)

    def _save_state(self, step: int) -> None:
        if self.dist.main:
            save_state(self.settings, step, self.model, self.trainable, self.optimizer, self.scheduler)
        self.dist.barrier()


def _label_count(example) -> int:
    _, labels, _ = example
    return sum(1 for label in labels[1:] if label != IGNORE)


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
