"""M3-Embedding training framework.

Data flow: shards -> length-bucketed stream -> DeepSpeed engine -> encoder + three heads
(framework.model) -> cross-device gather -> self-distillation loss (framework.loss) -> checkpoint + MLflow.
"""
__version__ = "0.1.0"
