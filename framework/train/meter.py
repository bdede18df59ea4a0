"""Per-step metrics and the rank-0 progress line.

Loss terms are averaged over the micro-batches of a logging window and then over ranks; token and
sample counts are summed over ranks, so tokens/s is the whole job's throughput.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict

from framework.parallel import all_gather_object, all_reduce_mean, all_reduce_sum


class Meter:
    """Accumulates one logging window of micro-batches."""

    def __init__(self) -> None:
        self.records: Counter = Counter()
        """Records by reason (bad_*, truncated, no_negatives...) since the stage began on this rank."""
        self._reset()

    def _reset(self) -> None:
        # Loss terms stay tensors until collect(): converting each micro-batch would sync the device.
        self.terms: dict = defaultdict(float)
        self.micro = 0
        self.samples = self.tokens = self.padded = 0
        self.skipped = 0
        self.start = time.monotonic()
        self.bucket = -1

    def add(self, terms: dict, num_samples: int, num_tokens: int, num_padded: int, bucket: int,
            stats: dict[str, int]) -> None:
        for key, value in terms.items():
            self.terms[key] += value
        self.micro += 1
        self.samples += num_samples
        self.tokens += num_tokens
        self.padded += num_padded
        self.bucket = bucket
        self.records.update(stats)

    def skip(self) -> None:
        self.skipped += 1

    def collect(self) -> dict[str, float]:
        """Window metrics over all ranks (a collective: every rank calls it), then a new window."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        means = all_reduce_mean({k: float(v) / max(self.micro, 1) for k, v in self.terms.items()})
        sums = all_reduce_sum({"samples": self.samples, "tokens": self.tokens, "padded": self.padded,
                               "skipped": self.skipped})
        # Ranks meet different kinds of bad records, so the counters go as objects, not a fixed tensor.
        records = sum((Counter(c) for c in all_gather_object(dict(self.records))), Counter())
        metrics = dict(means)
        metrics["samples_per_s"] = sums.pop("samples") / elapsed
        metrics["tokens_per_s"] = sums["tokens"] / elapsed
        metrics["padding_efficiency"] = sums.pop("tokens") / max(sums.pop("padded"), 1)
        metrics["skipped_steps"] = sums.pop("skipped")
        metrics["bucket"] = self.bucket
        metrics.update({f"records_{k}": float(v) for k, v in records.items()})
        self._reset()
        return metrics


def progress_line(stage: str, step: int, total: int, metrics: dict[str, float], elapsed_s: float,
                  steps_done_here: int) -> str:
    """`[stage] step 120/1000 loss=1.234 dense=... | 1,234 tok/s 35.0 samples/s | eta 0:12:30`."""
    losses = " ".join(f"{k.removesuffix('_loss')}={v:.4f}" for k, v in metrics.items() if k.endswith("loss"))
    rate = steps_done_here / max(elapsed_s, 1e-9)
    eta = (total - step) / rate if rate > 0 else float("nan")
    eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "?"
    return (f"[{stage}] step {step}/{total} {losses} lr={metrics.get('lr', 0):.2e} | "
            f"{metrics.get('tokens_per_s', 0):,.0f} tok/s {metrics.get('samples_per_s', 0):.1f} samples/s "
            f"pad-eff {metrics.get('padding_efficiency', 0):.2f} | eta {eta_text}")
