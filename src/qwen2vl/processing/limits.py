"""Safety limits for untrusted media, all configurable, with safe defaults.

Owns: the frozen `MediaLimits` settings. Does not own: enforcing them (media.py, image.py,
video.py and processor.py each check the limits at the point where the quantity is known).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MediaLimits:
    max_item_bytes: int = 64 * 2**20
    """Encoded size of one image or video (file, URL body, data URI, raw bytes)."""
    max_image_pixels: int = 64_000_000
    """Decoded width x height of one image, checked before decoding (decompression bombs)."""
    max_video_frames: int = 768
    """Frames sampled from one video (also the cap on frame lists)."""
    max_video_seconds: float = 3600.0
    """Duration of one video container."""
    max_images: int = 64
    """Images per conversation."""
    max_videos: int = 8
    """Videos per conversation."""
    url_timeout_seconds: float = 20.0
    allow_urls: bool = True
    """Fetch http(s) URLs. Servers should turn this off unless asked."""
    allow_local_files: bool = True
    """Read local paths and file:// URIs."""
    local_media_root: Path | None = None
    """When set, local paths must resolve inside this directory."""

    @classmethod
    def untrusted(cls, local_media_root: str | Path | None = None, allow_urls: bool = False) -> "MediaLimits":
        """Defaults for a network service: no URLs, local files only under `local_media_root`."""
        root = None if local_media_root is None else Path(local_media_root).resolve()
        return cls(allow_urls=allow_urls, allow_local_files=root is not None, local_media_root=root)
