"""The model runner: the only place that builds tensors and runs the network during generation.

Owns: the KV cache and the vision-encoding cache, prefill of one prompt (vision tower per item,
through the cache; positions and rope_delta from `rope_positions`), batched decode of running
sequences (one matmul per layer for all of them; decode position = length - 1 + rope_delta on
all three axes), and sampling the next token of each sequence.
Does not own: who runs when (scheduler.py), text (detokenizer.py) or request bookkeeping (engine.py).
"""

from __future__ import annotations

import torch

from ..model import Qwen2VLModel
from ..model.positions import rope_positions
from .kv_cache import StaticKVCache
from .sampling import apply_penalties, choose, token_logprobs
from .sequence import Sequence
from .vision_cache import VisionCache, content_key


class ModelRunner:
    def __init__(self, model: Qwen2VLModel, slots: int, max_model_len: int, vision_cache_bytes: int):
        self.model = model
        self.device, self.dtype = model.model.norm.weight.device, model.compute_dtype
        self.cache = StaticKVCache(model.config.text, slots, max_model_len, self.dtype, self.device)
        self.vision_cache = VisionCache(vision_cache_bytes)
        self.vision_encodes = 0  # items sent through the vision tower

    @torch.inference_mode()
    def prefill(self, seq: Sequence) -> torch.Tensor:
        """Run one prompt into its cache slot; sets seq.rope_delta; returns last-position logits [V] float32."""
        inputs = {k: v.to(self.device) for k, v in seq.inputs.items()}
        ids = inputs["input_ids"]  # [1, T]
        image_features = self._encode(inputs.get("pixel_values"), inputs.get("image_grid_thw"), "image")
        video_features = self._encode(inputs.get("pixel_values_videos"), inputs.get("video_grid_thw"), "video")
        embeds = self.model.embed(ids, image_features, video_features)
        positions, deltas = rope_positions(self.model.layout, ids, None, inputs.get("image_grid_thw"),
                                           inputs.get("video_grid_thw"))
        seq.rope_delta = int(deltas[0])
        hidden = self.model.decode(embeds, positions, None, self.cache.step([seq.slot], [0]))
        return self.model.logits(hidden[:, -1]).float()[0]

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """One new token for each sequence, batched. Returns logits [B, V] float32."""
        ids = torch.tensor([[seq.output_ids[-1]] for seq in seqs], device=self.device)  # [B, 1]
        cached = [seq.length - 1 for seq in seqs]
        position = torch.tensor([[c + seq.rope_delta] for c, seq in zip(cached, seqs)], device=self.device)
        positions = position.unsqueeze(0).expand(3, -1, -1)  # [3, B, 1]: the same on t, h and w
        hidden = self.model.decode(self.model.embed_tokens(ids), positions, None,
                                   self.cache.step([seq.slot for seq in seqs], cached))
        return self.model.logits(hidden[:, -1]).float()

    def share_prompt(self, source: Sequence, target: Sequence) -> None:
        self.cache.copy_slot(source.slot, target.slot, len(source.prompt_ids))
        target.rope_delta = source.rope_delta

    def sample(self, seq: Sequence, logits: torch.Tensor) -> tuple[int, tuple[float, list] | None]:
        """The next token of `seq` from its raw logits [V], and its logprobs when asked for."""
        params = seq.params
        processed = apply_penalties(
            logits, params,
            torch.tensor(seq.prompt_ids, device=logits.device),
            torch.tensor(seq.output_ids, dtype=torch.long, device=logits.device),
        ) if _penalised(params) else logits
        if seq.generator is None and not params.greedy:
            seq.generator = torch.Generator(device=logits.device)
            if params.seed is not None:
                seq.generator.manual_seed(params.seed + seq.index)
            else:
                seq.generator.seed()
        token = choose(processed, params, seq.generator)
        logprob = token_logprobs(logits, token, params.logprobs) if params.logprobs is not None else None
        return token, logprob

    def _encode(self, pixels: torch.Tensor | None, grid: torch.Tensor | None, kind: str) -> torch.Tensor | None:
        """Vision features of every item, each looked up in (or added to) the vision cache."""
        if pixels is None:
            return None
        features, start = [], 0
        for t, h, w in grid.tolist():
            rows = pixels[start:start + t * h * w]
            start += t * h * w
            key = content_key(kind, rows, (t, h, w))
            cached = self.vision_cache.get(key)
            if cached is None:
                cached = self.model.encode_vision(rows.to(self.dtype), torch.tensor([[t, h, w]], device=self.device), kind)
                self.vision_encodes += 1
                self.vision_cache.put(key, cached)
            features.append(cached)
        return torch.cat(features)


def _penalised(params) -> bool:
    return params.repetition_penalty not in (None, 1.0) or bool(params.presence_penalty or params.frequency_penalty)
