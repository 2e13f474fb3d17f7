"""The OpenAI-compatible server, run as a subprocess and driven with the official openai client."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx2 as httpx  # the HTTP client the openai package ships with
import openai
import pytest

from test_processing_errors import huge_png_header
from media_factory import write_image, write_video

KEY = "test-key"
MODEL = "tiny-qwen2-vl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    allowed = tmp_path_factory.mktemp("allowed")
    outside = tmp_path_factory.mktemp("outside")
    images = [write_image(allowed, f"img{i}.png", 100 + 10 * i, 140, seed=i) for i in range(16)]
    png = images[0].read_bytes()
    return {"allowed": allowed, "images": images, "png": png, "outside": write_image(outside, "x.png", 50, 50),
            "video": write_video(allowed / "clip.mp4", 2, 112, 84, 10)}


@pytest.fixture(scope="module")
def server(tiny_checkpoint, media):
    port = free_port()
    command = [sys.executable, "-m", "qwen2vl.cli", "serve", str(tiny_checkpoint), "--port", str(port),
               "--api-key", KEY, "--served-model-name", MODEL, "--max-model-len", "1024", "--max-batch-size", "16",
               "--max-images", "3", "--max-body-bytes", "3000000", "--allowed-local-media-path", str(media["allowed"])]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("server did not start: " + (process.stdout.read() if process.stdout else ""))
    yield base, process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0, timeout=120)


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


def ask(*parts, text="What is this?"):
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def image(data: bytes, **extra):
    return {"type": "image_url", "image_url": {"url": data_uri(data)}, **extra}


def complete(client, messages, **kwargs):
    kwargs.setdefault("max_tokens", 8)
    kwargs.setdefault("temperature", 0)
    return client.chat.completions.create(model=MODEL, messages=messages, **kwargs)


def streamed_text(client, messages, **kwargs):
    kwargs.setdefault("max_tokens", 8)
    kwargs.setdefault("temperature", 0)
    chunks = client.chat.completions.create(model=MODEL, messages=messages, stream=True, **kwargs)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_streamed_answer_equals_the_non_streamed_one(client, media):
    messages = ask(image(media["png"]))
    answer = complete(client, messages)
    assert answer.choices[0].message.content
    assert streamed_text(client, messages) == answer.choices[0].message.content


def test_stream_reports_usage_when_asked(client, media):
    chunks = list(client.chat.completions.create(model=MODEL, messages=ask(image(media["png"])), max_tokens=4,
                                                 temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].usage.model_extra["visual_tokens"] > 0


def test_usage_counts_visual_tokens_of_two_images(client, media):
    one = complete(client, ask(image(media["png"])))
    two = complete(client, ask(image(media["png"]), image(media["images"][1].read_bytes())))
    assert two.usage.model_extra["visual_tokens"] > one.usage.model_extra["visual_tokens"] > 0


def test_video_by_data_uri(client, media):
    video = {"type": "video_url", "video_url": {"url": data_uri(media["video"].read_bytes(), "video/mp4")}}
    answer = complete(client, ask(video))
    assert answer.usage.model_extra["visual_tokens"] > 0


def test_per_request_mm_processor_kwargs_change_the_visual_token_count(client, media):
    big = write_image(media["allowed"], "big.png", 600, 800).read_bytes()
    default = complete(client, ask(image(big)))
    small = complete(client, ask(image(big)), extra_body={"mm_processor_kwargs": {"max_pixels": 50_000}})
    per_item = complete(client, ask(image(big, max_pixels=50_000)))
    assert small.usage.model_extra["visual_tokens"] < default.usage.model_extra["visual_tokens"]
    assert per_item.usage.model_extra["visual_tokens"] == small.usage.model_extra["visual_tokens"]


def test_local_file_inside_the_allowed_directory(client, media):
    answer = complete(client, ask({"type": "image_url", "image_url": {"url": f"file://{media['images'][2]}"}}))
    assert answer.usage.model_extra["visual_tokens"] > 0


def test_n_2_gives_two_choices(client):
    answer = complete(client, ask(text="Tell me a story."), n=2, temperature=1.0, seed=5,
                      extra_body={"top_k": -1}, top_p=1.0)
    assert [c.index for c in answer.choices] == [0, 1]
    assert answer.choices[0].message.content != answer.choices[1].message.content


def test_stop_strings_end_the_answer_and_are_stripped(client):
    full = complete(client, ask(text="Go on."), max_tokens=30).choices[0].message.content
    stop = full[10:14]
    stopped = complete(client, ask(text="Go on."), max_tokens=30, stop=[stop]).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.message.content == full[: full.index(stop)]


def test_logprobs(client):
    answer = complete(client, ask(text="Hi"), max_tokens=3, logprobs=True, top_logprobs=2)
    content = answer.choices[0].logprobs.content
    assert len(content) == 3 and all(len(item.top_logprobs) == 2 for item in content)


def test_wrong_api_key_is_rejected(server):
    bad = openai.OpenAI(base_url=f"{server[0]}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as error:
        bad.chat.completions.create(model=MODEL, messages=ask(text="Hi"), max_tokens=2)
    assert error.value.status_code == 401 and error.value.body["code"] == "invalid_api_key"


def post(server, body, **headers):
    return httpx.post(f"{server[0]}/v1/chat/completions", content=body,
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **headers},
                      timeout=60)


def assert_error(response, status, code=None, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param


def assert_still_serving(client, media):
    assert complete(client, ask(image(media["png"])), max_tokens=2).choices[0].finish_reason == "length"


def bad_request(client, messages, **kwargs):
    with pytest.raises(openai.APIStatusError) as error:
        complete(client, messages, **kwargs)
    return error.value


def test_invalid_json(server, client, media):
    assert_error(post(server, b"{not json"), 400, "invalid_json")
    assert_still_serving(client, media)


def test_unknown_model(client, media):
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="gpt-4o", messages=ask(text="Hi"))
    assert error.value.body["code"] == "model_not_found"
    assert_still_serving(client, media)


def test_missing_messages(server, client, media):
    assert_error(post(server, b'{"model": "%s"}' % MODEL.encode()), 400, "missing_required_parameter", "messages")
    assert_still_serving(client, media)


@pytest.mark.parametrize("url, code, message", [
    ("data:image/png;base64,%%%notbase64", "invalid_media", "not valid base64"),
    ("data:text/plain;base64,aGVsbG8=", "invalid_value", "not an image"),
    ("https://example.com/cat.png", "media_source_not_allowed", "remote URLs are disabled"),
])
def test_bad_image_urls(client, media, url, code, message):
    error = bad_request(client, ask({"type": "image_url", "image_url": {"url": url}}))
    assert error.status_code == 400 and error.body["code"] == code and message in error.body["message"]
    assert_still_serving(client, media)


def test_truncated_png(client, media):
    error = bad_request(client, ask(image(media["png"][: len(media["png"]) // 2])))
    assert error.status_code == 400 and error.body["code"] == "invalid_media"
    assert_still_serving(client, media)


def test_decompression_bomb(client, media):
    error = bad_request(client, ask(image(huge_png_header(20000, 20000))))
    assert error.status_code == 400 and error.body["code"] == "limit_exceeded"
    assert_still_serving(client, media)


def test_too_many_images(client, media):
    error = bad_request(client, ask(*[image(media["png"])] * 4))
    assert error.status_code == 400 and "4 images" in error.body["message"]
    assert_still_serving(client, media)


def test_local_path_outside_the_allowed_directory(client, media):
    error = bad_request(client, ask({"type": "image_url", "image_url": {"url": f"file://{media['outside']}"}}))
    assert error.status_code == 400 and error.body["code"] == "media_source_not_allowed"
    assert_still_serving(client, media)


def test_max_tokens_beyond_the_context(client, media):
    error = bad_request(client, ask(text="Hi"), max_tokens=1020)
    assert error.status_code == 400 and error.body["code"] == "context_length_exceeded"
    assert "max_model_len (1024)" in error.body["message"]
    assert_still_serving(client, media)


def test_oversized_body(server, client, media):
    assert_error(post(server, b"x" * 3_500_000), 413, "body_too_large")
    assert_still_serving(client, media)


def test_bad_sampling_value(client, media):
    error = bad_request(client, ask(text="Hi"), temperature=5)
    assert error.status_code == 400 and error.body["param"] == "temperature"
    assert_still_serving(client, media)


def test_sixteen_concurrent_streams_each_equal_their_solo_answer(client, media):
    conversations = [ask(image(path.read_bytes())) for path in media["images"]]
    solo = [complete(client, c, max_tokens=10).choices[0].message.content for c in conversations]
    results: list[str | None] = [None] * 16

    def run(i):
        results[i] = streamed_text(client, conversations[i], max_tokens=10)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert results == solo
    assert len(set(solo)) > 8  # different images, different answers


def running_requests(server) -> float:
    text = httpx.get(f"{server[0]}/metrics").text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith("qwen2vl_running_requests ")))


def test_a_client_dropping_its_stream_leaves_nothing_running(server, media):
    body = {"model": MODEL, "messages": ask(text="Talk for a long time."), "max_tokens": 900, "temperature": 0,
            "stream": True}
    with httpx.stream("POST", f"{server[0]}/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
    deadline = time.time() + 10
    while running_requests(server) and time.time() < deadline:
        time.sleep(0.1)
    assert running_requests(server) == 0


def test_sigterm_shuts_down_gracefully(server):
    process = server[1]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
