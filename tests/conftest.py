"""Shared test fixtures: real configs, random-weight checkpoints in the Hub layout, reference inputs."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
COMMON = FIXTURES / "qwen2vl_common"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(script: str, *args: str) -> subprocess.CompletedProcess:
    """examples/<script> run as a user runs it (this interpreter, output captured, five minutes at most)."""
    return subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=300)


def real_config(size: str) -> dict:
    """The official config.json of Qwen2-VL-{size}-Instruct (2B, 7B or 72B)."""
    return json.loads((FIXTURES / f"Qwen2-VL-{size}-Instruct.config.json").read_text())


def random_image(height: int, width: int, seed: int, mode: str = "RGB"):
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def random_video(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """[frames, height, width, 3] uint8."""
    return np.random.default_rng(seed).integers(0, 256, size=(frames, height, width, 3), dtype=np.uint8)


def load_reference_model(directory):
    """transformers' Qwen2VLForConditionalGeneration in float32 with SDPA, checked to load every weight."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, info = Qwen2VLForConditionalGeneration.from_pretrained(
            directory, dtype=torch.float32, attn_implementation="sdpa", output_loading_info=True)
    assert not any(info.values()), f"transformers did not load the checkpoint cleanly: {info}"
    return model.eval()


def reference_greedy_tokens(reference, inputs: dict, new_tokens: int) -> list[int]:
    """The token ids transformers' generate(do_sample=False) adds after the prompt in `inputs`."""
    import torch

    with torch.inference_mode():
        out = reference.generate(**inputs, do_sample=False, max_new_tokens=new_tokens, top_k=None, top_p=None,
                                 temperature=None)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def load_reference_processor(directory):
    """transformers' Qwen2VLProcessor from a checkpoint directory's tokenizer and preprocessor files."""
    from transformers import Qwen2VLProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Qwen2VLProcessor.from_pretrained(str(directory))


@pytest.fixture(scope="session")
def reference_processor():
    """transformers' Qwen2VLProcessor built from the real tokenizer and preprocessor files."""
    return load_reference_processor(COMMON)


def parity_configs():
    """name -> (config, checkpoint dtype, shard size): the checkpoints parity tests compare on."""
    import torch

    from qwen2vl.random_checkpoint import TINY_CONFIG, shallow

    return {
        "tiny": (TINY_CONFIG, torch.float32, 8_000_000),
        "2B-shallow": (shallow(real_config("2B")), torch.float32, None),
        "7B-shallow": (shallow(real_config("7B")), torch.bfloat16, 2_000_000_000),
    }


PARITY_CHECKPOINTS = ["tiny", "2B-shallow", "7B-shallow"]


def parity_params():
    """Fixture params: the tiny checkpoint always; the real-width ones marked slow."""
    return [pytest.param(name, marks=() if name == "tiny" else pytest.mark.slow) for name in PARITY_CHECKPOINTS]


@pytest.fixture(scope="session")
def parity_checkpoint(tmp_path_factory):
    """name -> directory of a random-weight checkpoint in the Hub layout with the real tokenizer files.

    Written once per session (about 5 GB on disk for all three).
    """
    from qwen2vl.random_checkpoint import write_random_checkpoint

    written: dict[str, object] = {}

    def get(name: str):
        if name not in written:
            config, dtype, shard = parity_configs()[name]
            written[name] = write_random_checkpoint(tmp_path_factory.mktemp(name), config, seed=7, dtype=dtype,
                                                    max_shard_bytes=shard, copy_files_from=COMMON)
        return written[name]

    return get


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random-weight checkpoint with the real tokenizer and processor files."""
    from qwen2vl.random_checkpoint import TINY_CONFIG, write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("tiny"), TINY_CONFIG, seed=11, copy_files_from=COMMON)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    from qwen2vl import Qwen2VLModel

    return Qwen2VLModel.from_pretrained(str(tiny_checkpoint))
