"""The `sinet` command as a user runs it, in fresh processes: a training run killed with
SIGKILL (between an epoch's commit and its published names; with -m slow at every point of
an epoch's commit in turn) and resumed from the command line ends with the history of an
uninterrupted run; the same command on the finished run is refused without ``--resume``
and finds nothing left to train with it."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

KILL_ENV = "SINET_TRAIN_KILL_AT"


def sinet_command() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m sinet_tf.cli``."""
    script = shutil.which("sinet", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "sinet_tf.cli"]


# The trainer tests' tiny run (tests/test_train.py): a narrow SINet encoder on 64x64 synthetic
# portraits, 10 training and 2 validation images, batches of 4 (3 steps), eager steps. Three
# epochs with the learning-rate milestone at epoch 2, so a resumed run must also restore the
# schedule's position.
TINY = ["data=synthetic:10", "model=sinet_encoder", "model_kwargs={p: 1, q: 2}", "input_size=[64,64]",
        "batch_size=4", "epochs=3", "lr_milestones=[2]", "run_eagerly=true"]
METRICS = ("loss", "person_iou", "val_loss", "val_person_iou", "learning_rate")


def _train(out: Path, *extra: str, kill: str | None = None, wait: bool = True):
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if kill:
        env[KILL_ENV] = kill
    cmd = [*sinet_command(), "train", "--config", str(REPO / "training" / "default.yaml"), "-o", str(out),
           "--verbose", "0", *extra, *TINY]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out_text, err_text = proc.communicate(timeout=600)
    return proc.returncode, out_text, err_text


def _history(run: Path) -> list[dict]:
    with open(run / "train" / "history.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


# A chain of SIGKILLs, each run resumed from the command line and killed at the next point
# (POINT:EPOCH, the epoch committed after it). Every point: before epoch 1's commit (nothing
# committed, so --resume starts from the beginning and drops the orphan files), mid-epoch
# (after the first batch of epoch 2), between epoch 2's checkpoint write and its commit, and
# between the commit and the published names. The default suite kills once, at the last of
# these (the one that leaves the most to reconcile); the whole chain runs with -m slow.
EVERY_POINT = (("best:1", 0), ("batch:2", 1), ("last:2", 1), ("commit:2", 2))
AFTER_THE_COMMIT = (("commit:2", 2),)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("chain", [pytest.param(EVERY_POINT, marks=pytest.mark.slow, id="every_point"),
                                   pytest.param(AFTER_THE_COMMIT, id="after_the_commit")])
def test_sigkill_then_resume_from_the_command_line(tmp_path, chain):
    full_run, run = tmp_path / "full", tmp_path / "killed"
    uninterrupted = _train(full_run, wait=False)   # in parallel with the killed chain

    for i, (point, committed) in enumerate(chain):
        code, _, err = _train(run, *(["--resume"] if i else []), kill=point)
        assert code == -signal.SIGKILL, (point, err[-2000:])
        if not committed:
            assert not (run / "state.json").exists()
            assert list((run / "train" / "checkpoints").glob("best-e0001.keras"))
            continue
        state = json.loads((run / "state.json").read_text())
        assert state["epoch"] == committed, point
        assert state["files"]["train"]["last"] == f"train/checkpoints/last-e{committed:04d}.keras"
        assert (run / state["files"]["train"]["last"]).is_file()
        if point == "last:2":   # the uncommitted epoch's checkpoint is there, beside the committed one
            assert (run / "train" / "checkpoints" / "last-e0002.keras").is_file()

    # the last kill left the published names one epoch behind the commit
    assert [int(r["epoch"]) for r in _history(run)] == [1]
    code, out, err = _train(run, "--resume")
    assert code == 0, err[-3000:]
    assert "resuming after epoch 2" in out

    out_full, err_full = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, err_full[-3000:]
    a, b = _history(full_run), _history(run)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [1, 2, 3]
    # Same seed, same batches, same CPU kernels: the resumed run is bit-identical to the
    # uninterrupted one (the 1e-6 allows only float32 round-off, far below any retrained
    # or skipped epoch, which moves the loss by 1e-2 here).
    for key in METRICS:
        np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-6, atol=1e-7, err_msg=key)
    assert a[2]["learning_rate"] == pytest.approx(a[0]["learning_rate"] * 0.5)   # the milestone at epoch 2
    # the published files are the committed ones, and nothing uncommitted is left over
    state = json.loads((run / "state.json").read_text())
    assert state["completed_stages"] == ["train"] and state["epoch"] == 3
    committed = {run / f for f in state["files"]["train"].values()}
    assert set((run / "train" / "checkpoints").iterdir()) == committed
    assert os.path.samefile(run / "train" / "last.keras", run / state["files"]["train"]["last"])
    assert not [p.name for p in (run / "train").iterdir() if p.name.startswith(".")]

    from sinet_tf.loading import load_keras_model

    wa = load_keras_model(full_run / "train" / "last.keras").get_weights()
    wb = load_keras_model(run / "train" / "last.keras").get_weights()
    for x, y in zip(wa, wb):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)

    # the same command on a finished run: refused without --resume (the run is there), and
    # with it the run is found complete: nothing is trained again, nothing is rewritten
    history = (run / "train" / "history.csv").read_text()
    code, _, err = _train(run)
    assert code == 2 and "already holds a run (state.json); pass --resume" in err, err[-2000:]
    code, _, err = _train(run, "--resume")
    assert code == 0, err[-3000:]
    assert (run / "train" / "history.csv").read_text() == history
    assert json.loads((run / "state.json").read_text()) == state


def test_kill_hook_rejects_a_malformed_value(tmp_path):
    code, _, err = _train(tmp_path / "run", kill="after-last")
    assert code == 2 and "SINET_TRAIN_KILL_AT='after-last'" in err and "Traceback" not in err
