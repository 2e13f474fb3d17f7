"""Prometheus metrics in the text exposition format, without a client library.

Owns: counters, gauges and histograms for requests, tokens, queue depth and latencies, safe to
update from the HTTP handlers and the engine thread. Does not own: deciding what to measure.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.counters: dict[tuple[str, tuple], float] = defaultdict(float)
        self.gauges: dict[str, float] = {}
        self.histograms: dict[str, list] = {}

    def count(self, name: str, value: float = 1.0, **labels: str) -> None:
        with self._lock:
            self.counters[(name, tuple(sorted(labels.items())))] += value

    def gauge(self, name: str, value: float) -> None:
        with self._lock:
            self.gauges[name] = value

    def observe(self, name: str, seconds: float) -> None:
        with self._lock:
            buckets, total = self.histograms.setdefault(name, [[0] * (len(LATENCY_BUCKETS) + 1), [0.0, 0]])
            buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            total[0] += seconds
            total[1] += 1

    def render(self) -> str:
        lines = []
        with self._lock:
            typed: set[str] = set()
            for (name, labels), value in sorted(self.counters.items()):
                if name not in typed:
                    lines.append(f"# TYPE qwen2vl_{name} counter")
                    typed.add(name)
                label_text = ",".join(f'{k}="{v}"' for k, v in labels)
                lines.append(f"qwen2vl_{name}{{{label_text}}} {value:g}" if label_text else f"qwen2vl_{name} {value:g}")
            for name, value in sorted(self.gauges.items()):
                lines += [f"# TYPE qwen2vl_{name} gauge", f"qwen2vl_{name} {value:g}"]
            for name, (buckets, (total, count)) in sorted(self.histograms.items()):
                lines.append(f"# TYPE qwen2vl_{name} histogram")
                cumulative = 0
                for bound, hits in zip(LATENCY_BUCKETS + ("+Inf",), buckets):
                    cumulative += hits
                    lines.append(f'qwen2vl_{name}_bucket{{le="{bound}"}} {cumulative}')
                lines.append(f"qwen2vl_{name}_sum {total:g}")
                lines.append(f"qwen2vl_{name}_count {count}")
        return "\n".join(lines) + "\n"
