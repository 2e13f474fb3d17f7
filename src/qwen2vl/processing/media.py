"""Fetching and decoding media from every source a user can hand us, within safety limits.

Owns: sources -> encoded bytes or a local path (local path, file:// URI, http(s) URL, data: URI,
raw bytes), and images -> decoded PIL images (also PIL images and numpy arrays passed directly),
with EXIF orientation applied and the decoded size checked before decoding.
Does not own: resizing and patchify (image.py), video decoding and sampling (video.py).
Every failure is a one-line InvalidInputError subclass naming the item (`label`).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import InvalidInputError, LimitExceededError, MediaDecodeError, SourceNotAllowedError
from .limits import MediaLimits

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")


def fetch_bytes(source: Any, label: str, limits: MediaLimits, kind: str) -> bytes | Path:
    """Encoded media for `source`: bytes, or the Path of an allowed local file. `kind`: image or video."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_size(len(data), label, limits)
        return data
    if isinstance(source, Path):
        return _local_file(source, label, limits)
    if not isinstance(source, str):
        raise InvalidInputError(f"{label}: unsupported source of type {type(source).__name__}")
    text = source.strip()
    scheme_match = _SCHEME.match(text)
    scheme = scheme_match.group(1).lower() if scheme_match and len(scheme_match.group(1)) > 1 else ""
    if scheme == "data":
        return _data_uri(text, label, limits, kind)
    if scheme in ("http", "https"):
        return _download(text, label, limits)
    if scheme == "file":
        return _local_file(Path(urllib.parse.unquote(urllib.parse.urlparse(text).path)), label, limits)
    if scheme:
        raise InvalidInputError(f"{label}: unsupported URL scheme '{scheme}:' (use a path, file://, http(s):// or data:)")
    return _local_file(Path(text).expanduser(), label, limits)


def _check_size(size: int, label: str, limits: MediaLimits) -> None:
    if size > limits.max_item_bytes:
        raise LimitExceededError(f"{label}: {size} bytes is above the limit of {limits.max_item_bytes} bytes")


def _data_uri(uri: str, label: str, limits: MediaLimits, kind: str) -> bytes:
    header, comma, payload = uri.partition(",")
    if not comma:
        raise InvalidInputError(f"{label}: malformed data URI (no comma)")
    media_type = header[5:].split(";")[0].strip().lower()
    if media_type and not media_type.startswith(f"{kind}/") and media_type != "application/octet-stream":
        raise InvalidInputError(f"{label}: data URI has media type '{media_type}', not an {kind}")
    _check_size(len(payload) * 3 // 4, label, limits)
    if ";base64" in header.lower():
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise MediaDecodeError(f"{label}: data URI payload is not valid base64") from None
    return urllib.parse.unquote_to_bytes(payload)


def _download(url: str, label: str, limits: MediaLimits) -> bytes:
    if not limits.allow_urls:
        raise SourceNotAllowedError(f"{label}: remote URLs are disabled")
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "qwen2vl"})
        with urllib.request.urlopen(request, timeout=limits.url_timeout_seconds) as response:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit():
                _check_size(int(declared), label, limits)
            data = response.read(limits.max_item_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise MediaDecodeError(f"{label}: could not fetch {url[:200]} ({reason})") from None
    _check_size(len(data), label, limits)
    return data


def _local_file(path: Path, label: str, limits: MediaLimits) -> Path:
    if not limits.allow_local_files:
        raise SourceNotAllowedError(f"{label}: local file paths are disabled")
    resolved = path.resolve()
    root = limits.local_media_root
    if root is not None and not resolved.is_relative_to(Path(root).resolve()):
        raise SourceNotAllowedError(f"{label}: {path} is outside the allowed media directory")
    if not resolved.is_file():
        raise MediaDecodeError(f"{label}: no such file: {path}")
    _check_size(resolved.stat().st_size, label, limits)
    return resolved


def load_image(source: Any, label: str, limits: MediaLimits) -> Image.Image:
    """Any supported image source -> a fully decoded PIL image with EXIF orientation applied."""
    if isinstance(source, Image.Image):
        _check_pixels(source.width, source.height, label, limits)
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source, label, limits)
    data = fetch_bytes(source, label, limits, "image")
    return decode_image(data, label, limits)


def decode_image(data: bytes | Path, label: str, limits: MediaLimits) -> Image.Image:
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            image = Image.open(stream)
            _check_pixels(image.width, image.height, label, limits)
            image.load()
            return ImageOps.exif_transpose(image)
    except InvalidInputError:
        raise
    except UnidentifiedImageError:
        raise MediaDecodeError(f"{label}: not an image (unrecognised format)") from None
    except Image.DecompressionBombError:
        raise LimitExceededError(
            f"{label}: image pixels are above the limit of {limits.max_image_pixels} (refused before decoding)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise MediaDecodeError(f"{label}: unreadable or truncated image ({exc})") from None


def _check_pixels(width: int, height: int, label: str, limits: MediaLimits) -> None:
    if width * height > limits.max_image_pixels:
        raise LimitExceededError(
            f"{label}: {width}x{height} = {width * height} pixels is above the limit of {limits.max_image_pixels}"
        )


def _from_array(array: np.ndarray, label: str, limits: MediaLimits) -> Image.Image:
    if array.dtype != np.uint8:
        raise InvalidInputError(f"{label}: numpy images must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InvalidInputError(f"{label}: numpy images must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
    _check_pixels(array.shape[1], array.shape[0], label, limits)
    return Image.fromarray(np.ascontiguousarray(array))  # mode from the shape: L, RGB or RGBA
