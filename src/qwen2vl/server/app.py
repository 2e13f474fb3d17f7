"""The HTTP server: OpenAI Chat Completions, models, health and metrics, on FastAPI.

Owns: routes, authentication, the body-size limit, request admission (queue limit, visual-token
and context checks after preprocessing), streaming with Server-Sent Events, cancelling a request
whose client went away, and turning every failure into an OpenAI-style error body.
Does not own: validation of fields (protocol.py), preprocessing (processing/), generation (the
engine, driven by async_engine.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..engine import Qwen2VL, StepOutput
from ..errors import InvalidInputError
from .async_engine import AsyncEngine, Done, Failed
from .errors import ApiError, from_input_error
from .metrics import Metrics
from .protocol import ChatRequest, ResponseBuilder, logprobs_body, parse_chat_request
from .settings import ServerSettings

log = logging.getLogger("qwen2vl.server")


def create_app(llm: Qwen2VL, settings: ServerSettings) -> FastAPI:
    metrics = Metrics()
    engine = AsyncEngine(llm.engine, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="qwen2vl", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(ApiError(500, "internal server error", type="server_error").body(), status_code=500)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        metrics.count("http_requests_total", path=request.url.path, status=str(response.status_code))
        return response

    def authenticate(request: Request) -> None:
        if settings.api_key is None:
            return
        if request.headers.get("authorization", "") != f"Bearer {settings.api_key}":
            raise ApiError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                           type="authentication_error", code="invalid_api_key")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authenticate(request)
        return {"object": "list", "data": [{"id": settings.served_model_name, "object": "model", "created": 0,
                                            "owned_by": "qwen2vl", "max_model_len": llm.engine.max_model_len}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authenticate(request)
        started = time.perf_counter()
        chat = parse_chat_request(await read_json(request, settings.max_body_bytes), settings)
        if engine.in_flight >= settings.max_queued_requests:
            raise ApiError(429, f"too many requests in flight ({settings.max_queued_requests}); retry later",
                           type="rate_limit_error", code="queue_full")
        inputs = await run_in_threadpool(prepare, llm, chat, settings)
        request_id, events = engine.submit(inputs, chat.params)
        builder = ResponseBuilder(request_id, settings.served_model_name)
        if chat.stream:
            return StreamingResponse(stream(chat, request_id, events, builder, started),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            done = await collect(events)
        finally:
            engine.abort(request_id)  # a no-op once finished; cancels if the handler was cancelled
        record(done, started)
        choices = [{"index": seq.index, "message": {"role": "assistant", "content": seq.text.text},
                    "logprobs": logprobs_body(list(zip(seq.output_ids, seq.logprobs)), llm.processor.decode)
                    if seq.params.logprobs is not None else None,
                    "finish_reason": seq.finish_reason} for seq in done.sequences]
        return builder.completion(choices, done.usage)

    async def stream(chat: ChatRequest, request_id: str, events: asyncio.Queue, builder: ResponseBuilder,
                     started: float) -> AsyncIterator[str]:
        finished = False
        first_token = True
        try:
            yield sse(builder.chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                      "finish_reason": None} for i in range(chat.params.n)]))
            while True:
                event = await events.get()
                if isinstance(event, Failed):
                    yield sse(ApiError(500, event.message, type="server_error").body())
                    break
                if isinstance(event, Done):
                    record(event, started)
                    if chat.include_usage:
                        yield sse(builder.chunk([], event.usage))
                    yield "data: [DONE]\n\n"
                    finished = True
                    break
                if first_token:
                    metrics.observe("time_to_first_token_seconds", time.perf_counter() - started)
                    first_token = False
                choice = chunk_choice(event, chat)
                if choice is not None:
                    yield sse(builder.chunk([choice]))
        finally:
            if not finished:
                engine.abort(request_id)

    def chunk_choice(out: StepOutput, chat: ChatRequest) -> dict[str, Any] | None:
        wants_logprobs = chat.params.logprobs is not None and out.logprob is not None and out.finish_reason != "stop"
        if not out.delta and not out.finished and not wants_logprobs:
            return None
        return {"index": out.index, "delta": {"content": out.delta} if out.delta else {},
                "logprobs": logprobs_body([(out.token_id, out.logprob)], llm.processor.decode) if wants_logprobs else None,
                "finish_reason": out.finish_reason}

    def record(done: Done, started: float) -> None:
        metrics.count("prompt_tokens_total", done.usage.prompt_tokens)
        metrics.count("completion_tokens_total", done.usage.completion_tokens)
        metrics.count("visual_tokens_total", done.usage.visual_tokens)
        metrics.observe("request_latency_seconds", time.perf_counter() - started)

    return app


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {declared} bytes, above the limit of {limit}", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the request body is above the limit of {limit} bytes", code="body_too_large")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the request body is not valid JSON ({error})", code="invalid_json") from None


def prepare(llm: Qwen2VL, chat: ChatRequest, settings: ServerSettings) -> dict:
    """Preprocess in a worker thread and admit: visual tokens, context length, max_tokens."""
    engine = llm.engine
    try:
        inputs = engine.prepare(chat.messages, chat.media_defaults)
    except InvalidInputError as error:
        raise from_input_error(error) from None
    prompt = inputs["input_ids"].shape[1]
    visual = engine.visual_tokens(inputs["input_ids"][0].tolist())
    if visual > settings.max_visual_tokens:
        raise ApiError(400, f"the request has {visual} visual tokens, above the limit of {settings.max_visual_tokens}; "
                            f"lower max_pixels or the number of frames", param="messages", code="limit_exceeded")
    max_tokens = chat.params.max_tokens
    if max_tokens is not None and prompt + max_tokens > engine.max_model_len:
        raise ApiError(400, f"max_tokens ({max_tokens}) plus the prompt's {prompt} tokens ({visual} visual) exceed "
                            f"max_model_len ({engine.max_model_len})", param="max_tokens", code="context_length_exceeded")
    return inputs


async def collect(events: asyncio.Queue) -> Done:
    while True:
        event = await events.get()
        if isinstance(event, Failed):
            raise ApiError(500, event.message, type="server_error")
        if isinstance(event, Done):
            return event
