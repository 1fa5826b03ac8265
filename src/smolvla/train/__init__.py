"""Training: LeRobot-style flags, one process or many (torchrun), exact resume."""

from smolvla.train.config import TrainConfig, parse_args
from smolvla.train.loop import TrainingError, train

__all__ = ["TrainConfig", "TrainingError", "parse_args", "train"]
