"""Training: one process or many (torchrun), exact resume. `smolvla train` builds its TrainConfig."""

from smolvla.train.config import TrainConfig
from smolvla.train.loop import TrainingError, train

__all__ = ["TrainConfig", "TrainingError", "train"]
