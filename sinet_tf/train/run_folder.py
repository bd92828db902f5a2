"""A training run's output folder and the trainer's fault-injection setting, read without
TensorFlow, so that ``sinet train`` refuses a folder that already holds a run (or a malformed
``SINET_TRAIN_KILL_AT``) before it spends seconds importing TensorFlow.

``state.json`` is the run's only commit point (:mod:`sinet_tf.train.trainer`); a folder
that has one holds a run, which only ``--resume`` may continue.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["KILL_ENV", "KILL_POINTS", "STATE_FILE", "TrainingDiverged", "TrainingError", "check_run_folder",
           "kill_point"]

STATE_FILE = "state.json"
KILL_ENV = "SINET_TRAIN_KILL_AT"
KILL_POINTS = ("batch", "last", "best", "commit", "publish")


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


def kill_point() -> tuple[str, int] | None:
    """``SINET_TRAIN_KILL_AT=POINT:EPOCH`` (the trainer's fault injection, see
    :mod:`sinet_tf.train.trainer`) as ``(POINT, EPOCH)``, or None when it is not set;
    :class:`TrainingError` naming the value when it is malformed."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return None
    point, _, epoch = spec.partition(":")
    if point not in KILL_POINTS or not epoch.isdigit():
        raise TrainingError(f"{KILL_ENV}={spec!r}: expected POINT:EPOCH with POINT one of {', '.join(KILL_POINTS)}")
    return point, int(epoch)
