"""Images at native resolution: smart_resize, RGB conversion, resizing, normalisation, patchify.

Owns: a decoded PIL image -> the reference's uint8 pixels at the chosen size -> flattened patch
rows [grid_t*grid_h*grid_w, C*T*P*P] and grid (t, h, w), or that grid alone. Two resize stages
mirror the reference pipeline exactly: qwen-vl-utils' per-item resize (PIL bicubic), then the
processor's own smart_resize with its min/max pixels (a no-op unless per-item bounds fall outside
the processor's; then an antialiased bicubic resize of the uint8 tensor, as torchvision does).
Does not own: reading bytes or files (media.py) or video frame sampling (video.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InvalidInputError

MAX_ASPECT_RATIO = 200


@dataclass(frozen=True)
class VisionSettings:
    """Processor-level settings from preprocessor_config.json (with the reference defaults)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 16384
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    rescale_factor: float = 1 / 255

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def processor_size(self, height: int, width: int) -> tuple[int, int]:
        """The processor's own resize stage: smart_resize within these min/max pixels."""
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    @classmethod
    def from_dict(cls, raw: dict) -> "VisionSettings":
        size = raw.get("size") or {}
        defaults = cls()
        return cls(
            patch_size=raw.get("patch_size", defaults.patch_size),
            temporal_patch_size=raw.get("temporal_patch_size", defaults.temporal_patch_size),
            merge_size=raw.get("merge_size", defaults.merge_size),
            min_pixels=raw.get("min_pixels", size.get("shortest_edge", defaults.min_pixels)),
            max_pixels=raw.get("max_pixels", size.get("longest_edge", defaults.max_pixels)),
            image_mean=tuple(raw.get("image_mean", defaults.image_mean)),
            image_std=tuple(raw.get("image_std", defaults.image_std)),
            rescale_factor=raw.get("rescale_factor", defaults.rescale_factor),
        )


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Sides rounded to multiples of `factor` (at least one factor), area within [min, max] pixels."""
    if min(height, width) <= 0:
        raise InvalidInputError(f"image has an empty side ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise InvalidInputError(
            f"aspect ratio {max(height, width) / min(height, width):.1f} is above {MAX_ASPECT_RATIO} ({width}x{height})"
        )
    if min_pixels > max_pixels:
        raise InvalidInputError(f"min_pixels ({min_pixels}) is above max_pixels ({max_pixels})")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb(image: Image.Image) -> Image.Image:
    """RGBA is composited on white; every other mode goes through PIL's convert("RGB")."""
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    return image.convert("RGB")


def resize_bicubic(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bicubic resize of [..., C, H, W] as torchvision's v2 resize (the processors') does
    it: uint8 is resized natively on the CPU, elsewhere through float32."""
    if pixels.shape[-2:] == (height, width):
        return pixels
    if pixels.dtype == torch.uint8 and pixels.device.type != "cpu":
        return resize_bicubic_rounded(pixels, height, width)
    return F.interpolate(pixels, size=(height, width), mode="bicubic", align_corners=False, antialias=True)


def resize_bicubic_rounded(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [..., C, H, W] resized in float32, clamped and rounded back to uint8, as torchvision's v1
    tensor resize does it (qwen-vl-utils' video resize)."""
    if pixels.shape[-2:] == (height, width):
        return pixels
    resized = F.interpolate(pixels.float(), size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return resized.clamp_(0, 255).round_().to(torch.uint8)


def normalize_patches(patches: torch.Tensor, settings: VisionSettings) -> torch.Tensor:
    """Patch rows of 0-255 values [N, C*tp*P*P] -> float32 (x - 255*mean) / (255*std) per channel.

    The same per-element arithmetic as the reference's fused rescale-and-normalise on frames, applied
    after patchify so the reorder moves uint8 bytes rather than floats.
    """
    scale = 1.0 / settings.rescale_factor
    per_channel = patches.shape[1] // len(settings.image_mean)
    mean = (torch.tensor(settings.image_mean) * scale).repeat_interleave(per_channel)  # [C*tp*P*P]
    std = (torch.tensor(settings.image_std) * scale).repeat_interleave(per_channel)
    return patches.to(torch.float32).sub_(mean).div_(std)


def patchify(frames: torch.Tensor, settings: VisionSettings) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Frames [T, C, H, W] -> patch rows [grid_t*grid_h*grid_w, C*tp*P*P] and (t, h, w).

    T is padded to a multiple of the temporal patch by repeating the last frame. Rows are listed
    frame-pair by frame-pair, then 2x2 merge window by window, the reference's element order.
    """
    tp, p, m = settings.temporal_patch_size, settings.patch_size, settings.merge_size
    pad = -frames.shape[0] % tp
    if pad and frames.shape[0] == 1:  # an image: its one frame repeated, as a view
        frames = frames.expand(tp, -1, -1, -1)
    elif pad:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
    t, c, h, w = frames.shape
    gt, gh, gw = t // tp, h // p, w // p
    # [T, C, H, W] -> [gt, tp, C, gh/m, m, P, gw/m, m, P]
    patches = frames.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    # -> [gt, gh/m, gw/m, m, m, C, tp, P, P]
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(gt * gh * gw, c * tp * p * p), (gt, gh, gw)


def to_model_inputs(frames: torch.Tensor, settings: VisionSettings) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Frames of 0-255 values [T, C, H, W] (uint8 or float) -> normalised patch rows and grid."""
    patches, grid = patchify(frames, settings)
    return normalize_patches(patches, settings), grid


def image_to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 [3, H, W]."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def prepare_image_size(
    image: Image.Image,
    factor: int,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    resized_height: int | None = None,
    resized_width: int | None = None,
) -> Image.Image:
    """qwen-vl-utils' per-item stage: RGB, then a PIL bicubic resize to the smart_resize size
    (bounds default to 4 and 16384 tokens; `resized_*` ask for a size directly)."""
    image = to_rgb(image)
    height, width = item_size(image.height, image.width, factor, min_pixels, max_pixels, resized_height, resized_width)
    if (image.width, image.height) != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return image


def item_size(
    height: int,
    width: int,
    factor: int,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    resized_height: int | None = None,
    resized_width: int | None = None,
) -> tuple[int, int]:
    """(height, width) after qwen-vl-utils' per-item stage (see prepare_image_size)."""
    if resized_height is not None and resized_width is not None:
        return smart_resize(resized_height, resized_width, factor, 4 * factor**2, 16384 * factor**2)
    return smart_resize(height, width, factor, 4 * factor**2 if min_pixels is None else min_pixels,
                        16384 * factor**2 if max_pixels is None else max_pixels)


def prepare_image(
    image: Image.Image,
    settings: VisionSettings,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    resized_height: int | None = None,
    resized_width: int | None = None,
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """A decoded image -> (patch rows, grid): the per-item stage, then the processor's own bounds."""
    image = prepare_image_size(image, settings.factor, min_pixels, max_pixels, resized_height, resized_width)
    pixels = image_to_uint8_tensor(image)[None]  # [1, 3, H, W]
    pixels = resize_bicubic(pixels, *settings.processor_size(image.height, image.width))
    return to_model_inputs(pixels, settings)


def image_grid(image: Image.Image, settings: VisionSettings, **options: int | None) -> tuple[int, int, int]:
    """The grid (t, h, w) prepare_image gives the same image and per-item options (min_pixels,
    max_pixels, resized_height, resized_width), without making its pixels."""
    height, width = item_size(image.height, image.width, settings.factor, **options)
    height, width = settings.processor_size(height, width)
    return 1, height // settings.patch_size, width // settings.patch_size
