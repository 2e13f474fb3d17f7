"""Running the app: HTTP in a background thread, the engine loop in the main thread.

Owns: uvicorn's server thread and the process's signal handling. On SIGTERM or SIGINT the HTTP
server stops accepting, lets in-flight requests finish for up to the graceful period (the engine
keeps stepping meanwhile), cancels the rest, and the process exits 0. The engine loop runs in the
main thread, the one that loaded the model (see async_engine.py for why).
"""

from __future__ import annotations

import signal
import threading

import uvicorn
from fastapi import FastAPI


def serve(app: FastAPI, host: str, port: int, graceful_seconds: float) -> None:
    engine = app.state.engine
    engine.external = True
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=graceful_seconds)
    server = uvicorn.Server(config)
    http = threading.Thread(target=server.run, name="qwen2vl-http")

    def request_exit(*_):
        server.force_exit = server.should_exit  # a second signal: stop waiting for requests
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, request_exit)
    http.start()
    engine.run(until=lambda: not http.is_alive())
    http.join()
