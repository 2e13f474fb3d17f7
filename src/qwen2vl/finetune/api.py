"""finetune(): the Python entry point behind `qwen2vl finetune`.

Owns: loading the base model and processor for training (float32 on CPU; bfloat16 autocast runs on
CUDA) and handing them to the Trainer, in this process or (processes > 1, CPU) in that many local
data-parallel processes. Does not own: the loop (trainer.py) or starting processes (launch.py).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..hub import resolve_model_dir
from ..loading import load_model
from ..processing import Processor
from .launch import run_processes
from .trainer import Trainer, TrainSettings


def finetune(base_model: str | Path, train_file: str | Path, settings: TrainSettings,
             eval_file: str | Path | None = None, resume: bool = False, device: str = "cpu",
             processes: int = 1) -> list[dict]:
    """Train and write the adapter (or full model) to settings.output; returns the per-step metrics.

    processes > 1: that many processes on this machine's CPU cores, each with batch_size examples of
    every step's global batch (as under torchrun; faster than one process with as many threads for
    small models). The result equals one process's up to float rounding."""
    if processes < 1:
        raise ConfigError(f"processes must be at least 1, not {processes}")
    if processes > 1:
        if device != "cpu":
            raise ConfigError("processes > 1 splits the CPU's cores; for GPUs start one process each with torchrun")
        return run_processes(processes, finetune, (base_model, train_file, settings, eval_file, resume, device))
    directory = resolve_model_dir(base_model)
    model = load_model(directory, dtype="float32", device=device)
    processor = Processor.from_pretrained(directory)
    trainer = Trainer(model, processor, settings, directory, Path(train_file),
                      Path(eval_file) if eval_file is not None else None)
    try:
        return trainer.run(resume=resume)
    finally:
        trainer.dist.close()
