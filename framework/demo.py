"""`python -m framework demo`: the whole core path on CPU in about a minute.

Trains a sentencepiece tokenizer on the shipped multilingual sample, builds a tiny random XLM-R,
fine-tunes encoder + three heads with the M3 loss (reference preset, self-distillation switched on
half-way), exports a BGE-M3 directory, reloads it and reports retrieval before and after training.

The task is synthetic and says nothing about the method's quality: each passage is one line of the
sample (a list of language/country names), its query a seeded span of two or three of those names,
and the negatives are other lines. It shows that the heads learn and that the export round-trips.
"""
from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from framework.inference import M3Embedder, colbert_score, lexical_match_score
from framework.loss import LossConfig
from framework.model import load_m3, save_m3
from framework.train import M3Objective

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / "data" / "multilingual_sample.txt"


def make_pairs(lines: list[str], seed: int) -> list[tuple[str, str]]:
    """(query, passage): the query is a span of 2-3 consecutive names from the passage line."""
    rng = random.Random(seed)
    pairs = []
    for line in lines:
        names = [n.strip() for n in line.split(",") if n.strip()]
        if len(names) < 4:
            continue
        width = rng.choice((2, 3))
        start = rng.randrange(len(names) - width + 1)
        pairs.append((", ".join(names[start:start + width]), line))
    return pairs


def retrieval_table(embedder: M3Embedder, pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Recall@1 of each head and of the hybrids, each query against all passages of the split."""
    queries, passages = [q for q, _ in pairs], [p for _, p in pairs]
    q = embedder.encode(queries, multi_vector=True, progress=False)
    p = embedder.encode(passages, multi_vector=True, progress=False)
    dense = q["dense_vecs"] @ p["dense_vecs"].T
    sparse = np.array([[lexical_match_score(a, b) for b in p["lexical_weights"]] for a in q["lexical_weights"]])
    multi = np.array([[colbert_score(a, b) for b in p["colbert_vecs"]] for a in q["colbert_vecs"]])
    modes = {"dense": dense, "sparse": sparse, "multi-vector": multi, "dense+sparse": dense + 0.3 * sparse,
             "all": dense + 0.3 * sparse + multi}
    gold = np.arange(len(pairs))
    return {name: float((scores.argmax(1) == gold).mean()) for name, scores in modes.items()}


def _batches(pairs, batch_size: int, group_size: int, steps: int, seed: int):
    rng = random.Random(seed)
    passages = [p for _, p in pairs]
    for _ in range(steps):
        chosen = rng.sample(range(len(pairs)), batch_size)
        queries, group = [], []
        for i in chosen:
            queries.append(pairs[i][0])
            negatives = rng.sample([j for j in range(len(pairs)) if j != i], group_size - 1)
            group += [pairs[i][1]] + [passages[j] for j in negatives]
        yield queries, group


def train(model, tok, pairs, steps: int, batch_size: int = 16, group_size: int = 4, lr: float = 1e-3,
          seed: int = 0) -> None:
    cfg = LossConfig.preset("reference", self_distill_start_step=steps // 2)
    objective = M3Objective(model, cfg).train()
    optimizer = torch.optim.AdamW(objective.parameters(), lr=lr)
    start = time.time()
    for step, (queries, passages) in enumerate(_batches(pairs, batch_size, group_size, steps, seed)):
        q = tok(queries, padding=True, truncation=True, max_length=64, return_tensors="pt")
        p = tok(passages, padding=True, truncation=True, max_length=128, return_tensors="pt")
        terms = objective(q["input_ids"], q["attention_mask"], p["input_ids"], p["attention_mask"],
                          group_size, step)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
        if step % 25 == 0 or step == steps - 1:
            shown = " ".join(f"{k}={v.item():.3f}" for k, v in terms.items())
            print(f"  step {step + 1:4d}/{steps}  {shown}  ({time.time() - start:.0f} s)", flush=True)


def run(out_root: Path, steps: int = 300, seed: int = 0) -> Path:
    sys.path.insert(0, str(REPO_ROOT))
    from tools.build_model import build_model
    from tools.train_tokenizer import train_tokenizer

    out = out_root / time.strftime("demo-%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    print(f"[1/5] tokenizer: sentencepiece on {SAMPLE.name} -> {out / 'tokenizer'}", flush=True)
    tok_dir = train_tokenizer([SAMPLE], out / "tokenizer", vocab_size=3000, seed=seed)
    print("[2/5] model: tiny random XLM-RoBERTa (no pretrained weights; the numbers below show the "
          "pipeline works, not the method's quality)", flush=True)
    model_dir = build_model(tok_dir, out / "init", size="tiny", seed=seed)
    torch.manual_seed(seed)
    model, tok = load_m3(model_dir)
    lines = [line.strip() for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(seed).shuffle(lines)
    split = int(0.8 * len(lines))
    train_pairs, test_pairs = make_pairs(lines[:split], seed), make_pairs(lines[split:], seed + 1)
    print(f"[3/5] data: {len(train_pairs)} training pairs, {len(test_pairs)} held-out pairs", flush=True)
    before = retrieval_table(M3Embedder(model, tok), test_pairs)
    print(f"[4/5] training {steps} steps (M3 loss, reference preset; self-distillation from step "
          f"{steps // 2 + 1})", flush=True)
    train(model, tok, train_pairs, steps, seed=seed)
    export = save_m3(model, tok, out / "bge-m3")
    after = retrieval_table(M3Embedder.from_pretrained(export), test_pairs)
    print(f"[5/5] exported {export}; held-out recall@1 ({len(test_pairs)} queries vs all passages):")
    print(f"  {'mode':<14}{'before':>8}{'after':>8}")
    for mode in before:
        print(f"  {mode:<14}{before[mode]:>8.3f}{after[mode]:>8.3f}")
    print(f"\nLoad it in FlagEmbedding:  BGEM3FlagModel('{export}', use_fp16=False, devices='cpu')")
    return out
