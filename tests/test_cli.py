"""The qwen2vl command, run as a user runs it: subprocesses on a tiny checkpoint, chat driven through stdin."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from media_factory import write_image


def qwen2vl(*args, stdin=None, timeout=180):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "qwen2vl.cli", *map(str, args)], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    return write_image(tmp_path_factory.mktemp("cli"), "picture.png", 120, 160)


@pytest.mark.parametrize("command", ["generate", "chat", "serve", "finetune", "merge", "quantize", "bench"])
def test_every_subcommand_has_help_with_examples(command):
    out = qwen2vl(command, "--help")
    assert out.returncode == 0
    assert "examples:" in out.stdout and f"qwen2vl {command}" in out.stdout


def test_generate_answers_with_an_image_and_reports_speed(tiny_checkpoint, picture):
    out = qwen2vl("generate", tiny_checkpoint, "--image", picture, "--prompt", "What is this?", "--max-tokens", 6,
                  "--temperature", 0)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert "prefill" in out.stderr and "visual" in out.stderr and "tok/s" in out.stderr
    assert "100%" in out.stderr  # the loading progress


def test_generate_stream_prints_the_same_answer(tiny_checkpoint, picture):
    args = ["generate", tiny_checkpoint, "--image", picture, "--prompt", "What is this?", "--max-tokens", 8,
            "--temperature", 0]
    assert qwen2vl(*args, "--stream").stdout == qwen2vl(*args).stdout


def test_generate_per_media_options_change_the_visual_token_count(tiny_checkpoint, picture):
    small = qwen2vl("generate", tiny_checkpoint, "--image", f"{picture}::max_pixels=3136", "--prompt", "?",
                    "--max-tokens", 1)
    large = qwen2vl("generate", tiny_checkpoint, "--image", picture, "--prompt", "?", "--max-tokens", 1)
    assert "(6 visual)" in small.stderr  # 28x56 by max_pixels, then up to the processor minimum
    assert "(24 visual)" in large.stderr


def test_generate_with_a_bad_image_fails_with_one_line(tiny_checkpoint, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    out = qwen2vl("generate", tiny_checkpoint, "--image", broken, "--prompt", "?")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == "qwen2vl generate: error: image 1: not an image (unrecognised format)"
    assert "Traceback" not in out.stderr


def test_generate_with_a_missing_model_fails_with_one_line(tmp_path):
    out = qwen2vl("generate", tmp_path / "nowhere" / "x", "--prompt", "?")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "not a model directory" in out.stderr


def test_chat_runs_a_multi_turn_conversation_from_stdin(tiny_checkpoint, picture):
    script = "\n".join([
        f"/image {picture}",
        "What is in the picture?",
        "/tokens",
        "And now?",
        "/reset",
        "/tokens",
        "/quit",
    ]) + "\n"
    out = qwen2vl("chat", tiny_checkpoint, "--max-tokens", 4, "--temperature", 0, stdin=script)
    assert out.returncode == 0, out.stderr
    assert f"attached image {picture}" in out.stderr
    counts = [line for line in out.stderr.splitlines() if "tokens (" in line and "visual) of" in line]
    assert counts and "(24 visual)" in counts[0]
    assert "conversation reset" in out.stderr and "0 tokens" in out.stderr
    assert out.stderr.count("[prefill") == 2
    assert len([line for line in out.stdout.splitlines() if line.strip()]) == 2


def test_chat_keeps_going_after_a_bad_attachment(tiny_checkpoint, tmp_path):
    script = f"/image {tmp_path / 'missing.png'}\nHello?\nHello again?\n"
    out = qwen2vl("chat", tiny_checkpoint, "--max-tokens", 3, "--temperature", 0, stdin=script)
    assert out.returncode == 0
    assert "error: image 1: no such file" in out.stderr
    assert out.stderr.count("[prefill") == 1


def test_generate_draws_the_answers_boxes(tiny_checkpoint, picture, tmp_path):
    out = qwen2vl("generate", tiny_checkpoint, "--image", picture, "--prompt", "Where is it?", "--max-tokens", 3,
                  "--draw-boxes", tmp_path / "boxes.png")
    assert out.returncode == 0, out.stderr
    assert "box(es) on" in out.stderr and (tmp_path / "boxes.png").is_file()


@pytest.mark.slow
def test_bench_prints_ratios_against_transformers(tiny_checkpoint):
    out = qwen2vl("bench", tiny_checkpoint, "--tokens", 4, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("machine: memory read")
    assert "| | transformers fp32 | qwen2vl | qwen2vl int8 | qwen2vl int4 |" in lines
    assert any(line.startswith("| decode batch 1 (tok/s) |") and "×)" in line for line in lines)
    assert lines[-2].startswith("int8 vs float32") and lines[-1].startswith("int4 vs float32")
    assert "next-token top-1 agreement" in lines[-1]
