"""The OpenAI Chat Completions wire format: request validation in, response and chunk bodies out.

Owns: turning a JSON body into a validated `ChatRequest` (sampling parameters, streaming options,
per-request media budgets from `mm_processor_kwargs`) with an `ApiError` naming the offending
field, and building completion, chunk, usage and logprobs bodies. Does not own: running requests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..engine import SamplingParams, Usage
from ..errors import InvalidInputError
from .errors import ApiError
from .settings import ServerSettings

MEDIA_KWARGS = ("min_pixels", "max_pixels", "resized_height", "resized_width", "fps", "nframes", "min_frames",
                "max_frames", "video_start", "video_end", "total_pixels")


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    params: SamplingParams
    stream: bool
    include_usage: bool
    media_defaults: dict[str, Any]


def parse_chat_request(body: Any, settings: ServerSettings) -> ChatRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required", param="model", code="missing_required_parameter")
    if model != settings.served_model_name:
        raise ApiError(404, f"the model '{model}' does not exist; this server serves '{settings.served_model_name}'",
                       param="model", code="model_not_found")
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, "'messages' is required", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "'messages' must be a non-empty list of message objects", param="messages")
    messages = [{**m, "role": "system"} if m.get("role") == "developer" else m for m in messages]

    get = _Fields(body)
    max_tokens = get("max_completion_tokens", int, 1, settings.max_tokens)
    if max_tokens is None:
        max_tokens = get("max_tokens", int, 1, settings.max_tokens)
    want_logprobs = get("logprobs", bool)
    top_logprobs = get("top_logprobs", int, 0, 20)
    if top_logprobs is not None and not want_logprobs:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > 16 or not all(isinstance(s, str) and s for s in stop)):
        raise ApiError(400, "'stop' must be a string or a list of up to 16 non-empty strings", param="stop")
    try:
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=get("temperature", float, 0.0, 2.0),
            top_p=get("top_p", float, 0.0, 1.0),
            top_k=get("top_k", int, -1, None),
            min_p=get("min_p", float, 0.0, 1.0) or 0.0,
            repetition_penalty=get("repetition_penalty", float, 0.0, None),
            presence_penalty=get("presence_penalty", float, -2.0, 2.0) or 0.0,
            frequency_penalty=get("frequency_penalty", float, -2.0, 2.0) or 0.0,
            seed=get("seed", int, None, None),
            n=get("n", int, 1, 16) or 1,
            stop=tuple(stop or ()),
            logprobs=(top_logprobs or 0) if want_logprobs else None,
        )
    except InvalidInputError as error:
        raise ApiError(400, str(error)) from None
    stream = bool(get("stream", bool))
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise ApiError(400, "'stream_options' must be an object and needs 'stream': true", param="stream_options")
    include_usage = bool((options or {}).get("include_usage", False))
    return ChatRequest(model, messages, params, stream, include_usage, _media_kwargs(body.get("mm_processor_kwargs")))


class _Fields:
    """Typed, ranged lookups of optional body fields; None when absent or null."""

    def __init__(self, body: Mapping[str, Any]):
        self.body = body

    def __call__(self, name: str, kind: type, low: float | None = None, high: float | None = None) -> Any:
        value = self.body.get(name)
        if value is None:
            return None
        ok = isinstance(value, bool) if kind is bool else (
            isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or float(value).is_integer()))
        if ok and kind is not bool:
            value = kind(value)
            ok = (low is None or value >= low) and (high is None or value <= high)
        if not ok:
            bounds = "" if kind is bool else f" in [{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            raise ApiError(400, f"'{name}' must be a {kind.__name__}{bounds}, got {value!r}", param=name)
        return value


def _media_kwargs(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ApiError(400, "'mm_processor_kwargs' must be an object", param="mm_processor_kwargs")
    unknown = sorted(set(raw) - set(MEDIA_KWARGS))
    if unknown:
        raise ApiError(400, f"unknown mm_processor_kwargs: {', '.join(unknown)} (known: {', '.join(MEDIA_KWARGS)})",
                       param="mm_processor_kwargs")
    return dict(raw)


def usage_body(usage: Usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens, "visual_tokens": usage.visual_tokens}


def logprobs_body(entries: Sequence[tuple[int, tuple[float, list[tuple[int, float]]]]],
                  decode: Callable[[list[int]], str]) -> dict[str, Any]:
    """OpenAI's {"content": [{token, logprob, bytes, top_logprobs}]} for (token id, (logprob, top)) pairs."""
    def item(token_id: int, logprob: float) -> dict[str, Any]:
        text = decode([token_id])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**item(token, logprob), "top_logprobs": [item(t, lp) for t, lp in top]}
                        for token, (logprob, top) in entries]}


class ResponseBuilder:
    """Bodies for one request: the full completion, or its stream chunks."""

    def __init__(self, request_id: str, model: str):
        self.id = f"chatcmpl-{request_id}"
        self.model = model
        self.created = int(time.time())

    def completion(self, choices: list[dict[str, Any]], usage: Usage) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": choices, "usage": usage_body(usage)}

    def chunk(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> dict[str, Any]:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices}
        if usage is not None:
            body["usage"] = usage_body(usage)
        return body
