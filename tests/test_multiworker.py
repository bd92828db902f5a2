"""Multi-worker training with real worker processes on 127.0.0.1 (``TF_CONFIG``): the same
result as one worker, disjoint slices whose union is the epoch, only the chief writes the
run folder, clear errors for a bad cluster, and (with -m slow: eight worker processes)
``--resume`` after a killed worker."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from sinet_tf.data.pipeline import make_pipeline
from sinet_tf.data.sources import open_source
from sinet_tf.train.cluster import ClusterError, free_ports, read_tf_config
from sinet_tf.train.trainer import KILL_ENV

RECIPE = str(REPO / "training" / "default.yaml")
# a narrow SINet encoder on 16 synthetic portraits at 64x64, global batch 8: 2 steps an epoch
# (a step's cost here is the synchronized BatchNorm's collectives, not the batch size).
# SGD: its update is linear in the gradient, so the two runs' float-order differences stay
# that size (Adam's first steps are lr * sign(g), which turns the noise in near-zero
# gradient components into full-size steps)
OVERRIDES = ["batch_size=8", "input_size=[64,64]", "model=sinet_encoder", "model_kwargs={p: 1, q: 2}",
             "lr_milestones=[1]", "optimizer=sgd", "learning_rate=0.005"]
DATA = "synthetic:16"


def _env(tmp_path, run="", **extra):
    """The environment of a run's processes; their temporary folders go to ``tmp-<run>``."""
    tmp = tmp_path / f"tmp-{run}"
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(tmp), **extra}


def _train_cmd(out, epochs, *more):
    return [sys.executable, "-m", "sinet_tf.cli", "train", "--config", RECIPE, "--data", DATA, "-o", str(out),
            "--verbose", "0", *more, *OVERRIDES, f"epochs={epochs}"]


def _workers(tmp_path, out, epochs, *more, n=2, env_of=None):
    """``n`` worker processes of one cluster; ``env_of[i]``: more environment for worker ``i``."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(n)]}
    procs = []
    for i in range(n):
        task = {"cluster": cluster, "task": {"type": "worker", "index": i}}
        env = _env(tmp_path, out.name, TF_CONFIG=json.dumps(task), **(env_of or {}).get(i, {}))
        log = open(tmp_path / f"{out.name}-worker{i}.log", "w")
        procs.append(subprocess.Popen(_train_cmd(out, epochs, "--strategy", "multiworker", *more), env=env,
                                      stdout=log, stderr=subprocess.STDOUT, cwd=REPO))
    return procs


def _wait(procs, timeout=600):
    deadline = time.monotonic() + timeout
    for p in procs:
        p.wait(max(1, deadline - time.monotonic()))
    return [p.returncode for p in procs]


def _history(run):
    with open(run / "train" / "history.csv") as f:
        return list(csv.DictReader(f))


def _weights(path):
    import keras

    from sinet_tf.loading import load_keras_model

    keras.utils.set_random_seed(0)
    return [np.asarray(w) for w in load_keras_model(path).weights]


def _log(tmp_path, name):
    return "\n".join(p.read_text()[-2000:] for p in sorted(tmp_path.glob(f"{name}-worker*.log")))


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """One epoch of two worker processes of one cluster (``TF_CONFIG``, as a user starts them
    on two machines), and meanwhile, in this process, of one worker with the same global batch."""
    from sinet_tf.train import load_recipe, train

    tmp = tmp_path_factory.mktemp("multiworker")
    single, two = tmp / "single", tmp / "two"
    procs = _workers(tmp, two, 1)
    try:
        # eager steps: the same kernels as the workers' traced ones, without the tracing
        train(load_recipe(RECIPE, overrides=[*OVERRIDES, "epochs=1", "run_eagerly=true"], data=DATA), single,
              verbose=0, log=lambda *a: None)
    finally:
        codes = _wait(procs)
    assert codes == [0, 0], (codes, _log(tmp, "two"))
    return {"tmp": tmp, "single": single, "two": two}


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """Two workers of which worker 1 is SIGKILLed after the first batch of epoch 2 (the
    trainer's fault injection, ``SINET_TRAIN_KILL_AT``, in that worker only), their run
    folder then resumed by two workers through the launcher (as a user runs them on one
    machine); and, from a copy of that folder as the kill left it (epoch 1 committed), one
    worker resuming the same epoch 2: the reference for the resumed run. (That a resumed
    single-worker run equals an uninterrupted one is test_reliability.py's.) Eight worker
    processes in all: the tests that read it run with -m slow."""
    tmp = tmp_path_factory.mktemp("multiworker_killed")
    killed = tmp / "killed"
    procs = _workers(tmp, killed, 2, env_of={1: {KILL_ENV: "batch:2"}})
    codes = _wait(procs, timeout=600)  # the chief notices the lost worker and stops
    assert codes[1] == -signal.SIGKILL and codes[0] != 0, (codes, _log(tmp, "killed"))
    committed = json.loads((killed / "state.json").read_text())["epoch"]
    at_kill = tmp / "at_kill"
    shutil.copytree(killed, at_kill)
    epoch1 = tmp / "two_workers_epoch1.keras"
    shutil.copy(killed / "train" / "last.keras", epoch1)
    epoch1_history = _history(killed)

    r = subprocess.run(_train_cmd(killed, 2, "--workers", "2", "--resume"), env=_env(tmp, "resumed"),
                       capture_output=True, text=True, cwd=REPO, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run(_train_cmd(at_kill, 2, "--resume"), env=_env(tmp), capture_output=True, text=True, cwd=REPO,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return {"tmp": tmp, "killed": killed, "committed": committed, "one_worker_resumed": at_kill,
            "two_epoch1": epoch1, "two_epoch1_history": epoch1_history}


def test_two_workers_train_what_one_worker_trains(one_epoch):
    """Same global batch, after one epoch: the losses agree to float precision and the
    weights to within a thousandth of how far the epoch moved them. The collective sums
    add the two slices' gradients and BatchNorm statistics in another order than one
    device does: float rounding (measured: 3e-4 of the update), which SGD's linear update
    keeps that small; over more epochs any two runs this close drift apart as training
    amplifies it."""
    a, b = _history(one_epoch["single"]), _history(one_epoch["two"])
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == ["1"]
    for key in ("loss", "val_loss", "learning_rate"):
        np.testing.assert_allclose([float(r[key]) for r in a], [float(r[key]) for r in b], rtol=1e-4, err_msg=key)
    # a thresholded metric: a pixel whose two logits tie to float precision may flip
    np.testing.assert_allclose([float(r["person_iou"]) for r in a], [float(r["person_iou"]) for r in b], atol=5e-3)
    w1, w2 = _weights(one_epoch["single"] / "train" / "last.keras"), _weights(one_epoch["two"] / "train" / "last.keras")
    import keras

    import sinet_tf

    keras.utils.set_random_seed(0)
    init = [np.asarray(w) for w in sinet_tf.build_model("sinet_encoder", input_shape=(64, 64, 3), p=1, q=2).weights]
    moved = max(float(np.abs(x - y).max()) for x, y in zip(w1, init))
    diff = max(float(np.abs(x - y).max()) for x, y in zip(w1, w2))
    assert moved > 1e-3 and diff < 1e-3 * moved, (moved, diff)


def _assert_only_the_chief_wrote(run, tmp, sessions):
    """``run`` holds the committed files and one TensorBoard log pair (train, validation) per
    chief process (``sessions``), and no worker left its private folder in ``tmp``."""
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    tensorboard = [f for f in files if f.startswith("train/tensorboard/")]
    committed = json.loads((run / "state.json").read_text())["files"]["train"]  # the epoch's checkpoints
    assert [f for f in files if f not in tensorboard] == sorted(
        ["state.json", "train/best.keras", "train/history.csv", "train/last.keras", *set(committed.values())])
    assert sorted(f.split("/")[2] for f in tensorboard) == ["train"] * sessions + ["validation"] * sessions
    assert not list(tmp.glob("sinet-worker-*")), "a worker left its private folder behind"


def test_only_the_chief_writes_the_run_folder(one_epoch):
    _assert_only_the_chief_wrote(one_epoch["two"], one_epoch["tmp"] / "tmp-two", sessions=1)


@pytest.mark.slow
def test_only_the_chief_writes_across_a_kill_and_a_resume(killed_and_resumed):
    # one writer of each TensorBoard log (the chief's process), once before the kill and once after
    _assert_only_the_chief_wrote(killed_and_resumed["killed"], killed_and_resumed["tmp"] / "tmp-resumed", sessions=2)


@pytest.mark.slow
def test_resume_after_a_killed_worker_trains_what_one_worker_resumed_trains(killed_and_resumed):
    """The two resumed workers train epoch 2 from the committed epoch 1 as one worker does
    from the same folder: epoch 1's row is the commit's, epoch 2's agree to float precision
    (the collectives' summation order, as above) and so do the weights."""
    runs = killed_and_resumed
    assert runs["committed"] == 1  # killed in epoch 2: the resumed job trained epoch 2 again
    a, b = _history(runs["one_worker_resumed"]), _history(runs["killed"])
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == ["1", "2"]
    assert a[0] == b[0] == runs["two_epoch1_history"][0]
    for key in ("loss", "val_loss", "learning_rate"):
        np.testing.assert_allclose(float(a[1][key]), float(b[1][key]), rtol=1e-4, err_msg=key)
    assert float(a[1]["learning_rate"]) == pytest.approx(0.5 * float(a[0]["learning_rate"]))  # the milestone at 1
    w1 = _weights(runs["one_worker_resumed"] / "train" / "last.keras")
    w2 = _weights(runs["killed"] / "train" / "last.keras")
    w0 = _weights(runs["two_epoch1"])
    moved = max(float(np.abs(x - y).max()) for x, y in zip(w1, w0))
    diff = max(float(np.abs(x - y).max()) for x, y in zip(w1, w2))
    assert moved > 1e-4 and diff < 1e-3 * moved, (moved, diff)


@pytest.mark.parametrize("workers,replicas_per_worker", [(2, 1), (3, 1), (2, 2)])
def test_slices_are_disjoint_and_their_union_is_the_epoch(workers, replicas_per_worker):
    """Each worker's pipeline (its local replicas' slices of every global batch) holds
    exactly the examples the single-device batch holds, in order, augmented alike."""
    batch = workers * replicas_per_worker * 2
    source = open_source("synthetic:24", "train", seed=0, size=(64, 64))
    full = [(np.asarray(x), np.asarray(y)) for x, y in make_pipeline(source, (32, 32), batch, seed=5, epochs=2)]
    total = workers * replicas_per_worker
    parts = []
    for w in range(workers):
        first = w * replicas_per_worker
        parts.append([(np.asarray(x), np.asarray(y)) for x, y in make_pipeline(
            source, (32, 32), batch, seed=5, epochs=2, slices=(first, first + replicas_per_worker, total))])
    per_worker = [len(p) for p in parts]
    assert per_worker == [len(full) * replicas_per_worker] * workers
    for k, (x, y) in enumerate(full):
        pieces = [parts[w][k * replicas_per_worker + r] for w in range(workers) for r in range(replicas_per_worker)]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in pieces]), x)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in pieces]), y)


def test_a_batch_that_does_not_divide_into_the_replicas_is_refused(tmp_path):
    """By the launcher, before it starts a worker (each worker's own check, for the replicas
    its cluster has, is test_train.py's)."""
    cmd = [*_train_cmd(tmp_path / "run", 1, "--workers", "2"), "batch_size=9"]   # the later override wins
    r = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "sinet train: error: stage 'train': batch_size 9 does not divide into 2 replicas (9 / 2 = 4.5 examples each, "
        "one replica per worker); the batch size is global"), r.stderr[-2000:]
    assert "worker 0" not in r.stderr and "worker 1" not in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_last_validation_batch_smaller_than_the_replicas_is_refused(tmp_path):
    """9 synthetic portraits: 9 training images and 1 validation image, which the strategy
    would split into an empty slice for one of the two replicas. (With -m slow: the check
    beside the one above, three more processes.)"""
    cmd = _train_cmd(tmp_path / "run", 1, "--workers", "2")
    cmd[cmd.index(DATA)] = "synthetic:9"
    r = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode != 0
    assert "the last validation batch holds 1 of the 1 validation images, fewer than the 2 replicas" in r.stderr, \
        r.stderr[-2000:]
    assert not (tmp_path / "run" / "state.json").exists()


@pytest.mark.parametrize("text,message", [
    ("{not json", "TF_CONFIG is not JSON"),
    ('{"cluster": {"worker": ["127.0.0.1"]}, "task": {"type": "worker", "index": 0}}', "is not host:port"),
    ('{"cluster": {"worker": ["127.0.0.1:2222"]}, "task": {"type": "chief", "index": 0}}', "not in the cluster"),
    ('{"cluster": {"worker": ["127.0.0.1:2222"]}, "task": {"type": "worker", "index": 3}}', "out of range"),
    ('{"cluster": {"worker": ["127.0.0.1:2222"]}}', "'task' must give"),
])
def test_malformed_tf_config_is_named(text, message):
    with pytest.raises(ClusterError, match=message):
        read_tf_config(text)


def test_malformed_tf_config_from_the_command_line(tmp_path):
    r = subprocess.run(_train_cmd(tmp_path / "run", 1, "--strategy", "multiworker"),
                       env=_env(tmp_path, TF_CONFIG="{oops"), capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2 and "TF_CONFIG is not JSON" in r.stderr and "Traceback" not in r.stderr


def test_an_unreachable_worker_ends_the_wait_with_its_address(tmp_path):
    a, b = free_ports(2)
    config = {"cluster": {"worker": [f"127.0.0.1:{a}", f"127.0.0.1:{b}"]}, "task": {"type": "worker", "index": 0}}
    t0 = time.monotonic()
    r = subprocess.run(_train_cmd(tmp_path / "run", 1, "--strategy", "multiworker"),
                       env=_env(tmp_path, TF_CONFIG=json.dumps(config), SINET_CLUSTER_TIMEOUT="5"),
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode != 0
    assert f"not reachable: worker:1 (127.0.0.1:{b})" in r.stderr, r.stderr[-2000:]
    assert time.monotonic() - t0 < 240  # bounded: TensorFlow alone would wait for about an hour
