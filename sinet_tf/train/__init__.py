"""Training: recipes (``training/*.yaml``) and the engine behind ``sinet train``."""

from sinet_tf.train.config import RecipeError, StageConfig, TrainConfig, load_recipe
from sinet_tf.train.trainer import (
           SGDL2,
           AdamL2,
           TrainingDiverged,
           TrainingError,
           make_strategy,
           train,
           transfer_weights,
)

__all__ = ["AdamL2", "RecipeError", "SGDL2", "StageConfig", "TrainConfig", "TrainingDiverged", "TrainingError", "load_recipe",
           "make_strategy", "train", "transfer_weights"]
