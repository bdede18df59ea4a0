"""Training: the objective (model + loss) and, with the training issue, the engine and curriculum."""
from framework.train.objective import M3Objective, head_scores

__all__ = ["M3Objective", "head_scores"]
