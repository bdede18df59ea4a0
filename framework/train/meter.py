"""Per-step metrics and the rank-0 console lines.

Loss terms and the objective's reported metrics (sparse-head health) are averaged over the micro-batches
of a logging window and then over ranks (read from the device in one transfer); token and sample counts
are summed over ranks, so tokens/s is the whole job's throughput. Padding efficiency is real tokens /
token positions the encoder's token-wise layers computed on: the objective's report when it has one
(unpadded encoding), else the batch's padded size; attention efficiency is real tokens / the query
positions of the encoder's attention calls (unpadded: its length groups' padded layout, which stays
padded where attention needs it). Skipped optimizer steps (framework/train/steps.py) are counted by
reason, with the samples they held; the records each stream counted (bad ones, truncated...) are kept
per window too, so the console can say what was lost at the log step where it happened.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch

from framework.data.batch import TrainBatch
from framework.data.stats import is_bad  # which stats keys are bad records (the streams define them)
from framework.parallel import all_gather_object, all_reduce_mean, all_reduce_sum
from framework.train.objective import ForwardReport


@dataclass
class Window:
    """One logging window over all ranks."""

    metrics: dict[str, float]
    """What the tracker logs: loss terms, throughput, padding efficiency, skips, cumulative records."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Skipped optimizer steps by reason (every rank skips the same steps)."""
    skipped_samples: int = 0
    """Samples of the skipped steps, summed over ranks."""
    bad_records: dict[str, int] = field(default_factory=dict)
    """Bad records the streams met in this window, by reason, summed over ranks."""


class Meter:
    """Accumulates one logging window of micro-batches."""

    def __init__(self) -> None:
        self.records: Counter = Counter()
        """Records by reason (bad_*, truncated, no_negatives...) since the stage began on this rank."""
        self._reset()

    def _reset(self) -> None:
        # Loss terms and reported metrics stay tensors until collect(): converting each micro-batch would
        # sync the device. Each is averaged over the micro-batches that carried it.
        self.terms: dict = defaultdict(float)
        self.counts: Counter = Counter()
        self.micro = 0
        self.samples = self.tokens = self.positions = self.attention_positions = 0
        self.skipped: Counter = Counter()
        self.skipped_samples = 0
        self.window_records: Counter = Counter()
        self.start = time.monotonic()
        self.bucket = -1

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` spent on something else (an evaluation) out of the window's throughput."""
        self.start += seconds

    def add(self, batch: TrainBatch, terms: dict, report: ForwardReport = ForwardReport()) -> None:
        """A micro-batch that trained: its loss terms and report metrics (detached tensors) and what it held."""
        for key, value in (*terms.items(), *report.metrics.items()):
            self.terms[key] += value
            self.counts[key] += 1
        self.micro += 1
        self.samples += batch.num_samples
        self.tokens += batch.num_tokens
        self.positions += batch.num_padded_tokens if report.computed_positions is None else report.computed_positions
        self.attention_positions += (batch.num_padded_tokens if report.attention_positions is None
                                     else report.attention_positions)
        self.bucket = batch.bucket
        self._count(batch)

    def skip(self, batches: list[TrainBatch], reason: str) -> None:
        """An optimizer step skipped on every rank, with the micro-batches it would have trained on."""
        self.skipped[reason] += 1
        self.skipped_samples += sum(b.num_samples for b in batches)
        for batch in batches:
            self._count(batch)

    def _count(self, batch: TrainBatch) -> None:
        self.records.update(batch.stats)
        self.window_records.update(batch.stats)

    def _means(self) -> dict[str, float]:
        """Window mean of every term and metric, stacked so that the device is read once."""
        if not self.terms:
            return {}
        sums = torch.stack([torch.as_tensor(v).detach().float().reshape(()) for v in self.terms.values()]).tolist()
        return {k: total / self.counts[k] for k, total in zip(self.terms, sums)}

    def collect(self) -> Window:
        """Window metrics over all ranks (a collective: every rank calls it), then a new window."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        means = all_reduce_mean(self._means())
        sums = all_reduce_sum({"samples": self.samples, "tokens": self.tokens, "positions": self.positions,
                               "attention_positions": self.attention_positions,
                               "skipped_samples": self.skipped_samples})
        # Ranks meet different kinds of bad records, so the counters go as objects, not a fixed tensor.
        both = all_gather_object((dict(self.records), dict(self.window_records)))
        records = sum((Counter(total) for total, _ in both), Counter())
        window = sum((Counter(recent) for _, recent in both), Counter())
        metrics = dict(means)
        metrics["samples_per_s"] = sums["samples"] / elapsed
        metrics["tokens_per_s"] = sums["tokens"] / elapsed
        metrics["padding_efficiency"] = sums["tokens"] / max(sums["positions"], 1)
        metrics["attention_efficiency"] = sums["tokens"] / max(sums["attention_positions"], 1)
        metrics["skipped_steps"] = float(sum(self.skipped.values()))
        metrics["skipped_samples"] = sums["skipped_samples"]
        metrics["bucket"] = self.bucket
        metrics.update({f"records_{k}": float(v) for k, v in records.items()})
        out = Window(metrics, dict(self.skipped), int(sums["skipped_samples"]),
                     {k: int(v) for k, v in sorted(window.items()) if is_bad(k) and v})
        self._reset()
        return out


def progress_line(stage: str, step: int, total: int, metrics: dict[str, float], elapsed_s: float,
                  steps_done_here: int) -> str:
    """`[stage] step 120/1000 loss=1.234 dense=... lr=1.00e-05 | 1,234 tok/s 35.0 samples/s | eta 0:12:30`
    (lr=1.00e-05/1.00e-03 with optim.lr_groups: each group's rate after the stage's)."""
    losses = " ".join(f"{k.removesuffix('_loss')}={v:.4f}" for k, v in metrics.items() if k.endswith("loss"))
    rate = steps_done_here / max(elapsed_s, 1e-9)
    eta = (total - step) / rate if rate > 0 else float("nan")
    eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "?"
    groups = "".join(f"/{v:.2e}" for k, v in metrics.items() if k.startswith("lr_group_"))  # in logged_lrs' order
    return (f"[{stage}] step {step}/{total} {losses} lr={metrics.get('lr', 0):.2e}{groups} | "
            f"{metrics.get('tokens_per_s', 0):,.0f} tok/s {metrics.get('samples_per_s', 0):.1f} samples/s "
            f"pad-eff {metrics.get('padding_efficiency', 0):.2f} | eta {eta_text}")


SKIP_REASONS = {"empty": "an empty micro-batch on some rank", "nonfinite": "a non-finite loss on some rank",
                "overflow": "non-finite gradients (DeepSpeed skipped the update)"}


def loss_lines(stage: str, step: int, since: int, window: Window) -> list[str]:
    """The console lines of what a window lost: skipped steps, and the bad records the streams met."""
    lines = []
    if window.skipped:
        why = ", ".join(f"{n} for {SKIP_REASONS.get(r, r)}" for r, n in sorted(window.skipped.items()))
        lines.append(f"[{stage}] steps {since + 1}-{step}: skipped {sum(window.skipped.values())} optimizer "
                     f"step(s) ({why}); {window.skipped_samples} samples not trained on")
    if window.bad_records:
        counts = ", ".join(f"{reason}={n}" for reason, n in window.bad_records.items())
        lines.append(f"[{stage}] steps {since + 1}-{step}: bad records {counts} (counted, not trained on)")
    return lines
