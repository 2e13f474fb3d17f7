"""Shared test fixtures: real configs, random-weight checkpoints in the Hub layout, reference inputs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
COMMON = FIXTURES / "qwen2vl_common"


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


@pytest.fixture(scope="session")
def reference_processor():
    """transformers' Qwen2VLProcessor built from the real tokenizer and preprocessor files."""
    from transformers import Qwen2VLProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Qwen2VLProcessor.from_pretrained(str(COMMON))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random-weight checkpoint with the real tokenizer and processor files."""
    from qwen2vl.random_checkpoint import TINY_CONFIG, write_random_checkpoint

    return write_random_checkpoint(tmp_path_factory.mktemp("tiny"), TINY_CONFIG, seed=11, copy_files_from=COMMON)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    from qwen2vl import Qwen2VLModel

    return Qwen2VLModel.from_pretrained(str(tiny_checkpoint))
