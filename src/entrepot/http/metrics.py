"""Prometheus metrics for ``/-/metrics``: requests by kind and status, their latency, and
the registry's own counters. Kept per process (each worker reports its own)."""

from __future__ import annotations

import bisect
import os
import time
from collections import defaultdict

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counters and latency histograms, rendered in Prometheus' text format."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.buckets: defaultdict[str, list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.sums: defaultdict[str, float] = defaultdict(float)
        self.counts: defaultdict[str, int] = defaultdict(int)

    def observe(self, kind: str, status: int, seconds: float) -> None:
        self.requests[(kind, status)] += 1
        index = bisect.bisect_left(BUCKETS, seconds)
        if index < len(BUCKETS):
            self.buckets[kind][index] += 1
        self.sums[kind] += seconds
        self.counts[kind] += 1

    def render(self, gauges: dict[str, float]) -> str:
        lines = [
            "# HELP entrepot_requests_total HTTP requests answered, by kind and status.",
            "# TYPE entrepot_requests_total counter",
        ]
        for (kind, status), count in sorted(self.requests.items()):
            lines.append(f'entrepot_requests_total{{kind="{kind}",status="{status}"}} {count}')
        lines += [
            "# HELP entrepot_request_seconds Time to answer a request, by kind.",
            "# TYPE entrepot_request_seconds histogram",
        ]
        for kind in sorted(self.counts):
            running = 0
            for bound, count in zip(BUCKETS, self.buckets[kind], strict=True):
                running += count
                lines.append(
                    f'entrepot_request_seconds_bucket{{kind="{kind}",le="{bound}"}} {running}'
                )
            lines.append(
                f'entrepot_request_seconds_bucket{{kind="{kind}",le="+Inf"}} {self.counts[kind]}'
            )
            lines.append(f'entrepot_request_seconds_sum{{kind="{kind}"}} {self.sums[kind]:.6f}')
            lines.append(f'entrepot_request_seconds_count{{kind="{kind}"}} {self.counts[kind]}')
        for name, value in sorted(gauges.items()):
            lines.append(f"# TYPE entrepot_{name} gauge")
            lines.append(f"entrepot_{name} {value:g}")
        lines.append("# TYPE entrepot_process_start_time_seconds gauge")
        lines.append(f"entrepot_process_start_time_seconds {self.started:.0f}")
        lines.append(f'entrepot_process_info{{pid="{os.getpid()}"}} 1')
        return "\n".join(lines) + "\n"
