"""The model card (README.md) of a stage export: what it was trained from, on what, how, how well, how to load it.

`ModelCard.for_stage(run, index)` gathers the facts once, from the resolved run config, each stage's shard
manifest (sources and sample counts) and the evaluations the run wrote (<output_dir>/evaluations/<stage>.json,
framework/train/evaluation.py); `render` turns them into Markdown with Hugging Face card metadata.
framework/train/export.py writes the file.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from framework.config import to_dict
from framework.data.manifest import load_manifest
from framework.evaluate.report import mode_table, task_table
from framework.model.bge_format import HEAD_FILES
from framework.model.st_layout import read_prompts, read_st_layout

if TYPE_CHECKING:  # framework.train.config imports the stage kinds, whose exports import this module
    from framework.train.config import RunConfig, StageConfig

# Hugging Face card metadata: the Hub lists the model under sentence-transformers and sentence similarity.
METADATA = {"library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity",
            "tags": ["sentence-transformers", "sentence-similarity", "feature-extraction", "bge-m3", "m3-embedding"]}
# What the card's tables read from an evaluation's results dict (framework/evaluate/report.py).
EVALUATION_KEYS = {"benchmark", "split", "modes", "overall", "groups", "per_task", "timings"}


@dataclass(frozen=True)
class StageCard:
    """One stage of the curriculum as the card shows it."""

    name: str
    """Stage name."""
    kind: str
    """'contrastive' or 'retromae'."""
    length: str
    """'<n> steps' or '<n> samples', as configured."""
    lr: float
    """Peak learning rate."""
    group_size: int
    """Passages per query (1 positive + hard negatives)."""
    max_lengths: tuple[int, int]
    """Query and passage tokens kept."""
    objective: dict[str, Any]
    """Loss (and RetroMAE) settings that differ from their defaults, as dotted names (loss.temperature)."""
    settings: dict[str, Any]
    """The whole resolved stage config."""
    sources: dict[str, int]
    """Samples per source in the stage's manifest (the sources the stage reads); {} when unreadable."""
    source_weights: dict[str, float]
    """Fraction of each source kept per epoch (missing: all)."""
    manifest_note: str | None
    """Why the sources are unknown (the manifest could not be read), else None."""
    evaluation: dict | None
    """The results dict of the stage-end evaluation, when the run wrote one."""
    evaluation_note: str | None = None
    """Why an evaluation file the run wrote is not shown (unreadable), else None."""

    @classmethod
    def from_config(cls, stage: StageConfig, output_dir: Path) -> "StageCard":
        sources, note = _manifest_sources(stage)
        evaluation, evaluation_note = _evaluation(output_dir / "evaluations" / f"{stage.name}.json")
        return cls(name=stage.name, kind=stage.kind,
                   length=f"{stage.steps} steps" if stage.steps else f"{stage.samples} samples",
                   lr=stage.optim.lr, group_size=stage.data.group_size,
                   max_lengths=(stage.data.query_max_length, stage.data.passage_max_length),
                   objective=_changed(stage),
                   settings=to_dict(stage), sources=sources, source_weights=dict(stage.data.source_weights),
                   manifest_note=note, evaluation=evaluation, evaluation_note=evaluation_note)


@dataclass(frozen=True)
class ModelCard:
    """What the card of one stage export says."""

    run_name: str
    """The run's name (its MLflow parent run)."""
    base_model: str
    """The model the run started from (model.path)."""
    stage: str
    """The stage this export ends."""
    num_stages: int
    """Stages in the run config (the card lists those run so far)."""
    stages: tuple[StageCard, ...]
    """The stages run so far, in curriculum order, ending with `stage`."""

    @classmethod
    def for_stage(cls, run: RunConfig, index: int) -> "ModelCard":
        """The card of stage `index`'s export (stages 0..index have run)."""
        output_dir = Path(run.output_dir)
        return cls(run.name, run.model.path, run.stages[index].name, len(run.stages),
                   tuple(StageCard.from_config(s, output_dir) for s in run.stages[:index + 1]))

    def render(self, model_dir: Path) -> str:
        """The README.md text for the export in `model_dir` (its files decide which loaders apply)."""
        parts = ["---\n" + yaml.safe_dump(METADATA, sort_keys=False) + "---", self._header(model_dir),
                 self._stages(), self._evaluations(), usage(model_dir)]
        return "\n\n".join(parts) + "\n"

    def _header(self, model_dir: Path) -> str:
        layout = read_st_layout(model_dir)
        has_heads = all((model_dir / f).is_file() for f in HEAD_FILES.values())
        position = [s.name for s in self.stages].index(self.stage) + 1
        lines = [f"# {self.run_name} / {self.stage}", "",
                 f"An M3-Embedding model exported after stage `{self.stage}` ({position} of {self.num_stages}) of "
                 f"the training run `{self.run_name}`.", "", f"- Base model: `{self.base_model}`"]
        if has_heads:
            lines.append("- Heads: dense (normalised CLS), sparse (`sparse_linear.pt`), multi-vector "
                         "(`colbert_linear.pt`): the BGE-M3 layout")
        else:
            lines.append("- Heads: none (a plain Hugging Face encoder; a contrastive stage starts from it with "
                         "fresh heads)")
        if layout is not None:
            lines.append(f"- Dense vector: {layout.embedding_dim} dimensions; inputs up to "
                         f"{layout.max_seq_length} tokens")
        return "\n".join(lines)

    def _stages(self) -> str:
        header = ["#", "stage", "kind", "length", "lr", "group size", "max tokens (q/p)",
                  "objective (changes from the defaults: the reference loss)"]
        rows = [[str(i), f"`{s.name}`", s.kind, s.length, _rates(s), str(s.group_size),
                 f"{s.max_lengths[0]}/{s.max_lengths[1]}",
                 ", ".join(f"{k}={v}" for k, v in s.objective.items()) or "defaults"]
                for i, s in enumerate(self.stages, 1)]
        data_rows = []
        for s in self.stages:
            if s.manifest_note:
                data_rows.append([f"`{s.name}`", s.manifest_note, "", ""])
            for source, count in s.sources.items():
                data_rows.append([f"`{s.name}`", source, str(count), f"{s.source_weights.get(source, 1.0):g}"])
        details = [f"<details><summary>Settings of stage <code>{s.name}</code> (resolved run config)</summary>\n\n"
                   f"```yaml\n{yaml.safe_dump(s.settings, sort_keys=False, allow_unicode=True)}```\n\n</details>"
                   for s in self.stages]
        return "\n\n".join(["## Training stages", markdown(header, rows), "### Data sources",
                            markdown(["stage", "source", "samples in the manifest", "kept per epoch"], data_rows),
                            *details])

    def _evaluations(self) -> str:
        evaluated = [s for s in self.stages if s.evaluation is not None]
        notes = [f"- `{s.name}`: {s.evaluation_note}" for s in self.stages if s.evaluation_note]
        if not evaluated and not notes:
            return ("## Evaluation\n\nNo stage of this run has been evaluated so far (a stage's `evaluate.benchmark` "
                    "runs one at its end; `python -m framework evaluate` evaluates any export).")
        parts = ["## Evaluation", "Scores x100, macro-averaged over tasks (framework/evaluate)."]
        for s in evaluated:
            r = s.evaluation
            parts += [f"### After stage `{s.name}`: {r['benchmark']} ({r['split']}), {len(r['per_task'])} task(s)",
                      mode_table(r), task_table(r)]
        if notes:
            parts += ["Evaluations not shown:", "\n".join(notes)]
        return "\n\n".join(parts)


FLAG_USAGE = """FlagEmbedding (all three heads):

```python
from FlagEmbedding import BGEM3FlagModel

model = BGEM3FlagModel({path}, use_fp16=False)
out = model.encode(["What is BGE M3?"], return_dense=True, return_sparse=True, return_colbert_vecs=True)
```"""
ST_USAGE = """sentence-transformers (the dense vectors, equal to FlagEmbedding's `dense_vecs`):

```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer({path})
vectors = model.encode(["What is BGE M3?"])
```

Text Embeddings Inference (the dense vectors; CLS pooling):

```bash
docker run -p 8080:80 -v {folder}:/data ghcr.io/huggingface/text-embeddings-inference:cpu-latest \\
    --model-id /data --pooling cls
```"""
OUR_USAGE = """This framework (`framework.inference`, or `python -m framework evaluate --model DIR`):

```python
from framework.inference import M3Embedder

model = M3Embedder.from_pretrained({path})
out = model.encode(["What is BGE M3?"], dense=True, sparse=True, colbert=True)
```"""
ENCODER_USAGE = """A plain Hugging Face encoder:

```python
from transformers import AutoModel

model = AutoModel.from_pretrained({path})
```"""


def usage(model_dir: Path) -> str:
    """How to load the export in each library that can (the files present decide which)."""
    folder = Path(model_dir).resolve()
    fill = {"path": json.dumps(str(folder)), "folder": str(folder)}
    parts = ["## Usage", "Replace the path by the directory's new place (or its Hub id) after moving it."]
    if not all((folder / f).is_file() for f in HEAD_FILES.values()):
        return "\n\n".join(parts + [ENCODER_USAGE.format(**fill)])
    prompts = read_prompts(folder)
    if prompts:
        parts.append(prompts_note(prompts))
    parts.append(FLAG_USAGE.format(**fill))
    if read_st_layout(folder) is not None:
        parts.append(ST_USAGE.format(**fill))
    return "\n\n".join(parts + [OUR_USAGE.format(**fill)])


def prompts_note(prompts: dict[str, str]) -> str:
    """Which texts the model was trained with before its queries and passages, and who adds them."""
    listed = ", ".join(f"`{name}`: {json.dumps(text, ensure_ascii=False)}" for name, text in sorted(prompts.items()))
    return (f"Prompts: this model was trained with texts put before its inputs ({listed}). "
            "`M3Embedder.encode(..., is_query=True / False)` and sentence-transformers' `encode_query` / "
            "`encode_document` (or `prompt_name=`) add them; FlagEmbedding's `BGEM3FlagModel` and TEI do not: "
            "put them before the texts yourself there.")


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _changed(stage: StageConfig) -> dict[str, Any]:
    """The stage's loss and RetroMAE fields that differ from a default-built section (each kind uses one)."""
    changed = {}
    for name in ("loss", "retromae"):
        section = getattr(stage, name)
        default = type(section)()
        changed.update({f"{name}.{f.name}": getattr(section, f.name) for f in dataclasses.fields(section)
                        if getattr(section, f.name) != getattr(default, f.name)})
    return changed


def _manifest_sources(stage: StageConfig) -> tuple[dict[str, int], str | None]:
    try:
        counts = load_manifest(stage.data.manifest).samples_by_source()
    except (OSError, ValueError) as err:
        return {}, f"manifest {stage.data.manifest} unreadable ({type(err).__name__}: {err})"
    wanted = set(stage.data.sources) or set(counts)
    return {s: n for s, n in counts.items() if s in wanted}, None


def _evaluation(path: Path) -> tuple[dict | None, str | None]:
    """(results, None), (None, why it is unreadable), or (None, None) when the stage was not evaluated."""
    if not path.is_file():
        return None, None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return None, f"{path} unreadable ({type(err).__name__}: {err}); re-run `python -m framework evaluate`"
    missing = sorted(EVALUATION_KEYS - set(results)) if isinstance(results, dict) else sorted(EVALUATION_KEYS)
    if missing:
        return None, f"{path} lacks {missing}: not a results file of framework/evaluate"
    return results, None


def _rates(stage: StageCard) -> str:
    """The stage's peak rate, then each optim.lr_groups pattern with its own (a table cell: '|' escaped)."""
    groups = (stage.settings.get("optim") or {}).get("lr_groups") or []
    return f"{stage.lr:g}" + "".join(f"; `{g['pattern']}`".replace("|", "\\|") + f" {g['lr']:g}" for g in groups)
