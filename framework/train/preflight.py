"""Checks made before the first step: every stage at once, so a typo in stage 3 does not surface after
stages 1 and 2 trained. All problems come in one PreflightError, numbered.

    start model   model.path (or the export of the last finished stage) exists
    per stage     its manifest loads (shards exist), its sources exist, its batch table fits the manifest's
                  buckets at this world size, the DeepSpeed config resolves, its benchmark exists, a
                  contrastive stage's data.source_rules ask for the prompts its shards were made with, and
                  its freeze and optim.lr_groups patterns match parameters of its objective (from the
                  start's config.json; a kind whose names need the built objective is checked at its build)
    tokenizer     the manifest's tokenizer is the model's: the sha256 the shard writer recorded
                  (framework/data/manifest.py: tokenizer_identity) against the model's tokenizer file, then,
                  when only the bytes differ, the two vocabularies; pre-tokenised shards of another
                  tokenizer are refused (their ids mean other pieces), text shards only warned about (their
                  length buckets were measured with it); checks.accept_tokenizers overrides
    resume        the checkpoint's ZeRO stage and precision; on another world size, what it can continue with
                  (framework/train/reshape.py); config changes since the previous
                  attempt that break the stage's data position or its states (framework/train/attempts.py)

Stages already finished (exports/<stage>.done.json) are not checked again: their shards may be gone.
"""
from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path

from framework.data.manifest import Manifest, TokenizerInfo, file_sha256, load_manifest, tokenizer_identity
from framework.data.sources import stage_prompts
from framework.train.attempts import breaking_changes, config_changes, plain, previous_config
from framework.train.batching import plan_batches
from framework.train.checkpoint import ResumePoint
from framework.train.config import RunConfig, StageConfig
from framework.train.engine import pattern_problems, resolve_ds_config, resolve_precision
from framework.train.reshape import unrecorded_worker_change, world_change, world_change_problems
from framework.train.tasks import task_class

log = logging.getLogger(__name__)


class PreflightError(ValueError):
    """Problems found before training; nothing has run."""

    @classmethod
    def listing(cls, problems: list[str]) -> "PreflightError":
        head = f"{len(problems)} problem{'s' if len(problems) > 1 else ''} before training (nothing has run yet):"
        return cls("\n".join([head] + [f"  {i}. {p}" for i, p in enumerate(problems, start=1)]))


def check_run(cfg: RunConfig, done: dict[str, dict], point: ResumePoint | None, world: int) -> None:
    """Raise PreflightError listing every problem of the stages still to run; print the config diff of a
    resumed run. `done`: finished stage -> its done.json; `point`: the checkpoint to continue from."""
    problems: list[str] = []
    start, what = first_start(cfg, done)
    if not start.is_dir():
        problems.append(f"{what} {start} does not exist: give a HF or BGE-M3 model directory "
                        "(tools/build_model.py makes one)")
    model_dirs = [d for d in dict.fromkeys([start, Path(cfg.model.path)]) if d.is_dir()]
    ds_configs: dict[str, dict] = {}
    for stage in cfg.stages:
        if stage.name not in done:
            problems += _check_stage(cfg, stage, world, model_dirs, ds_configs)
    if point is not None:
        problems += _check_checkpoint(cfg, point, world, ds_configs.get(point.stage))
    problems += _check_changes(cfg, point)
    if problems:
        raise PreflightError.listing(list(dict.fromkeys(problems)))


def first_start(cfg: RunConfig, done: dict[str, dict]) -> tuple[Path, str]:
    """The directory the first unfinished stage starts from, and how to name it in a message."""
    start, what = Path(cfg.model.path), "model.path"
    for stage in cfg.stages:
        if stage.name not in done:
            break
        start = Path(done[stage.name].get("next_start", done[stage.name]["export"]))
        what = f"the export of finished stage {stage.name},"
    return start, what


def _check_stage(cfg: RunConfig, stage: StageConfig, world: int, model_dirs: list[Path],
                 ds_configs: dict[str, dict]) -> list[str]:
    problems = []
    benchmark = stage.evaluate.benchmark_name
    if benchmark:
        from framework.evaluate.benchmark import DDTP_NAMES

        if benchmark not in DDTP_NAMES and not Path(benchmark).exists():
            problems.append(f"stages.{stage.name}.evaluate.benchmark_name={benchmark!r} is neither a known name "
                            f"({', '.join(DDTP_NAMES)}) nor an existing folder")
    try:
        manifest = load_manifest(stage.data.manifest)
    except (ValueError, OSError) as err:
        return problems + [f"stages.{stage.name}.data.manifest: {err}"]
    unknown = sorted(set(stage.data.sources) - set(manifest.samples_by_source()))
    if unknown:
        problems.append(f"stages.{stage.name}.data.sources {unknown} are not in {stage.data.manifest} (it has "
                        f"{sorted(manifest.samples_by_source())})")
    if model_dirs:
        problems += _tokenizer_problems(cfg, stage, manifest, model_dirs)
        problems += _pattern_problems(stage, model_dirs[0])
    if stage.kind == "contrastive":  # pair shards: the stage's prompts must be the ones they were made with
        try:
            stage_prompts(stage.data.source_rules, stage.data.manifest, stage.data.sources)
        except ValueError as err:
            problems.append(f"stages.{stage.name}: {err}")
    try:
        plan = plan_batches(stage, world, manifest.length_edges)
        precision = resolve_precision(cfg.engine.precision)
        ds_configs[stage.name] = resolve_ds_config(cfg.engine, plan, stage.optim, precision)
    except ValueError as err:
        problems.append(str(err))
    return problems


def _pattern_problems(stage: StageConfig, start: Path) -> list[str]:
    """The stage's freeze and optim.lr_groups patterns against its objective's parameter names (the first
    unfinished stage's start stands for every stage's: each export keeps its start's architecture)."""
    if not (stage.freeze or stage.optim.lr_groups):
        return []
    names = _parameter_names(stage.kind, start)
    if names is None:
        return []
    return [f"stages.{stage.name}.{problem}"
            for problem in pattern_problems(stage.freeze, stage.optim.lr_groups, list(names))]


@lru_cache(maxsize=8)
def _parameter_names(kind: str, start: Path) -> tuple[str, ...] | None:
    try:
        names = task_class(kind).parameter_names(start)
    except (OSError, ValueError) as err:  # an unreadable config.json is reported by the stage build
        log.debug("parameter names of %s unknown before the build: %s", start, err)
        return None
    return None if names is None else tuple(names)


def _tokenizer_problems(cfg: RunConfig, stage: StageConfig, manifest: Manifest, model_dirs: list[Path]) -> list[str]:
    info = manifest.tokenizer
    if info is None or info.sha256 in cfg.checks.accept_tokenizers or _same_tokenizer(info, model_dirs):
        return []
    model = model_dirs[0]
    here = Path(info.path)
    vocabulary = _vocabulary(here) if _sha256(here / info.file) == info.sha256 else None
    size = f"{len(vocabulary[0])} ids" if vocabulary else "not found here"
    theirs = f"{info.file} sha256 {info.sha256[:12]}, {size}"
    text = (f"stages.{stage.name}.data.manifest {stage.data.manifest}: its shards were tokenised by {info.path} "
            f"({theirs}), but the stage trains {model}, whose tokenizer differs "
            f"({_describe(model, info.max_length)})")
    if not any(shard.pretokenized for shard in manifest.shards):
        log.warning("%s. The shards hold text (tokenised at train time), so only their length buckets came from "
                    "the other tokenizer", text)
        return []
    return [f"{text}: the token ids in the shards would mean other pieces to this model. Fix: re-shard with "
            f"tools/make_shards.py --tokenizer {model}, or set model.path to the model these shards were made for; "
            f"if you know both vocabularies are identical, set checks.accept_tokenizers=['{info.sha256}']"]


def _same_tokenizer(info: TokenizerInfo, model_dirs: list[Path]) -> bool:
    """The recorded hash matches a model tokenizer file, or only the bytes differ (same pieces and ids)."""
    for model in model_dirs:
        if _sha256(model / info.file) == info.sha256:
            return True
    shard_tokenizer = Path(info.path)
    if _sha256(shard_tokenizer / info.file) != info.sha256:
        return False  # the shards' tokenizer is not here to compare vocabularies with
    theirs, mine = _vocabulary(shard_tokenizer), _vocabulary(model_dirs[0])
    return theirs is not None and theirs == mine


def _stamp(path: Path) -> tuple:
    """A cache key that changes when the file does (tokenizer files are hashed once per run, not per stage)."""
    try:
        stat = path.stat()
    except OSError:
        return (str(path), None)
    return (str(path), stat.st_mtime_ns, stat.st_size)


def _sha256(path: Path) -> str | None:
    return _cached_sha256(_stamp(path))


@lru_cache(maxsize=32)
def _cached_sha256(stamp: tuple) -> str | None:
    return file_sha256(stamp[0]) if stamp[1] is not None else None


def _vocabulary(directory: Path) -> tuple | None:
    return _cached_vocabulary(tuple(_stamp(directory / name) for name in ("tokenizer.json", "sentencepiece.bpe.model",
                                                                          "tokenizer_config.json")))


@lru_cache(maxsize=8)
def _cached_vocabulary(stamps: tuple) -> tuple | None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(Path(stamps[0][0]).parent))
    except (OSError, ValueError, TypeError):
        return None
    return tuple(sorted(tokenizer.get_vocab().items())), tuple(sorted(tokenizer.special_tokens_map.items(), key=str))


def _describe(directory: Path, max_length: int) -> str:
    """'tokenizer.json sha256 0123456789ab, 3002 ids' of a tokenizer directory."""
    try:
        identity = tokenizer_identity(directory, max_length)
    except ValueError:
        return "no tokenizer file found here"
    vocabulary = _vocabulary(directory)
    text = f"{identity.file} sha256 {identity.sha256[:12]}"
    return f"{text}, {len(vocabulary[0])} ids" if vocabulary else text


def _check_checkpoint(cfg: RunConfig, point: ResumePoint, world: int, ds_config: dict | None) -> list[str]:
    problems = []
    change = world_change(point.path, world)
    stage = next((s for s in cfg.stages if s.name == point.stage), None)
    if change is not None and stage is not None:
        problems += world_change_problems(stage, point.path, change, ds_config)
    saved_path = Path(cfg.output_dir) / "checkpoints" / point.stage / "deepspeed_config.json"
    if ds_config is not None and saved_path.is_file():
        saved = json.loads(saved_path.read_text())
        for name, read in (("ZeRO stage", lambda d: d.get("zero_optimization", {}).get("stage", 0)),
                           ("bf16", lambda d: d.get("bf16", {}).get("enabled", False))):
            if read(saved) != read(ds_config):
                problems.append(f"checkpoint {point.path} was written with {name} {read(saved)}, this run has "
                                f"{read(ds_config)} (engine.*): DeepSpeed cannot load it so; keep the engine settings "
                                "of the run that wrote it")
    return problems


def _check_changes(cfg: RunConfig, point: ResumePoint | None) -> list[str]:
    """Refuse changes a resume inside a stage cannot take; print the others."""
    previous = previous_config(cfg.output_dir)
    if previous is None:
        return []
    path, before = previous
    after = plain(cfg)
    changes = config_changes(before, after)
    reasons = breaking_changes(changes, before, after, point.stage) if point is not None else []
    if point is not None:
        reasons += unrecorded_worker_change(changes, point.path, point.stage)
    if reasons:
        return [f"resuming stage {point.stage} at {point.path.name}: changes since {path.name} break its data "
                "position or its saved states:\n       " + "\n       ".join(reasons) +
                f"\n     Undo them ({path} holds the config the checkpoint was written with), or train with them "
                "from the stage's start in a new output_dir"]
    if changes:
        print(f"config changes since {path.name} (allowed):\n" + "\n".join(f"  {c.line()}" for c in changes),
              flush=True)
    return []
