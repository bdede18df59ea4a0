"""The sentence-transformers files of an export: `SentenceTransformer(dir)` then gives our dense vectors.

BGE-M3's dense vector is the L2-normalised hidden state of the first token, which sentence-transformers
spells as Transformer -> Pooling (CLS) -> Normalize. The files sit beside the BGE-M3 ones (the HF encoder
at the directory root is the Transformer module, path ""), so one directory loads in FlagEmbedding,
transformers, sentence-transformers and text-embeddings-inference alike:

    modules.json                        the three modules, in the classic `sentence_transformers.models.*`
                                        names that every sentence-transformers release (2.x to 6.x) loads
    sentence_bert_config.json           max_seq_length (the encoder's position limit), do_lower_case, and
                                        the encoder built without a pooler (as load_m3 builds it)
    config_sentence_transformers.json   cosine similarity and the named prompts the model was trained with
                                        ({} as BGE-M3 ships; {"query": "query: ", "document": "passage: ", ...}
                                        for mE5-style prefixes: framework/data/sources.py export_prompts),
                                        which SentenceTransformer.encode(prompt_name=...) and M3Embedder
                                        (framework/inference) both read; no default prompt
    1_Pooling/config.json               CLS pooling in the classic keys only: TEI requires exactly the four
                                        pooling_mode_* flags, and keys added later (include_prompt) would
                                        fail sentence-transformers 2.2
    2_Normalize/                        an empty folder: Normalize has no parameters

The layout is the one BAAI/bge-m3 ships; sentence-transformers 6 writes newer module names that older
releases and TEI do not read, which is why it is written here rather than by `SentenceTransformer.save`.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MODULES = (("", "sentence_transformers.models.Transformer"),
           ("1_Pooling", "sentence_transformers.models.Pooling"),
           ("2_Normalize", "sentence_transformers.models.Normalize"))
POOLING_FILE = Path("1_Pooling") / "config.json"
PROMPTS_FILE = "config_sentence_transformers.json"


@dataclass(frozen=True)
class SentenceTransformersLayout:
    """What the sentence-transformers files say about the encoder."""

    embedding_dim: int
    """Size of the dense vector (the encoder's hidden size)."""
    max_seq_length: int
    """Tokens per text, specials included, that sentence-transformers keeps (the encoder's position limit)."""

    def __post_init__(self) -> None:
        if self.embedding_dim < 1 or self.max_seq_length < 1:
            raise ValueError(f"SentenceTransformersLayout: embedding_dim={self.embedding_dim} and max_seq_length="
                             f"{self.max_seq_length} must be positive (read them from the encoder's config)")


def write_st_layout(out_dir: str | Path, embedding_dim: int, max_seq_length: int,
                    prompts: Mapping[str, str] | None = None) -> Path:
    """Write the sentence-transformers files into a model directory that holds the HF encoder; `prompts`
    are the named prompts inference puts before texts (name -> text)."""
    layout = SentenceTransformersLayout(embedding_dim, max_seq_length)
    prompts = dict(prompts or {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise ValueError(f"prompts {prompts!r}: give a mapping of prompt names to prompt texts (strings)")
    out_dir = Path(out_dir)
    modules = [{"idx": i, "name": str(i), "path": path, "type": kind} for i, (path, kind) in enumerate(MODULES)]
    _write_json(out_dir / "modules.json", modules)
    # The export holds no pooler weights (load_m3 builds the encoder without one): asking for none keeps
    # transformers from initialising a random pooler and reporting it as missing on every load.
    _write_json(out_dir / "sentence_bert_config.json", {"max_seq_length": layout.max_seq_length,
                                                        "do_lower_case": False,
                                                        "model_args": {"add_pooling_layer": False}})
    _write_json(out_dir / PROMPTS_FILE, {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"})
    _write_json(out_dir / POOLING_FILE, {
        "word_embedding_dimension": layout.embedding_dim, "pooling_mode_cls_token": True,
        "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False})
    (out_dir / "2_Normalize").mkdir(exist_ok=True)
    return out_dir


def read_st_layout(model_dir: str | Path) -> SentenceTransformersLayout | None:
    """The layout of a directory written by `write_st_layout`; None when it has no sentence-transformers files."""
    model_dir = Path(model_dir)
    config, pooling = model_dir / "sentence_bert_config.json", model_dir / POOLING_FILE
    if not (config.is_file() and pooling.is_file()):
        return None
    try:
        return SentenceTransformersLayout(json.loads(pooling.read_text())["word_embedding_dimension"],
                                          json.loads(config.read_text())["max_seq_length"])
    except (KeyError, ValueError) as err:
        raise ValueError(f"{model_dir}: malformed sentence-transformers files ({err}); re-export the model") from err


def read_prompts(model_dir: str | Path) -> dict[str, str]:
    """The named prompts of a model directory's sentence-transformers config ({} without one: BGE-M3)."""
    path = Path(model_dir) / PROMPTS_FILE
    if not path.is_file():
        return {}
    try:
        prompts = json.loads(path.read_text(encoding="utf-8")).get("prompts") or {}
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: unreadable ({err}); re-export the model or fix its prompts") from err
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise ValueError(f"{path}: prompts must map names to texts, got {prompts!r}")
    return dict(prompts)


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
