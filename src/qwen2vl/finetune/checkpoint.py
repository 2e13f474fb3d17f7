"""Fine-tuning outputs on disk: resumable training checkpoints and the final adapter or model.

Owns: `checkpoint-<step>/` directories (trainable tensors, optimizer and scheduler state, RNG state),
finding the latest one and restoring from it, and the final output: a PEFT adapter for LoRA runs
(plus `extra_weights.safetensors` when the merger or vision tower was trained too), or a full
checkpoint in the Hub layout for full fine-tuning. Does not own: the training loop (trainer.py).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..loading import hold_in_compute_dtype
from ..weights import copy_hub_files, save_checkpoint
from .lora import load_adapter, lora_modules, merge_lora, save_adapter

TRAINABLE_FILE = "trainable.safetensors"
STATE_FILE = "trainer_state.pt"
EXTRA_FILE = "extra_weights.safetensors"


def latest_checkpoint(output: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in output.glob("checkpoint-*")
             if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / STATE_FILE).is_file()]
    return max(found)[1] if found else None


def save_state(settings, step: int, model, trainable, optimizer, scheduler) -> Path:
    target = settings.output / f"checkpoint-{step}"
    staging = settings.output / f".checkpoint-{step}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file({name: p.detach().contiguous().cpu() for name, p in trainable}, str(staging / TRAINABLE_FILE))
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state()}, staging / STATE_FILE)
    (staging / "settings.json").write_text(json.dumps(asdict(settings), default=str, indent=2), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def load_state(checkpoint: Path, model, trainable, optimizer, scheduler) -> int:
    tensors = load_file(str(checkpoint / TRAINABLE_FILE))
    with torch.no_grad():
        for name, parameter in trainable:
            parameter.copy_(tensors[name].to(parameter.dtype))
    state = torch.load(checkpoint / STATE_FILE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


def save_final(model, settings, base_dir: Path) -> None:
    output = settings.output
    if settings.mode == "lora":
        save_adapter(model, output, settings.lora, str(base_dir))
        extra = {name: p.detach().contiguous().cpu() for name, p in model.named_parameters()
                 if p.requires_grad and ".lora_" not in name}
        if extra:
            save_file(extra, str(output / EXTRA_FILE))
        return
    save_plain_model(model, output, base_dir)


def save_plain_model(model, output: Path, base_dir: Path) -> None:
    """A full checkpoint in the Hub layout (merged adapters included), with the base's other files."""
    assert not lora_modules(model), "merge adapters before saving a full checkpoint"
    tied = model.config.text.tie_word_embeddings
    tensors = {name: p.detach().contiguous().cpu() for name, p in model.named_parameters()
               if not (tied and name == "lm_head.weight")}
    save_checkpoint(tensors, output, max_shard_bytes=4_000_000_000)
    copy_hub_files(base_dir, output)


def load_trained_adapter(model, directory: str | Path) -> None:
    """Apply an adapter directory (PEFT's or ours, with any extra trained weights) and merge it in,
    leaving a plain model that runs at full speed. Weights held in bfloat16 under float32 arithmetic
    are widened first, so the merge is computed and kept in float32."""
    directory = Path(directory)
    hold_in_compute_dtype(model)
    load_adapter(model, directory)
    if (directory / EXTRA_FILE).is_file():
        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in load_file(str(directory / EXTRA_FILE)).items():
                parameters[name].copy_(tensor.to(parameters[name].dtype))
    merge_lora(model)
