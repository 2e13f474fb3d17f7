"""The engine: requests in, token and text deltas out, one scheduling step at a time.

Owns: validating and preparing requests (processor, context length, sampling defaults), creating
their sequences, and each step's loop: prefill newly admitted requests, decode the running ones
in one batch, sample, detokenize, and decide who finished (stop token, stop string, max_tokens,
context length). Requests may be added and aborted between steps (continuous batching).
Does not own: tensors (runner.py), slots (scheduler.py) or the public API (llm.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence as Seq

from ..errors import InvalidInputError
from ..model import Qwen2VLModel
from ..processing import Processor
from .detokenizer import IncrementalText
from .runner import ModelRunner
from .sampling import GenerationDefaults, SamplingParams
from .scheduler import Scheduler
from .sequence import Sequence


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    visual_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class StepOutput:
    """What one step did for one sequence."""

    request_id: str
    index: int
    token_id: int
    delta: str
    finished: bool
    finish_reason: str | None
    logprob: tuple[float, list[tuple[int, float]]] | None


class Engine:
    def __init__(
        self,
        model: Qwen2VLModel,
        processor: Processor,
        defaults: GenerationDefaults,
        max_batch_size: int = 8,
        max_model_len: int | None = None,
        vision_cache_bytes: int = 512 * 2**20,
    ):
        self.processor = processor
        self.defaults = defaults
        self.max_model_len = max_model_len or model.config.text.max_position_embeddings
        self.runner = ModelRunner(model, max_batch_size, self.max_model_len, vision_cache_bytes)
        self.scheduler = Scheduler(max_batch_size)
        self.sequences: dict[str, list[Sequence]] = {}
        self._ids = itertools.count()

    def prepare(self, conversation: Any, media_defaults: Mapping[str, Any] | None = None) -> dict:
        """The processor's tensors for one conversation, checked against max_model_len before any compute."""
        inputs = self.processor(conversation, media_defaults=media_defaults)
        self.check_length(inputs)
        return inputs

    def check_length(self, inputs: Mapping[str, Any]) -> None:
        ids = inputs["input_ids"]
        total = ids.shape[1]
        if total >= self.max_model_len:
            visual = self.visual_tokens(ids[0].tolist())
            raise InvalidInputError(
                f"the prompt is {total} tokens ({visual} visual) but max_model_len is {self.max_model_len}; "
                f"it must leave room for at least one new token"
            )

    def visual_tokens(self, ids: Seq[int]) -> int:
        pads = (self.processor.image_token_id, self.processor.video_token_id)
        return sum(1 for token in ids if token in pads)

    def add_request(self, inputs: Mapping[str, Any], params: SamplingParams, request_id: str | None = None) -> str:
        """Queue prepared inputs (from `prepare`) for generation; returns the request id."""
        if inputs["input_ids"].shape[0] != 1:
            raise InvalidInputError("add_request takes one conversation at a time")
        self.check_length(inputs)
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self.sequences:
            raise InvalidInputError(f"request id {request_id!r} is already in use")
        params = params.with_defaults(self.defaults)
        prompt = inputs["input_ids"][0].tolist()
        group = [
            Sequence(request_id, i, prompt, self.visual_tokens(prompt), params,
                     IncrementalText(self.processor.decode, params.stop), inputs=inputs if i == 0 else None)
            for i in range(params.n)
        ]
        self.sequences[request_id] = group
        self.scheduler.add(group)
        return request_id

    def step(self) -> list[StepOutput]:
        admitted, decoding = self.scheduler.schedule()
        outputs = []
        for group in admitted:
            logits = self.runner.prefill(group[0])
            for seq in group[1:]:
                self.runner.share_prompt(group[0], seq)
            outputs += [self._advance(seq, logits) for seq in group]
        if decoding:
            logits = self.runner.decode(decoding)
            outputs += [self._advance(seq, row) for seq, row in zip(decoding, logits)]
        return outputs

    def follow(self, request_id: str) -> Iterator[StepOutput]:
        """Step until every sequence of `request_id` has finished, yielding that request's outputs
        (other requests advance too). Abandoning the iterator aborts the request; a finished request
        stays until `release`."""
        finished = False
        try:
            while not finished:
                for out in self.step():
                    if out.request_id == request_id:
                        yield out
                finished = all(seq.finished for seq in self.sequences[request_id])
        finally:
            if not finished:
                self.abort(request_id)

    def _advance(self, seq: Sequence, logits) -> StepOutput:
        token, logprob = self.runner.sample(seq, logits)
        seq.output_ids.append(token)
        if logprob is not None:
            seq.logprobs.append(logprob)
        reason = None
        delta = ""
        if token in seq.params.stop_token_ids:
            reason = "stop"
        else:
            delta = seq.text.push(token)
            if seq.text.stopped:
                reason = "stop"
            elif seq.params.max_tokens is not None and len(seq.output_ids) >= seq.params.max_tokens:
                reason = "length"
            elif seq.length >= self.max_model_len:
                reason = "length"
        if reason is not None:
            delta += seq.text.finish()
            seq.finish(reason)
            self.scheduler.release(seq)
        return StepOutput(seq.request_id, seq.index, token, delta, reason is not None, reason, logprob)

    def abort(self, request_id: str) -> None:
        for seq in self.scheduler.abort(request_id):
            seq.finish("abort")
        self.sequences.pop(request_id, None)

    def release(self, request_id: str) -> list[Sequence]:
        """Forget a finished request and return its sequences."""
        return self.sequences.pop(request_id)

    def usage(self, request_id: str) -> Usage:
        group = self.sequences[request_id]
        return Usage(len(group[0].prompt_ids), sum(len(s.output_ids) for s in group), group[0].visual_tokens)

    def has_unfinished(self) -> bool:
        return self.scheduler.busy
