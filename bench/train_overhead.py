"""Framework overhead: our training step vs plain PyTorch on the same model and batch, one process.

    python bench/train_overhead.py [--hidden 256 --layers 4 --queries 8 --group 4 --length 128 --steps 12 --zero 0]

"ours" is what the trainer does per optimizer step of one micro-batch (framework/train/stage.py): the
DeepSpeed engine (ZeRO stage from --zero, fp32 on CPU) around M3Objective, engine.backward, the step's
one all-ranks agreement (finite flags on the device, one all-reduce and one read), engine.step with
clipping and the lr schedule behind the update gate, and the metric meter. "plain" is M3Objective's forward,
loss.backward(), clip_grad_norm_, torch AdamW step and zero_grad. Both start from the same weights and
see the same batch; steps alternate (plain, ours, plain, ...) so machine noise hits both alike, and the
median step times are compared. Goal: ratio <= 1.10.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from transformers import XLMRobertaConfig, XLMRobertaModel

from framework.data.batch import Batch
from framework.loss import LossConfig
from framework.model import M3Model, ModelConfig
from framework.parallel import all_reduce_sum, init_distributed, shutdown
from framework.train.batching import BatchPlan
from framework.train.config import EngineConfig, OptimConfig
from framework.train.engine import build_engine, resolve_ds_config
from framework.train.meter import Meter
from framework.train.objective import M3Objective

REPO = Path(__file__).resolve().parents[1]


def make_model(hidden: int, layers: int, vocab: int = 8000) -> M3Model:
    config = XLMRobertaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                              num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                              max_position_embeddings=514)
    torch.manual_seed(0)
    return M3Model(XLMRobertaModel(config, add_pooling_layer=False), [0, 1, 2, 3], ModelConfig())


def make_batch(args, vocab: int = 8000):
    g = torch.Generator().manual_seed(0)
    q = torch.randint(5, vocab, (args.queries, args.length // 4), generator=g)
    p = torch.randint(5, vocab, (args.queries * args.group, args.length), generator=g)
    return Batch.of(q, torch.ones_like(q), p, torch.ones_like(p), group_size=args.group)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--zero", type=int, default=0, choices=(0, 1, 2, 3))
    args = parser.parse_args()
    init_distributed()
    cfg = LossConfig.preset("reference")
    optim = OptimConfig(lr=1e-5, warmup_steps=0, schedule="constant")
    base = make_model(args.hidden, args.layers)
    plain = M3Objective(copy.deepcopy(base), cfg).train()
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=optim.lr)
    plan = BatchPlan({0: args.queries}, 1, 1, args.steps)
    ds = resolve_ds_config(EngineConfig(deepspeed_config=str(REPO / f"ds_configs/zero{args.zero}.json")), plan,
                           optim, "fp32")
    engine, updates, _ = build_engine(M3Objective(copy.deepcopy(base), cfg).train(), optim, plan, ds)
    batch = make_batch(args)
    meter = Meter()

    def plain_step(step: int) -> None:
        terms = plain(batch=batch, step=step).terms
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), optim.grad_clip)
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)

    def our_step(step: int) -> None:
        out = engine(batch=batch, step=step)
        loss = out.terms["loss"]
        engine.backward(loss)
        finite = all_reduce_sum(torch.stack([torch.isfinite(loss.detach())]).float()).tolist()
        with updates.withheld(finite[0] < 1):
            engine.step()
        meter.add(batch, {k: v.detach() for k, v in out.terms.items()}, out.report)

    times = {"plain": [], "ours": []}
    for step in range(args.steps + 2):
        for name, fn in (("plain", plain_step), ("ours", our_step)):
            start = time.perf_counter()
            fn(step)
            if step >= 2:  # the first two steps warm up allocators and DeepSpeed's buffers
                times[name].append(time.perf_counter() - start)
    plain_s, ours_s = statistics.median(times["plain"]), statistics.median(times["ours"])
    params = sum(p.numel() for p in base.parameters())
    print(f"model: XLM-R shape hidden {args.hidden}, {args.layers} layers ({params / 1e6:.1f} M parameters); batch "
          f"{args.queries} queries x {args.length // 4} tokens + {args.queries * args.group} passages x "
          f"{args.length} tokens; ZeRO-{args.zero}, fp32, {torch.get_num_threads()} threads, {args.steps} steps")
    print(f"  plain PyTorch step  median {plain_s * 1000:8.1f} ms")
    print(f"  framework step      median {ours_s * 1000:8.1f} ms")
    print(f"  ratio ours / plain  {ours_s / plain_s:.3f}")
    shutdown()


if __name__ == "__main__":
    main()
