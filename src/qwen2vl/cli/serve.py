"""`qwen2vl serve`: the OpenAI-compatible server, with its limits as flags.

Owns: turning flags into ServerSettings and MediaLimits, loading the model, and running uvicorn
with graceful shutdown (SIGTERM: stop accepting, let in-flight requests finish for a while, cancel
the rest, exit 0). Does not own: the server itself (server/).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import Qwen2VLError
from ..processing import MediaLimits
from .common import ProgressBar, add_model_arguments

EXAMPLES = """examples:
  qwen2vl serve Qwen/Qwen2-VL-2B-Instruct --port 8000
  qwen2vl serve ./model --api-key secret --served-model-name qwen2-vl --allow-remote-media
  qwen2vl serve ./model --allowed-local-media-path /data/images --max-images 4 --max-visual-tokens 4096

then, with the official client:
  from openai import OpenAI
  client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret")
  client.chat.completions.create(model="qwen2-vl", messages=[{"role": "user", "content": [
      {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
      {"type": "text", "text": "What is this?"}]}])
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="serve the OpenAI Chat Completions API",
                                   description="Serve the OpenAI Chat Completions API.", epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY'")
    parser.add_argument("--served-model-name", help="the model name clients send (default: the model argument)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="sequences decoded together")
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-body-bytes", type=int, default=32 * 2**20)
    limits.add_argument("--max-images", type=int, default=16, help="images per request")
    limits.add_argument("--max-videos", type=int, default=2, help="videos per request")
    limits.add_argument("--max-image-pixels", type=int, default=40_000_000, help="decoded pixels per image")
    limits.add_argument("--max-visual-tokens", type=int, default=16384, help="visual tokens per request")
    limits.add_argument("--max-video-frames", type=int, default=256, help="sampled frames per video")
    limits.add_argument("--max-tokens", type=int, default=4096, help="the largest max_tokens a request may ask")
    limits.add_argument("--max-queued-requests", type=int, default=64, help="requests in flight before 429")
    limits.add_argument("--allow-remote-media", action="store_true", help="fetch http(s) image and video URLs")
    limits.add_argument("--allowed-local-media-path", type=Path, help="serve local media files under this directory")
    limits.add_argument("--graceful-shutdown-seconds", type=float, default=30.0)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from ..server.app import create_app
        from ..server.run import serve
        from ..server.settings import ServerSettings
    except ImportError as error:
        raise Qwen2VLError(f"the server needs its extra: pip install 'qwen2vl[serve]' ({error})") from None
    from ..engine import Qwen2VL

    settings = ServerSettings(
        served_model_name=args.served_model_name or str(args.model), api_key=args.api_key,
        max_body_bytes=args.max_body_bytes, max_images=args.max_images, max_videos=args.max_videos,
        max_image_pixels=args.max_image_pixels, max_visual_tokens=args.max_visual_tokens,
        max_video_frames=args.max_video_frames, max_tokens=args.max_tokens,
        max_queued_requests=args.max_queued_requests, allow_remote_media=args.allow_remote_media,
        allowed_local_media_path=args.allowed_local_media_path, graceful_shutdown_seconds=args.graceful_shutdown_seconds,
    )
    root = None if args.allowed_local_media_path is None else args.allowed_local_media_path.resolve()
    limits = MediaLimits(max_item_bytes=args.max_body_bytes, max_image_pixels=args.max_image_pixels,
                         max_video_frames=args.max_video_frames, max_images=args.max_images,
                         max_videos=args.max_videos, allow_urls=args.allow_remote_media,
                         allow_local_files=root is not None, local_media_root=root)
    llm = Qwen2VL.from_pretrained(args.model, dtype=args.dtype, device=args.device, max_model_len=args.max_model_len,
                                  max_batch_size=args.max_batch_size, vision_cache_mb=args.vision_cache_mb,
                                  limits=limits, progress=ProgressBar(f"loading {args.model}"), lora=args.lora,
                                  quantize=args.quantize)
    print(f"serving {settings.served_model_name} on http://{args.host}:{args.port}/v1", flush=True)
    serve(create_app(llm, settings), args.host, args.port, args.graceful_shutdown_seconds)
    return 0
