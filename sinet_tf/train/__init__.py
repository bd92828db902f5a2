"""Training: recipes (``training/*.yaml``) and the engine behind ``sinet train``.

Names are imported on first use, so that ``sinet train`` can check its output folder
(:mod:`.run_folder`) before TensorFlow is imported.
"""

from __future__ import annotations

from sinet_tf.lazy import lazy_attributes

_NAMES = {
    "RecipeError": "config", "StageConfig": "config", "TrainConfig": "config", "load_recipe": "config",
    "SGDL2": "trainer", "AdamL2": "trainer", "make_strategy": "trainer", "train": "trainer",
    "transfer_weights": "trainer",
    "TrainingDiverged": "run_folder", "TrainingError": "run_folder",
}

__all__ = sorted(_NAMES)


__getattr__, __dir__ = lazy_attributes(__name__, {name: f"{__name__}.{module}" for name, module in _NAMES.items()})
