"""Train a small XLM-RoBERTa-style sentencepiece tokenizer, laid out like BAAI/bge-m3's directory.

The directory holds `sentencepiece.bpe.model` (a unigram model, as XLM-R's despite the name) plus
`tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`, and loads with
`transformers.AutoTokenizer.from_pretrained(out_dir)` as an XLMRobertaTokenizer.

Ids follow XLM-R's fairseq convention: the sentencepiece model has <unk>=0, <s>=1, </s>=2 and no pad;
transformers' XLM-R converter drops those three pieces and prepends <s>=0, <pad>=1, </s>=2, <unk>=3, so
every other piece moves up by one and <mask> is appended last (len(tokenizer) = spm size + 2).
Command line: `python tools/train_tokenizer.py data/multilingual_sample.txt --out-dir /tmp/tok`.
"""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import sentencepiece as spm

log = logging.getLogger(__name__)

SPM_FILE = "sentencepiece.bpe.model"
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SPECIAL_TOKENS = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                  "cls_token": "<s>", "sep_token": "</s>", "mask_token": "<mask>"}
EXPECTED_IDS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}


def check_text_files(text_files: list[str | Path]) -> list[Path]:
    """Return the files as Paths; raise when one is missing or when all of them are blank."""
    if not text_files:
        raise ValueError("no text files given; pass at least one UTF-8 text file, one sentence per line")
    paths = [Path(f) for f in text_files]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"text file {path} does not exist; pass existing UTF-8 text files "
                                    "(e.g. data/multilingual_sample.txt)")
    if not any(path.read_text(encoding="utf-8").strip() for path in paths):
        raise ValueError(f"text files {[str(p) for p in paths]} hold no text; give files with at least "
                         "a few thousand lines of text")
    return paths


def train_spm(paths: list[Path], vocab_size: int, seed: int) -> bytes:
    """Train the unigram model in memory and return its serialised bytes."""
    # A fixed seed and one thread make the output bytes a function of the input alone.
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            input=[str(p) for p in paths], model_writer=model, vocab_size=vocab_size,
            model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            character_coverage=0.9995, normalization_rule_name="nmt_nfkc",
            num_threads=1, shuffle_input_sentence=False, minloglevel=2)
    except RuntimeError as error:
        raise ValueError(f"sentencepiece training failed ({error}); if the vocabulary is too large for "
                         f"the text, lower vocab_size (now {vocab_size}) or give more text") from error
    return model.getvalue()


def write_hf_files(out_dir: Path, vocab_size: int, model_max_length: int) -> None:
    """Convert the spm model into the transformers files next to it and check XLM-R's special ids."""
    # Imported here so that `--help` and input errors answer without transformers' multi-second import.
    from transformers import XLMRobertaTokenizer

    # from_pretrained prefers an existing tokenizer.json over the spm model: remove stale ones so that a
    # re-run converts the freshly trained model. (The plain constructor does not convert at all.)
    for name in HF_FILES:
        (out_dir / name).unlink(missing_ok=True)
    tokenizer = XLMRobertaTokenizer.from_pretrained(str(out_dir), model_max_length=model_max_length,
                                                    **SPECIAL_TOKENS)
    check_special_ids(tokenizer, vocab_size)
    tokenizer.save_pretrained(str(out_dir))
    # transformers 5 keeps the special tokens in tokenizer_config.json only; bge-m3's layout (and older
    # readers) also have special_tokens_map.json.
    (out_dir / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2) + "\n")


def check_special_ids(tokenizer, vocab_size: int) -> None:
    """Fail loudly when the converter did not produce XLM-R's ids (an internal invariant)."""
    assert len(tokenizer) == vocab_size + 2, f"converted tokenizer has {len(tokenizer)} ids, not {vocab_size + 2}"
    for token, expected in EXPECTED_IDS.items():
        actual = tokenizer.convert_tokens_to_ids(token)
        assert actual == expected, f"{token} has id {actual}, XLM-R needs {expected}"
    assert tokenizer.convert_tokens_to_ids("<mask>") == len(tokenizer) - 1, "<mask> must be the last id"


def train_tokenizer(text_files: list[str | Path], out_dir: str | Path, vocab_size: int = 3000,
                    seed: int = 0, model_max_length: int = 8192) -> Path:
    """Train on `text_files` and write the tokenizer directory; returns `out_dir` as a Path.

    `vocab_size` is the sentencepiece size; the HF tokenizer has vocab_size + 2 ids (<pad>, <mask>).
    """
    if vocab_size < 8:
        raise ValueError(f"vocab_size={vocab_size} is too small; use a few thousand (e.g. 3000)")
    paths = check_text_files(text_files)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info(f"training unigram sentencepiece, vocab {vocab_size}, on {len(paths)} file(s)")
    (out_dir / SPM_FILE).write_bytes(train_spm(paths, vocab_size, seed))
    log.info(f"wrote {out_dir / SPM_FILE}; converting to transformers files")
    write_hf_files(out_dir, vocab_size, model_max_length)
    log.info(f"tokenizer ready in {out_dir} ({vocab_size + 2} ids)")
    return out_dir


def pair_texts(pair_dir: Path, distinct: bool = False) -> list[str]:
    """The queries and positives of every row of `pair_dir`'s *.jsonl.gz pair files (sorted file order,
    rows in order, each row's query then its positives): the text a tokenizer for those pairs is trained
    on. `distinct`: each text once (first occurrence), stripped, blank ones dropped."""
    import gzip

    texts: list[str] = []
    for path in sorted(Path(pair_dir).glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as rows:
            for line in rows:
                row = json.loads(line)
                texts.extend((row["query"], *row["pos"]))
    if distinct:
        texts = [text for text in dict.fromkeys(t.strip() for t in texts) if text]
    return texts


def write_tokenizer_text(path: Path, texts: list[str]) -> Path:
    """Write the shipped multilingual sample (framework.resources.text_sample) followed by `texts`, one per
    line, to `path`: the training text of the demo's and the benches' 8,000-piece tokenizers."""
    from framework.resources import text_sample

    path = Path(path)
    with path.open("w", encoding="utf-8") as out:
        out.write(text_sample().read_text(encoding="utf-8"))
        out.writelines(text + "\n" for text in texts)
    return path
