"""Training: the objective (model + loss), the stage kinds (tasks/), the engine, the loop and the curriculum."""
from framework.train.objective import ForwardReport, M3Objective, ObjectiveOutput, head_scores

__all__ = ["ForwardReport", "M3Objective", "ObjectiveOutput", "head_scores"]
