"""Data-parallel training in local processes: one global batch split by tokens, one gradient sum,
the result of one process, and failures that reach the caller instead of hanging it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from finetune_data import write_colour_dataset
from qwen2vl.errors import ConfigError, TrainingProcessError
from qwen2vl.finetune import LoraSettings, TrainSettings, finetune
from qwen2vl.finetune.data import DatasetError, balanced_share
from qwen2vl.finetune.launch import run_processes


def settings(output, **overrides) -> TrainSettings:
    base = dict(output=output, lora=LoraSettings(r=8, alpha=16, dropout=0.0), batch_size=4, max_steps=4, lr=5e-3,
                warmup_ratio=0.1, seed=1)
    return TrainSettings(**{**base, **overrides})


def test_each_example_of_a_batch_goes_to_exactly_one_rank():
    lengths = [(i * 37) % 101 + 1 for i in range(40)]
    batch = list(range(3, 19))
    parts = [balanced_share(batch, lengths, rank, 3) for rank in range(3)]
    assert sorted(i for part in parts for i in part) == batch


def test_ranks_get_token_loads_within_one_example_of_each_other():
    lengths = [400, 10, 380, 10, 60, 60, 50, 40]  # every other example: 890 tokens against 120
    loads = [sum(lengths[i] for i in balanced_share(list(range(8)), lengths, rank, 2)) for rank in range(2)]
    assert abs(loads[0] - loads[1]) <= 60


def test_one_process_takes_the_batch_in_its_own_order():
    assert balanced_share([4, 0, 9, 2], [1, 5, 7, 2, 30, 0, 0, 0, 0, 3], 0, 1) == [4, 0, 9, 2]


def test_the_split_is_the_same_on_every_call():
    lengths = [5, 5, 5, 5, 9, 1]
    assert balanced_share([0, 1, 2, 3, 4, 5], lengths, 1, 2) == balanced_share([0, 1, 2, 3, 4, 5], lengths, 1, 2)


def test_two_local_processes_train_as_one_process_with_the_same_global_batch(tiny_checkpoint, tmp_path):
    data = write_colour_dataset(tmp_path / "data", 16)
    one = finetune(tiny_checkpoint, data, settings(tmp_path / "one", batch_size=4))
    two = finetune(tiny_checkpoint, data, settings(tmp_path / "two", batch_size=2), processes=2)
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("one", "two"))
    assert a.keys() == b.keys()
    assert all((a[k] - b[k]).abs().max() <= 1e-3 * a[k].abs().max() for k in a)  # float rounding through Adam


def test_a_bad_line_reaches_the_caller_as_the_same_typed_error(tiny_checkpoint, tmp_path):
    data = write_colour_dataset(tmp_path / "data", 6)
    lines = data.read_text().splitlines()
    lines[3] = json.dumps({"messages": [{"role": "user", "content": "no answer"}]})
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="line 4: no assistant turn"):
        finetune(tiny_checkpoint, data, settings(tmp_path / "out", batch_size=1), processes=2)


def _gradient_sums(rank_without_grads: int) -> dict[str, list[float] | None]:
    """Two parameters; every rank but one gives the first a gradient of its rank + 1; none gives the
    second one. Returns the summed gradients as rank 0 sees them."""
    from qwen2vl.finetune.distributed import Distributed

    dist = Distributed.from_env(torch.device("cpu"))
    used, unused = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    if dist.rank != rank_without_grads:
        used.grad = torch.full((3,), float(dist.rank + 1))
    dist.sum_grads_([used, unused])
    dist.close()
    return {"used": used.grad.tolist(), "unused": None if unused.grad is None else unused.grad.tolist()}


def test_a_rank_without_gradients_adds_zeros_and_untouched_tensors_stay_without_gradient():
    sums = run_processes(2, _gradient_sums, (1,))
    assert sums == {"used": [1.0, 1.0, 1.0], "unused": None}


def _die_on_rank_one() -> None:
    if os.environ["RANK"] == "1":
        os._exit(3)
    time.sleep(60)  # rank 0 would wait for it in a collective


def test_a_process_that_dies_is_reported_and_the_others_are_stopped():
    started = time.monotonic()
    with pytest.raises(TrainingProcessError, match=r"training process 1 of 2 died \(exit code 3\)"):
        run_processes(2, _die_on_rank_one, ())
    assert time.monotonic() - started < 30


def _fail_unexpectedly() -> None:
    raise ZeroDivisionError("division by zero")


def test_an_unexpected_error_in_a_process_is_one_line_naming_the_process():
    with pytest.raises(TrainingProcessError, match="training process [01] of 2 failed: ZeroDivisionError"):
        run_processes(2, _fail_unexpectedly, ())


@pytest.mark.parametrize("processes, device, message", [(0, "cpu", "at least 1"), (2, "cuda", "torchrun")])
def test_impossible_process_counts_are_config_errors(tmp_path, processes, device, message):
    with pytest.raises(ConfigError, match=message):
        finetune(tmp_path, tmp_path / "train.jsonl", settings(tmp_path / "out"), device=device, processes=processes)


def test_the_cli_reports_a_bad_process_count_in_one_line(tiny_checkpoint, tmp_path):
    data = write_colour_dataset(tmp_path / "data", 2)
    run = subprocess.run([sys.executable, "-m", "qwen2vl.cli", "finetune", str(tiny_checkpoint), "--data", str(data),
                          "--output", str(tmp_path / "out"), "--processes", "0"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == "qwen2vl finetune: error: processes must be at least 1, not 0"
