"""Conversations -> prompt text: message validation, OpenAI-form normalisation, the chat template.

Owns: accepting messages in Qwen form ({"type": "image", "image": ...}) and OpenAI form
({"type": "image_url", "image_url": {"url": ..., "detail": ...}}, video_url), string or list
content, system prompts and multi-turn histories; listing the media items in prompt order with
their per-item options; rendering the checkpoint's jinja chat template in a sandbox.
Does not own: loading media (media.py) or tokenising (processor.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import InvalidInputError

IMAGE_KEYS = ("min_pixels", "max_pixels", "resized_height", "resized_width")
VIDEO_KEYS = IMAGE_KEYS + ("fps", "nframes", "min_frames", "max_frames", "video_start", "video_end", "total_pixels")


@dataclass(frozen=True)
class MediaItem:
    kind: str  # "image" or "video"
    source: Any
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""


def normalize_conversation(
    messages: Sequence[Mapping[str, Any]], defaults: Mapping[str, Any] | None = None, prefix: str = ""
) -> tuple[list[dict[str, Any]], list[MediaItem]]:
    """Messages for the template (media reduced to {"type": "image"|"video"}) and the media items in order.

    `defaults` are per-request options (e.g. max_pixels) that items may override with their own keys.
    """
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise InvalidInputError(f"{prefix}messages must be a non-empty list")
    rendered: list[dict[str, Any]] = []
    items: list[MediaItem] = []
    counts = {"image": 0, "video": 0}
    for m, message in enumerate(messages, start=1):
        where = f"{prefix}message {m}"
        if not isinstance(message, Mapping):
            raise InvalidInputError(f"{where}: each message must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise InvalidInputError(f"{where}: 'role' must be a non-empty string")
        if content is None:
            content = ""
        if isinstance(content, str):
            rendered.append({"role": role, "content": content})
            continue
        if not isinstance(content, Sequence):
            raise InvalidInputError(f"{where}: 'content' must be a string or a list of content parts")
        parts = []
        for p, part in enumerate(content, start=1):
            kind, value = _classify(part, f"{where} part {p}")
            if kind == "text":
                parts.append({"type": "text", "text": value})
                continue
            counts[kind] += 1
            options = _options(part, kind, defaults)
            items.append(MediaItem(kind, value, options, f"{prefix}{kind} {counts[kind]}"))
            parts.append({"type": kind})
        rendered.append({"role": role, "content": parts})
    return rendered, items


def _classify(part: Any, where: str) -> tuple[str, Any]:
    if isinstance(part, str):
        return "text", part
    if not isinstance(part, Mapping):
        raise InvalidInputError(f"{where}: a content part must be an object")
    kind = part.get("type")
    for name in ("image", "video"):
        if kind == name or (kind is None and name in part):
            if part.get(name) is None:
                raise InvalidInputError(f"{where}: '{name}' part has no '{name}' value")
            return name, part[name]
        if kind == f"{name}_url" or (kind is None and f"{name}_url" in part):
            url = part.get(f"{name}_url")
            url = url.get("url") if isinstance(url, Mapping) else url
            if not isinstance(url, str) or not url:
                raise InvalidInputError(f"{where}: '{name}_url' needs a 'url' string")
            return name, url
    if kind in ("text", None) and "text" in part:
        text = part["text"]
        if not isinstance(text, str):
            raise InvalidInputError(f"{where}: 'text' must be a string")
        return "text", text
    raise InvalidInputError(f"{where}: unsupported content part type {kind!r}")


def _options(part: Mapping[str, Any], kind: str, defaults: Mapping[str, Any] | None) -> dict[str, Any]:
    """The item's own keys (top level or inside its *_url object) over the request defaults."""
    keys = IMAGE_KEYS if kind == "image" else VIDEO_KEYS
    nested = part.get(f"{kind}_url") if isinstance(part.get(f"{kind}_url"), Mapping) else {}
    own: dict[str, Any] = {}
    for source in (nested, part):
        own.update({k: source[k] for k in keys if source.get(k) is not None})
    inherited = {k: v for k, v in (defaults or {}).items() if k in keys and k not in own}
    if "fps" in own or "nframes" in own:  # an item choosing its sampling overrides both defaults
        inherited.pop("fps", None)
        inherited.pop("nframes", None)
    return {**inherited, **own}


class ChatTemplate:
    """A checkpoint's jinja chat template, rendered in an immutable sandbox."""

    def __init__(self, source: str):
        self.source = source
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise_template_error
        env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as exc:
            raise InvalidInputError(f"chat template does not compile: {exc}") from None

    def __reduce__(self):  # pickled as its source (a compiled template is not picklable): processes share it
        return ChatTemplate, (self.source,)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, add_vision_id: bool = False) -> str:
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         add_vision_id=add_vision_id)
        except jinja2.TemplateError as exc:
            raise InvalidInputError(f"chat template failed on these messages: {exc}") from None


def _raise_template_error(message: str) -> None:
    raise jinja2.TemplateError(message)
