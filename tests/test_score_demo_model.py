"""examples/score_demo_model.py: a model's accuracy per task on a freshly generated held-out set,
the recipe's own set at its defaults, and a one-line error with exit code 2 for bad arguments (a
missing model, zero questions, a --data path that is not a directory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_example

SHIPPED_SCORES = Path(__file__).resolve().parents[1] / "models" / "qwen2vl-demo" / "scores.json"


def run_script(*args: str):
    return run_example("score_demo_model.py", *args)


def test_score_script_asks_the_given_tasks_that_many_times_each(tmp_path):
    done = run_script("--per-task", "3", "--tasks", "count", "grounding", "--json", str(tmp_path / "s.json"))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "s.json").read_text())
    assert {task: s["total"] for task, s in report.items()} == {"count": 3, "grounding": 3}
    assert [line.split()[0] for line in done.stdout.splitlines()[:2]] == ["count", "grounding"]


def test_score_script_keeps_the_questions_where_asked(tmp_path):
    done = run_script("--per-task", "1", "--tasks", "colour", "--data", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "heldout.jsonl").read_text().splitlines()]
    assert [row["task"] for row in rows] == ["colour"]


@pytest.mark.slow
def test_score_script_defaults_reproduce_the_shipped_models_held_out_scores(tmp_path):
    done = run_script("--json", str(tmp_path / "s.json"))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads(SHIPPED_SCORES.read_text())


def test_score_script_names_a_missing_model_in_one_line_and_exits_2(tmp_path):
    done = run_script("--model", str(tmp_path / "nowhere"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "nowhere" in done.stderr and "not a model directory" in done.stderr


def test_score_script_refuses_zero_questions_per_task():
    done = run_script("--per-task", "0")
    assert done.returncode == 2
    assert "--per-task: must be at least 1" in done.stderr


def test_score_script_names_an_unwritable_data_directory_in_one_line_and_exits_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = run_script("--per-task", "1", "--tasks", "colour", "--data", str(blocker))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "a-file" in done.stderr
