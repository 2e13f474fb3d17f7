"""Processor: conversations -> the model's input tensors, named and laid out as transformers' are.

Owns: reading the checkpoint's tokenizer, chat template and preprocessor settings; turning each
conversation into prompt text, loading and preparing its media, tokenising with each vision
placeholder expanded to grid_t*grid_h*grid_w/4 tokens, and batching with left padding into
input_ids, attention_mask, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw.
Does not own: media details (media.py, image.py, video.py) or the template language (chat.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from tokenizers import Tokenizer

from ..config import ModelConfig
from ..errors import ConfigError, InvalidInputError, LimitExceededError
from .chat import ChatTemplate, MediaItem, normalize_conversation
from .image import VisionSettings, image_grid, prepare_image
from .limits import MediaLimits
from .media import load_image
from .video import VideoOptions, prepare_video

Conversation = Sequence[Mapping[str, Any]]
GROUNDING_TOKENS = ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
                    "<|quad_start|>", "<|quad_end|>")


class Processor:
    def __init__(
        self,
        tokenizer: Tokenizer,
        chat_template: ChatTemplate,
        settings: VisionSettings,
        image_token_id: int,
        video_token_id: int,
        pad_token_id: int,
        limits: MediaLimits | None = None,
    ):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.settings = settings
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        self.pad_token_id = pad_token_id
        self.limits = limits or MediaLimits()
        self._hidden_ids = frozenset(i for i, token in tokenizer.get_added_tokens_decoder().items()
                                     if token.special and token.content not in GROUNDING_TOKENS)

    @classmethod
    def from_pretrained(cls, directory: str | Path, limits: MediaLimits | None = None) -> "Processor":
        directory = Path(directory)
        tokenizer = Tokenizer.from_file(str(_required(directory / "tokenizer.json")))
        tokenizer_config = _read_json(directory / "tokenizer_config.json")
        template = _chat_template_source(directory, tokenizer_config)
        settings = VisionSettings.from_dict(_read_json(directory / "preprocessor_config.json"))
        if (directory / "config.json").is_file():
            config = ModelConfig.from_file(directory / "config.json")
            image_id, video_id = config.image_token_id, config.video_token_id
        else:
            image_id, video_id = _token_id(tokenizer, "<|image_pad|>"), _token_id(tokenizer, "<|video_pad|>")
        pad = tokenizer_config.get("pad_token") or "<|endoftext|>"
        pad = pad.get("content") if isinstance(pad, Mapping) else pad
        return cls(tokenizer, ChatTemplate(template), settings, image_id, video_id, _token_id(tokenizer, pad), limits)

    def __call__(
        self,
        conversations: Conversation | Sequence[Conversation],
        add_generation_prompt: bool = True,
        add_vision_id: bool = False,
        media_defaults: Mapping[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One conversation or a list of them -> a dict of batched tensors (left-padded)."""
        batch = [conversations] if _is_single(conversations) else list(conversations)
        if not batch:
            raise InvalidInputError("no conversations given")
        rows, images, videos = [], [], []
        for c, conversation in enumerate(batch):
            prefix = f"conversation {c + 1}: " if len(batch) > 1 else ""
            ids, conv_images, conv_videos = self.encode_conversation(
                conversation, add_generation_prompt, add_vision_id, media_defaults, prefix)
            rows.append(ids)
            images += conv_images
            videos += conv_videos
        width = max(len(r) for r in rows)
        out = {
            "input_ids": torch.tensor([[self.pad_token_id] * (width - len(r)) + r for r in rows], dtype=torch.long),
            "attention_mask": torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long),
        }
        for key, grid_key, prepared in (("pixel_values", "image_grid_thw", images),
                                        ("pixel_values_videos", "video_grid_thw", videos)):
            if prepared:
                out[key] = prepared[0][0] if len(prepared) == 1 else torch.cat([patches for patches, _ in prepared])
                out[grid_key] = torch.tensor([grid for _, grid in prepared], dtype=torch.long)
        return out

    def encode_conversation(
        self,
        conversation: Conversation,
        add_generation_prompt: bool = True,
        add_vision_id: bool = False,
        media_defaults: Mapping[str, Any] | None = None,
        prefix: str = "",
    ) -> tuple[list[int], list, list]:
        """Token ids with placeholders expanded, and the prepared (patches, grid) of its images and videos."""
        return self._encode(conversation, add_generation_prompt, add_vision_id, media_defaults, prefix, pixels=True)

    def conversation_ids(self, conversation: Conversation, add_generation_prompt: bool = True) -> list[int]:
        """encode_conversation's token ids, its media checked the same way (every image decoded, every
        video prepared), without making image pixels: what a training file's up-front check needs."""
        return self._encode(conversation, add_generation_prompt, False, None, "", pixels=False)[0]

    def _encode(self, conversation: Conversation, add_generation_prompt: bool, add_vision_id: bool,
                media_defaults: Mapping[str, Any] | None, prefix: str, pixels: bool) -> tuple[list[int], list, list]:
        messages, items = normalize_conversation(conversation, media_defaults, prefix)
        self._check_counts(items, prefix)
        text = self.chat_template.render(messages, add_generation_prompt, add_vision_id)
        prepared = {"image": [], "video": []}
        for item in items:
            prepared[item.kind].append(self.prepare_item(item, pixels))
        ids = self.expand_placeholders(self.tokenizer.encode(text).ids, prepared, prefix)
        return ids, prepared["image"], prepared["video"]

    def prepare_item(self, item: MediaItem, pixels: bool = True) -> tuple[torch.Tensor | None, tuple[int, int, int]]:
        """(patch rows, grid) of one image or video; every error names the item. With pixels=False an
        image's patch rows are None (its grid comes from its size)."""
        try:
            if item.kind == "image":
                image = load_image(item.source, item.label, self.limits)
                options = _checked_image_options(item.options, item.label)
                if not pixels:
                    return None, image_grid(image, self.settings, **options)
                return prepare_image(image, self.settings, **options)
            return prepare_video(item.source, VideoOptions.from_item(item.options, item.label), self.settings,
                                 item.label, self.limits)
        except InvalidInputError as exc:
            if str(exc).startswith(item.label):
                raise
            raise type(exc)(f"{item.label}: {exc}") from None

    def expand_placeholders(self, ids: list[int], prepared: dict[str, list], prefix: str = "") -> list[int]:
        """Each image/video pad token -> grid_t*grid_h*grid_w/merge^2 copies, in order."""
        merge = self.settings.merge_size ** 2
        queues = {self.image_token_id: iter(prepared["image"]), self.video_token_id: iter(prepared["video"])}
        found = {self.image_token_id: 0, self.video_token_id: 0}
        out: list[int] = []
        for token in ids:
            if token in queues:
                found[token] += 1
                entry = next(queues[token], None)
                if entry is None:
                    kind = "image" if token == self.image_token_id else "video"
                    raise InvalidInputError(f"{prefix}the text holds more {kind} placeholders than {kind}s")
                t, h, w = entry[1]
                out.extend([token] * (t * h * w // merge))
            else:
                out.append(token)
        return out

    def _check_counts(self, items: list[MediaItem], prefix: str) -> None:
        for kind, limit in (("image", self.limits.max_images), ("video", self.limits.max_videos)):
            count = sum(item.kind == kind for item in items)
            if count > limit:
                raise LimitExceededError(f"{prefix}{count} {kind}s in one conversation is above the limit of {limit}")

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`. Skipping special tokens keeps the grounding ones (object_ref, box, quad),
        which carry the model's answer when it locates things."""
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._hidden_ids]
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)


def _checked_image_options(options: Mapping[str, Any], label: str) -> dict[str, int]:
    checked = {}
    for key, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise InvalidInputError(f"{label}: '{key}' must be a positive number, got {value!r}")
        checked[key] = int(value)
    return checked


def _is_single(conversations: Any) -> bool:
    return isinstance(conversations, Sequence) and bool(conversations) and isinstance(conversations[0], Mapping)


def _required(path: Path) -> Path:
    if not path.is_file():
        raise ConfigError(f"{path.parent}: {path.name} not found")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({exc})") from None


def _chat_template_source(directory: Path, tokenizer_config: Mapping[str, Any]) -> str:
    for candidate in (_read_json(directory / "chat_template.json").get("chat_template"),
                      (directory / "chat_template.jinja").read_text(encoding="utf-8")
                      if (directory / "chat_template.jinja").is_file() else None,
                      tokenizer_config.get("chat_template")):
        if isinstance(candidate, str) and candidate:
            return candidate
    raise ConfigError(f"{directory}: no chat template (chat_template.json, chat_template.jinja or tokenizer_config.json)")


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ConfigError(f"the tokenizer has no token {token}")
    return token_id
