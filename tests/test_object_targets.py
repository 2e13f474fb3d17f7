"""Object targets: the lines' objects, the per-cell targets they give, and the training-only head."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from qwen2vl.errors import ConfigError, InvalidInputError
from qwen2vl.finetune import TrainSettings, finetune
from qwen2vl.finetune.data import DatasetError, read_records
from qwen2vl.finetune.muon import is_hidden_matrix
from qwen2vl.finetune.object_targets import ObjectBox, ObjectHead, cell_targets, parse_objects, tag_vocabulary
from qwen2vl.processing import Processor
from qwen2vl.synthetic import CELL, write_dataset

TAGS = ("blue", "circle", "red", "square")


def cells(rows: int, columns: int) -> tuple[int, int, int]:
    """An image's grid (t, h, w in patches) that the 2x2 merge turns into rows x columns cells."""
    return (1, 2 * rows, 2 * columns)


def obj(x1, y1, x2, y2, *tags) -> ObjectBox:
    return ObjectBox((x1, y1, x2, y2), tags)


def test_cells_whose_centre_is_inside_a_box_are_told_its_box_and_tags():
    targets = cell_targets([(obj(0, 0, 500, 500, "red", "square"),)], [cells(4, 4)], 2, TAGS)
    inside = targets.inside.reshape(4, 4)
    assert inside[:2, :2].all() and inside.sum() == 4
    assert targets.boxes[0].tolist() == [0, 0, 5, 5]  # 0-1000 in units of 100
    assert targets.tags[0].tolist() == [0, 0, 1, 1]
    assert targets.tags[~targets.inside].sum() == 0


def test_each_object_has_one_anchor_at_its_first_cell_in_reading_order():
    objects = (obj(500, 250, 1000, 750, "red"), obj(0, 0, 250, 250, "blue"))
    targets = cell_targets([objects], [cells(4, 4)], 2, TAGS)
    assert targets.anchors.reshape(4, 4).nonzero().tolist() == [[0, 0], [1, 2]]


def test_a_box_too_small_for_a_cell_centre_takes_the_cell_under_its_centre():
    targets = cell_targets([(obj(510, 10, 530, 40, "blue"),)], [cells(4, 4)], 2, TAGS)
    assert targets.inside.reshape(4, 4).nonzero().tolist() == [[0, 2]]
    assert targets.anchors.sum() == 1


def test_where_boxes_overlap_the_smaller_object_owns_the_cell():
    objects = (obj(0, 0, 1000, 1000, "square"), obj(0, 0, 250, 250, "circle"))
    targets = cell_targets([objects], [cells(4, 4)], 2, TAGS)
    assert targets.boxes[0].tolist() == [0, 0, 2.5, 2.5]
    assert targets.boxes[5].tolist() == [0, 0, 10, 10]
    assert targets.tags[0].tolist() == [0, 1, 0, 0]


def test_a_box_covers_the_same_part_of_a_resized_picture():
    box = (obj(250, 0, 750, 500, "red"),)
    small = cell_targets([box], [cells(2, 4)], 2, TAGS).inside.reshape(2, 4)
    large = cell_targets([box], [cells(4, 8)], 2, TAGS).inside.reshape(4, 8)
    assert small.nonzero().tolist() == [[0, 1], [0, 2]]
    assert torch.equal(large, small.repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_pictures_of_lines_without_objects_are_left_out_of_the_loss():
    targets = cell_targets([None, (obj(0, 0, 500, 500, "red"),)], [cells(2, 2), cells(2, 2)], 2, TAGS)
    assert targets.annotated.tolist() == [False] * 4 + [True] * 4
    head = ObjectHead(hidden=8, tags=len(TAGS))
    features = torch.randn(8, 8)
    changed = features.clone()
    changed[:4] = 100.0
    with torch.no_grad():
        head.proj.weight.normal_()
        assert head.loss_sum(features, targets) == pytest.approx(float(head.loss_sum(changed, targets)))


def test_the_head_starts_at_zero_and_its_loss_falls_as_it_learns():
    targets = cell_targets([(obj(0, 0, 500, 500, "red"), obj(500, 500, 1000, 1000, "blue"))], [cells(4, 4)], 2, TAGS)
    features = torch.randn(16, 32)
    head = ObjectHead(hidden=32, tags=len(TAGS))
    assert head.proj.weight.abs().sum() == 0
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    first = head.loss_sum(features, targets).item()
    for _ in range(100):
        optimizer.zero_grad()
        head.loss_sum(features, targets).backward()
        optimizer.step()
    assert head.loss_sum(features, targets).item() < first / 10


def test_the_tag_vocabulary_is_every_tag_sorted():
    lines = [((obj(0, 0, 1, 1, "red", "circle"),), ()), ((obj(0, 0, 1, 1, "blue", "circle"),),)]
    assert tag_vocabulary(lines) == ("blue", "circle", "red")


@pytest.mark.parametrize("value, images, message", [
    ([[]], 2, "one list per image"),
    ({"box": [0, 0, 1, 1]}, 1, "one list per image"),
    ([{"box": [0, 0, 1, 1]}], 1, "objects of image 1 must be a list"),
    ([[{"box": [0, 0, 1]}]], 1, r"needs a box \[x1, y1, x2, y2\]"),
    ([[{"box": [0, 0, "1", 1]}]], 1, "not four numbers"),
    ([[{"box": [0, 0, True, 1]}]], 1, "not four numbers"),
    ([[{"box": [10, 0, 5, 1]}]], 1, "x1 < x2"),
    ([[{"box": [0, 0, 10, 1001]}]], 1, "lie in 0-1000"),
    ([[{"box": [0, 0, 1, 1], "tags": "red"}]], 1, "tags that are not a list"),
])
def test_malformed_objects_are_rejected_with_the_reason(value, images, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_objects(value, images)


def test_a_line_with_malformed_objects_is_reported_with_its_line_number(tiny_checkpoint, tmp_path):
    path = write_dataset(tmp_path, 3, seed=1, tasks=("grounding",))
    lines = path.read_text().splitlines()
    broken = json.loads(lines[1])
    broken["objects"] = [[{"box": [0, 0, 2000, 10]}]]
    lines[1] = json.dumps(broken)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="line 2: an object of image 1 has box"):
        read_records(path, Processor.from_pretrained(tiny_checkpoint), max_length=4096)


def test_generated_objects_are_the_shapes_drawn_in_0_1000_coordinates(tiny_checkpoint, tmp_path):
    path = write_dataset(tmp_path, 9, seed=4)
    records, _ = read_records(path, Processor.from_pretrained(tiny_checkpoint), max_length=4096)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for record, line in zip(records, lines):
        content = line["messages"][0]["content"]
        assert len(record.objects) == sum(1 for part in content if part["type"] == "image")
        if line["task"] == "grounding":  # "Locate the purple triangle." -> its box is the answer's
            (named,) = [o for o in record.objects[0] if f"the {' '.join(o.tags)}." in content[-1]["text"]]
            assert [round(v) for v in named.box] == [int(n) for n in re.findall(r"\d+", line["answer"].split("<|box_start|>")[1])]
        if line["task"] == "ocr":
            assert record.objects == ((),)


def test_generated_objects_without_tags_keep_the_same_boxes(tmp_path):
    tagged = [json.loads(line) for line in write_dataset(tmp_path / "tagged", 6, seed=4).read_text().splitlines()]
    plain = [json.loads(line) for line in
             write_dataset(tmp_path / "plain", 6, seed=4, object_tags=False).read_text().splitlines()]
    assert [[[o["box"] for o in image] for image in line["objects"]] for line in plain] == \
        [[[o["box"] for o in image] for image in line["objects"]] for line in tagged]
    assert all(o["tags"] == [] for line in plain for image in line["objects"] for o in image)
    assert any(o["tags"] for line in tagged for image in line["objects"] for o in image)


def test_a_generated_shape_is_told_its_box_on_exactly_its_cells(tiny_checkpoint, tmp_path):
    path = write_dataset(tmp_path, 1, seed=5, tasks=("lone-grounding",))
    (record,), _ = read_records(path, Processor.from_pretrained(tiny_checkpoint), max_length=4096)
    line = json.loads(path.read_text())
    image = Image.open(path.parent / line["messages"][0]["content"][0]["image"])
    columns, rows = image.width // CELL, image.height // CELL
    targets = cell_targets(list(record.objects), [cells(rows, columns)], 2, tag_vocabulary([record.objects]))
    (shape,) = record.objects[0]
    x1, y1, x2, y2 = (round(v * n / 1000) for v, n in zip(shape.box, (columns, rows, columns, rows)))
    expected = torch.zeros(rows, columns, dtype=torch.bool)
    expected[y1:y2, x1:x2] = True
    assert torch.equal(targets.inside.reshape(rows, columns), expected)


@pytest.fixture(scope="module")
def object_run(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("objects")
    data = write_dataset(root, 32, seed=3, tasks=("grounding", "count", "ocr", "direction", "compare"))
    output = root / "out"
    rows = finetune(tiny_checkpoint, data, TrainSettings(output=output, mode="full", batch_size=4, max_steps=8,
                                                         lr=2e-3, object_loss_weight=1.0, seed=1))
    return rows, output


def test_training_with_objects_logs_the_object_loss(object_run):
    rows, _ = object_run
    assert all(row["object_loss"] >= 0 for row in rows) and any(row["object_loss"] > 0 for row in rows)


def test_the_object_head_is_not_saved_with_the_model(object_run, tiny_checkpoint):
    _, output = object_run
    with safe_open(str(output / "model.safetensors"), "pt") as trained, \
            safe_open(str(Path(tiny_checkpoint) / "model.safetensors"), "pt") as base:
        assert set(trained.keys()) == set(base.keys())


def test_the_object_loss_changes_what_the_model_learns(object_run, tiny_checkpoint, tmp_path):
    rows, output = object_run
    data = output.parent / "data.jsonl"
    plain = finetune(tiny_checkpoint, data, TrainSettings(output=tmp_path / "plain", mode="full", batch_size=4,
                                                          max_steps=8, lr=2e-3, seed=1))
    assert rows[0]["loss"] == pytest.approx(plain[0]["loss"])  # the head starts at zero
    assert rows[-1]["loss"] != pytest.approx(plain[-1]["loss"])
    assert "object_loss" not in plain[0]


def test_object_targets_need_lines_with_objects(tiny_checkpoint, tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi?"},
                                             {"role": "assistant", "content": "Hello."}]}) + "\n")
    with pytest.raises(ConfigError, match="objects"):
        finetune(tiny_checkpoint, path, TrainSettings(output=tmp_path / "out", mode="full", max_steps=1,
                                                      object_loss_weight=1.0))


def test_a_negative_object_loss_weight_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="object_loss_weight"):
        TrainSettings(output=tmp_path, object_loss_weight=-1.0)


def test_the_object_head_trains_with_adamw_like_the_output_head():
    assert not is_hidden_matrix("object_head.proj.weight", torch.zeros(3, 3))


def test_the_finetune_cli_takes_an_object_loss_weight(object_run, tiny_checkpoint, tmp_path):
    _, output = object_run
    run = subprocess.run([sys.executable, "-m", "qwen2vl.cli", "finetune", str(tiny_checkpoint), "--data",
                          str(output.parent / "data.jsonl"), "--output", str(tmp_path / "cli"), "--full",
                          "--max-steps", "2", "--batch-size", "2", "--object-loss-weight", "0.5"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2] and all("object_loss" in row for row in rows)


def test_two_processes_give_the_one_process_object_loss(object_run, tiny_checkpoint, tmp_path):
    rows, output = object_run
    two = finetune(tiny_checkpoint, output.parent / "data.jsonl",
                   TrainSettings(output=tmp_path / "two", mode="full", batch_size=2, max_steps=8, lr=2e-3,
                                 object_loss_weight=1.0, seed=1), processes=2)
    assert [row["object_loss"] for row in two] == pytest.approx([row["object_loss"] for row in rows], rel=1e-3)
    assert [row["loss"] for row in two] == pytest.approx([row["loss"] for row in rows], rel=1e-3)
