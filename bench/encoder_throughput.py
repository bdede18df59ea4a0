"""Padded vs unpadded encoding, side by side: the M3 training step and inference encode on real DDTP batches.

Training step: M3Objective forward + backward (dense, sparse and multi-vector heads, self-distillation
on: the demo's `unified` stage) on the batches rank 0 of the demo's 2-process training draws
(bench/ddtp_batches.py: the demo's shards, batch plan and stream), in train mode (dropout on). Every
arm is the same model with the same weights; only ModelConfig differs. Batches are visited in turn and
within each batch every arm runs once, in a rotating order, so machine noise hits every arm alike; the
figure is the ratio of the summed times. Parameters get gradients (no optimiser step, so weights stay
equal); e5-small's word embeddings are frozen, as in the demo.

Inference: M3Embedder.encode (all three heads) of DDTP test passages, padded vs unpadded, alternated.

    python -m bench.encoder_throughput [--start tiny|e5-small|both] [--batches 8] [--rounds 2]
        [--group-size 8] [--methods] [--group-cuts 0.7/32,0.8/0] [--threads 2] [--work /tmp/m3-bench-ddtp]

--methods adds the other ways of cutting padding (the comparison the unpadded design was chosen by):
unpadded with the other attention kernels (sdpa, nested; `unpadded` itself is auto = grouped on CPU)
and length-sorted sub-batches through HF's padded forward (`sorted-4`: the batch's rows sorted by
length, cut in 4, each padded to its own longest). --group-cuts adds the grouped kernel with other cut
rules, RATIO/MIN_CUT (framework/model/attention.py GROUP_RATIO, GROUP_MIN_CUT). Besides wall time the
table gives this process's CPU time: on a shared machine it is the steadier measure of an arm's work.
"""
from __future__ import annotations

import argparse
import gzip
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bench.ddtp_batches import demo_run_config, prepare, stage, stage_batches
from framework.inference import M3Embedder
from framework.model import M3Model, M3Output, ModelConfig, attention, load_m3
from framework.train.objective import M3Objective
from framework.resources import ddtp_dir
from framework.train.split_batch import concat_outputs

SHIPPED_CUT = attention.GROUP_RATIO, attention.GROUP_MIN_CUT


class SortedSubBatches(nn.Module):
    """HF's padded forward on length-sorted slices of the batch, each padded to its own longest."""

    def __init__(self, model: M3Model, parts: int):
        super().__init__()
        self.model, self.parts, self.cfg = model, parts, model.cfg

    def forward(self, ids_BL: torch.Tensor, mask_BL: torch.Tensor) -> M3Output:
        lengths = mask_BL.sum(1)
        order = torch.argsort(lengths, descending=True)
        width = ids_BL.shape[1]
        outs = []
        for rows in torch.tensor_split(order, min(self.parts, len(order))):
            cut = -(-int(lengths[rows].max()) // 8) * 8
            outs.append(_widen(self.model.forward_padded(ids_BL[rows, :cut], mask_BL[rows, :cut]), width))
        out = concat_outputs(outs)
        inverse = torch.argsort(order)
        for name in ("token_ids_BL", "attention_mask_BL", "dense_BD", "sparse_BL", "colbert_BLC", "colbert_mask_BL"):
            value = getattr(out, name)
            if value is not None:
                setattr(out, name, value[inverse])
        return out


def _widen(out: M3Output, width: int) -> M3Output:
    def pad(x, w):
        return None if x is None else torch.nn.functional.pad(x, (0, 0) * (x.dim() - 2) + (0, w - x.shape[1]))

    return M3Output(pad(out.token_ids_BL, width), pad(out.attention_mask_BL, width), out.dense_BD,
                    pad(out.sparse_BL, width), pad(out.colbert_BLC, width - 1), pad(out.colbert_mask_BL, width - 1))


@dataclass(frozen=True)
class Arm:
    """One way of encoding, measured against the others."""

    cfg: ModelConfig
    sorted_parts: int | None = None
    """Length-sorted sub-batches through the padded forward (None: the model as configured)."""
    group_cut: tuple[float, int] | None = None
    """The grouped kernel's (GROUP_RATIO, GROUP_MIN_CUT) for this arm (None: as shipped)."""


def arms(methods: bool, cuts: list[tuple[float, int]]) -> dict[str, Arm]:
    out = {"padded": Arm(ModelConfig(path="-", unpad=False)), "unpadded": Arm(ModelConfig(path="-"))}
    if methods:
        for kind in ("sdpa", "nested"):  # "unpadded" is the grouped kernel (auto on CPU)
            out[f"unpad-{kind}"] = Arm(ModelConfig(path="-", attention=kind))
        out["sorted-4"] = Arm(ModelConfig(path="-", unpad=False), sorted_parts=4)
    for ratio, min_cut in cuts:
        out[f"grouped@{ratio:g}/{min_cut}"] = Arm(ModelConfig(path="-", attention="grouped"),
                                                 group_cut=(ratio, min_cut))
    return out


def build(model_dir: Path, cfg: ModelConfig, parts: int | None, loss_cfg, freeze_words: bool):
    torch.manual_seed(0)  # the same fresh heads in every arm
    model, tok = load_m3(model_dir, cfg)
    if freeze_words:
        model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    encoder = SortedSubBatches(model, parts) if parts else model
    return M3Objective(encoder, loss_cfg).train(), tok


def timed(fn) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of fn(): CPU time is what the other jobs on a shared
    machine disturb least."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def train_step(objective: M3Objective, batch, step: int) -> None:
    objective(batch=batch, step=step).terms["loss"].backward()
    objective.zero_grad(set_to_none=True)


def bench_training(start: str, args) -> None:
    model_dir, manifest = prepare(start, args.work)
    run = demo_run_config(start, model_dir, manifest)
    st = stage(run, "unified", args.group_size)
    loss_cfg = st.loss
    chosen = arms(args.methods, args.group_cuts)
    built = {name: build(model_dir, arm.cfg, arm.sorted_parts, loss_cfg, start == "e5-small")
             for name, arm in chosen.items()}
    tok = next(iter(built.values()))[1]
    batches = [b for b, _ in zip(stage_batches(st, tok, seed=1000 * 2), range(args.batches))]
    seconds = {name: [0.0, 0.0] for name in built}
    names = list(built)
    for r in range(args.rounds):
        for i, batch in enumerate(batches):
            shift = (r * len(batches) + i) % len(names)
            for name in names[shift:] + names[:shift]:
                attention.GROUP_RATIO, attention.GROUP_MIN_CUT = chosen[name].group_cut or SHIPPED_CUT
                wall, cpu = timed(lambda: train_step(built[name][0], batch, i))
                seconds[name][0] += wall
                seconds[name][1] += cpu
    tokens = args.rounds * sum(b.num_tokens for b in batches)
    samples = args.rounds * sum(b.num_samples for b in batches)
    padded = sum(b.num_padded_tokens for b in batches) * args.rounds
    print(f"\n{start}: training step (unified stage, group {st.data.group_size}, all heads, self-distillation), "
          f"{len(batches)} real batches x {args.rounds} rounds, {tokens:,} real tokens "
          f"(batch padding efficiency {tokens / padded:.3f})")
    print_table(seconds, tokens, samples)


def print_table(seconds: dict[str, list[float]], tokens: int, samples: int | None) -> None:
    print(f"  {'arm':<14} {'wall s':>8} {'tokens/s':>9} {'samples/s':>10} {'vs padded':>10} {'CPU s':>8} "
          f"{'CPU vs padded':>14}")
    base_wall, base_cpu = seconds["padded"]
    for name, (wall, cpu) in seconds.items():
        rate = f"{samples / wall:10.2f}" if samples else f"{'':>10}"
        print(f"  {name:<14} {wall:8.2f} {tokens / wall:9.0f} {rate} {base_wall / wall:9.2f}x {cpu:8.2f} "
              f"{base_cpu / cpu:13.2f}x")


def passages(num: int) -> list[str]:
    texts = []
    for path in sorted((ddtp_dir() / "test").glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as rows:
            texts += [text for line in rows for text in json.loads(line)["pos"]]
    return texts[::max(1, len(texts) // num)][:num]


def bench_inference(start: str, args) -> None:
    model_dir, _ = prepare(start, args.work)
    texts = passages(args.texts)
    embedders = {}
    for name, unpad in (("padded", False), ("unpadded", True)):
        model, tok = load_m3(model_dir, ModelConfig(path=str(model_dir), unpad=unpad))
        embedders[name] = M3Embedder(model, tok)
    seconds = {name: [0.0, 0.0] for name in embedders}
    for r in range(args.rounds * 2):
        for name in (list(embedders) if r % 2 == 0 else list(embedders)[::-1]):
            wall, cpu = timed(lambda: embedders[name].encode(texts, dense=True, sparse=True, colbert=True,
                                                             batch_size=32, max_length=256, progress=False))
            seconds[name][0] += wall
            seconds[name][1] += cpu
    ids = tok(texts, truncation=True, max_length=256)["input_ids"]
    tokens = sum(len(s) for s in ids) * args.rounds * 2
    print(f"{start}: inference encode of {len(texts)} DDTP test passages (all heads, batch 32, sorted by length), "
          f"{args.rounds * 2} passes per arm")
    print_table(seconds, tokens, None)


def parse_cuts(text: str) -> list[tuple[float, int]]:
    cuts = []
    for item in text.split(","):
        ratio, _, min_cut = item.partition("/")
        cuts.append((float(ratio), int(min_cut or 0)))
    return cuts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", choices=("tiny", "e5-small", "both"), default="both")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=None, help="default: the stage's own (4)")
    parser.add_argument("--texts", type=int, default=512, help="passages for the inference comparison")
    parser.add_argument("--methods", action="store_true", help="also the other unpadding methods")
    parser.add_argument("--group-cuts", type=parse_cuts, default=[],
                        help="also the grouped kernel with these RATIO/MIN_CUT rules, e.g. 0.7/32,0.8/0")
    parser.add_argument("--no-inference", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/m3-bench-ddtp"),
                        help="starting points and shards are built here once (about 2 minutes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for start in (("tiny", "e5-small") if args.start == "both" else (args.start,)):
        bench_training(start, args)
        if not args.no_inference:
            bench_inference(start, args)


if __name__ == "__main__":
    main()
