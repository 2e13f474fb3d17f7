"""Qwen2VL: the public Python entry point (from_pretrained, chat, generate, stream).

Owns: loading a checkpoint's model, processor and generation defaults from one name, and driving
the engine for callers who want finished answers or a stream of text. Does not own: any of the
machinery it drives (engine.py and below).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from ..finetune.checkpoint import load_trained_adapter
from ..hub import resolve_model_dir
from ..loading import load_model
from ..quant import quantize as quantize_model
from ..processing import MediaLimits, Processor
from .engine import Engine, Usage
from .sampling import GenerationDefaults, SamplingParams


@dataclass(frozen=True)
class Result:
    text: str
    token_ids: list[int]
    finish_reason: str
    usage: Usage
    logprobs: list[tuple[float, list[tuple[int, float]]]] | None = None


class Qwen2VL:
    def __init__(self, model, processor: Processor, defaults: GenerationDefaults, **engine_options: Any):
        self.model = model
        self.processor = processor
        self.engine = Engine(model, processor, defaults, **engine_options)

    @classmethod
    def from_pretrained(
        cls,
        name: str | Path,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device = "cpu",
        max_model_len: int | None = None,
        max_batch_size: int = 8,
        vision_cache_mb: float = 512,
        limits: MediaLimits | None = None,
        revision: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        lora: str | Path | None = None,
        quantize: str | None = None,
    ) -> "Qwen2VL":
        """Load a local checkpoint directory or Hub id. `progress(done, total)` reports weight bytes
        loaded; `lora` names an adapter directory (PEFT format) merged into the weights; `quantize="int8"`
        runs the projections in int8, `"int4"` the decoder's in 4 bits (CPU, after merging any adapter)."""
        directory = resolve_model_dir(name, revision)
        model = load_model(directory, dtype=dtype, device=device, progress=progress,
                           quantize=None if lora is not None else quantize)
        if lora is not None:
            load_trained_adapter(model, lora)
            if quantize:
                quantize_model(model, quantize)
        processor = Processor.from_pretrained(directory, limits=limits)
        defaults = GenerationDefaults.from_file(directory / "generation_config.json", model.config.eos_token_ids)
        return cls(model, processor, defaults, max_batch_size=max_batch_size, max_model_len=max_model_len,
                   vision_cache_bytes=int(vision_cache_mb * 2**20))

    def chat(self, messages: Sequence[Mapping[str, Any]], **sampling: Any) -> str:
        """The answer to one conversation."""
        return self.generate([messages], SamplingParams.from_kwargs(**sampling))[0].text

    def generate(
        self,
        conversations: Sequence[Sequence[Mapping[str, Any]]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        media_defaults: Mapping[str, Any] | None = None,
    ) -> list[Result]:
        """Generate for every conversation together; with n > 1, n results per conversation, in order."""
        params_list = _per_conversation(params, len(conversations))
        prepared = [self.engine.prepare(c, media_defaults) for c in conversations]  # fail before any compute
        ids = [self.engine.add_request(inputs, p) for inputs, p in zip(prepared, params_list)]
        while any(not seq.finished for rid in ids for seq in self.engine.sequences[rid]):
            self.engine.step()
        results = []
        for rid in ids:
            usage = self.engine.usage(rid)
            for seq in self.engine.release(rid):
                logprobs = seq.logprobs if seq.params.logprobs is not None else None
                results.append(Result(seq.text.text, list(seq.output_ids), seq.finish_reason, usage, logprobs))
        return results

    def stream(self, messages: Sequence[Mapping[str, Any]], **sampling: Any) -> Iterator[str]:
        """Text deltas of one answer as they are generated."""
        params = SamplingParams.from_kwargs(**sampling)
        if params.n != 1:
            raise ValueError("stream() produces one answer; use generate() for n > 1")
        rid = self.engine.add_request(self.engine.prepare(messages), params)
        with contextlib.closing(self.engine.follow(rid)) as outputs:  # closing early aborts the request
            for out in outputs:
                if out.delta:
                    yield out.delta
        self.engine.release(rid)


def _per_conversation(params: SamplingParams | Sequence[SamplingParams] | None, count: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * count
    if isinstance(params, SamplingParams):
        return [params] * count
    if len(params) != count:
        raise ValueError(f"{len(params)} sampling parameter sets for {count} conversations")
    return list(params)
