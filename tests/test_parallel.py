"""framework.parallel: launcher detection (single process) and collectives + gather (one 2-process gloo launch).

The 2-process checks compare the engine-style averaged gradient (mean over ranks, as DeepSpeed applies
it) with the single-process gradient of the same loss on the concatenated batch, computed in each
worker from the same seeded inputs. Everything runs in float64, so the tolerance is tight:
rtol=1e-10, atol=1e-12 (a missing world-size factor is off by 2x, far outside it).

Shape legend: Q queries, P passages (= Q*G), G group size, L/M query/passage tokens, C vector width.
"""
from __future__ import annotations

import os
import re

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from framework.loss import GlobalDense, HeadScores, LossConfig, colbert_scores, infonce, m3_loss, sparse_scores
from framework.parallel import (DistEnv, all_gather_object, all_reduce_mean, all_reduce_sum, broadcast_object,
                                detect_env, expand_nodelist, first_host, free_port, gather, gather_with_grad,
                                init_distributed, is_initialized, rank, row_sparse_mean, shutdown, world_size)

TOL = {"rtol": 1e-10, "atol": 1e-12}
WORLD = 2

TORCHRUN = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "abc"}
SLURM = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
         "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_JOB_NODELIST": "gpu[007-008]",
         "SLURM_JOB_ID": "123456"}


# ---------------------------------------------------------------- launcher detection (single process)

def test_torchrun_variables():
    assert detect_env(TORCHRUN) == DistEnv(rank=3, world_size=8, local_rank=1, local_world_size=2,
                                           master_addr="10.0.0.5", master_port=29500, launcher="torchrun")


def test_deepspeed_launcher_variables():
    env = {**{k: v for k, v in TORCHRUN.items() if k not in ("TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE")},
           "LOCAL_SIZE": "4", "CROSS_RANK": "0"}
    got = detect_env(env)
    assert (got.rank, got.world_size, got.local_rank, got.local_world_size) == (3, 8, 1, 4)
    assert got.launcher == "deepspeed"


def test_slurm_variables_derive_the_rendezvous():
    got = detect_env(SLURM)
    assert got == DistEnv(rank=5, world_size=8, local_rank=1, local_world_size=4, master_addr="gpu007",
                          master_port=20000 + 123456 % 10000, launcher="slurm")


def test_slurm_respects_master_variables_and_rank_wins_over_slurm():
    got = detect_env({**SLURM, "MASTER_ADDR": "head", "MASTER_PORT": "1234"})
    assert (got.master_addr, got.master_port) == ("head", 1234)
    # torchrun started inside an srun step: torchrun's own variables describe the process.
    assert detect_env({**SLURM, **TORCHRUN}).launcher == "torchrun"


def test_single_process_defaults():
    got = detect_env({})
    assert (got.rank, got.world_size, got.local_rank, got.launcher, got.master_addr) == (0, 1, 0, "single",
                                                                                           "127.0.0.1")
    assert 0 < got.master_port < 65536
    assert detect_env({"MASTER_PORT": "4321"}).master_port == 4321


@pytest.mark.parametrize("nodelist, hosts", [
    ("node[01-04,07],gpu5", ["node01", "node02", "node03", "node04", "node07", "gpu5"]),
    ("a1", ["a1"]),
    ("x[9-11]", ["x9", "x10", "x11"]),
    ("n[0098-0100]", ["n0098", "n0099", "n0100"]),
    ("r[1-2]n[08-09],login", ["r1n08", "r1n09", "r2n08", "r2n09", "login"]),
])
def test_nodelist_expansion(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts
    assert first_host(nodelist) == hosts[0]


@pytest.mark.parametrize("environ, names", [
    ({**TORCHRUN, "RANK": "8"}, "RANK=8"),
    ({**TORCHRUN, "RANK": "one"}, "RANK='one'"),
    ({**TORCHRUN, "WORLD_SIZE": "0"}, "WORLD_SIZE=0"),
    ({**TORCHRUN, "LOCAL_RANK": "2"}, "LOCAL_WORLD_SIZE=2"),
    ({k: v for k, v in TORCHRUN.items() if k != "WORLD_SIZE"}, "WORLD_SIZE"),
    ({k: v for k, v in TORCHRUN.items() if k != "MASTER_ADDR"}, "MASTER_ADDR"),
    ({**TORCHRUN, "MASTER_PORT": "70000"}, "MASTER_PORT=70000"),
    ({**SLURM, "SLURM_PROCID": "8"}, "SLURM_PROCID=8"),
    ({**SLURM, "SLURM_NTASKS": "8.0"}, "SLURM_NTASKS='8.0'"),
    ({**SLURM, "SLURM_JOB_ID": "12_3"}, "SLURM_JOB_ID='12_3'"),
    ({**SLURM, "SLURM_JOB_NODELIST": "gpu[007-"}, "gpu[007-"),
    ({**SLURM, "SLURM_JOB_NODELIST": "gpu[9-7]"}, "9-7"),
    ({k: v for k, v in SLURM.items() if k != "SLURM_JOB_NODELIST"}, "SLURM_JOB_NODELIST"),
])
def test_inconsistent_variables_name_the_culprit(environ, names):
    with pytest.raises(ValueError, match=re.escape(names)):
        detect_env(environ)


# ---------------------------------------------------------------- one process, with and without a group

def test_helpers_without_a_process_group():
    if is_initialized():
        pytest.skip("a process group already exists in this test process")
    x = torch.randn(3, 2, requires_grad=True)
    got = gather_with_grad(x)
    assert got.tensor is x and (got.offset, got.sizes, got.local_rows) == (0, (3,), slice(0, 3))
    assert (rank(), world_size(), broadcast_object("cfg"), all_gather_object(7)) == (0, 1, "cfg", [7])
    assert all_reduce_mean({"loss": 2.0}) == {"loss": 2.0}


def test_world_of_one_exports_the_variables_and_runs_the_same_path(monkeypatch):
    if is_initialized():
        pytest.skip("a process group already exists in this test process")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        # setenv first, so that monkeypatch records the variable's original state (often: absent) and
        # removes what init_distributed exports; a leaked RANK would reach later subprocesses (sbatch).
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    env = init_distributed(detect_env({}), backend="gloo", timeout_s=30)
    try:
        assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["MASTER_PORT"]) == (
            "0", "1", str(env.master_port))
        assert init_distributed(env) == env  # idempotent
        x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
        got = gather_with_grad(x, rescale_grad=True)
        (got.tensor * torch.arange(6.0, dtype=torch.float64).view(3, 2)).sum().backward()
        torch.testing.assert_close(x.grad, torch.arange(6.0, dtype=torch.float64).view(3, 2), **TOL)
        assert all_reduce_sum({"a": 1.5, "b": 2.0}) == {"a": 1.5, "b": 2.0}
    finally:
        shutdown()
    assert not is_initialized()


# ---------------------------------------------------------------- two gloo processes, one launch

@pytest.mark.distributed
def test_two_process_gather_and_collectives():
    mp.spawn(_worker, args=(free_port(),), nprocs=WORLD, join=True)


def _worker(rank_: int, port: int) -> None:
    torch.set_num_threads(1)
    env = DistEnv(rank=rank_, world_size=WORLD, local_rank=rank_, local_world_size=WORLD,
                  master_addr="127.0.0.1", master_port=port, launcher="env")
    init_distributed(env, backend="gloo", timeout_s=60)
    try:
        assert init_distributed(env) == env and world_size() == WORLD
        _check_dense(rank_)
        _check_multi_vector_and_sparse(rank_)
        _check_empty_batch_and_mismatches(rank_)
        _check_collectives(rank_)
        _check_row_sparse_mean(rank_)
    finally:
        shutdown()


def _engine_grads(model: nn.Module) -> list[torch.Tensor]:
    """What a data-parallel engine applies: the mean over ranks of each parameter's gradient."""
    return [all_reduce_mean(param.grad) for param in model.parameters()]


def _local_grads(model: nn.Module) -> list[torch.Tensor]:
    return [param.grad.clone() for param in model.parameters()]


# (a) dense: rank 0 holds 3 queries, rank 1 holds 2; G = 2; loss = CE(q @ p.T, targets i*G) via GlobalDense.
QUERIES_PER_RANK, GROUP = (3, 2), 2


def _dense_model() -> nn.Module:
    torch.manual_seed(0)  # identical weights on every rank and in the reference
    return nn.Linear(8, 6, dtype=torch.float64)


def _dense_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    num_q = sum(QUERIES_PER_RANK)
    return (torch.randn(num_q, 8, generator=gen, dtype=torch.float64),
            torch.randn(num_q * GROUP, 8, generator=gen, dtype=torch.float64))


def _check_dense(rank_: int) -> None:
    cfg = LossConfig(use_sparse=False, use_colbert=False, temperature=0.5)
    q_in_QI, p_in_PI = _dense_inputs()
    reference = _dense_model()
    q_ref = F.normalize(reference(q_in_QI), dim=-1)
    p_ref = F.normalize(reference(p_in_PI), dim=-1)
    m3_loss(HeadScores(dense=q_ref @ p_ref.T), GROUP, 0, cfg)["loss"].backward()
    expected = _local_grads(reference)

    first = sum(QUERIES_PER_RANK[:rank_])
    rows = slice(first, first + QUERIES_PER_RANK[rank_])
    cols = slice(first * GROUP, (first + QUERIES_PER_RANK[rank_]) * GROUP)
    for rescale, factor in ((True, 1.0), (False, 1.0 / WORLD)):
        model = _dense_model()
        q = gather_with_grad(F.normalize(model(q_in_QI[rows]), dim=-1), rescale_grad=rescale)
        p = gather_with_grad(F.normalize(model(p_in_PI[cols]), dim=-1), rescale_grad=rescale)
        assert (q.sizes, q.offset, p.offset) == (QUERIES_PER_RANK, first, first * GROUP)
        torch.testing.assert_close(q.tensor, q_ref.detach(), **TOL)
        dense = GlobalDense(scores_RS=q.tensor @ p.tensor.T, row_offset=q.offset)
        m3_loss(HeadScores(), GROUP, 0, cfg, dense_global=dense)["loss"].backward()
        for got, want in zip(_engine_grads(model), expected):
            torch.testing.assert_close(got, want * factor, **TOL)
    # Local rows: this rank's queries x all passages, the passages' gradient summed over ranks in backward.
    model = _dense_model()
    q_local = F.normalize(model(q_in_QI[rows]), dim=-1)
    p = gather_with_grad(F.normalize(model(p_in_PI[cols]), dim=-1), reduce_grad=True)
    weight = q_local.shape[0] * WORLD / sum(QUERIES_PER_RANK)
    dense = GlobalDense(scores_QS=q_local @ p.tensor.T, row_offset=first, row_weight=weight)
    m3_loss(HeadScores(), GROUP, 0, cfg, dense_global=dense)["loss"].backward()
    for got, want in zip(_engine_grads(model), expected):
        torch.testing.assert_close(got, want, **TOL)


# (b) multi-vector and sparse: different Q, L (queries) and M (passages) per rank, padded by the gather.
MV_SHAPES = {0: (2, 3, 4), 1: (1, 5, 6)}  # rank -> (queries, L, M)
NUM_IDS = 7


class _TokenHeads(nn.Module):
    """Per-token colbert vectors and sparse weights, zero at padding (as M3Model's heads are)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.colbert = nn.Linear(5, 4, dtype=torch.float64)
        self.sparse = nn.Linear(5, 1, dtype=torch.float64)

    def forward(self, feats_BLI: torch.Tensor, mask_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep_BL = mask_BL.to(feats_BLI.dtype)
        return (self.colbert(feats_BLI) * keep_BL[..., None],
                torch.relu(self.sparse(feats_BLI)).squeeze(-1) * keep_BL)


def _token_inputs(rank_: int, num_rows: int, length: int, tag: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(100 * tag + rank_)
    feats_BLI = torch.randn(num_rows, length, 5, generator=gen, dtype=torch.float64)
    ids_BL = torch.randint(0, NUM_IDS, (num_rows, length), generator=gen)
    mask_BL = torch.ones(num_rows, length, dtype=torch.int64)
    mask_BL[0, length - 1] = 0  # some padding inside a rank's own batch too
    return feats_BLI, ids_BL, mask_BL


def _mv_loss(q_col, q_mask, q_sparse, q_ids, p_col, p_mask, p_sparse, p_ids) -> torch.Tensor:
    return (infonce(colbert_scores(q_col, q_mask, p_col, p_mask, max_block_elements=64), GROUP)
            + infonce(sparse_scores(q_sparse, q_ids, p_sparse, p_ids) * 3.0, GROUP))


def _side_inputs(rank_: int, side: str) -> tuple[torch.Tensor, ...]:
    num_q, len_q, len_p = MV_SHAPES[rank_]
    return (_token_inputs(rank_, num_q, len_q, tag=1) if side == "q"
            else _token_inputs(rank_, num_q * GROUP, len_p, tag=2))


def _padded_reference(model: _TokenHeads, side: str) -> list[torch.Tensor]:
    """Both ranks' heads computed in this process, padded to the longest rank and concatenated."""
    parts = [_side_inputs(r, side) for r in range(WORLD)]
    width = max(feats.shape[1] for feats, _, _ in parts)
    cols, sparse, ids, masks = [], [], [], []
    for feats, ids_BL, mask_BL in parts:
        col_BLC, sparse_BL = model(feats, mask_BL)
        pad = width - feats.shape[1]
        cols.append(F.pad(col_BLC, (0, 0, 0, pad)))
        sparse.append(F.pad(sparse_BL, (0, pad)))
        ids.append(F.pad(ids_BL, (0, pad)))
        masks.append(F.pad(mask_BL, (0, pad)))
    return [torch.cat(x) for x in (cols, masks, sparse, ids)]


def _check_multi_vector_and_sparse(rank_: int) -> None:
    reference = _TokenHeads()
    expected_q = _padded_reference(reference, "q")
    _mv_loss(*expected_q, *_padded_reference(reference, "p")).backward()
    expected = _local_grads(reference)

    model, gathered = _TokenHeads(), {}
    for side in ("q", "p"):
        feats, ids_BL, mask_BL = _side_inputs(rank_, side)
        col_BLC, sparse_BL = model(feats, mask_BL)
        gathered[side] = [gather_with_grad(col_BLC).tensor, gather(mask_BL).tensor,
                          gather_with_grad(sparse_BL).tensor, gather(ids_BL).tensor]
    for got, want in zip(gathered["q"], expected_q):
        torch.testing.assert_close(got, want.detach(), **TOL)
    ids_pad = gather(_side_inputs(rank_, "q")[1], pad_value=-1).tensor
    assert ids_pad.shape == (3, 5) and (ids_pad[:2, 3:] == -1).all() and (ids_pad[2] >= 0).all()
    _mv_loss(*gathered["q"], *gathered["p"]).backward()
    for got, want in zip(_engine_grads(model), expected):
        torch.testing.assert_close(got, want, **TOL)


# (b2) ZeRO-0's gradient mean with the embedding reduced by touched rows (framework/parallel/grad_sync.py).
def _check_row_sparse_mean(rank_: int) -> None:
    """Equal, bit for bit, to the flat all-reduce mean DeepSpeed's ZeRO-0 computes (sum over ranks, then
    x 1/W): rows touched on one rank, on both, on none; a NaN row; a parameter without a gradient."""
    gen = torch.Generator().manual_seed(rank_)
    embed, linear, unused = nn.Embedding(50, 4), nn.Linear(4, 3), nn.Linear(2, 2)
    module = nn.ModuleList([embed, linear, unused])
    ids = torch.tensor([[1, 7, 7, 30]]) if rank_ == 0 else torch.tensor([[7, 12, 49, 49]])
    (linear(embed(ids)) * torch.randn(1, 4, 3, generator=gen)).sum().backward()
    if rank_ == 1:
        embed.weight.grad[40] = float("nan")
    params = list(module.parameters())
    expected = []
    for param in params:
        flat = torch.zeros_like(param) if param.grad is None else param.grad.clone()
        torch.distributed.all_reduce(flat)
        expected.append(flat.mul_(1.0 / WORLD))
    row_sparse_mean(params, {id(embed.weight)})
    for param, want in zip(params, expected):
        torch.testing.assert_close(param.grad, want, rtol=0, atol=0, equal_nan=True)
    touched = {1, 7, 12, 30, 40, 49}
    assert all((embed.weight.grad[r] != 0).any() for r in touched)
    assert (embed.weight.grad[[r for r in range(50) if r not in touched]] == 0).all()


# (c) an empty local batch, mismatched ranks, and the metric / object collectives.
def _check_empty_batch_and_mismatches(rank_: int) -> None:
    x = torch.arange(8.0, dtype=torch.float64).view(2, 4) if rank_ == 0 else torch.empty(0, 4,
                                                                                         dtype=torch.float64)
    x.requires_grad_(True)
    got = gather_with_grad(x)
    assert (got.sizes, got.offset, got.num_local) == ((2, 0), 2 * rank_, 2 - 2 * rank_)
    torch.testing.assert_close(got.tensor, torch.arange(8.0, dtype=torch.float64).view(2, 4), **TOL)
    got.tensor.sum().backward()
    assert x.grad.shape == x.shape
    assert gather(torch.empty(0, 3 + rank_)).tensor.shape == (0, 4)
    for bad in (torch.zeros(2, 3, dtype=torch.float32 if rank_ == 0 else torch.float64),
                torch.zeros((2, 3) if rank_ == 0 else (2, 3, 1))):
        with pytest.raises(ValueError, match="ranks must pass"):
            gather(bad)
    with pytest.raises(ValueError, match="different metric keys"):
        all_reduce_sum({"loss": 1.0, "acc" if rank_ == 0 else "recall": 1.0})


def _check_collectives(rank_: int) -> None:
    assert all_reduce_mean({"loss": float(rank_ + 1), "acc": 0.5 * rank_}) == {"acc": 0.25, "loss": 1.5}
    torch.testing.assert_close(all_reduce_sum(torch.full((2,), float(rank_ + 1))), torch.full((2,), 3.0))
    config = {"lr": 1e-5, "stages": ["a", "b"]}
    assert broadcast_object(config if rank_ == 0 else None) == config
    assert all_gather_object(10 * rank_) == [0, 10]
