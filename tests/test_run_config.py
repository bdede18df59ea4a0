"""The run config's typed sections: the loss preset expanded by the loader, RetroMAE and evaluation sections
checked at load (before any process group), Literal choices, the sections each stage kind reads, and the
cross-section checks of the kinds (framework/train/tasks/)."""
from __future__ import annotations

import dataclasses

import pytest

from framework.config import from_dict, to_dict
from framework.evaluate.config import BenchmarkConfig, EvalConfig
from framework.loss import LossConfig
from framework.pretrain import RetroMAEConfig
from framework.train.config import EngineConfig, OptimConfig, RunConfig


def _run(**stage) -> dict:
    base = {"name": "s", "steps": 3, "data": {"manifest": "m.json", "buckets": {"total_batch": {8192: 8}}}}
    base.update(stage)
    return {"output_dir": "out", "model": {"path": "m"}, "stages": [base]}


def _stage(**stage):
    return from_dict(RunConfig, _run(**stage)).stages[0]


def test_loss_section_expands_its_preset():
    """`loss: {preset: ..., field: value}` becomes the LossConfig that LossConfig.preset builds."""
    assert _stage().loss == LossConfig.preset("reference") == LossConfig()
    assert _stage(loss={"preset": "reference", "use_sparse": False}).loss == \
        LossConfig.preset("reference", use_sparse=False)
    paper = _stage(loss={"preset": "paper", "loss_divisor": 4}).loss
    assert paper == LossConfig.preset("paper", loss_divisor=4) and paper.detach_teacher is False
    # The resolved config (saved as config.yaml) holds every field and reloads to the same value.
    raw = to_dict(from_dict(RunConfig, _run(loss={"preset": "paper"})))
    assert "preset" not in raw["stages"][0]["loss"]
    assert from_dict(RunConfig, raw).stages[0].loss == LossConfig.preset("paper")
    with pytest.raises(ValueError, match=r"stages\.0\.loss: unknown preset 'papper'; use one of \['paper', "):
        _stage(loss={"preset": "papper"})
    with pytest.raises(ValueError, match=r"stages\.0\.loss: unknown field\(s\) \['use_sparce'\]; LossConfig has"):
        _stage(loss={"use_sparce": False})
    with pytest.raises(ValueError, match=r"stages\.0\.loss\.kd_loss_type='kl' is not one of \['kl_div', 'm3_kd_loss'\]"):
        _stage(loss={"kd_loss_type": "kl"})
    with pytest.raises(ValueError, match="temperature=0.0 must be > 0"):
        _stage(loss={"temperature": 0.0})


def test_literal_choices_are_checked_by_type_in_yaml_and_in_code():
    with pytest.raises(ValueError, match=r"stages\.0\.optim\.schedule='cosin' is not one of \['linear', 'cosine', "
                                         r"'constant'\]; use one of them"):
        _stage(optim={"schedule": "cosin"})
    raw = _run()
    raw["engine"] = {"zero_stage": True}                    # True == 1 in Python, but it is not the stage 1
    with pytest.raises(ValueError, match=r"engine\.zero_stage: True matches none of"):
        from_dict(RunConfig, raw)
    raw["engine"] = {"zero_stage": 3, "precision": "bf16"}
    assert from_dict(RunConfig, raw).engine == EngineConfig(zero_stage=3, precision="bf16")
    with pytest.raises(ValueError, match=r"engine\.precision='fp16' is not one of \['auto', 'bf16', 'fp32'\]"):
        EngineConfig(precision="fp16")                      # built in code: the same list, from the type
    with pytest.raises(ValueError, match=r"optim\.schedule='step' is not one of"):
        OptimConfig(schedule="step")
    with pytest.raises(ValueError, match=r"stages\.s\.on_nonfinite='ignore' is not one of \['stop', 'skip'\]"):
        dataclasses.replace(_stage(), on_nonfinite="ignore")
    with pytest.raises(ValueError, match=r"checkpoint: unknown field\(s\) \['export_stages'\]"):
        from_dict(RunConfig, dict(_run(), checkpoint={"export_stages": True}))   # a dead field, removed


def test_retromae_section_is_typed_and_checked_at_load():
    stage = _stage(kind="retromae", retromae={"max_length": 128}, data={
        "manifest": "m", "passage_max_length": 128, "buckets": {"total_batch": {8192: 8}}})
    assert stage.retromae == RetroMAEConfig(max_length=128)
    with pytest.raises(ValueError, match=r"stages\.0\.retromae: RetroMAEConfig\.encoder_mask_ratio=2\.0: use a fraction"):
        _stage(kind="retromae", retromae={"encoder_mask_ratio": 2})
    with pytest.raises(ValueError, match=r"stages\.0\.retromae: unknown field\(s\) \['mask_ratio'\]"):
        _stage(kind="retromae", retromae={"mask_ratio": 0.3})
    with pytest.raises(ValueError, match=r"stages\.s\.data\.passage_max_length=8192 keeps documents longer than "
                                         r"stages\.s\.retromae\.max_length=512"):
        _stage(kind="retromae", retromae={"max_length": 512})


def test_each_kind_reads_only_its_sections():
    """A section of another kind is refused instead of being silently ignored; the registry names the kinds."""
    with pytest.raises(ValueError, match=r"stages\.s\.retromae applies to kind retromae, not contrastive"):
        _stage(retromae={"max_length": 128})
    with pytest.raises(ValueError, match=r"stages\.s\.loss applies to kind contrastive, not retromae"):
        _stage(kind="retromae", loss={"use_sparse": False})
    with pytest.raises(ValueError, match=r"stages\.s\.split_batch applies to kind contrastive, not retromae"):
        _stage(kind="retromae", split_batch={"sub_batch": 4})
    with pytest.raises(ValueError, match=r"stages\.s\.kind='mlm': use one of \['contrastive', 'retromae'\]"):
        _stage(kind="mlm")


def test_contrastive_cross_section_checks():
    with pytest.raises(ValueError, match=r"gather\.rescale_grad=false asks for the reference's cross-device dense "
                                         r"gradient .* only gather\.scores=all_rows computes"):
        _stage(gather={"dense": True, "rescale_grad": False})
    assert _stage(gather={"dense": True, "scores": "all_rows", "rescale_grad": False}).gather.rescale_grad is False
    assert _stage(gather={"dense": False, "rescale_grad": False}).gather.dense is False
    with pytest.raises(ValueError, match="m3_kd_loss distils over all ranks' rows"):
        _stage(loss={"kd_loss_type": "m3_kd_loss"})
    with pytest.raises(ValueError, match=r"stages\.s\.loss\.use_sparse is on but model\.sparse is false"):
        from_dict(RunConfig, dict(_run(), model={"path": "m", "sparse": False}))


def test_evaluate_section_is_the_evaluation_config():
    """One definition: a stage's `evaluate` is framework/evaluate's EvalConfig; the short form of earlier
    configs (benchmark name, tasks and max_queries at the top) still loads, to the same value."""
    short = _stage(evaluate={"benchmark": "ddtp-dev", "tasks": ["de", "de-en"], "max_queries": 8, "batch_size": 16})
    full = _stage(evaluate={"benchmark_name": "ddtp-dev", "batch_size": 16,
                            "benchmark": {"tasks": ["de", "de-en"], "max_queries": 8}})
    assert short.evaluate == full.evaluate == EvalConfig(
        benchmark_name="ddtp-dev", batch_size=16, benchmark=BenchmarkConfig(tasks=("de", "de-en"), max_queries=8))
    assert _stage().evaluate.benchmark_name is None        # no evaluation unless a benchmark is named
    with pytest.raises(ValueError, match=r"stages\.0\.evaluate: \['tasks'\] given twice"):
        _stage(evaluate={"tasks": ["de"], "benchmark": {"tasks": ["fr"]}})
    with pytest.raises(ValueError, match=r"stages\.0\.evaluate: unknown mode\(s\) \['dense\+sparse'\]"):
        _stage(evaluate={"benchmark": "ddtp", "modes": ["dense+sparse"]})
