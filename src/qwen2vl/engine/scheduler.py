"""Continuous batching: which sequences prefill and which decode at each step. Plain Python, no torch.

Owns: the waiting queue, the running set and the KV cache slots. A request's n samples are
admitted together (they share one prefill); new requests join between decode steps whenever
slots are free. Does not own: running the model (runner.py) or request state (sequence.py).
"""

from __future__ import annotations

import heapq
from collections import deque

from .sequence import Sequence, Status


class Scheduler:
    def __init__(self, slots: int):
        self.free_slots = list(range(slots))  # a heap: the lowest free slot first, so running slots stay one run
        self.waiting: deque[list[Sequence]] = deque()  # groups: the n samples of one request
        self.running: list[Sequence] = []

    def add(self, group: list[Sequence]) -> None:
        self.waiting.append(group)

    def schedule(self) -> tuple[list[list[Sequence]], list[Sequence]]:
        """(groups to prefill now, sequences to decode now). Admits waiting groups in arrival order."""
        decode = [seq for seq in self.running if seq.output_ids]
        admitted = []
        while self.waiting and len(self.waiting[0]) <= len(self.free_slots):
            group = self.waiting.popleft()
            for seq in group:
                seq.slot = heapq.heappop(self.free_slots)
                seq.status = Status.RUNNING
                self.running.append(seq)
            admitted.append(group)
        return admitted, decode

    def release(self, seq: Sequence) -> None:
        """Return a finished sequence's slot."""
        if seq in self.running:
            self.running.remove(seq)
            heapq.heappush(self.free_slots, seq.slot)
        seq.slot = None

    def abort(self, request_id: str) -> list[Sequence]:
        """Remove every sequence of a request, waiting or running; returns them."""
        removed = [seq for seq in self.running if seq.request_id == request_id]
        for seq in removed:
            self.release(seq)
        for group in [g for g in self.waiting if g[0].request_id == request_id]:
            self.waiting.remove(group)
            removed += group
        return removed

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)
