"""Bad input: every failure is a typed, one-line error naming the item, and the next request still works."""

from __future__ import annotations

import base64
import http.server
import struct
import threading
import time
import zlib

import numpy as np
import pytest

from conftest import COMMON
from media_factory import write_image, write_video
from qwen2vl.errors import (InvalidInputError, LimitExceededError, MediaDecodeError, Qwen2VLError,
                            SourceNotAllowedError)
from qwen2vl.processing import MediaLimits, Processor


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    png = write_image(root, "good.png", 60, 80)
    data = png.read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("this is not an image")
    video = write_video(root / "clip.mp4", 3, 64, 48, 10)
    raw = bytearray(video.read_bytes())
    box = raw.find(b"mdat") - 4
    size = struct.unpack(">I", raw[box:box + 4])[0]
    raw[box + 8:box + size] = bytes(size - 8)  # keep the container's index, zero every frame
    (root / "no_frames.mp4").write_bytes(bytes(raw))
    return {"root": root, "png": png, "video": video, "truncated": root / "truncated.png",
            "text": root / "notes.txt", "no_frames": root / "no_frames.mp4"}


def processor(**limits) -> Processor:
    return Processor.from_pretrained(COMMON, limits=MediaLimits(**limits))


def image_conversation(source, **options):
    return [{"role": "user", "content": [{"type": "image", "image": source, **options}, {"type": "text", "text": "?"}]}]


def video_conversation(source, **options):
    return [{"role": "user", "content": [{"type": "video", "video": source, **options}]}]


def expect_error(proc, conversation, error_type, message):
    with pytest.raises(error_type, match=message) as error:
        proc(conversation)
    assert "\n" not in str(error.value)
    assert isinstance(error.value, Qwen2VLError)
    return error.value


def still_works(proc, files):
    out = proc(image_conversation(str(files["png"])))
    assert out["image_grid_thw"].tolist() == [[1, 4, 6]]


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height: enough to trip a pixel limit without the pixels."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_missing_file(files):
    proc = processor()
    expect_error(proc, image_conversation(str(files["root"] / "absent.png")), MediaDecodeError, "image 1: no such file")
    still_works(proc, files)


def test_truncated_png(files):
    proc = processor()
    expect_error(proc, image_conversation(str(files["truncated"])), MediaDecodeError, "image 1: unreadable or truncated")
    still_works(proc, files)


def test_file_that_is_not_an_image(files):
    proc = processor()
    expect_error(proc, image_conversation(str(files["text"])), MediaDecodeError, "image 1: not an image")
    still_works(proc, files)


def test_raw_bytes_that_are_not_an_image(files):
    proc = processor()
    expect_error(proc, image_conversation(b"\x00\x01garbage"), MediaDecodeError, "image 1: not an image")
    still_works(proc, files)


def test_unsupported_url_scheme(files):
    proc = processor()
    expect_error(proc, image_conversation("ftp://example.com/a.png"), InvalidInputError, "unsupported URL scheme 'ftp:'")
    still_works(proc, files)


def test_bad_base64(files):
    proc = processor()
    expect_error(proc, image_conversation("data:image/png;base64,@@not*base64@@"), MediaDecodeError, "not valid base64")
    still_works(proc, files)


def test_data_uri_that_is_not_an_image(files):
    proc = processor()
    uri = "data:text/plain;base64," + base64.b64encode(b"hello").decode()
    expect_error(proc, image_conversation(uri), InvalidInputError, "media type 'text/plain', not an image")
    still_works(proc, files)


def test_aspect_ratio_above_200(files):
    proc = processor()
    thin = np.zeros((4, 1000, 3), dtype=np.uint8)
    expect_error(proc, image_conversation(thin), InvalidInputError, "image 1: aspect ratio 250.0 is above 200")
    still_works(proc, files)


def test_decompression_bomb_is_refused_before_decoding(files):
    proc = processor()
    expect_error(proc, image_conversation(huge_png_header(20000, 20000)), LimitExceededError,
                 "image 1: .*above the limit")
    still_works(proc, files)


def test_item_bytes_limit(files):
    proc = processor(max_item_bytes=1000)
    expect_error(proc, image_conversation(str(files["png"])), LimitExceededError, "bytes is above the limit of 1000")
    proc = processor()
    still_works(proc, files)


def test_numpy_image_must_be_uint8(files):
    proc = processor()
    expect_error(proc, image_conversation(np.zeros((30, 30, 3), dtype=np.float32)), InvalidInputError, "must be uint8")
    still_works(proc, files)


def test_too_many_images(files):
    proc = processor(max_images=2)
    conversation = [{"role": "user", "content": [{"type": "image", "image": str(files["png"])}] * 3}]
    expect_error(proc, conversation, LimitExceededError, "3 images in one conversation is above the limit of 2")
    still_works(proc, files)


def test_too_many_videos(files):
    proc = processor(max_videos=1)
    conversation = [{"role": "user", "content": [{"type": "video", "video": str(files["video"])}] * 2}]
    expect_error(proc, conversation, LimitExceededError, "2 videos in one conversation is above the limit of 1")
    still_works(proc, files)


def test_video_without_decodable_frames(files):
    proc = processor()
    expect_error(proc, video_conversation(str(files["no_frames"])), MediaDecodeError, "video 1: .*decod")
    still_works(proc, files)


def test_bytes_that_are_not_a_video(files):
    proc = processor()
    expect_error(proc, video_conversation(b"not a video at all"), MediaDecodeError, "video 1: not a readable video")
    still_works(proc, files)


def test_video_frame_limit(files):
    proc = processor(max_video_frames=4)
    expect_error(proc, video_conversation(str(files["video"]), nframes=8), LimitExceededError,
                 "8 sampled frames is above the limit of 4")
    still_works(proc, files)


def test_video_duration_limit(files):
    proc = processor(max_video_seconds=1.5)
    expect_error(proc, video_conversation(str(files["video"])), LimitExceededError, "3.0 s is above the limit of 1.5 s")
    still_works(proc, files)


def test_fps_and_nframes_together_are_rejected(files):
    proc = processor()
    expect_error(proc, video_conversation(str(files["video"]), fps=1, nframes=4), InvalidInputError,
                 "either 'fps' or 'nframes'")
    still_works(proc, files)


def test_start_after_end_selects_no_frames(files):
    proc = processor()
    expect_error(proc, video_conversation(str(files["video"]), video_start=2.5, video_end=1.0), InvalidInputError,
                 "select no frames")
    still_works(proc, files)


def test_remote_urls_can_be_disabled(files):
    proc = processor(allow_urls=False)
    expect_error(proc, image_conversation("https://example.com/cat.png"), SourceNotAllowedError,
                 "image 1: remote URLs are disabled")
    still_works(processor(), files)


def test_local_files_can_be_disabled(files):
    proc = processor(allow_local_files=False)
    expect_error(proc, image_conversation(str(files["png"])), SourceNotAllowedError, "local file paths are disabled")
    data_uri = "data:image/png;base64," + base64.b64encode(files["png"].read_bytes()).decode()
    assert proc(image_conversation(data_uri))["image_grid_thw"].tolist() == [[1, 4, 6]]


def test_local_paths_outside_the_allowed_directory_are_refused(files, tmp_path):
    proc = Processor.from_pretrained(COMMON, limits=MediaLimits.untrusted(local_media_root=tmp_path))
    expect_error(proc, image_conversation(str(files["png"])), SourceNotAllowedError, "outside the allowed media directory")
    inside = write_image(tmp_path, "ok.png", 60, 80)
    assert proc(image_conversation(f"file://{inside}"))["image_grid_thw"].tolist() == [[1, 4, 6]]


def test_malformed_messages_are_rejected(files):
    proc = processor()
    expect_error(proc, [{"content": "no role"}], InvalidInputError, "message 1: 'role' must be a non-empty string")
    expect_error(proc, [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}], InvalidInputError,
                 "message 1 part 1: unsupported content part type 'audio'")
    expect_error(proc, [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], InvalidInputError,
                 "'image_url' needs a 'url' string")
    still_works(proc, files)


class _Server(http.server.BaseHTTPRequestHandler):
    body = b""
    delay = 0.0

    def do_GET(self):  # noqa: N802 - the stdlib's name
        time.sleep(self.delay)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server(files):
    def start(body: bytes, delay: float = 0.0) -> str:
        handler = type("Handler", (_Server,), {"body": body, "delay": delay})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/image.png"

    servers: list = []
    yield start
    for server in servers:
        server.shutdown()


def test_url_image_is_fetched(files, http_server):
    url = http_server(files["png"].read_bytes())
    assert processor()(image_conversation(url))["image_grid_thw"].tolist() == [[1, 4, 6]]


def test_url_body_above_the_size_cap(files, http_server):
    url = http_server(b"\0" * 5000)
    proc = processor(max_item_bytes=4000)
    expect_error(proc, image_conversation(url), LimitExceededError, "above the limit of 4000 bytes")
    still_works(processor(), files)


def test_url_fetch_timeout(files, http_server):
    url = http_server(files["png"].read_bytes(), delay=3.0)
    proc = processor(url_timeout_seconds=0.5)
    expect_error(proc, image_conversation(url), MediaDecodeError, "could not fetch .*timed out")
    still_works(proc, files)


def test_every_media_error_is_an_invalid_input_error():
    for error in (MediaDecodeError, LimitExceededError, SourceNotAllowedError):
        assert issubclass(error, InvalidInputError)
