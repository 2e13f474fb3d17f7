"""`qwen2vl bench`: our engine against transformers on the same checkpoint, in one run, as ratios.

Owns: measuring, each implementation in a fresh process of its own (so peak memory is its own):
load time, vision-encoder time for 448² and 896² images, prefill (image + text) time, time to first
token, decode tokens/s at batch 1 and aggregate at batch 8, and peak RSS; the machine's own
memory bandwidth and fp32 GEMM rate, to express each figure as a fraction of the roofline; int8's
and int4's accuracy against float32 (relative error of final hidden states, top-1 agreement). Does not own:
any of the machinery measured.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from .errors import BenchmarkError

WARMUP_SIDE = 224  # one small image answered before timing: first-call costs are not the engine's speed
PROMPT = "Describe this picture in detail, including colours, shapes and any text you can read."


def _picture(side: int) -> Image.Image:
    rng = np.random.default_rng(side)
    y, x = np.mgrid[0:side, 0:side]
    image = np.stack([x * 255 // side, y * 255 // side, (x ^ y) % 256], -1) + rng.integers(0, 30, (side, side, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def _conversation(image: Image.Image | None, text: str = PROMPT) -> list[dict]:
    parts = ([{"type": "image", "image": image}] if image is not None else []) + [{"type": "text", "text": text}]
    return [{"role": "user", "content": parts}]


def _seconds(function: Callable[[], Any], repeat: int = 1) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def _peak_rss_gib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2**20


def measure_ours(directory: str, tokens: int, quantize: str | None, vision: bool = True) -> dict[str, float]:
    """Our engine's figures; `vision=False` skips the vision-encoder timings (int4 leaves the tower exact)."""
    from .engine import Qwen2VL, SamplingParams

    start = time.perf_counter()
    llm = Qwen2VL.from_pretrained(directory, quantize=quantize, vision_cache_mb=0, max_model_len=4096)
    out: dict[str, float] = {"load_s": time.perf_counter() - start}
    model, engine = llm.model, llm.engine
    llm.generate([_conversation(_picture(WARMUP_SIDE))], SamplingParams(max_tokens=2, temperature=0))
    with torch.inference_mode():
        for side in (448, 896) if vision else ():
            inputs = llm.processor(_conversation(_picture(side)))
            encode = lambda: model.encode_vision(inputs["pixel_values"], inputs["image_grid_thw"], "image")  # noqa: E731
            out[f"vision_{side}_s"] = _seconds(encode)
        inputs = llm.processor(_conversation(_picture(448)))
        out["prefill_448_s"] = _seconds(lambda: model(**inputs))
        out["prefill_tokens"] = inputs["input_ids"].shape[1]
    out["ttft_448_s"] = _seconds(lambda: llm.generate([_conversation(_picture(448))], SamplingParams(max_tokens=1,
                                                                                                     temperature=0)))
    for batch in (1, 8):
        ids = [engine.add_request(engine.prepare(_conversation(None, f"{i}: {PROMPT}")),
                                  SamplingParams(max_tokens=tokens, temperature=0)) for i in range(batch)]
        engine.step()  # prefill (and the first token of each)
        start = time.perf_counter()
        while engine.has_unfinished():
            engine.step()
        out[f"decode_b{batch}_tok_s"] = batch * (tokens - 1) / (time.perf_counter() - start)
        for rid in ids:
            engine.release(rid)
    out["decode_weight_bytes"] = _decode_weight_bytes(model)
    out["peak_rss_gib"] = _peak_rss_gib()
    return out


def _decode_weight_bytes(model) -> int:
    """Bytes of the weights one decode step reads: the decoder's (not the embedding table) and the head's."""
    head = model.lm_head if model.lm_head is not None else model.model.embed_tokens
    decoder = [p for name, p in model.model.named_parameters() if not name.startswith("embed_tokens")]
    return sum(p.numel() * p.element_size() for p in [*decoder, *head.parameters()])


def measure_transformers(directory: str, tokens: int) -> dict[str, float]:
    import warnings

    from transformers import Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    warnings.simplefilter("ignore")
    start = time.perf_counter()
    model = Qwen2VLForConditionalGeneration.from_pretrained(directory, dtype=torch.float32,
                                                            attn_implementation="sdpa").eval()
    processor = Qwen2VLProcessor.from_pretrained(directory)
    out: dict[str, float] = {"load_s": time.perf_counter() - start}
    processor.tokenizer.padding_side = "left"

    def prepare(conversations, images=None):
        texts = [processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        return processor(text=texts, images=images, padding=True, return_tensors="pt")

    def generate(inputs, new):
        return model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False, top_k=None,
                              top_p=None, temperature=None)

    with torch.inference_mode():
        generate(prepare([_conversation(_picture(WARMUP_SIDE))], [_picture(WARMUP_SIDE)]), 2)
        for side in (448, 896):
            inputs = prepare([_conversation(_picture(side))], [_picture(side)])
            out[f"vision_{side}_s"] = _seconds(lambda: model.model.visual(inputs["pixel_values"],
                                                                          grid_thw=inputs["image_grid_thw"]))
        inputs = prepare([_conversation(_picture(448))], [_picture(448)])
        out["prefill_448_s"] = _seconds(lambda: model(**inputs))
        out["prefill_tokens"] = inputs["input_ids"].shape[1]
        out["ttft_448_s"] = _seconds(lambda: generate(prepare([_conversation(_picture(448))], [_picture(448)]), 1))
        for batch in (1, 8):
            inputs = prepare([_conversation(None, f"{i}: {PROMPT}") for i in range(batch)])
            first = _seconds(lambda: generate(inputs, 1))
            total = _seconds(lambda: generate(inputs, tokens))
            out[f"decode_b{batch}_tok_s"] = batch * (tokens - 1) / (total - first)
    out["peak_rss_gib"] = _peak_rss_gib()
    return out


def measure_accuracy(directory: str) -> dict[str, dict[str, float]]:
    """Final hidden states and next-token choices of int8 and int4 against float32 over a fixed prompt
    set: {method: {"hidden_relative_error", "top1_agreement"}}."""
    from .loading import load_model
    from .processing import Processor

    processor = Processor.from_pretrained(directory)
    prompts = [processor(p) for p in [_conversation(_picture(224 + 56 * i), f"Question {i}: {PROMPT}") for i in range(4)]
               + [_conversation(None, text) for text in ("Write a haiku about rain.", "What is 17 times 23?",
                                                        "Translate 'good morning' into French.", "List three prime numbers.")]]
    reference = load_model(directory)
    with torch.inference_mode():
        exact = [reference.hidden_states(**p) for p in prompts]
        choices = [reference.logits(h).argmax(-1) for h in exact]
    out = {}
    for method in ("int8", "int4"):
        model = load_model(directory, quantize=method)
        with torch.inference_mode():
            approx = [model.hidden_states(**p) for p in prompts]
            same = [reference.logits(a).argmax(-1) == c for a, c in zip(approx, choices)]
        del model
        out[method] = {"hidden_relative_error": float(np.mean([float((a - e).norm() / e.norm())
                                                                for a, e in zip(approx, exact)])),
                       "top1_agreement": sum(int(s.sum()) for s in same) / sum(s.numel() for s in same)}
    return out


def measure_machine() -> dict[str, float]:
    data = torch.ones(256 * 2**20)  # 1 GiB of float32
    data.sum()
    bandwidth = data.numel() * 4 / _seconds(lambda: data.sum(), 5) / 1e9
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    gemm = 2 * 2048**3 / _seconds(lambda: a @ b, 5) / 1e9
    return {"bandwidth_gb_s": bandwidth, "gemm_gflops": gemm}


def run_worker(kind: str, directory: str, tokens: int) -> dict[str, float]:
    """One measurement in a fresh process; returns its JSON result."""
    command = [sys.executable, "-m", "qwen2vl.bench", kind, directory, str(tokens)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchmarkError(f"the {kind} measurement {_failure(done.returncode, done.stderr)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _failure(returncode: int, stderr: str) -> str:
    """How a measurement process ended, in a few words: its signal, or its last line of errors."""
    if returncode < 0:
        signal = -returncode
        hint = " (SIGKILL: most often the kernel's out-of-memory killer)" if signal == 9 else ""
        return f"was killed by signal {signal}{hint}"
    lines = stderr.strip().splitlines()
    return f"failed (exit {returncode}): {lines[-1] if lines else 'no error output'}"


def _main() -> None:
    kind, directory, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    measures = {"ours": lambda: measure_ours(directory, tokens, None),
                "ours-int8": lambda: measure_ours(directory, tokens, "int8"),
                "ours-int4": lambda: measure_ours(directory, tokens, "int4", vision=False),
                "transformers": lambda: measure_transformers(directory, tokens),
                "accuracy": lambda: measure_accuracy(directory),
                "machine": measure_machine}
    print(json.dumps(measures[kind]()))


if __name__ == "__main__":
    _main()
