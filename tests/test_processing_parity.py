"""Input parity: our Processor equals qwen_vl_utils.process_vision_info + transformers' Qwen2VLProcessor."""

from __future__ import annotations

import base64
import warnings

import pytest
import torch
from PIL import Image, ImageOps

from conftest import COMMON
from media_factory import write_image, write_video
from qwen2vl.processing import Processor

IMAGE_OPTIONS = {
    "default": {},
    "pixel_bounds": {"min_pixels": 50_000, "max_pixels": 200_000},
    "resized": {"resized_height": 280, "resized_width": 420},
}
IMAGES = {
    "20x20": dict(height=20, width=20),
    "333x517": dict(height=517, width=333),
    "3000x2000": dict(height=2000, width=3000),
    "28x5000": dict(height=28, width=5000),
    "rgba_png": dict(height=300, width=200, mode="RGBA"),
    "palette_gif": dict(height=240, width=320, mode="P"),
    "grayscale_jpeg": dict(height=250, width=180, mode="L"),
    "la_png": dict(height=90, width=150, mode="LA"),
    "cmyk_jpeg": dict(height=160, width=120, mode="CMYK"),
    "i16_png": dict(height=100, width=100, mode="I;16"),
}
EXTENSIONS = {"palette_gif": "gif", "grayscale_jpeg": "jpg", "cmyk_jpeg": "jpg"}


@pytest.fixture(scope="module")
def ours():
    return Processor.from_pretrained(COMMON)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    files = {name: write_image(root, f"{name}.{EXTENSIONS.get(name, 'png')}", seed=i, **spec)
             for i, (name, spec) in enumerate(IMAGES.items())}
    files["exif_jpeg"] = write_image(root, "exif.jpg", 120, 200, seed=9, exif_orientation=6)
    files["video_3s"] = write_video(root / "a.mp4", 3, 320, 240, 30)
    files["video_10s"] = write_video(root / "b.mp4", 10, 640, 360, 24)
    files["video_webm"] = write_video(root / "c.webm", 2, 160, 120, 25, codec="libvpx-vp9")
    files["video_mkv"] = write_video(root / "d.mkv", 2, 160, 120, 25)
    files["video_avi"] = write_video(root / "e.avi", 2, 160, 120, 25, codec="mpeg4")
    files["video_mov"] = write_video(root / "f.mov", 2, 160, 120, 25)
    return files


def reference(processor, conversations, add_vision_id=False):
    from qwen_vl_utils import process_vision_info

    texts = [processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True, add_vision_id=add_vision_id)
             for c in conversations]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        images, videos = process_vision_info(conversations)
        return dict(processor(text=texts, images=images, videos=videos, padding=True, return_tensors="pt"))


def assert_same_tensors(actual, expected):
    assert set(actual) == set(expected)
    for key in ("input_ids", "attention_mask", "image_grid_thw", "video_grid_thw"):
        if key in expected:
            assert torch.equal(actual[key], expected[key]), key
    for key in ("pixel_values", "pixel_values_videos"):
        if key in expected:
            assert actual[key].shape == expected[key].shape, key
            assert (actual[key] - expected[key]).abs().max().item() <= 1e-6, key


def user(*parts):
    return [{"role": "user", "content": list(parts)}]


def image_part(path, **options):
    return {"type": "image", "image": str(path), **options}


def video_part(path, **options):
    return {"type": "video", "video": str(path) if not isinstance(path, list) else path, **options}


@pytest.mark.parametrize("options", list(IMAGE_OPTIONS))
@pytest.mark.parametrize("name", list(IMAGES))
def test_image_matches_reference(ours, reference_processor, media, name, options):
    conversation = user(image_part(media[name], **IMAGE_OPTIONS[options]), {"type": "text", "text": "Describe."})
    assert_same_tensors(ours(conversation), reference(reference_processor, [conversation]))


@pytest.mark.parametrize("options", list(IMAGE_OPTIONS))
@pytest.mark.parametrize("name", list(IMAGES))
def test_ids_counted_without_pixels_are_the_encoded_ids(ours, media, name, options):
    conversation = user(image_part(media[name], **IMAGE_OPTIONS[options]), {"type": "text", "text": "Describe."})
    assert ours.conversation_ids(conversation) == ours.encode_conversation(conversation)[0]


def test_ids_counted_without_pixels_match_for_images_and_videos_together(ours, media):
    conversation = user(image_part(media["333x517"]), video_part(media["video_3s"], fps=1.0),
                        image_part(media["exif_jpeg"], max_pixels=60_000), {"type": "text", "text": "Compare."})
    assert ours.conversation_ids(conversation) == ours.encode_conversation(conversation)[0]


@pytest.mark.parametrize("options", list(IMAGE_OPTIONS))
def test_exif_rotated_jpeg_matches_reference_given_the_upright_image(ours, reference_processor, media, options):
    # qwen-vl-utils ignores EXIF orientation; we apply it, so the reference is handed the upright image.
    with Image.open(media["exif_jpeg"]) as stored:
        upright = ImageOps.exif_transpose(stored)
    ours_out = ours(user(image_part(media["exif_jpeg"], **IMAGE_OPTIONS[options])))
    expected = reference(reference_processor, [user({"type": "image", "image": upright, **IMAGE_OPTIONS[options]})])
    assert_same_tensors(ours_out, expected)


def test_exif_orientation_is_applied(ours, media):
    with Image.open(media["exif_jpeg"]) as stored:
        assert stored.width > stored.height  # stored landscape, tagged "rotate 90"
    grid = ours(user(image_part(media["exif_jpeg"])))["image_grid_thw"][0].tolist()
    assert grid[1] > grid[2]  # seen as portrait


VIDEO_OPTIONS = {
    "default": {},
    "fps_1": {"fps": 1.0},
    "nframes_8": {"nframes": 8},
    "min_max_frames": {"fps": 4.0, "min_frames": 6, "max_frames": 10},
    "start_end": {"video_start": 0.8, "video_end": 2.4},
    "pixel_budget": {"max_pixels": 60_000, "min_pixels": 20_000},
    "total_pixels": {"total_pixels": 2_000_000},
}


@pytest.mark.parametrize("options", list(VIDEO_OPTIONS))
@pytest.mark.parametrize("name", ["video_3s", "video_10s"])
def test_video_matches_reference(ours, reference_processor, media, name, options):
    conversation = user(video_part(media[name], **VIDEO_OPTIONS[options]), {"type": "text", "text": "What happens?"})
    assert_same_tensors(ours(conversation), reference(reference_processor, [conversation]))


@pytest.mark.parametrize("container", ["video_webm", "video_mkv", "video_avi", "video_mov"])
def test_other_containers_match_reference(ours, reference_processor, media, container):
    conversation = user(video_part(media[container]))
    assert_same_tensors(ours(conversation), reference(reference_processor, [conversation]))


@pytest.mark.parametrize("options", [{}, {"max_pixels": 40_000, "min_pixels": 10_000}])
def test_frame_list_video_matches_reference(ours, reference_processor, media, options):
    frames = [str(media[name]) for name in ("333x517", "333x517", "333x517")]
    conversation = user(video_part(frames, **options))
    assert_same_tensors(ours(conversation), reference(reference_processor, [conversation]))


def test_multi_image_conversation_matches_reference(ours, reference_processor, media):
    conversation = user(image_part(media["20x20"]), image_part(media["333x517"], max_pixels=100_000),
                        {"type": "text", "text": "Which is larger?"})
    assert_same_tensors(ours(conversation), reference(reference_processor, [conversation]))


def test_image_and_video_conversation_with_history_and_vision_ids_matches_reference(ours, reference_processor, media):
    conversation = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [image_part(media["rgba_png"]), {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A gradient."},
        {"role": "user", "content": [video_part(media["video_3s"], nframes=4), {"type": "text", "text": "And this?"}]},
    ]
    assert_same_tensors(ours(conversation, add_vision_id=True),
                        reference(reference_processor, [conversation], add_vision_id=True))


def test_left_padded_batch_matches_reference(ours, reference_processor, media):
    batch = [user(image_part(media["20x20"]), {"type": "text", "text": "Hi"}),
             user({"type": "text", "text": "A longer question about this picture:"}, image_part(media["palette_gif"]),
                  video_part(media["video_3s"], fps=1.0))]
    assert_same_tensors(ours(batch), reference(reference_processor, batch))


def _data_uri(path, media_type):
    return f"data:{media_type};base64," + base64.b64encode(path.read_bytes()).decode()


def test_openai_form_gives_the_same_tensors_as_qwen_form(ours, media):
    qwen = user({"type": "text", "text": "Compare"}, image_part(media["333x517"], max_pixels=90_000),
                video_part(media["video_3s"], fps=1.0))
    openai = user({"type": "text", "text": "Compare"},
                  {"type": "image_url", "image_url": {"url": _data_uri(media["333x517"], "image/png"), "detail": "high"},
                   "max_pixels": 90_000},
                  {"type": "video_url", "video_url": {"url": f"file://{media['video_3s']}", "fps": 1.0}})
    assert_same_tensors(ours(openai), ours(qwen))
