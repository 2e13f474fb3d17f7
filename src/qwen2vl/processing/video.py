"""Videos: frame sampling, per-frame pixel budgets, seeking decode with PyAV, patchify.

Owns: a video source (encoded file or a list of frames) + per-item options -> patch rows and
grid, with the semantics of qwen-vl-utils 0.0.14 (decord backend) followed by the processor:
- sampling: `fps` (default 2) or `nframes`; min_frames 4 / max_frames 768 rounded to 2;
  `video_start`/`video_end` in seconds; indices linspace(first, last, n).round();
- size: per-frame budget between 128 and 768 tokens, further capped by a total budget spread
  over the frames, then smart_resize; antialiased bicubic resize;
- frame lists: each frame is first sized like an image (with qwen-vl-utils' factor of 56 for
  list frames), the count padded to even, then sized as a video.
Decoding seeks to each sampled frame when the gap is long and only decodes from the preceding
keyframe, so sparse sampling of a long video does not decode it frame by frame.
Does not own: fetching bytes (media.py) or normalisation/patchify (image.py).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import InvalidInputError, LimitExceededError, MediaDecodeError
from .image import (VisionSettings, image_to_uint8_tensor, prepare_image_size, resize_bicubic,
                    resize_bicubic_rounded, smart_resize, to_model_inputs)
from .limits import MediaLimits
from .media import fetch_bytes, load_image

FRAME_FACTOR = 2
DEFAULT_FPS = 2.0
MIN_FRAMES = 4
MAX_FRAMES = 768
FRAME_MIN_TOKENS = 128
FRAME_MAX_TOKENS = 768
TOTAL_TOKENS = 128000
SEEK_GAP_SECONDS = 2.0


@dataclass(frozen=True)
class VideoOptions:
    """Per-item video keys, as users write them in a message."""

    fps: float | None = None
    nframes: int | None = None
    min_frames: int | None = None
    max_frames: int | None = None
    video_start: float | None = None
    video_end: float | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    total_pixels: float | None = None
    resized_height: int | None = None
    resized_width: int | None = None

    @classmethod
    def from_item(cls, item: dict[str, Any], label: str) -> "VideoOptions":
        values = {}
        for f in fields(cls):
            value = item.get(f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InvalidInputError(f"{label}: '{f.name}' must be a non-negative number, got {value!r}")
            values[f.name] = value
        if "fps" in values and "nframes" in values:
            raise InvalidInputError(f"{label}: give either 'fps' or 'nframes', not both")
        return cls(**values)


def frame_range(total: int, fps: float, start: float | None, end: float | None, label: str) -> tuple[int, int, int]:
    """(first, last, count) of the frames inside [video_start, video_end] seconds."""
    if start is None and end is None:
        return 0, total - 1, total
    duration = total / fps
    first = math.ceil(max(0.0, min(start, duration)) * fps) if start is not None else 0
    last = min(math.floor(max(0.0, min(end, duration)) * fps), total - 1) if end is not None else total - 1
    if first >= last:
        raise InvalidInputError(f"{label}: video_start/video_end select no frames of a {duration:.2f} s video")
    return first, last, last - first + 1


def sample_count(options: VideoOptions, total: int, fps: float, label: str) -> int:
    """How many frames to sample from `total` (qwen-vl-utils' smart_nframes)."""
    if options.nframes is not None:
        count = round(options.nframes / FRAME_FACTOR) * FRAME_FACTOR
    else:
        target_fps = DEFAULT_FPS if options.fps is None else options.fps
        min_frames = math.ceil((MIN_FRAMES if options.min_frames is None else options.min_frames) / FRAME_FACTOR) * FRAME_FACTOR
        max_frames = math.floor(
            (min(MAX_FRAMES, total) if options.max_frames is None else options.max_frames) / FRAME_FACTOR
        ) * FRAME_FACTOR
        wanted = total / fps * target_fps
        count = math.floor(min(min(max(wanted, min_frames), max_frames), total) / FRAME_FACTOR) * FRAME_FACTOR
    if not FRAME_FACTOR <= count <= total:
        raise InvalidInputError(f"{label}: {count} frames requested but the video has {total} (at least {FRAME_FACTOR})")
    return count


def sample_indices(first: int, last: int, count: int) -> list[int]:
    return torch.linspace(first, last, count).round().long().tolist()


def frame_size(options: VideoOptions, frames: int, height: int, width: int, factor: int) -> tuple[int, int]:
    """Resized frame size under the per-frame and total pixel budgets."""
    if options.resized_height is not None and options.resized_width is not None:
        return smart_resize(options.resized_height, options.resized_width, factor, 4 * factor**2, 16384 * factor**2)
    min_pixels = FRAME_MIN_TOKENS * factor**2 if options.min_pixels is None else options.min_pixels
    total = TOTAL_TOKENS * factor**2 * 0.9 if options.total_pixels is None else options.total_pixels
    max_pixels = max(min(FRAME_MAX_TOKENS * factor**2, total / frames * FRAME_FACTOR), int(min_pixels * 1.05))
    if options.max_pixels is not None:
        max_pixels = min(options.max_pixels, max_pixels)
    return smart_resize(height, width, factor, min_pixels, max_pixels)


def prepare_video(
    source: Any, options: VideoOptions, settings: VisionSettings, label: str, limits: MediaLimits
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """A video (path, URL, bytes or a list of frames) -> (patch rows, grid)."""
    if isinstance(source, (list, tuple)):
        frames = _frames_from_list(source, options, settings, label, limits)
    else:
        frames, _ = decode_sampled_frames(fetch_bytes(source, label, limits, "video"), options, settings, label, limits)
    stage2 = settings.processor_size(frames.shape[-2], frames.shape[-1])
    if stage2 != tuple(frames.shape[-2:]):  # the processor resizes qwen-vl-utils' float frames
        frames = resize_bicubic(frames.float(), *stage2)
    return to_model_inputs(frames, settings)


def _frames_from_list(frames: list | tuple, options: VideoOptions, settings: VisionSettings, label: str,
                      limits: MediaLimits) -> torch.Tensor:
    if not frames:
        raise InvalidInputError(f"{label}: a frame list must not be empty")
    if len(frames) > limits.max_video_frames:
        raise LimitExceededError(f"{label}: {len(frames)} frames is above the limit of {limits.max_video_frames}")
    list_factor = 2 * settings.factor  # qwen-vl-utils sizes list frames with twice the image factor
    tensors = []
    for i, frame in enumerate(frames):
        image = load_image(frame, f"{label} frame {i + 1}", limits)
        image = prepare_image_size(image, list_factor, options.min_pixels, options.max_pixels,
                                   options.resized_height, options.resized_width)
        tensors.append(image_to_uint8_tensor(image))
    if len({t.shape for t in tensors}) > 1:
        raise InvalidInputError(f"{label}: all frames of a frame list must have the same size")
    tensors += [tensors[-1]] * (-len(tensors) % FRAME_FACTOR)
    video = torch.stack(tensors)  # [T, 3, H, W] uint8
    height, width = frame_size(options, video.shape[0], video.shape[-2], video.shape[-1], settings.factor)
    return resize_bicubic_rounded(video, height, width)


def decode_sampled_frames(
    data: bytes | Path, options: VideoOptions, settings: VisionSettings, label: str, limits: MediaLimits
) -> tuple[torch.Tensor, int]:
    """Decode only the sampled frames, resized. Returns uint8 [T, 3, H, W] and how many frames were decoded."""
    import av  # PyAV: imported on use, so image-only users never load FFmpeg

    try:
        container = av.open(io.BytesIO(data) if isinstance(data, bytes) else str(data))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MediaDecodeError(f"{label}: not a readable video ({getattr(exc, 'strerror', None) or exc})") from None
    with container:
        if not container.streams.video:
            raise MediaDecodeError(f"{label}: the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if fps <= 0:
            raise MediaDecodeError(f"{label}: the video stream has no frame rate")
        duration = float(stream.duration * stream.time_base) if stream.duration else (
            container.duration / 1e6 if container.duration else None)
        if duration is not None and duration > limits.max_video_seconds:
            raise LimitExceededError(f"{label}: {duration:.1f} s is above the limit of {limits.max_video_seconds:g} s")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > limits.max_image_pixels:
            raise LimitExceededError(f"{label}: {width}x{height} frames are above the limit of {limits.max_image_pixels} pixels")
        total = stream.frames or (round(duration * fps) if duration else 0)
        if total <= 0:
            raise MediaDecodeError(f"{label}: the video has no decodable frames")
        first, last, count = frame_range(total, fps, options.video_start, options.video_end, label)
        n = sample_count(options, count, fps, label)
        if n > limits.max_video_frames:
            raise LimitExceededError(f"{label}: {n} sampled frames is above the limit of {limits.max_video_frames}")
        size = frame_size(options, n, height, width, settings.factor)
        try:
            frames, decoded = _seek_and_decode(container, stream, sample_indices(first, last, n), fps, size)
        except av.error.FFmpegError as exc:
            raise MediaDecodeError(
                f"{label}: the video could not be decoded ({getattr(exc, 'strerror', None) or exc})") from None
    if not frames:
        raise MediaDecodeError(f"{label}: the video has no decodable frames")
    frames += [frames[-1]] * (n - len(frames))  # a stream shorter than its header says: repeat its last frame
    return torch.stack(frames), decoded


def _seek_and_decode(container, stream, indices: list[int], fps: float, size: tuple[int, int]):
    """Frames at `indices` (presentation order), each resized to `size` (h, w)."""
    time_base = stream.time_base
    start = stream.start_time or 0
    gap = max(1, int(SEEK_GAP_SECONDS * fps))
    frames: list[torch.Tensor] = []
    decoded = 0
    iterator: Iterator | None = None
    position = -1
    for target in indices:
        if iterator is None or target - position > gap:
            container.seek(int(start + target / fps / time_base), stream=stream, backward=True)
            iterator = container.decode(stream)
        for frame in iterator:
            decoded += 1
            position = round(float((frame.pts - start) * time_base) * fps) if frame.pts is not None else position + 1
            if position >= target:
                rgb = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)  # [3, H, W]
                frames.append(resize_bicubic_rounded(rgb[None], *size)[0])
                break
        else:
            break
    return frames, decoded
