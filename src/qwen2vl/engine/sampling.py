"""Sampling: the per-request parameters and turning a row of logits into the next token.

Owns: `SamplingParams` (OpenAI/vLLM semantics, defaults filled from generation_config.json),
the logits processors (repetition, presence and frequency penalties, temperature, top-k, top-p,
min-p) and seeded sampling. Does not own: stopping on strings (sequence.py) or batching.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..errors import InvalidInputError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. `None` means "the checkpoint's generation_config.json default"."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float = 0.0
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] | None = None
    logprobs: int | None = None
    """Return the chosen token's log-probability and this many top alternatives (0 = chosen only)."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if self.stop_token_ids is not None:
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        _check(self.max_tokens is None or self.max_tokens >= 1, "max_tokens must be at least 1")
        _check(self.temperature is None or self.temperature >= 0, "temperature must be >= 0")
        _check(self.top_p is None or 0 < self.top_p <= 1, "top_p must be in (0, 1]")
        _check(self.top_k is None or self.top_k == -1 or self.top_k >= 1, "top_k must be -1 (off) or >= 1")
        _check(0 <= self.min_p <= 1, "min_p must be in [0, 1]")
        _check(self.repetition_penalty is None or self.repetition_penalty > 0, "repetition_penalty must be > 0")
        _check(-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]")
        _check(-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]")
        _check(self.n >= 1, "n must be at least 1")
        _check(self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs must be in [0, 20]")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "SamplingParams":
        known = {f.name for f in fields(cls)}
        unknown = set(kwargs) - known
        if unknown:
            raise InvalidInputError(f"unknown sampling option(s): {', '.join(sorted(unknown))}")
        return cls(**kwargs)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    def with_defaults(self, defaults: "GenerationDefaults") -> "SamplingParams":
        return replace(
            self,
            temperature=defaults.temperature if self.temperature is None else self.temperature,
            top_p=defaults.top_p if self.top_p is None else self.top_p,
            top_k=defaults.top_k if self.top_k is None else self.top_k,
            repetition_penalty=defaults.repetition_penalty if self.repetition_penalty is None else self.repetition_penalty,
            stop_token_ids=defaults.eos_token_ids if self.stop_token_ids is None else self.stop_token_ids,
        )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidInputError(message)


@dataclass(frozen=True)
class GenerationDefaults:
    """A checkpoint's generation_config.json (greedy when absent)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    @classmethod
    def from_file(cls, path: Path, fallback_eos: Sequence[int] = ()) -> "GenerationDefaults":
        raw: Mapping[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        eos = raw.get("eos_token_id", list(fallback_eos))
        eos_ids = tuple(eos) if isinstance(eos, list) else (eos,) if isinstance(eos, int) else tuple(fallback_eos)
        if not raw:
            return cls(temperature=0.0, eos_token_ids=eos_ids)
        sample = raw.get("do_sample", False)
        return cls(
            temperature=float(raw.get("temperature", 1.0)) if sample else 0.0,
            top_p=float(raw.get("top_p", 1.0)),
            top_k=int(raw.get("top_k", -1) or -1),
            repetition_penalty=float(raw.get("repetition_penalty", 1.0)),
            eos_token_ids=eos_ids,
        )


def apply_penalties(logits: torch.Tensor, params: SamplingParams, prompt_ids: torch.Tensor,
                    output_ids: torch.Tensor) -> torch.Tensor:
    """Repetition penalty over prompt + output (HF style); presence/frequency over output (OpenAI style).

    logits: [V] float32 (modified copy returned).
    """
    if params.repetition_penalty not in (None, 1.0):
        seen = torch.unique(torch.cat([prompt_ids, output_ids]))
        chosen = logits[seen]
        logits = logits.clone()
        logits[seen] = torch.where(chosen < 0, chosen * params.repetition_penalty, chosen / params.repetition_penalty)
    if (params.presence_penalty or params.frequency_penalty) and output_ids.numel():
        counts = torch.bincount(output_ids, minlength=logits.shape[-1]).to(logits.dtype)
        logits = logits - params.frequency_penalty * counts - params.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def restrict(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p filtering. logits: [V] -> [V] with -inf outside the support."""
    logits = logits / params.temperature
    if params.top_k is not None and params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # probability mass ranked above each token
        drop = before >= params.top_p  # keep the smallest prefix whose mass reaches top_p (always >= 1 token)
        logits = logits.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
    if params.min_p > 0:
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    return logits


def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """The next token from processed logits [V]: argmax when greedy, else a seeded draw."""
    if params.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(restrict(logits, params), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def token_logprobs(raw_logits: torch.Tensor, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """log p(token) under the model's own distribution, and the `top` most likely (id, logprob) pairs."""
    logprobs = torch.log_softmax(raw_logits.float(), dim=-1)
    alternatives = []
    if top:
        values, ids = torch.topk(logprobs, top)
        alternatives = list(zip(ids.tolist(), values.tolist()))
    return float(logprobs[token]), alternatives
