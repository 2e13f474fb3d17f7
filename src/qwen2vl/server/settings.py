"""Server settings: everything `qwen2vl serve` can be told, with safe defaults, parsed once.

Owns: the frozen `ServerSettings`. Does not own: enforcing the limits (protocol.py and app.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerSettings:
    served_model_name: str
    api_key: str | None = None
    max_body_bytes: int = 32 * 2**20
    max_images: int = 16
    max_videos: int = 2
    max_image_pixels: int = 40_000_000
    max_visual_tokens: int = 16384
    max_video_frames: int = 256
    max_tokens: int = 4096
    max_queued_requests: int = 64
    allow_remote_media: bool = False
    allowed_local_media_path: Path | None = None
    graceful_shutdown_seconds: float = 30.0
