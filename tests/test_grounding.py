"""Grounding helpers: boxes in Qwen2-VL text <-> pixel boxes, malformed spans, resized images, drawing."""

from __future__ import annotations

import pytest
from PIL import Image

from qwen2vl.grounding import Box, box_to_text, draw_boxes, normalised, parse_boxes, referenced_phrases, rescale_box

SIZE = (800, 600)


def span(label, x1, y1, x2, y2):
    return f"<|object_ref_start|>{label}<|object_ref_end|><|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"


def test_a_box_span_becomes_pixels_of_the_original_image():
    (box,) = parse_boxes(f"Here: {span('the blue circle', 100, 250, 500, 750)}.", SIZE)
    assert box == Box(80.0, 150.0, 400.0, 450.0, "the blue circle")


def test_several_boxes_and_spaces_inside_spans():
    text = span("a cat", 0, 0, 500, 500) + " and <|box_start|>( 500 , 500 ),( 1000 ,1000 )<|box_end|>"
    boxes = parse_boxes(text, SIZE)
    assert [b.label for b in boxes] == ["a cat", None]
    assert boxes[1] == Box(400.0, 300.0, 800.0, 600.0, None)


def test_boxes_right_after_one_reference_share_its_phrase():
    text = span("two dogs", 0, 0, 100, 100) + "<|box_start|>(200,200),(300,300)<|box_end|>"
    assert [b.label for b in parse_boxes(text, SIZE)] == ["two dogs", "two dogs"]


@pytest.mark.parametrize("text", [
    "<|box_start|>(10,10),(20,20)",                          # never closed
    "<|box_start|>(10,10)<|box_end|>",                         # one corner
    "<|box_start|>(a,b),(c,d)<|box_end|>",                     # not numbers
    "<|box_start|>(300,300),(100,100)<|box_end|>",             # no area
    "<|object_ref_start|>lost<|object_ref_end|> no box here",  # a phrase alone
])
def test_malformed_spans_are_skipped(text):
    assert parse_boxes(text, SIZE) == []


def test_out_of_range_coordinates_are_clamped_to_the_image():
    (box,) = parse_boxes("<|box_start|>(-50,900),(1200,1000)<|box_end|>", SIZE)
    assert (box.x1, box.y1, box.x2, box.y2) == (0.0, 540.0, 800.0, 600.0)


def test_pixel_boxes_round_trip_through_prompt_text():
    box = Box(80.0, 150.0, 400.0, 450.0, "the blue circle")
    text = box_to_text(box, SIZE)
    assert text == span("the blue circle", 100, 250, 500, 750)
    assert parse_boxes(text, SIZE) == [box]
    assert referenced_phrases(text) == ["the blue circle"]


def corners(box):
    return (box.x1, box.y1, box.x2, box.y2)


def test_boxes_follow_the_image_when_it_is_resized():
    box = Box(80.0, 150.0, 400.0, 450.0)
    resized = rescale_box(box, SIZE, (812, 588))  # the model's smart_resize of 800x600
    assert corners(parse_boxes(box_to_text(resized, (812, 588)), SIZE)[0]) == pytest.approx(corners(box), abs=1.0)
    assert corners(rescale_box(resized, (812, 588), SIZE)) == pytest.approx(corners(box))


def test_iou():
    a, b = Box(0, 0, 10, 10), Box(5, 0, 15, 10)
    assert a.iou(b) == pytest.approx(50 / 150)
    assert a.iou(Box(20, 20, 30, 30)) == 0.0


def test_drawing_marks_the_box_edges():
    image = Image.new("RGB", (100, 80), "white")
    drawn = draw_boxes(image, [Box(10, 20, 60, 70, "thing")])
    assert drawn.getpixel((10, 45)) != (255, 255, 255)  # left edge
    assert drawn.getpixel((35, 45)) == (255, 255, 255)  # inside stays untouched
    assert image.getpixel((10, 45)) == (255, 255, 255)  # the original is not modified


def test_decoded_answers_keep_grounding_tokens(tiny_checkpoint):
    from qwen2vl.processing import Processor

    processor = Processor.from_pretrained(tiny_checkpoint)
    text = span("x", 1, 2, 3, 4)
    ids = processor.tokenizer.encode(text + "<|im_end|>").ids
    assert processor.decode(ids) == text


def test_a_pixel_box_normalises_to_unrounded_0_1000_coordinates():
    assert normalised(Box(20, 10, 150, 100), (300, 100)) == pytest.approx((66.667, 100, 500, 1000), abs=1e-3)
