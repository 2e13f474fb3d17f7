"""Server decode throughput: one streamed request alone, then 8 at once, through the real server.

Starts `qwen2vl serve` on 127.0.0.1 with the random-weight 2B checkpoint (written once by
random_2b.py), sends one greedy streamed request and measures its decode rate (tokens after the
first, over the time after the first), then 8 concurrent requests with different prompts and
measures the aggregate decode rate over the window in which all 8 are decoding (from the last
first token to the first finish). Prints both and
their ratio.

    .venv-test/bin/python benchmarks/server_throughput.py [--tokens 32] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from random_2b import DEFAULT_DIR, ensure_random_2b


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_stream(port: int, prompt: str, tokens: int) -> list[float]:
    """Arrival times of each content chunk of one greedy stream.

    A plain http.client reader, not the openai client: on a 2-core machine the client's own CPU use
    would otherwise be measured as server slowness.
    """
    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
                       "temperature": 0, "stream": True})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    times = []
    for line in response:
        if line.startswith(b"data: {") and b'"content": "' in line:
            times.append(time.perf_counter())
    connection.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_DIR))
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    if args.model == str(DEFAULT_DIR):
        ensure_random_2b()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "qwen2vl.cli", "serve", args.model, "--port", str(port),
                               "--served-model-name", "bench", "--dtype", args.dtype, "--max-model-len", "2048",
                               "--max-batch-size", str(args.concurrency)], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        deadline = time.time() + 600
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(1)
        timed_stream(port, "Warm up.", 4)
        alone = timed_stream(port, "Describe a sunny day at the beach.", args.tokens)
        single = (len(alone) - 1) / (alone[-1] - alone[0])

        results: list[list[float]] = [[] for _ in range(args.concurrency)]
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(
            i, timed_stream(port, f"Request {i}: describe object number {i * 7}.", args.tokens)))
            for i in range(args.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        start = max(times[0] for times in results)  # from the moment every request has its first token
        end = min(times[-1] for times in results)  # to the moment the first one finishes: all 8 decoding
        tokens = sum(sum(1 for t in times if start < t <= end) for times in results)
        aggregate = tokens / (end - start)
        print("| decode | tokens/s |")
        print("|---|---|")
        print(f"| 1 request | {single:.2f} |")
        print(f"| {args.concurrency} concurrent requests (aggregate) | {aggregate:.2f} |")
        print(f"| ratio | {aggregate / single:.2f}x |")
        if os.environ.get("SHOW_METRICS"):
            print(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode())
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)


if __name__ == "__main__":
    main()
