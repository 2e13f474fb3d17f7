"""finetune(): the Python entry point behind `qwen2vl finetune`.

Owns: loading the base model and processor for training (float32 on CPU; bfloat16 autocast runs on
CUDA) and handing them to the Trainer. Does not own: the loop (trainer.py).
"""

from __future__ import annotations

from pathlib import Path

from ..hub import resolve_model_dir
from ..loading import load_model
from ..processing import Processor
from .trainer import Trainer, TrainSettings


def finetune(base_model: str | Path, train_file: str | Path, settings: TrainSettings,
             eval_file: str | Path | None = None, resume: bool = False, device: str = "cpu") -> list[dict]:
    """Train and write the adapter (or full model) to settings.output; returns the per-step metrics."""
    directory = resolve_model_dir(base_model)
    model = load_model(directory, dtype="float32", device=device)
    processor = Processor.from_pretrained(directory)
    trainer = Trainer(model, processor, settings, directory, Path(train_file),
                      Path(eval_file) if eval_file is not None else None)
    try:
        return trainer.run(resume=resume)
    finally:
        trainer.dist.close()
