"""Request state: one Sequence per sample being generated. Plain Python, no torch.

Owns: a sequence's prompt and output token ids, its M-RoPE `rope_delta` (set at prefill; decode
positions are `length - 1 + rope_delta`), its cache slot, status, finish reason, text and
logprobs. The prepared model inputs ride along as an opaque object for the runner.
Does not own: scheduling (scheduler.py) or tensors (runner.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .detokenizer import IncrementalText
from .sampling import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Sequence:
    request_id: str
    index: int  # which of the request's n samples
    prompt_ids: list[int]
    visual_tokens: int
    params: SamplingParams
    text: IncrementalText
    inputs: Any = None  # the processor's tensors for this prompt (runner domain)
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list)
    rope_delta: int | None = None
    slot: int | None = None
    status: Status = Status.WAITING
    finish_reason: str | None = None
    generator: Any = None  # the seeded torch.Generator of a sampled sequence (runner domain)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    def finish(self, reason: str) -> None:
        self.status = Status.FINISHED
        self.finish_reason = reason
        self.inputs = None
