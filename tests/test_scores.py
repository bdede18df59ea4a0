"""Score matrices of framework.loss.scores against brute-force loops.

Shape legend: Q queries, P passages, L query tokens, M passage tokens, D width, V vocabulary.
"""
import pytest
import torch
import torch.nn.functional as F

from framework.loss import HeadWeights, colbert_scores, dense_scores, ensemble_scores, sparse_scores

PAD, CLS, EOS, UNK = 1, 0, 2, 3
SPECIAL = (CLS, PAD, EOS, UNK)


def _token_batch(gen, num_texts, max_len, vocab, min_len=3):
    """Ids with CLS first, EOS last, PAD after, repeated ids likely; raw weights and their keep mask."""
    lengths = torch.randint(min_len, max_len + 1, (num_texts,), generator=gen)
    ids_BL = torch.randint(4, vocab, (num_texts, max_len), generator=gen)
    mask_BL = torch.arange(max_len)[None] < lengths[:, None]
    ids_BL[:, 0] = CLS
    ids_BL[torch.arange(num_texts), lengths - 1] = EOS
    ids_BL[~mask_BL] = PAD
    ids_BL[0, 1] = UNK
    raw_BL = torch.randn(num_texts, max_len, generator=gen, dtype=torch.float64, requires_grad=True)
    keep_BL = mask_BL & ~torch.isin(ids_BL, torch.tensor(SPECIAL))
    return ids_BL, raw_BL, keep_BL


def _weights(raw_BL, keep_BL):
    """What the model hands over: relu(linear(h)), zero at special ids and padding."""
    return torch.relu(raw_BL) * keep_BL


def _brute_sparse(q_w, q_ids, p_w, p_ids):
    def max_weights(w_L, ids_L):
        best = {}
        for w, t in zip(w_L.tolist(), ids_L.tolist()):
            best[t] = max(best.get(t, 0.0), w)
        return best
    out = torch.zeros(q_w.shape[0], p_w.shape[0], dtype=torch.float64)
    for i in range(q_w.shape[0]):
        q_best = max_weights(q_w[i], q_ids[i])
        for j in range(p_w.shape[0]):
            p_best = max_weights(p_w[j], p_ids[j])
            out[i, j] = sum(q_best[t] * p_best[t] for t in q_best.keys() & p_best.keys())
    return out


def _naive_sparse(q_w, q_ids, p_w, p_ids, vocab):
    """The reference's training path: scatter into (B, L, V), max over L, zero the special columns."""
    def embed(w_BL, ids_BL):
        full_BLV = torch.zeros(*ids_BL.shape, vocab, dtype=w_BL.dtype)
        full_BLV = torch.scatter(full_BLV, -1, ids_BL.unsqueeze(-1), w_BL.unsqueeze(-1))
        sparse_BV = full_BLV.max(dim=1).values
        sparse_BV[:, list(SPECIAL)] *= 0.0
        return sparse_BV
    return embed(q_w, q_ids) @ embed(p_w, p_ids).T


def test_dense_scores_match_loop():
    gen = torch.Generator().manual_seed(0)
    q_QD, p_PD = torch.randn(3, 5, generator=gen), torch.randn(6, 5, generator=gen)
    expected = torch.tensor([[sum(q_QD[i, d] * p_PD[j, d] for d in range(5)) for j in range(6)]
                             for i in range(3)])
    torch.testing.assert_close(dense_scores(q_QD, p_PD), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_scores_match_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    q_ids, q_raw, q_keep = _token_batch(gen, 3, 6, vocab=12)
    p_ids, p_raw, p_keep = _token_batch(gen, 6, 9, vocab=12)
    q_w, p_w = _weights(q_raw, q_keep), _weights(p_raw, p_keep)
    assert (q_ids[:, None, :, None] == q_ids[:, None, None, :]).sum() > q_ids.numel()  # repeats exist
    got = sparse_scores(q_w, q_ids, p_w, p_ids)
    torch.testing.assert_close(got, _brute_sparse(q_w, q_ids, p_w, p_ids))
    assert got.abs().sum() > 0


def test_sparse_gradient_matches_naive_scatter():
    gen = torch.Generator().manual_seed(3)
    q_ids, q_raw, q_keep = _token_batch(gen, 4, 7, vocab=15)
    p_ids, p_raw, p_keep = _token_batch(gen, 8, 10, vocab=15)
    upstream_QP = torch.randn(4, 8, generator=gen, dtype=torch.float64)

    def grads(score_fn):
        scores_QP = score_fn(_weights(q_raw, q_keep), q_ids, _weights(p_raw, p_keep), p_ids)
        return scores_QP, torch.autograd.grad((scores_QP * upstream_QP).sum(), (q_raw, p_raw))

    ours, (g_q, g_p) = grads(sparse_scores)
    naive, (n_q, n_p) = grads(lambda *a: _naive_sparse(*a, vocab=15))
    torch.testing.assert_close(ours, naive)
    torch.testing.assert_close(g_q, n_q)
    torch.testing.assert_close(g_p, n_p)
    assert g_q.abs().sum() > 0 and g_p.abs().sum() > 0


def test_sparse_repeated_token_gradient_goes_to_its_max():
    q_w = torch.tensor([[0.2, 0.7, 0.1]], requires_grad=True)
    p_w = torch.tensor([[0.5, 0.4]], requires_grad=True)
    scores = sparse_scores(q_w, torch.tensor([[9, 9, 4]]), p_w, torch.tensor([[9, 4]]))
    torch.testing.assert_close(scores, torch.tensor([[0.7 * 0.5 + 0.1 * 0.4]]))
    scores.sum().backward()
    torch.testing.assert_close(q_w.grad, torch.tensor([[0.0, 0.5, 0.4]]))
    torch.testing.assert_close(p_w.grad, torch.tensor([[0.7, 0.1]]))


def test_sparse_never_allocates_the_vocabulary():
    # Ids near 1e12 would need terabytes as (B, L, V); the compact vocabulary only sees what occurs.
    big = 10**12
    q_ids = torch.tensor([[big, 5, big + 7]])
    p_ids = torch.tensor([[big + 7, 6, 5], [big, big, 8]])
    q_w, p_w = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.5, 9.0, 0.25], [0.1, 0.3, 4.0]])
    torch.testing.assert_close(sparse_scores(q_w, q_ids, p_w, p_ids),
                               torch.tensor([[3.0 * 0.5 + 2.0 * 0.25, 1.0 * 0.3]]))


def test_sparse_without_shared_tokens_is_zero():
    scores = sparse_scores(torch.ones(2, 3), torch.tensor([[4, 5, 6], [4, 4, 4]]),
                           torch.ones(3, 2), torch.tensor([[7, 8], [9, 9], [10, 11]]))
    assert torch.equal(scores, torch.zeros(2, 3))


def _unit(gen, *shape):
    return F.normalize(torch.randn(*shape, generator=gen, dtype=torch.float64), dim=-1)


def _padded(gen, num_texts, max_len, dim):
    lengths = torch.randint(1, max_len + 1, (num_texts,), generator=gen)
    lengths[0] = max_len
    mask_BL = (torch.arange(max_len)[None] < lengths[:, None]).long()
    return _unit(gen, num_texts, max_len, dim) * mask_BL[..., None], mask_BL


def _brute_colbert(q_QLD, q_mask, p_PMD, p_mask):
    out = torch.zeros(q_QLD.shape[0], p_PMD.shape[0], dtype=q_QLD.dtype)
    for i in range(q_QLD.shape[0]):
        q_real = [q_QLD[i, a] for a in range(q_QLD.shape[1]) if q_mask[i, a]]
        for j in range(p_PMD.shape[0]):
            p_real = [p_PMD[j, b] for b in range(p_PMD.shape[1]) if p_mask[j, b]]
            out[i, j] = sum(max(float(q @ p) for p in p_real) for q in q_real) / len(q_real)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_colbert_scores_match_loop_over_real_tokens(seed):
    gen = torch.Generator().manual_seed(seed)
    q_QLD, q_mask = _padded(gen, 3, 5, 4)
    p_PMD, p_mask = _padded(gen, 6, 8, 4)
    # A passage whose real tokens all point away from query 0's first token: the padding's zero
    # vectors must not win the max (the reference would score 0 there).
    p_PMD[5] = -q_QLD[0, 0] * p_mask[5, :, None]
    got = colbert_scores(q_QLD, q_mask, p_PMD, p_mask, max_block_elements=3 * 5 * 4 * 8)
    torch.testing.assert_close(got, _brute_colbert(q_QLD, q_mask, p_PMD, p_mask))


# Q=3, L=5, M=6: 30 elements per (query, passage) pair. Budgets from one pair per block (queries and
# passages both chunked) through whole query rows with passage chunks of 2 to everything at once.
@pytest.mark.parametrize("max_block_elements", [1, 30, 31, 100, 200, 10**6])
def test_colbert_chunked_equals_unchunked_with_gradients(max_block_elements):
    gen = torch.Generator().manual_seed(7)
    q_QLD, q_mask = _padded(gen, 3, 5, 4)
    p_PMD, p_mask = _padded(gen, 7, 6, 4)
    q_QLD.requires_grad_(True)
    p_PMD.requires_grad_(True)
    upstream_QP = torch.randn(3, 7, generator=gen, dtype=torch.float64)

    def run(size):
        scores_QP = colbert_scores(q_QLD, q_mask, p_PMD, p_mask, max_block_elements=size)
        return (scores_QP, *torch.autograd.grad((scores_QP * upstream_QP).sum(), (q_QLD, p_PMD)))

    for got, want in zip(run(max_block_elements), run(3 * 5 * 7 * 6)):
        torch.testing.assert_close(got, want)


def test_colbert_backward_keeps_no_similarity_block():
    gen = torch.Generator().manual_seed(8)
    q_QLD, q_mask = _padded(gen, 4, 6, 8)
    p_PMD, p_mask = _padded(gen, 10, 12, 8)
    q_QLD.requires_grad_(True)
    saved_sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved_sizes.append(t.numel()) or t, lambda t: t):
        colbert_scores(q_QLD, q_mask, p_PMD, p_mask, max_block_elements=4 * 6 * 5 * 12).sum().backward()
    block = 4 * 6 * 5 * 12
    assert saved_sizes and max(saved_sizes) < block, (max(saved_sizes), block)


def test_colbert_all_padding_passage_scores_zero_and_query_divisor():
    q_QLD = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])
    q_mask = torch.tensor([[1, 1, 0]])
    p_PMD = torch.tensor([[[0.6, 0.8], [1.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    p_mask = torch.tensor([[1, 1], [0, 0]])
    torch.testing.assert_close(colbert_scores(q_QLD, q_mask, p_PMD, p_mask),
                               torch.tensor([[(1.0 + 0.8) / 2, 0.0]]))


def test_colbert_rejects_bad_block_budget():
    with pytest.raises(ValueError, match="max_block_elements"):
        colbert_scores(torch.ones(1, 1, 2), torch.ones(1, 1), torch.ones(1, 1, 2), torch.ones(1, 1),
                       max_block_elements=0)


def test_ensemble_scores_weights_and_missing_heads():
    d, s, m = torch.full((2, 4), 1.0), torch.full((2, 4), 2.0), torch.full((2, 4), 4.0)
    weights = HeadWeights(dense=1.0, sparse=0.3, colbert=0.5)
    torch.testing.assert_close(ensemble_scores(d, s, m, weights), torch.full((2, 4), 1.0 + 0.6 + 2.0))
    torch.testing.assert_close(ensemble_scores(d, None, m, weights), torch.full((2, 4), 3.0))
    torch.testing.assert_close(ensemble_scores(None, s, None, weights), torch.full((2, 4), 0.6))
    with pytest.raises(ValueError, match="every head is None"):
        ensemble_scores(None, None, None, weights)
