"""A failed benchmark measurement is reported as one typed line naming how its process ended."""

import subprocess

import pytest

from qwen2vl import bench
from qwen2vl.errors import BenchmarkError


def _ended(monkeypatch, returncode: int, stderr: str):
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, returncode, "", stderr))


def test_a_measurement_killed_by_the_kernel_says_so_rather_than_quoting_a_warning(monkeypatch):
    _ended(monkeypatch, -9, "W1124 02:13:22 cpp_extension.py:183] No CUDA runtime is found\n")
    with pytest.raises(BenchmarkError, match="accuracy measurement was killed by signal 9 .*out-of-memory"):
        bench.run_worker("accuracy", "unused", 4)


def test_a_measurement_that_fails_names_its_exit_code_and_last_error_line(monkeypatch):
    _ended(monkeypatch, 1, "Traceback (most recent call last):\n  ...\nValueError: no such model\n")
    with pytest.raises(BenchmarkError, match=r"ours measurement failed \(exit 1\): ValueError: no such model"):
        bench.run_worker("ours", "unused", 4)
