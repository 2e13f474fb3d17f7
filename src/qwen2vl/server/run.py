"""Running the app under uvicorn with a graceful shutdown that exits 0.

Owns: the uvicorn server and its signal handling: on SIGTERM or SIGINT it stops accepting, lets
in-flight requests finish for up to the graceful period, cancels the rest, and returns (uvicorn's
default re-raises the signal afterwards, which would end the process with -15).
"""

from __future__ import annotations

import contextlib
import signal

import uvicorn
from fastapi import FastAPI


class GracefulServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(app: FastAPI, host: str, port: int, graceful_seconds: float) -> None:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=graceful_seconds)
    GracefulServer(config).run()
