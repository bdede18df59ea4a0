"""Lengthen the learned position table of an XLM-R (or BERT) checkpoint, e.g. 512 -> 8192 tokens.

    python tools/extend_positions.py xlm-roberta-large/ xlmr-8k/ --max-positions 8192

The M3 paper (appendix B.1) starts from XLM-R "extended to 8192 positions" before RetroMAE. N is in
tokens, specials included, like tools/build_model.py's --max-positions: XLM-R needs N + 2 rows because its
positions start at padding_idx + 1 = 2 (rows 0-1 are the padding offset; row 1 is what <pad> looks up),
so 8192 tokens need 8194 rows; BERT numbers from 0 and needs N rows.

Initialisation: the old real rows are *copied, tiled* (rows 2..513 repeated over 514..8193) and the two
offset rows kept. Not interpolation, for two reasons:
  * The first old-length block stays the old table, so every input the old model could read gives exactly
    the same outputs (checked after writing). Interpolating the whole table would move every position.
  * Learned BERT-style positions are mostly *local*: attention heads key on neighbouring rows being
    distinct in a learned way. Stretching 512 rows over 8192 makes runs of ~16 neighbours nearly identical
    and loses that resolution; repeating the table keeps it everywhere, with only the block boundaries
    wrong, which the pre-training (RetroMAE, appendix B.1) then fixes. Longformer (Beltagy et al. 2020)
    found copy-initialised long RoBERTa positions converge within a few thousand steps.

The input may be a plain HF directory or a bge-m3 one: every top-level file is copied (colbert_linear.pt
and sparse_linear.pt included), weight files (*.safetensors, pytorch_model*.bin, sharded or not) are
rewritten with the new table, config.json gets max_position_embeddings and tokenizer_config.json (and
tokenizer.json's truncation, if set) the new model_max_length. Sub-directories (e.g. onnx/) are not
copied: they would still hold the old length.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from framework.model.positions import max_tokens, position_offset
from framework.pretrain.positions import check_absolute, tile_positions

TABLE_SUFFIX = "embeddings.position_embeddings.weight"
# Buffers of length max_position_embeddings that some (older) checkpoints store.
BUFFER_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def weight_files(model_dir: Path) -> list[Path]:
    """The checkpoint's weight files: safetensors when present (what transformers loads first), else .bin."""
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{model_dir} has no *.safetensors or pytorch_model*.bin weights; pass an HF "
                                "model directory")
    return files


def _load(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()
    return torch.load(path, map_location="cpu", weights_only=True), None


def _save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None) -> None:
    if path.suffix == ".safetensors":
        save_file(tensors, str(path), metadata=metadata or {"format": "pt"})
    else:
        torch.save(tensors, path)


def _keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            return list(handle.keys())
    try:  # mmap reads only the key list of a zip-format .bin; the legacy format has to be loaded
        return list(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    except RuntimeError:
        return list(torch.load(path, map_location="cpu", weights_only=True))


def _extend_tensors(tensors: dict[str, torch.Tensor], old_rows: int, new_rows: int,
                    offset: int) -> tuple[list[str], int]:
    """Replace the position table and its length-sized buffers in place; returns (keys changed, bytes added)."""
    changed, added = [], 0
    for key, value in list(tensors.items()):
        if key.endswith(TABLE_SUFFIX):
            if value.shape[0] != old_rows:
                raise ValueError(f"{key} has {value.shape[0]} rows but config.json says max_position_embeddings="
                                 f"{old_rows}; the checkpoint and its config disagree")
            tensors[key] = tile_positions(value, offset, new_rows)
        elif key.endswith(BUFFER_SUFFIXES) and value.shape[-1] == old_rows:
            tensors[key] = (torch.arange(new_rows, dtype=value.dtype)[None] if key.endswith("position_ids")
                            else torch.zeros(*value.shape[:-1], new_rows, dtype=value.dtype))
        else:
            continue
        changed.append(key)
        added += (tensors[key].numel() - value.numel()) * value.element_size()
    return changed, added


def _update_json(path: Path, update) -> None:
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        update(data)
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _set_tokenizer_length(out_dir: Path, max_positions: int) -> None:
    _update_json(out_dir / "tokenizer_config.json", lambda d: d.update(model_max_length=max_positions))

    def truncation(data: dict) -> None:
        if isinstance(data.get("truncation"), dict):
            data["truncation"]["max_length"] = max_positions
    _update_json(out_dir / "tokenizer.json", truncation)


def _check_paths(src: Path, out: Path, overwrite: bool) -> dict:
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}: no config.json; pass an HF model directory (config.json + weights)")
    if out.resolve() == src.resolve():
        raise ValueError(f"output {out} is the input directory; write the extended model to a new directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"output {out} exists and is not empty; pick a new directory or pass --overwrite")
    return json.loads((src / "config.json").read_text(encoding="utf-8"))


def extend_positions(src: str | Path, out: str | Path, max_positions: int = 8192, verify: bool = True,
                     overwrite: bool = False) -> Path:
    """Write `src` with a position table for `max_positions` tokens into `out`; returns `out`."""
    src, out = Path(src), Path(out)
    config = _check_paths(src, out, overwrite)
    check_absolute(config)
    offset, old_tokens = position_offset(config), max_tokens(config)
    if max_positions <= old_tokens:
        raise ValueError(f"{src} already reads {old_tokens} tokens; --max-positions {max_positions} must be "
                         "larger (this tool only lengthens the table)")
    old_rows, new_rows = old_tokens + offset, max_positions + offset
    print(f"{config.get('model_type')}: {old_tokens} -> {max_positions} tokens ({old_rows} -> {new_rows} "
          f"position rows, {offset} offset rows kept, real rows tiled)", flush=True)
    files = weight_files(src)
    if not any(key.endswith(TABLE_SUFFIX) for path in files for key in _keys(path)):
        raise ValueError(f"no '*{TABLE_SUFFIX}' tensor in {src}'s weights; is it a BERT/XLM-R encoder?")
    out.mkdir(parents=True, exist_ok=True)
    added = 0
    for path in files:
        tensors, metadata = _load(path)
        keys, grown = _extend_tensors(tensors, old_rows, new_rows, offset)
        _save(tensors, out / path.name, metadata)
        added += grown
        print(f"  {path.name}: {len(tensors)} tensors{', extended ' + ', '.join(keys) if keys else ''}", flush=True)
    skipped = _copy_rest(src, out, {p.name for p in files})
    _update_json(out / "config.json", lambda d: d.update(max_position_embeddings=new_rows))
    _set_tokenizer_length(out, max_positions)
    _fix_index_sizes(out, added)
    if skipped:
        print(f"  not copied (sub-directories would keep the old length): {', '.join(skipped)}", flush=True)
    if verify:
        verify_extension(src, out, old_tokens)
    print(f"wrote {out}: max_position_embeddings={new_rows}, model_max_length={max_positions}", flush=True)
    return out


def _copy_rest(src: Path, out: Path, written: set[str]) -> list[str]:
    """Copy every other top-level file (head files, tokenizer, config); return skipped directory names."""
    skipped = []
    for item in sorted(src.iterdir()):
        if item.is_dir():
            skipped.append(item.name + "/")
        elif item.name not in written:
            shutil.copy2(item, out / item.name)
    return skipped


def _fix_index_sizes(out: Path, delta: int) -> None:
    for name in INDEX_FILES:
        def grow(data: dict) -> None:
            if "total_size" in data.get("metadata", {}):
                data["metadata"]["total_size"] += delta
        _update_json(out / name, grow)


def verify_extension(src: Path, out: Path, old_tokens: int) -> None:
    """Load both with AutoModel and check identical outputs on a padded batch within the old length, and
    that the new model reads one token more than the old could. Raises AssertionError otherwise."""
    from transformers import AutoModel

    old = AutoModel.from_pretrained(src, dtype=torch.float32).eval()
    new = AutoModel.from_pretrained(out, dtype=torch.float32).eval()
    assert new.config.max_position_embeddings > old.config.max_position_embeddings
    generator = torch.Generator().manual_seed(0)
    length = min(old_tokens, 128)
    ids_BL = torch.randint(5, old.config.vocab_size, (2, length), generator=generator)
    mask_BL = torch.ones_like(ids_BL)
    mask_BL[1, length // 2:] = 0
    ids_BL[1, length // 2:] = old.config.pad_token_id
    with torch.no_grad():
        before = old(input_ids=ids_BL, attention_mask=mask_BL).last_hidden_state
        after = new(input_ids=ids_BL, attention_mask=mask_BL).last_hidden_state
        longer = torch.randint(5, old.config.vocab_size, (1, old_tokens + 1), generator=generator)
        new(input_ids=longer, attention_mask=torch.ones_like(longer))
    diff = (before - after).abs().max().item()
    assert diff <= 1e-5, f"outputs within the old length changed by {diff}; the extension is wrong"
    print(f"verified: outputs within {old_tokens} tokens unchanged (max diff {diff:.1e}); "
          f"a {old_tokens + 1}-token input runs", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, help="HF or bge-m3 model directory")
    parser.add_argument("out", type=Path, help="directory to write the extended model into")
    parser.add_argument("--max-positions", type=int, default=8192, help="longest input in tokens (specials included)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip loading both models to compare outputs")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output directory")
    args = parser.parse_args(argv)
    try:
        extend_positions(args.src, args.out, args.max_positions, args.verify, args.overwrite)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"extend_positions: {error}")


if __name__ == "__main__":
    main()
