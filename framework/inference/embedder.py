"""Inference API: encode texts with any of the three heads, score pairs, MCLS for long documents.

Outputs match FlagEmbedding's BGEM3FlagModel: `dense_vecs` (N, D) array, `lexical_weights` a list of
{token_id_str: weight} dicts (weights > 0, max over repeats), `colbert_vecs` a list of (n_i - 1, C)
arrays (CLS dropped, </s> kept). Texts are tokenised once, sorted by length so batches carry little
padding, and results are returned in input order.

Prompts: a model trained with prefixes saves them as named prompts (the export's
config_sentence_transformers.json, as sentence-transformers reads them). encode(is_query=True) puts the
"query" prompt before each text, is_query=False the first of "document" / "passage" / "corpus" (the names
sentence-transformers' encode_document tries), prompt_name=NAME that prompt, prompt=TEXT that text; with
none of them nothing is added (as BGEM3FlagModel, and a model saved without prompts). compute_score uses
the query and passage prompts.

Shape legend (docs/shapes.md): B batch rows, L tokens, D dense size, C colbert size, M passage tokens;
scoped here (colbert_score, one text each): N query tokens.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from framework.data.collate import pad_to_multiple
from framework.inference.mcls import insert_cls, mcls_dense
from framework.loss.matryoshka import check_prefix_dim, dense_prefix_numpy
from framework.model import M3Model, load_m3
from framework.model.st_layout import read_prompts

# sentence-transformers' encode_document takes the first of these prompt names the model has.
PASSAGE_PROMPT_NAMES = ("document", "passage", "corpus")


def lexical_match_score(q: dict[str, float], p: dict[str, float]) -> float:
    """Sparse score of two lexical-weight dicts: sum over shared ids of the product of weights."""
    return float(sum(w * p[t] for t, w in q.items() if t in p))


def colbert_score(q_NC: np.ndarray, p_MC: np.ndarray) -> float:
    """Late interaction: mean over query vectors of the best passage-vector match."""
    return float((q_NC @ p_MC.T).max(axis=1).sum() / q_NC.shape[0])


def check_texts(texts, what: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise ValueError(f"{what} must be a list of strings, got one string; wrap it: [{texts[:30]!r}]")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"{what}[{i}] is {type(text).__name__}, not str; convert or drop that item")
        if not text.strip():
            raise ValueError(f"{what}[{i}] is empty or whitespace; an empty text has no embedding, drop it")
    return texts


class M3Embedder:
    """Encode and score with an M3Model. Build with `M3Embedder.from_pretrained(dir)`."""

    def __init__(self, model: M3Model, tokenizer, device: str | torch.device = "cpu",
                 prompts: dict[str, str] | None = None):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        # Named prompts (name -> text) the model was trained with; from_pretrained reads the directory's.
        self.prompts = dict(prompts or {})

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str = "cpu") -> "M3Embedder":
        model, tokenizer = load_m3(model_dir)
        return cls(model, tokenizer, device, read_prompts(model_dir))

    def prompt_for(self, is_query: bool | None = None, prompt_name: str | None = None,
                   prompt: str | None = None) -> str:
        """The text encode() puts before each text: `prompt`, else the named prompt, else the query (is_query
        True) or passage (False) prompt the model has, else ""."""
        if prompt is not None and prompt_name is not None:
            raise ValueError("give prompt (a text) or prompt_name (one of the model's prompts), not both")
        if prompt is not None:
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(f"prompt_name={prompt_name!r} is not among this model's prompts "
                                 f"{sorted(self.prompts)}; use one of them, or pass prompt='...'")
            return self.prompts[prompt_name]
        if is_query is None:
            return ""
        names = ("query",) if is_query else PASSAGE_PROMPT_NAMES
        return next((self.prompts[name] for name in names if name in self.prompts), "")

    def _max_length(self, max_length: int | None) -> int:
        limit = self.model.max_positions
        if max_length is None:
            return limit
        if max_length > limit:
            raise ValueError(f"max_length={max_length} exceeds the model's {limit} positions; use <= {limit} "
                             "or extend positions (tools/extend_positions.py)")
        return max_length

    def _tokenize(self, texts: list[str], max_length: int, truncate: bool, mcls_interval: int | None):
        tok = self.tokenizer
        if mcls_interval:
            raw = tok(texts, add_special_tokens=False)["input_ids"]
            return [insert_cls(ids, tok.cls_token_id, tok.sep_token_id, mcls_interval, max_length) for ids in raw]
        ids = tok(texts, truncation=truncate, max_length=max_length if truncate else None)["input_ids"]
        for i, seq in enumerate(ids):
            if len(seq) > max_length:
                raise ValueError(f"text {i} has {len(seq)} tokens > max_length={max_length}; shorten it or "
                                 "pass truncate=True")
        return ids

    @torch.no_grad()
    def encode(self, texts: Sequence[str], dense: bool = True, sparse: bool = True, colbert: bool = False,
               batch_size: int = 32, max_length: int | None = None, truncate: bool = True,
               mcls: bool = False, mcls_interval: int = 256, progress: bool | None = None,
               dense_dim: int | None = None, is_query: bool | None = None, prompt_name: str | None = None,
               prompt: str | None = None, multi_vector: bool | None = None) -> dict:
        """Encode texts with the heads asked for: `dense`, `sparse` and `colbert` (the multi-vector head;
        `colbert=` is accepted for it, framework/heads.py). `mcls=True` computes the dense vector by
        MCLS (sparse/colbert stay plain). `dense_dim=N` keeps the first N dims of each dense vector,
        renormalised (Matryoshka training). `is_query` / `prompt_name` / `prompt` put a prompt before every
        text (prompt_for; module doc)."""
        colbert = colbert or bool(multi_vector)
        texts = check_texts(texts)
        prefix = self.prompt_for(is_query, prompt_name, prompt)
        if prefix:
            texts = [prefix + text for text in texts]
        if dense_dim is not None:
            check_prefix_dim(dense_dim, self.model.encoder.config.hidden_size, "dense_dim")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: use a positive batch size")
        self._check_heads(dense, sparse, colbert)
        max_length = self._max_length(max_length)
        out: dict = {}
        if sparse or colbert or (dense and not mcls):
            ids = self._tokenize(texts, max_length, truncate, None)
            out = self._encode_ids(ids, dense and not mcls, sparse, colbert, batch_size, progress)
        if dense and mcls:
            ids = self._tokenize(texts, max_length, truncate, mcls_interval)
            out["dense_vecs"] = self._encode_mcls(ids, batch_size, progress)
        if dense_dim is not None and "dense_vecs" in out:
            out["dense_vecs"] = dense_prefix_numpy(out["dense_vecs"], dense_dim, self.model.cfg.normalize)
        return out

    def _check_heads(self, dense: bool, sparse: bool, colbert: bool) -> None:
        cfg = self.model.cfg
        for asked, on, name in ((dense, cfg.dense, "dense"), (sparse, cfg.sparse, "sparse"),
                                (colbert, cfg.colbert, "colbert")):
            if asked and not on:
                raise ValueError(f"the {name} head is switched off in this model's config; do not ask for it")
        if not (dense or sparse or colbert):
            raise ValueError("encode: nothing asked; set at least one of dense/sparse/colbert")

    def _batches(self, ids: list[list[int]], batch_size: int, progress: bool | None):
        order = np.argsort([-len(s) for s in ids], kind="stable")
        starts = range(0, len(ids), batch_size)
        show = len(ids) > batch_size if progress is None else progress
        for start in tqdm(starts, desc="encode", disable=not show):
            idx = order[start:start + batch_size]
            ids_BL, mask_BL = pad_to_multiple([ids[i] for i in idx], self.tokenizer.pad_token_id)
            yield idx, ids_BL.to(self.device), mask_BL.to(self.device)

    def _encode_ids(self, ids, dense, sparse, colbert, batch_size, progress) -> dict:
        n = len(ids)
        dense_rows: list = [None] * n
        lexical: list = [None] * n
        colbert_rows: list = [None] * n
        for idx, ids_BL, mask_BL in self._batches(ids, batch_size, progress):
            out = self.model(ids_BL, mask_BL)
            lengths = mask_BL.sum(1).tolist()
            for row, i in enumerate(idx):
                if dense:
                    dense_rows[i] = out.dense_BD[row].float().cpu().numpy()
                if sparse:
                    lexical[i] = _lexical_dict(out.sparse_BL[row], ids_BL[row])
                if colbert:
                    colbert_rows[i] = out.colbert_BLC[row, :lengths[row] - 1].float().cpu().numpy()
        result: dict = {}
        if dense:
            result["dense_vecs"] = np.stack(dense_rows)
        if sparse:
            result["lexical_weights"] = lexical
        if colbert:
            result["colbert_vecs"] = colbert_rows
        return result

    def _encode_mcls(self, ids, batch_size, progress) -> np.ndarray:
        rows: list = [None] * len(ids)
        for idx, ids_BL, mask_BL in self._batches(ids, batch_size, progress):
            dense_BD = mcls_dense(self.model.encoder, ids_BL, mask_BL, self.tokenizer.cls_token_id,
                                  self.model.cfg.normalize, self.model.unpadded)
            for row, i in enumerate(idx):
                rows[i] = dense_BD[row].float().cpu().numpy()
        return np.stack(rows)

    def compute_score(self, pairs: Sequence[tuple[str, str]], weights: Sequence[float] = (1.0, 1.0, 1.0),
                      batch_size: int = 32, max_query_length: int | None = None,
                      max_passage_length: int | None = None) -> dict[str, list[float]]:
        """Scores of (query, passage) pairs per head and the hybrids, as BGEM3FlagModel.compute_score
        (queries and passages get the model's query and passage prompts, if it has any).

        Keys: dense, sparse, colbert, sparse+dense = (w1 d + w2 s) / (w1 + w2), and
        colbert+sparse+dense = (w1 d + w2 s + w3 m) / (w1 + w2 + w3); weights = (w1, w2, w3).
        """
        pairs = list(pairs)
        if any(not isinstance(p, (tuple, list)) or len(p) != 2 for p in pairs):
            raise ValueError("pairs must be a list of (query, passage) 2-tuples")
        if len(weights) != 3 or min(weights) < 0 or sum(weights) == 0:
            raise ValueError(f"weights={tuple(weights)}: give 3 non-negative weights (dense, sparse, colbert)")
        queries = check_texts([q for q, _ in pairs], "queries")
        passages = check_texts([p for _, p in pairs], "passages")
        q = self.encode(queries, True, True, True, batch_size, max_query_length, is_query=True)
        p = self.encode(passages, True, True, True, batch_size, max_passage_length, is_query=False)
        dense = [float(a @ b) for a, b in zip(q["dense_vecs"], p["dense_vecs"])]
        sparse = [lexical_match_score(a, b) for a, b in zip(q["lexical_weights"], p["lexical_weights"])]
        multi = [colbert_score(a, b) for a, b in zip(q["colbert_vecs"], p["colbert_vecs"])]
        w1, w2, w3 = weights
        return {
            "dense": dense, "sparse": sparse, "colbert": multi,
            "sparse+dense": [(w1 * d + w2 * s) / ((w1 + w2) or 1.0) for d, s in zip(dense, sparse)],
            "colbert+sparse+dense": [(w1 * d + w2 * s + w3 * m) / (w1 + w2 + w3)
                                     for d, s, m in zip(dense, sparse, multi)],
        }


def _lexical_dict(weights_L: torch.Tensor, ids_L: torch.Tensor) -> dict[str, float]:
    """Max weight per token id, positive weights only (specials and padding are already zero)."""
    result: dict[str, float] = {}
    for w, t in zip(weights_L.float().tolist(), ids_L.tolist()):
        if w > 0 and w > result.get(str(t), 0.0):
            result[str(t)] = w
    return result
