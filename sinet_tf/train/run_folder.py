"""A training run's output folder, read without TensorFlow, so that ``sinet train`` refuses
a folder that already holds a run before it spends seconds importing TensorFlow.

``state.json`` is the run's only commit point (:mod:`sinet_tf.train.trainer`); a folder
that has one holds a run, which only ``--resume`` may continue.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["STATE_FILE", "TrainingDiverged", "TrainingError", "check_run_folder"]

STATE_FILE = "state.json"


class TrainingError(ValueError):
    """Raised before any training starts when the run cannot go ahead."""


class TrainingDiverged(TrainingError):
    """The loss or the weights became non-finite; the epoch was not committed."""


def check_run_folder(run_dir: str | Path, resume: bool) -> Path:
    """The path of ``run_dir``'s ``state.json``; :class:`TrainingError` when it exists and
    ``resume`` is false (a new run would overwrite a finished or interrupted one)."""
    run_dir = Path(run_dir)
    state_path = run_dir / STATE_FILE
    if state_path.exists() and not resume:
        raise TrainingError(f"{run_dir} already holds a run ({STATE_FILE}); pass --resume to continue it "
                            "or choose another output folder")
    return state_path
