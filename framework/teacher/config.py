"""Options of the teachers: which model, how long its inputs may be, where and in what precision it runs,
and how pairs are batched."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

DTYPES = ("auto", "float32", "bfloat16")
KINDS = ("auto", "cross_encoder", "m3")


@dataclass(frozen=True)
class BatchingConfig:
    """How a teacher groups its inputs: sorted by length, then cut into batches under a token budget."""

    batch_tokens: int = 16384
    """Padded tokens per forward pass at most (rows x longest row); one over-long input still runs alone."""
    max_batch_size: int = 256
    """Inputs per forward pass at most, whatever their length."""

    def __post_init__(self) -> None:
        for name in ("batch_tokens", "max_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: use a positive integer")


@dataclass(frozen=True)
class RuntimeConfig:
    """Where a teacher runs and in which precision."""

    device: str = "auto"
    """"auto" (cuda when torch sees a GPU), "cpu", "cuda", "cuda:1", ..."""
    dtype: str = "auto"
    """"auto" (bfloat16 on a GPU, float32 on the CPU), "float32" or "bfloat16"."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: choose one of {DTYPES}")
        if not (self.device in ("auto", "cpu") or self.device.startswith("cuda")):
            raise ValueError(f"device={self.device!r}: use auto, cpu, cuda or cuda:N")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.torch_device().type == "cuda" else torch.float32
        return getattr(torch, self.dtype)

    def resolved(self) -> dict:
        """Device and dtype as they will run ("auto" decided): what a resumed run must match."""
        return {"device": str(self.torch_device()), "dtype": str(self.torch_dtype()).removeprefix("torch.")}


@dataclass(frozen=True)
class CrossEncoderConfig:
    """A Hugging Face sequence-classification model with one logit (bge-reranker-v2-m3's layout)."""

    path: str
    """Model directory (config.json, weights, tokenizer files)."""
    max_length: int = 512
    """Tokens of query + passage, specials included; the longer text is cut first (HF "longest_first",
    as sentence-transformers' CrossEncoder does)."""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    """Device and precision."""
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    """Length-sorted batches under a token budget."""

    def __post_init__(self) -> None:
        _check_dir(self.path)
        if self.max_length < 4:
            raise ValueError(f"max_length={self.max_length}: a pair needs at least 4 tokens (specials + text)")

    def identity(self) -> dict:
        return _identity("cross_encoder", self)


@dataclass(frozen=True)
class HybridWeights:
    """Weights of an M3 model's three scores in its hybrid score (w1 d + w2 s + w3 m) / (w1 + w2 + w3)."""

    dense: float = 0.4
    """w1: dense (CLS inner product)."""
    sparse: float = 0.2
    """w2: sparse (lexical matching)."""
    colbert: float = 0.4
    """w3: multi-vector (ColBERT late interaction). 0.4/0.2/0.4 are BGE-M3's published hybrid weights."""

    def __post_init__(self) -> None:
        values = (self.dense, self.sparse, self.colbert)
        if min(values) < 0 or sum(values) <= 0:
            raise ValueError(f"hybrid weights {values}: use non-negative weights, at least one above 0 "
                             "(a 0 weight skips that head)")

    def as_tuple(self) -> tuple[float, float, float]:
        return self.dense, self.sparse, self.colbert


@dataclass(frozen=True)
class M3TeacherConfig:
    """An M3 model (BGE-M3 directory, e.g. this framework's export) scoring by its hybrid score."""

    path: str
    """BGE-M3 model directory (encoder, tokenizer, colbert_linear.pt, sparse_linear.pt)."""
    weights: HybridWeights = field(default_factory=HybridWeights)
    """Weights of dense / sparse / colbert in the hybrid score."""
    max_query_length: int | None = 512
    """Query tokens (specials included) after truncation; None = the model's limit."""
    max_passage_length: int | None = None
    """Passage tokens after truncation; None = the model's limit (8192 for bge-m3)."""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    """Device and precision."""
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    """Length-sorted batches under a token budget (queries and passages are encoded separately)."""

    def __post_init__(self) -> None:
        _check_dir(self.path)
        for name in ("max_query_length", "max_passage_length"):
            value = getattr(self, name)
            if value is not None and value < 3:
                raise ValueError(f"{name}={value}: use at least 3 tokens, or None for the model's limit")

    def identity(self) -> dict:
        return _identity("m3", self)


TeacherConfig = CrossEncoderConfig | M3TeacherConfig


def _check_dir(path: str) -> None:
    if not (Path(path) / "config.json").is_file():
        raise ValueError(f"teacher {path}: no config.json there; give a model directory (a cross-encoder such as "
                         "bge-reranker-v2-m3, or an M3 export)")


def _identity(kind: str, config) -> dict:
    """Every option that changes the scores, with the path resolved and auto device/dtype decided."""
    values = asdict(config)
    values["path"] = str(Path(config.path).resolve())
    values["runtime"] = config.runtime.resolved()
    return json.loads(json.dumps({"kind": kind, **values}))


def detect_kind(path: str | Path) -> str:
    """"cross_encoder" for a *ForSequenceClassification config, else "m3"; raises ValueError when unclear."""
    config_file = Path(path) / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"teacher {path}: cannot read {config_file} ({error}); give a model directory") from None
    architectures = config.get("architectures") or []
    if any(str(name).endswith("ForSequenceClassification") for name in architectures):
        return "cross_encoder"
    if architectures and not any(str(name).endswith("Model") for name in architectures):
        raise ValueError(f"teacher {path}: architectures {architectures} are neither a sequence classifier nor an "
                         "encoder; pass --kind cross_encoder or --kind m3")
    return "m3"
