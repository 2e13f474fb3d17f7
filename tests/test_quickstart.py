"""The README's main job (examples/quickstart.py): the bundled questions answered by the bundled
demo model, and a one-line error with exit code 2 for bad input."""

from __future__ import annotations

from conftest import run_example


def run_quickstart(*args: str):
    return run_example("quickstart.py", *args)


def test_quick_start_answers_every_bundled_question_and_draws_the_box(tmp_path):
    done = run_quickstart("--draw-boxes", str(tmp_path / "boxes.png"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("    answer: ") == 9
    assert "9 questions answered" in done.stdout
    assert (tmp_path / "boxes.png").is_file()


def test_quick_start_names_a_missing_model_in_one_line_and_exits_2(tmp_path):
    done = run_quickstart("--model", str(tmp_path / "nowhere"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "nowhere" in done.stderr and "not a model directory" in done.stderr


def test_quick_start_names_a_missing_picture_in_one_line_and_exits_2(tmp_path):
    done = run_quickstart("--image", str(tmp_path / "nope.png"), "--prompt", "What is in the picture?")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "no such file" in done.stderr
