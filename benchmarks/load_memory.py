"""Peak memory while loading a 2B-shaped checkpoint, as a multiple of the loaded weights' size.

Writes the random-weight Qwen2-VL-2B checkpoint (official config, bfloat16 weights as published,
about 4.4 GB) once, then loads it in fresh processes into bfloat16 and into float32 and reports
the rise in peak RSS over the weights' size. A tiny checkpoint is loaded first in each process so
that paging in torch's own code is not counted.

    python benchmarks/load_memory.py [--dir runs/random-2b]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from random_2b import DEFAULT_DIR, ensure_random_2b

from qwen2vl.random_checkpoint import TINY_CONFIG, write_random_checkpoint

MEASURE = textwrap.dedent("""
    import sys, time, qwen2vl
    def kb(field):
        return int(next(l for l in open("/proc/self/status") if l.startswith(field)).split()[1])
    qwen2vl.Qwen2VLModel.from_pretrained(sys.argv[1], dtype="float32")
    open("/proc/self/clear_refs", "w").write("5")
    before = kb("VmRSS:")
    start = time.perf_counter()
    model = qwen2vl.Qwen2VLModel.from_pretrained(sys.argv[2], dtype=sys.argv[3])
    seconds = time.perf_counter() - start
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 1024
    print(f"{weights / 2**20:.2f} {(kb('VmHWM:') - before) / 2**20:.2f} {seconds:.1f}")
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="the 2B checkpoint (written if absent)")
    args = parser.parse_args()
    directory = ensure_random_2b(args.dir)
    with tempfile.TemporaryDirectory() as tiny:
        write_random_checkpoint(tiny, TINY_CONFIG)
        print("| target dtype | weights (GiB) | peak RSS rise (GiB) | ratio | load time (s) |")
        print("|---|---|---|---|---|")
        for dtype in ("bfloat16", "float32"):
            out = subprocess.run([sys.executable, "-c", MEASURE, tiny, str(directory), dtype],
                                 capture_output=True, text=True, check=True).stdout.split()
            weights, peak, seconds = map(float, out)
            print(f"| {dtype} | {weights:.2f} | {peak:.2f} | {peak / weights:.3f} | {seconds} |", flush=True)


if __name__ == "__main__":
    main()
