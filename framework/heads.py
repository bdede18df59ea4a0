"""The names of M3's three heads: one name each across code, config, metrics and the command line.

| name | the paper's | what it is | export file |
|---|---|---|---|
| `dense` | dense retrieval | normalised CLS vector | (the encoder) |
| `sparse` | lexical (sparse) retrieval | one ReLU weight per token | sparse_linear.pt |
| `colbert` | multi-vector retrieval | one vector per token after colbert_linear | colbert_linear.pt |

`colbert` is FlagEmbedding's name (BGEM3FlagModel's `colbert_vecs`, `colbert_score`, the
`colbert_linear.pt` file, the loss weights), so an M3 user reads one word in both projects. Config
fields, loss terms, evaluation modes, metric names (`colbert.ndcg@10`), the encode keyword and the CLI
all use it; prose and table labels say "multi-vector" ("Multi-vec" in the paper's tables).

The spellings earlier versions and other tools use (`multivec`, `multi_vector`, `multi-vector`) are
accepted where a user types a name (evaluation modes, `--modes`, `encode(colbert=...)`) and mapped
to `colbert` by `canonical_head`.
"""
from __future__ import annotations

from typing import Literal

HeadName = Literal["dense", "sparse", "colbert"]
HEADS: tuple[HeadName, ...] = ("dense", "sparse", "colbert")
# Other spellings of the multi-vector head, accepted as input and mapped to "colbert".
HEAD_ALIASES = {"multivec": "colbert", "multi_vector": "colbert", "multi-vector": "colbert",
                "multivector": "colbert"}


def canonical_head(name: str) -> str:
    """The one name of a head or evaluation mode: an alias of the multi-vector head becomes "colbert";
    any other name is returned unchanged (callers check it against their own choices)."""
    return HEAD_ALIASES.get(name, name)
