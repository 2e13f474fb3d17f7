"""`qwen2vl bench`: speed against transformers on the same checkpoint, as a table of ratios.

Owns: running the measurement workers (qwen2vl/bench.py) and printing the table with each figure
as a fraction of this machine's roofline. Does not own: the measurements.
"""

from __future__ import annotations

import argparse
import importlib.util

EXAMPLES = """examples:
  qwen2vl bench Qwen/Qwen2-VL-2B-Instruct
  python benchmarks/random_2b.py && qwen2vl bench runs/random-2b --tokens 32
"""

ROWS = [("load_s", "load (s)", False), ("vision_448_s", "vision encoder 448² (s)", False),
        ("vision_896_s", "vision encoder 896² (s)", False), ("prefill_448_s", "prefill 448² + text (s)", False),
        ("ttft_448_s", "time to first token 448² (s)", False), ("decode_b1_tok_s", "decode batch 1 (tok/s)", True),
        ("decode_b8_tok_s", "decode batch 8, aggregate (tok/s)", True), ("peak_rss_gib", "peak RSS (GiB)", False)]


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="measure speed against transformers", epilog=EXAMPLES,
                                   description="Measure speed against transformers on the same checkpoint.",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per decode measurement")
    parser.add_argument("--no-quantized", action="store_true", help="skip the int8 and int4 measurements")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import run_worker
    from ..hub import resolve_model_dir

    directory = str(resolve_model_dir(args.model))
    machine = run_worker("machine", directory, args.tokens)
    columns = {}
    if importlib.util.find_spec("transformers") is not None:
        columns["transformers fp32"] = run_worker("transformers", directory, args.tokens)
    columns["qwen2vl"] = run_worker("ours", directory, args.tokens)
    if not args.no_quantized:
        columns["qwen2vl int8"] = run_worker("ours-int8", directory, args.tokens)
        columns["qwen2vl int4"] = run_worker("ours-int4", directory, args.tokens)
    print(f"machine: memory read {machine['bandwidth_gb_s']:.1f} GB/s, fp32 GEMM {machine['gemm_gflops']:.0f} GFLOPS")
    print(table(columns, directory, machine))
    if not args.no_quantized:
        for method, accuracy in run_worker("accuracy", directory, args.tokens).items():
            print(f"{method} vs float32: final hidden states relative error {accuracy['hidden_relative_error']:.4f}, "
                  f"next-token top-1 agreement {100 * accuracy['top1_agreement']:.1f}%")
    return 0


def table(columns: dict[str, dict], directory: str, machine: dict) -> str:
    reference = columns.get("transformers fp32")
    head = "| | " + " | ".join(columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    for key, label, higher_better in ROWS:
        cells = []
        for name, values in columns.items():
            if key not in values:  # not measured: the same code as the exact column
                cells.append("as qwen2vl")
                continue
            cell = f"{values[key]:.2f}"
            if reference is not None and values is not reference and key != "peak_rss_gib":
                ratio = values[key] / reference[key] if higher_better else reference[key] / values[key]
                cell += f" ({ratio:.2f}×)"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| decode b1, fraction of the bandwidth roofline | " + " | ".join(
        f"{roofline_decode(values, directory, machine):.0%}" for values in columns.values()) + " |")
    lines.append("| prefill 448², fraction of the fp32 GEMM roofline | " + " | ".join(
        f"{roofline_prefill(values, directory, machine):.0%}" for values in columns.values()) + " |")
    return "\n".join(lines)


def _parameter_counts(directory: str) -> tuple[int, int, int]:
    """(decoder parameters read per token, vision parameters, vocab x hidden)."""
    import torch

    from ..config import ModelConfig
    from ..model import Qwen2VLModel

    config = ModelConfig.from_file(f"{directory}/config.json")
    with torch.device("meta"):
        model = Qwen2VLModel(config)
    vision = sum(p.numel() for p in model.visual.parameters())
    layers = sum(p.numel() for n, p in model.model.named_parameters() if not n.startswith("embed_tokens"))
    head = config.text.vocab_size * config.text.hidden_size
    return layers + head, vision, head


def roofline_decode(values: dict, directory: str, machine: dict) -> float:
    """Weight bytes a decode step reads (as the worker held them; float32 where it did not say) over bandwidth."""
    per_token, _, _ = _parameter_counts(directory)
    ideal = values.get("decode_weight_bytes", 4 * per_token) / (machine["bandwidth_gb_s"] * 1e9)
    return ideal * values["decode_b1_tok_s"]


def roofline_prefill(values: dict, directory: str, machine: dict) -> float:
    per_token, vision, _ = _parameter_counts(directory)
    patches = 4 * 256  # 448²: 32 x 32 patches
    flops = 2 * per_token * values["prefill_tokens"] + 2 * vision * patches
    return flops / (machine["gemm_gflops"] * 1e9) / values["prefill_448_s"]
