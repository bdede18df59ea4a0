"""Each attempt of a run keeps its config; a resume compares its config with the previous attempt's.

    <output_dir>/config.yaml               the config of the latest attempt (the one MLflow logs)
    <output_dir>/config-attempt-<N>.yaml   the config of attempt N (1 = the first start), never rewritten

A resume in the middle of a stage continues its data stream at a position (epoch, batches) and loads
model and optimizer states. Changes that make that position mean other samples (the stage's shards,
sources, batch table, accumulation, shuffle window, the seed) or that do not fit the saved states
(frozen parameters, heads, decoder shape) are refused; every other change (learning rate, loss weights,
group size, data.num_workers, later stages, logging) is allowed and printed as a diff. Another number of
workers, like another world size, continues the epoch re-split for the new layout
(framework/data/resplit.py). The world size is not part of the config: it is checked against the
checkpoint itself, as DeepSpeed's ZeRO stage and precision are (framework/train/preflight.py, reshape.py:
allowed at ZeRO 0-3 when the global batch stays).
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from framework.config import flatten, to_dict

ATTEMPT_PATTERN = re.compile(r"config-attempt-(\d+)\.yaml$")
# Keys of the resumed stage (below stages.<name>.) that move its data position.
STREAM_KEYS = ("kind", "accumulation", "data.manifest", "data.sources", "data.source_weights", "data.mix_sources",
               "data.shuffle_window", "data.buckets")
# Keys of the resumed stage whose saved states would not fit a changed value.
STATE_KEYS = ("freeze", "retromae.decoder_layers", "retromae.decoder_heads", "retromae.decoder_intermediate_size",
              "retromae.tie_word_embeddings")
RUN_STREAM_KEYS = ("seed",)
RUN_STATE_KEYS = ("model.dense", "model.sparse", "model.colbert", "model.colbert_dim")
_ABSENT = object()


@dataclass(frozen=True)
class ConfigChange:
    """One flattened config key whose value differs between two attempts."""

    key: str
    """Dotted key, stages by name (stages.warmup.optim.lr)."""
    before: Any
    after: Any

    def line(self) -> str:
        return f"{self.key}: {_show(self.before)} -> {_show(self.after)}"


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(absent)"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def plain(cfg) -> dict:
    """The config as its YAML file holds it (tuples as lists, the same scalar types)."""
    return yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))


def attempt_files(output_dir: str | Path) -> list[Path]:
    """config-attempt-N.yaml files of a run directory, by N."""
    found = [(int(m.group(1)), p) for p in Path(output_dir).glob("config-attempt-*.yaml")
             if (m := ATTEMPT_PATTERN.search(p.name))]
    return [p for _, p in sorted(found)]


def previous_config(output_dir: str | Path) -> tuple[Path, dict] | None:
    """The last attempt's config (config.yaml of a run made before attempts were kept), or None."""
    files = attempt_files(output_dir) or [p for p in [Path(output_dir) / "config.yaml"] if p.is_file()]
    if not files:
        return None
    return files[-1], yaml.safe_load(files[-1].read_text(encoding="utf-8"))


def record_attempt(output_dir: str | Path, cfg) -> Path:
    """Write this attempt's config as config-attempt-N.yaml and as config.yaml; returns the attempt file."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = attempt_files(out)
    if not files and (out / "config.yaml").is_file():  # a run started before attempts were kept
        shutil.copyfile(out / "config.yaml", out / "config-attempt-1.yaml")
        files = [out / "config-attempt-1.yaml"]
    number = int(ATTEMPT_PATTERN.search(files[-1].name).group(1)) + 1 if files else 1
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
    path = out / f"config-attempt-{number}.yaml"
    path.write_text(text, encoding="utf-8")
    tmp = out / "config.yaml.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out / "config.yaml")
    return path


def config_changes(before: dict, after: dict) -> list[ConfigChange]:
    """Every flattened key whose value differs (or exists on one side only), sorted."""
    old, new = flatten(before), flatten(after)
    keys = sorted(set(old) | set(new))
    return [ConfigChange(k, old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in keys
            if old.get(k, _ABSENT) != new.get(k, _ABSENT)]


def _under(key: str, prefixes: tuple[str, ...], root: str = "") -> bool:
    return any(key == root + p or key.startswith(root + p + ".") for p in prefixes)


def breaking_changes(changes: list[ConfigChange], before: dict, after: dict, stage: str) -> list[str]:
    """Why each change cannot be resumed at a position inside `stage` (empty: all can)."""
    reasons = []
    names = [[s.get("name") for s in side.get("stages", [])] for side in (before, after)]
    upto = [n[:n.index(stage) + 1] if stage in n else n for n in names]
    if upto[0] != upto[1]:
        reasons.append(f"the stages up to {stage} changed: {upto[0]} -> {upto[1]} (the stage's seed and start "
                       "follow its place in the list)")
    root = f"stages.{stage}."
    for change in changes:
        if _under(change.key, STREAM_KEYS, root) or _under(change.key, RUN_STREAM_KEYS):
            reasons.append(f"{change.line()} (moves the data position)")
        elif _under(change.key, STATE_KEYS, root) or _under(change.key, RUN_STATE_KEYS):
            reasons.append(f"{change.line()} (does not fit the saved model and optimizer states)")
    return reasons
