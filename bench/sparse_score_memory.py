"""Peak CPU memory of the training-time sparse score (forward + backward): ours vs the reference's.

The reference (FlagEmbedding M3, training mode) scatters every text into a (B, L, V) tensor and takes
the max over L; ours compacts the vocabulary to the ids that occur (framework.loss.sparse_scores).
The naive path cannot run at the target size (32 queries x 256 passages x 512 tokens x V=250,002
needs ~147 GB per (B, L, V) tensor), so it is measured at sizes that fit (same Q:P = 1:8 as the target),
shown to scale linearly in B*L*V (the peak/(B*L*V*4) column stays constant as B and L vary), and
extrapolated with a least-squares fit peak = a*B*L*V*4 + b*B*V*4 (the second term is the (B, V)
max values and indices, which do not grow with L).

Method: every measurement runs in a fresh subprocess. After building its inputs and a tiny warm-up run
(so that first-use code pages and allocator set-up are not counted) the worker resets the kernel's
peak-RSS counter (writing 5 to /proc/self/clear_refs) and reports VmHWM - VmRSS, i.e. the
extra resident memory at the peak of forward + backward. Where clear_refs is unavailable it falls
back to ru_maxrss minus the RSS before the run (an upper bound if the input set-up peaked higher).

Run: python -m bench.sparse_score_memory            (about a minute on 2 cores, needs ~8 GB RAM)

Shape legend: Q queries, P passages, B = Q + P texts, L tokens per text, V vocabulary, U compact vocab.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.proc_memory import reset_peak, status_kib

CLS_ID, EOS_ID, FIRST_ID = 0, 2, 4
# (queries, passages, length) for the naive path: B*L from 144 to 1152 tokens, varying B and L.
NAIVE_POINTS = ((1, 8, 16), (1, 8, 32), (2, 16, 16), (1, 8, 64), (2, 16, 32), (4, 32, 32))


def _zipf_ids(torch, num_texts: int, length: int, vocab: int, exponent: float, gen):
    """Ids drawn from a Zipf law over the vocabulary (rank r has probability ~ 1/r^s), CLS/EOS ends."""
    ranks = torch.arange(1, vocab - FIRST_ID + 1, dtype=torch.float64)
    probs = ranks.pow(-exponent)
    id_of_rank = FIRST_ID + torch.randperm(vocab - FIRST_ID, generator=gen)
    draws = torch.multinomial(probs, num_texts * length, replacement=True, generator=gen)
    ids_BL = id_of_rank[draws].view(num_texts, length)
    ids_BL[:, 0], ids_BL[:, -1] = CLS_ID, EOS_ID
    return ids_BL


def _naive_embedding(torch, weights_BL, ids_BL, vocab: int):
    """The reference's training-mode _sparse_embedding: (B, L, V) scatter, max over L, specials zeroed."""
    full_BLV = torch.zeros(*ids_BL.shape, vocab, dtype=weights_BL.dtype)
    full_BLV = torch.scatter(full_BLV, -1, ids_BL.unsqueeze(-1), weights_BL.unsqueeze(-1))
    sparse_BV = torch.max(full_BLV, dim=1).values
    sparse_BV[:, [CLS_ID, 1, EOS_ID, 3]] *= 0.0
    return sparse_BV


def _run(kind: str, weights: list, ids: list, vocab: int) -> float:
    """Forward + backward of one sparse score matrix; returns the score sum (a sanity figure)."""
    import torch

    from framework.loss import sparse_scores

    if kind == "ours":
        scores_QP = sparse_scores(weights[0], ids[0], weights[1], ids[1])
    else:
        q_QV, p_PV = (_naive_embedding(torch, w, i, vocab) for w, i in zip(weights, ids))
        scores_QP = q_QV @ p_PV.T
    scores_QP.sum().backward()
    return float(scores_QP.detach().sum())


def _live_tensor_peak(fn) -> int:
    """Peak bytes of live tensor storages while fn runs: every op output is counted from its creation
    until it is freed (autograd-saved tensors included, scratch memory inside a kernel not)."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LivePeak(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live, self.peak, self.seen = 0, 0, set()

        def _track(self, storage) -> None:
            key, size = storage.data_ptr(), storage.nbytes()
            if key in self.seen or size == 0:
                return
            self.seen.add(key)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, size)

        def _free(self, key, size) -> None:
            self.live -= size
            self.seen.discard(key)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for item in tree_flatten(out)[0]:
                if isinstance(item, torch.Tensor):
                    self._track(item.untyped_storage())
            return out

    mode = LivePeak()
    with mode:
        fn()
    return mode.peak


def _worker(args) -> dict:
    """One measurement in this (fresh) process; returns the figures as a dict."""
    import torch

    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(args.seed)
    # One draw for queries and passages together: they must share the rank -> id mapping.
    ids = _zipf_ids(torch, args.queries + args.passages, args.length, args.vocab, args.zipf, gen)
    ids = [ids[:args.queries], ids[args.queries:]]
    weights = [(torch.rand(i.shape, generator=gen) * ((i != CLS_ID) & (i != EOS_ID))).requires_grad_(True)
               for i in ids]
    num_u = torch.unique(ids[0]).numel()
    num_u_all = torch.unique(torch.cat([ids[0].flatten(), ids[1].flatten()])).numel()
    _run(args.worker, [w[:1, :8] for w in weights], [i[:1, :8] for i in ids], args.vocab)
    exact = reset_peak()
    rss_before = status_kib("VmRSS")
    start = time.perf_counter()
    score_sum = _run(args.worker, weights, ids, args.vocab)
    seconds = time.perf_counter() - start
    peak_kib = status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for w in weights:
        w.grad = None
    live_peak = _live_tensor_peak(lambda: _run(args.worker, weights, ids, args.vocab))
    return {"peak_bytes": (peak_kib - rss_before) * 1024, "live_tensor_peak_bytes": live_peak,
            "seconds": seconds, "exact_peak_reset": exact,
            "query_vocab": num_u, "batch_vocab": num_u_all, "score_sum": score_sum}


def _measure(kind: str, queries: int, passages: int, length: int, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--queries", str(queries), "--passages", str(passages),
           "--length", str(length), "--vocab", str(args.vocab), "--zipf", str(args.zipf), "--seed", str(args.seed)]
    root = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=root,
                          env={**os.environ, "PYTHONPATH": root})
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fit_two_terms(points: list[tuple[float, float]], ys: list[float]) -> tuple[float, float]:
    """Least-squares a, b of y = a*x1 + b*x2 (no intercept), by the 2x2 normal equations."""
    s11 = sum(x1 * x1 for x1, _ in points)
    s12 = sum(x1 * x2 for x1, x2 in points)
    s22 = sum(x2 * x2 for _, x2 in points)
    t1 = sum(x1 * y for (x1, _), y in zip(points, ys))
    t2 = sum(x2 * y for (_, x2), y in zip(points, ys))
    det = s11 * s22 - s12 * s12
    return (t1 * s22 - t2 * s12) / det, (s11 * t2 - s12 * t1) / det


def _report(args) -> None:
    gb, vocab = 1e9, args.vocab
    print(f"Sparse score, forward + backward, float32, V={vocab:,}, Zipf(s={args.zipf}) ids, seed {args.seed}")
    print("rss  = VmHWM - VmRSS around forward+backward, fresh subprocess per row, peak counter reset via\n"
          "       /proc/self/clear_refs after a tiny warm-up run (ru_maxrss fallback where that fails)")
    print("live = peak bytes of live tensor storages (TorchDispatchMode over every op, autograd-saved\n"
          "       tensors included, kernel-internal scratch not), same inputs, second run\n")
    print("Naive (B, L, V) scatter of the reference, B = Q + P texts of L tokens:")
    print(f"{'Q':>3} {'P':>4} {'L':>4} {'B*L':>6} {'B*L*V*4 GB':>11} {'rss GB':>7} {'live GB':>8} "
          f"{'rss/(B*L*V*4)':>14} {'live/(B*L*V*4)':>15}")
    points, ys, ys_live = [], [], []
    for queries, passages, length in NAIVE_POINTS:
        row = _measure("naive", queries, passages, length, args)
        tensor_bytes = (queries + passages) * length * vocab * 4
        points.append((tensor_bytes, (queries + passages) * vocab * 4))
        ys.append(row["peak_bytes"])
        ys_live.append(row["live_tensor_peak_bytes"])
        print(f"{queries:>3} {passages:>4} {length:>4} {(queries + passages) * length:>6} {tensor_bytes / gb:>11.2f} "
              f"{ys[-1] / gb:>7.2f} {ys_live[-1] / gb:>8.2f} {ys[-1] / tensor_bytes:>14.3f} "
              f"{ys_live[-1] / tensor_bytes:>15.3f}")
    # Two terms: the (B, L, V) tensors, and the (B, V) max values/indices that do not grow with L.
    fits = {"rss": _fit_two_terms(points, ys), "live": _fit_two_terms(points, ys_live)}
    full_tensor = (args.queries + args.passages) * args.length * vocab * 4
    full_bv = (args.queries + args.passages) * vocab * 4
    predicted = {name: a * full_tensor + b * full_bv for name, (a, b) in fits.items()}
    for name, (a, b) in fits.items():
        print(f"Least-squares fit ({name}): peak = {a:.3f} x B*L*V*4 {b:+.3f} x B*V*4 bytes")
    print(f"Extrapolated with that fit to Q={args.queries}, P={args.passages}, L={args.length}: "
          f"B*L*V*4 = {full_tensor / gb:.1f} GB (passages alone {args.passages * args.length * vocab * 4 / gb:.1f} GB), "
          f"predicted peak rss {predicted['rss'] / gb:.0f} GB, live {predicted['live'] / gb:.0f} GB\n")
    ours = _measure("ours", args.queries, args.passages, args.length, args)
    print(f"Ours (compact vocabulary) at Q={args.queries}, P={args.passages}, L={args.length}: "
          f"rss {ours['peak_bytes'] / 1e6:.1f} MB, live {ours['live_tensor_peak_bytes'] / 1e6:.1f} MB, "
          f"{ours['seconds']:.2f} s; U = {ours['query_vocab']:,} distinct query ids "
          f"(distinct ids in the whole batch: {ours['batch_vocab']:,})")
    print(f"Ratio naive (extrapolated) / ours (measured): rss {predicted['rss'] / max(ours['peak_bytes'], 1):,.0f}x, "
          f"live {predicted['live'] / max(ours['live_tensor_peak_bytes'], 1):,.0f}x")
    small_q, small_p, small_l = NAIVE_POINTS[-1]
    same = _measure("ours", small_q, small_p, small_l, args)
    print(f"Same size, both measured (Q={small_q}, P={small_p}, L={small_l}): naive live {ys_live[-1] / 1e6:,.0f} MB "
          f"vs ours live {same['live_tensor_peak_bytes'] / 1e6:.2f} MB "
          f"({ys_live[-1] / max(same['live_tensor_peak_bytes'], 1):,.0f}x); rss {ys[-1] / 1e6:,.0f} MB vs "
          f"{same['peak_bytes'] / 1e6:.2f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--passages", type=int, default=256)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=250_002)
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of the token-id law")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=("ours", "naive"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
    else:
        _report(args)


if __name__ == "__main__":
    main()
