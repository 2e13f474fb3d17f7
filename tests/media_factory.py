"""Media files made inside the tests: images in several modes and formats, videos encoded with PyAV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def pattern(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic RGB picture with structure (gradients, blocks) and noise, uint8 [H, W, 3]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)), ((x + y) * 7) % 256], -1)
    image = image.astype(np.int32) + rng.integers(-40, 40, size=(height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_image(directory: Path, name: str, height: int, width: int, seed: int = 0, mode: str = "RGB",
                exif_orientation: int | None = None) -> Path:
    path = directory / name
    rgb = pattern(height, width, seed)
    if mode == "RGBA":
        alpha = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
        image = Image.fromarray(np.dstack([rgb, alpha]))
    elif mode == "P":
        image = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    elif mode == "L":
        image = Image.fromarray(rgb).convert("L")
    elif mode == "LA":
        image = Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]]))
    elif mode == "CMYK":
        image = Image.fromarray(rgb).convert("CMYK")
    elif mode == "I;16":
        image = Image.fromarray((rgb[..., 0].astype(np.uint16) * 257 // 300).astype(np.uint16))
    else:
        image = Image.fromarray(rgb)
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, exif=exif.tobytes(), quality=90)
    else:
        image.save(path)
    return path


def write_video(path: Path, seconds: float, width: int, height: int, fps: int, codec: str = "libx264",
                keyframe_interval: int | None = None) -> Path:
    """A moving-pattern video; every frame differs so sampling mistakes show."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if keyframe_interval is not None:
            stream.codec_context.gop_size = keyframe_interval
        base = pattern(height, width, seed=5)
        for i in range(int(seconds * fps)):
            frame = np.roll(base, shift=i * 3, axis=1)
            frame[: height // 8, : width // 8] = (i * 9) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
