"""One engine loop; HTTP handlers talk to it through thread-safe queues.

The loop runs either in a thread of its own (`start`) or in the caller's thread (`run`): `qwen2vl
serve` runs it in the main thread, where the model was loaded, because torch's OpenMP pool is
markedly slower (a batched decode step took 0.60 s instead of 0.47 s on the 2B model here) when
a thread other than the first one to use it does the work.

Owns: driving `Engine.step()`, the hand-off of new and aborted requests between
steps (so an abort frees its slot before the next decode step), and delivering each request's
step outputs and final result to the asyncio queue of the handler that asked. HTTP handlers never
run the model themselves. Does not own: the HTTP protocol (app.py) or generation (engine/).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..engine import Engine, SamplingParams, StepOutput, Usage
from ..engine.sequence import Sequence
from ..errors import Qwen2VLError
from .metrics import Metrics

log = logging.getLogger("qwen2vl.server")


@dataclass(frozen=True)
class Done:
    usage: Usage
    sequences: list[Sequence]


@dataclass(frozen=True)
class Failed:
    message: str


class AsyncEngine:
    def __init__(self, engine: Engine, metrics: Metrics):
        self.engine = engine
        self.metrics = metrics
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Event()
        self._stopping = False
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self.external = False  # True when the caller drives the loop with `run`

    @property
    def in_flight(self) -> int:
        return len(self._sinks)

    def start(self) -> None:
        """Run the loop in a thread of its own, unless the caller drives it."""
        if not self.external:
            self._thread = threading.Thread(target=self.run, name="qwen2vl-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Cancel whatever is still running and end the loop."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, inputs: dict, params: SamplingParams) -> tuple[str, asyncio.Queue]:
        """Queue a prepared request; its StepOutputs, then a Done (or a Failed), arrive on the returned queue."""
        request_id = f"{next(self._ids)}"
        events: asyncio.Queue = asyncio.Queue()
        self._sinks[request_id] = (asyncio.get_running_loop(), events)
        self._commands.put(("add", request_id, inputs, params))
        self._wake.set()
        return request_id, events

    def abort(self, request_id: str) -> None:
        if self._sinks.pop(request_id, None) is not None:
            self._commands.put(("abort", request_id))
            self._wake.set()

    def _deliver(self, request_id: str, event: Any, last: bool = False) -> None:
        sink = self._sinks.pop(request_id, None) if last else self._sinks.get(request_id)
        if sink is not None:
            loop, events = sink
            loop.call_soon_threadsafe(events.put_nowait, event)

    def run(self, until: Callable[[], bool] = lambda: False) -> None:
        """The loop: serve requests until `stop()` is called or `until()` turns true."""
        while True:
            self._apply_commands()
            if self._stopping or until():
                for request_id in list(self.engine.sequences):
                    self.engine.abort(request_id)
                    self._deliver(request_id, Failed("the server is shutting down"), last=True)
                return
            self._update_gauges()
            if not self.engine.has_unfinished():
                self._wake.wait(0.1)
                self._wake.clear()
                continue
            try:
                started = time.perf_counter()
                outputs = self.engine.step()
                self.metrics.observe("engine_step_seconds", time.perf_counter() - started)
            except Exception:  # a bug must not take the server down: fail what was running, keep serving
                log.exception("engine step failed")
                for request_id in list(self.engine.sequences):
                    self.engine.abort(request_id)
                    self._deliver(request_id, Failed("internal error while generating"), last=True)
                continue
            self._publish(outputs)

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                _, request_id, inputs, params = command
                if request_id not in self._sinks:  # aborted before it started
                    continue
                try:
                    self.engine.add_request(inputs, params, request_id)
                except Qwen2VLError as error:
                    self._deliver(request_id, Failed(str(error)), last=True)
            else:
                self.engine.abort(command[1])

    def _publish(self, outputs: list[StepOutput]) -> None:
        for out in outputs:
            self._deliver(out.request_id, out)
        for request_id in {out.request_id for out in outputs if out.finished}:
            group = self.engine.sequences.get(request_id)
            if group is not None and all(seq.finished for seq in group):
                usage = self.engine.usage(request_id)
                self._deliver(request_id, Done(usage, self.engine.release(request_id)), last=True)

    def _update_gauges(self) -> None:
        scheduler = self.engine.scheduler
        self.metrics.gauge("queue_depth", sum(len(group) for group in scheduler.waiting))
        self.metrics.gauge("running_sequences", len(scheduler.running))
        self.metrics.gauge("running_requests", len({seq.request_id for seq in scheduler.running}))
