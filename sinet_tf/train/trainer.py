"""The training engine behind ``sinet train``.

Per stage: build the model inside the distribution strategy's scope, initialize it
(official checkpoint, a ``.keras`` file, or the best model of an earlier stage), compile
it with the recipe's loss, Adam or SGD with coupled L2 weight decay and a step or "poly"
schedule, and fit it on the deterministic pipeline of :mod:`sinet_tf.data.pipeline`. A
network with an auxiliary head (``[logits, aux_logits]``) trains on the weighted sum of both
losses (:mod:`sinet_tf.train.aux_head`).

One commit per epoch. Every file is written through a temporary file and a rename, and
``state.json`` is the only commit point: at the end of epoch N the trainer writes
``<stage>/checkpoints/last-eNNNN.keras`` (model + optimizer state) and, when validation
person IoU improved, ``<stage>/checkpoints/best-eNNNN.keras`` (the deployable network),
under names no earlier epoch used; then ``state.json``, which names those two files and
holds the stage's history rows. Only then are ``<stage>/last.keras``, ``<stage>/best.keras``
(hard links to the committed files, or copies where links are not possible) and
``<stage>/history.csv`` published, and the checkpoint files that ``state.json`` no longer
names removed. ``--resume`` reads ``state.json`` alone: files of an epoch it does not name
are leftovers of a killed run and are deleted, and the published names are refreshed from
it. A run killed at any moment (also between two of these writes) therefore resumes at the
first epoch it had not committed and, since the data of every epoch is a function of the
seed and the epoch, ends with the same history as an uninterrupted run.

An epoch whose loss or weights are not finite is not committed: training stops with
:class:`TrainingDiverged` and the run folder keeps the last good epoch.

Fault injection (for the crash tests): with ``SINET_TRAIN_KILL_AT=POINT:EPOCH`` in the
environment the process kills itself with SIGKILL at that point of that (1-based) epoch;
POINT is ``batch`` (after the epoch's first training batch), ``last`` (after the last
checkpoint is written), ``best`` (after the best checkpoint, an epoch that improved),
``commit`` (after ``state.json``) or ``publish`` (after the published names).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import signal
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import keras
import tensorflow as tf

from sinet_tf.compat import multiworker_fit_builds_locally, optimizer_ema_pairs, optimizer_variable_key
from sinet_tf.data.base import ConcatSource
from sinet_tf.data.composite import CompositeSource
from sinet_tf.data.pipeline import make_pipeline, steps_per_epoch
from sinet_tf.data.sources import open_source
from sinet_tf.files import save_keras_atomic, write_atomic
from sinet_tf.loading import load_keras_model
from sinet_tf.losses import build_loss
from sinet_tf.metrics import PersonIoU
from sinet_tf.registry import build_model
from sinet_tf.train.aux_head import AUX_OUTPUT, AuxHeadModel, AuxLoss, has_aux_output
from sinet_tf.train.cluster import cluster_watchdog, global_batch_error, read_tf_config
from sinet_tf.train.config import StageConfig, TrainConfig
from sinet_tf.train.distill import wrap_for_distillation
from sinet_tf.train.param_groups import PerVariableLearningRate
from sinet_tf.train.run_folder import (
    KILL_ENV, STATE_FILE, TrainingDiverged, TrainingError, check_run_folder, kill_point)
from sinet_tf.train.two_view import TwoViewLoss, TwoViewModel, TwoViewPersonIoU
from sinet_tf.weights import assign_state_dict, read_state_dict

__all__ = ["AdamL2", "SGDL2", "make_strategy", "transfer_weights", "train", "TrainingError", "TrainingDiverged",
           "KILL_ENV"]


class _CoupledL2(PerVariableLearningRate):
    """*Coupled* L2 weight decay, ``g <- g + l2 * w``, for a Keras optimizer: variables whose
    path contains one of ``l2_exclude`` (default: depthwise kernels) are not decayed. The
    decay is added in ``update_step``, i.e. to the gradient after it has been summed over
    replicas, so it does not scale with the number of devices. ``lr_multipliers`` scale the
    learning rate per weight (:mod:`sinet_tf.train.param_groups`)."""

    def __init__(self, l2: float = 0.0, l2_exclude=("depthwise_kernel",), **kwargs):
        super().__init__(**kwargs)
        self.l2 = float(l2)
        self.l2_exclude = tuple(l2_exclude)
        self._l2_keys = set()

    def build(self, var_list):
        super().build(var_list)
        self._l2_keys = {optimizer_variable_key(self, v) for v in var_list
                         if not any(p in v.path for p in self.l2_exclude)}

    def update_step(self, gradient, variable, learning_rate):
        if self.l2 and optimizer_variable_key(self, variable) in self._l2_keys:
            gradient = gradient + tf.cast(self.l2, gradient.dtype) * tf.cast(variable, gradient.dtype)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2, "l2_exclude": list(self.l2_exclude)}


@keras.saving.register_keras_serializable(package="sinet_tf")
class AdamL2(_CoupledL2, keras.optimizers.Adam):
    """Adam with coupled L2 weight decay (:class:`_CoupledL2`), as PyTorch's
    ``Adam(weight_decay=...)`` that SINet's official training used."""


@keras.saving.register_keras_serializable(package="sinet_tf")
class SGDL2(_CoupledL2, keras.optimizers.SGD):
    """SGD (with momentum) and coupled L2 weight decay (:class:`_CoupledL2`): Caffe's SGD
    solver and PyTorch's ``SGD(momentum=..., weight_decay=...)``, as PSPNet was trained."""


def make_strategy(name: str) -> tf.distribute.Strategy:
    """``default`` (one device), ``mirrored`` (all local GPUs, or the logical CPUs
    configured), ``multiworker`` (configured by ``TF_CONFIG``), ``tpu``."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multiworker":
        cluster = read_tf_config()  # a clear error for a missing or malformed TF_CONFIG
        multiworker_fit_builds_locally()
        with cluster_watchdog(cluster):  # a worker that never comes up ends the run, with its address
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            # the first collective: returns once every worker has joined
            strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
        return strategy
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise TrainingError(f"unknown strategy {name!r}; choose default, mirrored, multiworker or tpu")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: always, except under a multi-worker
    strategy, where the ``chief`` task does (or worker 0 when the cluster names no chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not cluster:
        return True
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and int(resolver.task_id or 0) == 0


def _sliced_datasets(strategy: tf.distribute.Strategy, build):
    """A dataset for ``model.fit`` under a multi-worker strategy: every worker builds only
    its own slices of each global batch (``build(slices)`` with ``slices = (first, stop,
    total)``, :func:`sinet_tf.data.pipeline.make_pipeline`), one slice per local replica."""
    def dataset_fn(context: tf.distribute.InputContext):
        total = context.num_replicas_in_sync
        local = total // context.num_input_pipelines
        first = context.input_pipeline_id * local
        return build((first, first + local, total))

    return strategy.distribute_datasets_from_function(dataset_fn)


def _unsharded(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` that every worker reads whole (validation under a multi-worker strategy:
    the strategy gives each replica its slice of every batch, and the metrics summed over the
    replicas are the single-worker ones)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


def transfer_weights(src: keras.Model, dst: keras.Model) -> int:
    """Copy weights layer by layer where names and shapes agree; returns the number of layers copied."""
    by_name = {layer.name: layer for layer in src.layers}
    copied = 0
    for layer in dst.layers:
        other = by_name.get(layer.name)
        if other is None or not layer.weights:
            continue
        a, b = layer.get_weights(), other.get_weights()
        if len(a) == len(b) and all(x.shape == y.shape for x, y in zip(a, b)):
            layer.set_weights(b)
            copied += 1
    return copied


def _atomic_text(path: Path, text: str):
    write_atomic(text.encode(), path)


def _non_finite(model) -> str | None:
    """The path of the first weight of ``model`` holding NaN or inf, or None."""
    for var in model.weights:
        if not np.isfinite(keras.ops.convert_to_numpy(var)).all():
            return var.path
    return None


class _MovingAverage(keras.callbacks.Callback):
    """Validation sees the optimizer's exponential moving average of the weights (Polyak
    averaging; Polyak & Juditsky 1992, the ``ema`` stage key), training goes on with the raw
    weights. The swap is a copy, not Keras' add/subtract swap, so the raw weights come back
    bit for bit and a resumed run equals an uninterrupted one. BatchNorm's moving statistics
    are not trainable and stay as they are."""

    def __init__(self):
        super().__init__()
        self._swapped = False

    def _swap(self):
        for variable, average in optimizer_ema_pairs(self.model.optimizer):
            raw = keras.ops.convert_to_numpy(variable)
            variable.assign(keras.ops.convert_to_numpy(average))
            average.assign(raw)
        self._swapped = not self._swapped

    @contextlib.contextmanager
    def holding_average(self):
        """The model holds the averaged weights inside the block."""
        swap = not self._swapped
        if swap:
            self._swap()
        try:
            yield
        finally:
            if swap:
                self._swap()

    def on_test_begin(self, logs=None):
        if not self._swapped:
            self._swap()

    def on_test_end(self, logs=None):
        if self._swapped:
            self._swap()


class _RunState(keras.callbacks.Callback):
    """One commit per epoch (module docstring): checkpoint files under new names, then
    ``state.json`` naming them, then the published names."""

    def __init__(self, run_dir: Path, stage: StageConfig, state: dict, history: list[dict], monitor="val_person_iou",
                 average: _MovingAverage | None = None, publish: bool = True):
        super().__init__()
        self.run_dir, self.stage, self.state, self.history, self.monitor = run_dir, stage, state, history, monitor
        # a non-chief worker's private folder holds only the checkpoints it saved since it started
        # (saving is a collective), not those of the commit it resumed from: nothing to publish there
        self.publish = publish
        self.average = average     # best.keras gets the averaged weights that validation scored
        self.stage_dir = run_dir / stage.name
        self.diverged: str | None = None
        self._kill = kill_point()
        self._epoch = 0
        self._t0 = time.perf_counter()

    def _fault(self, point: str, epoch: int):
        if self._kill == (point, epoch):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch + 1
        self._t0 = time.perf_counter()
        # the epoch's rate (at its first step; after it the optimizer reports the next step's)
        self._rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            self._fault("batch", self._epoch)

    def commit_validation(self, model, logs: dict):
        """Commit epoch 1 of a stage that trains nothing (``average_of``): its validation
        scores, and ``model`` as both last and best."""
        self.set_model(model)
        self._epoch, self._rate = 1, 0.0
        self.on_epoch_end(0, logs)

    def on_epoch_end(self, epoch, logs=None):
        n = epoch + 1
        logs = {k: float(v) for k, v in (logs or {}).items()}
        logs["epoch"] = n
        logs["seconds"] = round(time.perf_counter() - self._t0, 2)
        logs["learning_rate"] = self._rate
        bad = [k for k in ("loss", "val_loss") if k in logs and not math.isfinite(logs[k])]
        weight = _non_finite(self.model)
        if bad or weight:
            what = f"{bad[0]} is {logs[bad[0]]}" if bad else f"weight {weight} holds NaN or inf"
            self.diverged = (f"stage {self.stage.name!r}: epoch {n} diverged ({what}); it was not committed, the "
                             f"run folder holds epoch {self.state.get('epoch', 0)} (resumable); lower the "
                             "learning_rate")
            self.model.stop_training = True
            return
        name = self.stage.name
        files = dict(self.state.get("files", {}).get(name, {}))
        files["last"] = f"{name}/checkpoints/last-e{n:04d}.keras"
        save_keras_atomic(self.model, self.run_dir / files["last"])
        self._fault("last", n)
        state = json.loads(json.dumps(self.state))
        value = logs.get(self.monitor)
        best = state.get("best")
        if value is not None and (best is None or value > best):
            # best.keras is the deployable network (without a training wrapper)
            files["best"] = f"{name}/checkpoints/best-e{n:04d}.keras"
            with self.average.holding_average() if self.average else contextlib.nullcontext():
                save_keras_atomic(getattr(self.model, "network", self.model), self.run_dir / files["best"])
            self._fault("best", n)
            state["best"], state["best_epoch"] = value, n
        state["epoch"] = n
        state.setdefault("files", {})[name] = files
        state.setdefault("history", {})[name] = [*self.history, logs]
        _commit(self.run_dir, state)                       # the commit point
        self._fault("commit", n)
        self.state.clear()
        self.state.update(state)
        self.history.append(logs)
        if self.publish:
            _publish(self.run_dir, self.state, name)
        self._fault("publish", n)


def _commit(run_dir: Path, state: dict):
    _atomic_text(run_dir / STATE_FILE, json.dumps(state, indent=2))


def _link_or_copy(src: Path, dst: Path):
    """Make ``dst`` the file ``src`` (a hard link; a copy where the file system has none),
    replacing ``dst`` in one rename."""
    if dst.exists() and os.path.samefile(src, dst):
        return   # (a rename between two links of one file would do nothing and leave the temporary name)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _publish(run_dir: Path, state: dict, stage: str):
    """Refresh ``<stage>/last.keras``, ``best.keras`` and ``history.csv`` from the commit in
    ``state`` and remove the checkpoint files it does not name (an uncommitted epoch's)."""
    stage_dir = run_dir / stage
    files = state.get("files", {}).get(stage, {})
    for role in ("last", "best"):
        if role in files:
            _link_or_copy(run_dir / files[role], stage_dir / f"{role}.keras")
    if stage in state.get("history", {}):
        _write_history(stage_dir / "history.csv", state["history"][stage])
    for leftover in stage_dir.glob(".*.link"):   # a publishing killed between its link and its rename
        leftover.unlink()
    keep = {(run_dir / f).resolve() for f in files.values()}
    folder = stage_dir / "checkpoints"
    if folder.is_dir():
        for f in folder.iterdir():
            if f.resolve() not in keep:
                f.unlink()


def _write_history(path: Path, rows: list[dict]):
    keys = ["epoch"] + sorted({k for r in rows for k in r} - {"epoch"})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    _atomic_text(path, buf.getvalue())


def _read_history(path: Path, upto_epoch: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k: (float(v) if k != "epoch" else int(float(v))) for k, v in r.items() if v != ""}
                for r in csv.DictReader(f)]
    return [r for r in rows if r["epoch"] <= upto_epoch]


def _use_mixed_precision(setting) -> bool:
    if setting in (True, "true", "on", "mixed_float16"):
        return True
    if setting in (False, "false", "off", None):
        return False
    return bool(tf.config.list_physical_devices("GPU"))


def _initialize(model, stage: StageConfig, run_dir: Path, log):
    if not stage.init:
        log(f"[{stage.name}] random initialization")
        return
    path = Path(stage.init)
    if stage.init.startswith("stage:"):  # an earlier stage's best model (its last, if none was best yet)
        path = run_dir / stage.init[6:] / "best.keras"
        if not path.is_file():
            path = run_dir / stage.init[6:] / "last.keras"
    if path.suffix == ".keras":
        n = transfer_weights(load_keras_model(path), model)
        log(f"[{stage.name}] initialized {n} layers from {path}")
    else:
        kept = assign_state_dict(model, read_state_dict(path), strict=stage.init_strict, source=str(path),
                                 allow_missing=not stage.init_strict)
        log(f"[{stage.name}] initialized from checkpoint {path}"
            + (f"; layers it does not hold, left as initialized: {', '.join(kept)}" if kept else ""))


def _average_of_stages(stage: StageConfig, run_dir: Path, log):
    """The network of an ``average_of`` stage: the uniform average of the named stages'
    best networks (:func:`sinet_tf.train.wise_ft.average_weights`)."""
    from sinet_tf.train.wise_ft import average_weights

    paths = [run_dir / name / "best.keras" for name in stage.average_of]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise TrainingError(f"stage {stage.name!r}: {missing[0]} is missing (average_of needs each stage's best "
                            "network; that stage never validated?)")
    networks = [load_keras_model(p) for p in paths]
    model = build_model(stage.model, input_shape=(*stage.input_size, 3), **stage.model_kwargs)
    try:
        average_weights(networks, into=model)
    except ValueError as e:
        raise TrainingError(f"stage {stage.name!r}: {e}") from None
    log(f"[{stage.name}] the average of {len(paths)} networks: " + ", ".join(str(p) for p in paths))
    return model


def _validate(model, stage: StageConfig, val_ds) -> dict:
    """``val_loss`` (the stage's loss) and ``val_person_iou`` of ``model`` on ``val_ds``, as
    fit's validation computes them."""
    model.compile(loss=build_loss(stage.loss), metrics=[PersonIoU()], jit_compile=stage.jit_compile,
                  run_eagerly=stage.run_eagerly)
    scores = model.evaluate(val_ds, verbose=0, return_dict=True)
    return {f"val_{k}": float(v) for k, v in scores.items()}


def _schedule(stage: StageConfig, steps_per_epoch: int):
    """The learning rate: constant, steps (``lr_milestones`` and ``lr_step_every`` epochs,
    times ``lr_factor``), or "poly", ``lr * (1 - step / total_steps) ** lr_power``, per
    iteration over the whole stage (PSPNet, Sec. 4.1, after DeepLab)."""
    if stage.lr_schedule == "poly":
        return keras.optimizers.schedules.PolynomialDecay(stage.learning_rate, stage.epochs * steps_per_epoch,
                                                          end_learning_rate=0.0, power=stage.lr_power)
    milestones = set(int(m) for m in stage.lr_milestones)
    if stage.lr_step_every:
        milestones |= set(range(stage.lr_step_every, stage.epochs, stage.lr_step_every))
    # PiecewiseConstantDecay keeps values[i] while step <= boundaries[i]: the rate changes at
    # step m * steps_per_epoch, the first step of (0-based) epoch m, as after m finished epochs
    # in MultiStepLR
    boundaries = [m * steps_per_epoch - 1 for m in sorted(milestones)]
    values = [stage.learning_rate * stage.lr_factor ** i for i in range(len(boundaries) + 1)]
    return (keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
            if boundaries else stage.learning_rate)


def _compile(model, stage: StageConfig, steps_per_epoch: int):
    """Compile ``model`` for ``stage``; returns the model to fit (a :class:`TwoViewModel`
    around it for two-view stages, an :class:`AuxHeadModel` for a network with an auxiliary head,
    a :class:`~sinet_tf.train.distill.DistillModel` for a stage with a teacher)."""
    optimizer_class = {"adam": AdamL2, "sgd": SGDL2}[stage.optimizer]
    options = {"momentum": stage.momentum} if stage.optimizer == "sgd" else {}
    if stage.lr_multipliers:
        paths = [w.path for w in model.trainable_weights]
        unmatched = [p for p in stage.lr_multipliers if not any(p in q for q in paths)]
        if unmatched:
            raise TrainingError(f"stage {stage.name!r}: lr_multipliers pattern {unmatched[0]!r} matches no trainable "
                                f"weight of {model.name} (paths look like {paths[0]!r})")
        options["lr_multipliers"] = stage.lr_multipliers
    if stage.ema:
        options.update(use_ema=True, ema_momentum=stage.ema)
    optimizer = optimizer_class(learning_rate=_schedule(stage, steps_per_epoch), l2=stage.weight_decay,
                                l2_exclude=stage.weight_decay_exclude, **options)
    loss, metric = build_loss(stage.loss), PersonIoU()
    aux = has_aux_output(model)
    if aux and (stage.two_views or not stage.aux_weight):
        raise TrainingError(f"stage {stage.name!r}: {model.name} has an auxiliary head ({AUX_OUTPUT}); "
                            + ("two-view training does not support one" if stage.two_views else
                               "set aux_weight (PSPNet: 0.4)") + ", or build the model without aux_head")
    if stage.aux_weight and not aux:
        raise TrainingError(f"stage {stage.name!r}: aux_weight is {stage.aux_weight} but {model.name} has no "
                            f"{AUX_OUTPUT} output; build it with model_kwargs {{aux_head: true}}")
    if aux and stage.teacher:
        raise TrainingError(f"stage {stage.name!r}: distillation (teacher) does not support an auxiliary head")
    if aux:
        model = AuxHeadModel(model, name=f"{model.name}_aux")
        loss = AuxLoss(loss, num_classes=model.num_classes, aux_weight=stage.aux_weight)
        metric = TwoViewPersonIoU(model.num_classes)   # of the main logits, the first channels
    elif stage.teacher:
        if stage.two_views:
            raise TrainingError(f"stage {stage.name!r}: distillation (teacher) and two_views do not combine")
        model, loss = wrap_for_distillation(model, loss, stage)
        metric = TwoViewPersonIoU(model.num_classes)   # of the network's logits, the first channels
    elif stage.two_views:
        model = TwoViewModel(model, name=f"{model.name}_two_view")
        loss = TwoViewLoss(loss, num_classes=model.num_classes, has_edge=model.has_edge,
                           consistency_weight=stage.consistency_weight, temperature=stage.temperature,
                           edge_weight=stage.edge_weight)
        metric = TwoViewPersonIoU(model.num_classes)
    model.compile(optimizer=optimizer, loss=loss, metrics=[metric],
                  jit_compile=stage.jit_compile, run_eagerly=stage.run_eagerly)
    # the optimizer's variables are created here, eagerly: without a distribution strategy
    # Keras builds the optimizer inside the first traced train step, and a tf.function that
    # creates variables is traced twice (the first-step times: README, Training)
    model.optimizer.build(model.trainable_variables)
    return model


def train(config: TrainConfig, output_dir: str | Path, resume: bool = False, verbose="auto",
          log=print, extra_callbacks=()) -> dict:
    """Run every stage of ``config``; returns a summary (per stage: epochs, best val person IoU,
    wall time, training images/s, paths)."""
    kill_point()   # a malformed fault-injection value fails before anything runs
    run_dir = Path(output_dir)
    state_path = check_run_folder(run_dir, resume)
    config_dict = config.to_dict()
    try:
        state = json.loads(state_path.read_text()) if (resume and state_path.exists()) else {}
    except ValueError as e:
        raise TrainingError(f"{state_path}: not readable JSON ({e}); it was not written by sinet train, "
                            "start a new output folder") from None
    if state and state.get("config", {}).get("stages") != json.loads(json.dumps(config_dict["stages"])):
        raise TrainingError(f"{run_dir} holds a run of another recipe configuration; "
                            "resume it with the same recipe and overrides, or start a new output folder")
    if resume and not state:
        log(f"nothing to resume in {run_dir}: starting from the beginning")

    policy = keras.mixed_precision.global_policy()
    try:
        return _train(config, run_dir, state, resume, verbose, log, extra_callbacks)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _train(config, run_dir, state, resume, verbose, log, extra_callbacks):
    keras.utils.set_random_seed(config.seed)
    # The pipeline is already shuffled per epoch and holds exactly epochs x steps batches.
    warnings.filterwarnings("ignore", message=".*shuffle=True. was passed.*")
    warnings.filterwarnings("ignore", message=".*Your input ran out of data.*")
    if _use_mixed_precision(config.mixed_precision):
        keras.mixed_precision.set_global_policy("mixed_float16")
        log("mixed precision: mixed_float16")
    strategy = make_strategy(config.strategy)
    multiworker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    replicas = strategy.num_replicas_in_sync
    # only the chief writes the run's files; the other workers write theirs (every save must
    # run on every worker: reading synchronized variables is a collective) to a folder of their own
    files_dir = run_dir if is_chief(strategy) else Path(tempfile.mkdtemp(prefix="sinet-worker-"))
    try:
        return _train_stages(config, run_dir, files_dir, state, strategy, multiworker, replicas, verbose, log,
                             extra_callbacks)
    finally:
        if files_dir != run_dir:
            shutil.rmtree(files_dir, ignore_errors=True)


def _train_stages(config, run_dir, files_dir, state, strategy, multiworker, replicas, verbose, log,
                  extra_callbacks):
    config_dict = config.to_dict()

    # Open and check every stage's data before any training starts.
    train_source = open_source(config.data, config.train_split, config.seed, config.on_bad_sample)
    val_source = open_source(config.val_data or config.data, config.val_split, config.seed, config.on_bad_sample)
    if config.copy_paste:
        train_source = CompositeSource(train_source, config.copy_paste, config.seed)
    if config.extra_data:
        train_source = ConcatSource([train_source, open_source(config.extra_data, config.train_split, config.seed,
                                                               config.on_bad_sample)])
    if len(train_source) == 0 or len(val_source) == 0:
        raise TrainingError(f"training data {config.data!r}: the training or validation split is empty")
    for stage in config.stages:
        if stage.two_views and not stage.augment:
            raise TrainingError(f"stage {stage.name!r}: two_views needs augment: true (the views differ by texture)")
        if message := global_batch_error(stage, replicas):
            raise TrainingError(message)
        if stage.batch_size > len(train_source):
            raise TrainingError(f"stage {stage.name!r}: batch_size {stage.batch_size} is larger than the training "
                                f"set ({len(train_source)} examples in {config.data!r})")
        tail = len(val_source) % stage.batch_size
        if multiworker and 0 < tail < replicas:
            # every worker reads the whole validation set and the strategy splits each batch
            # among the replicas: a last batch smaller than that leaves a replica an empty slice,
            # which TensorFlow's kernels refuse in the middle of the first epoch
            raise TrainingError(f"stage {stage.name!r}: the last validation batch holds {tail} of the "
                                f"{len(val_source)} validation images, fewer than the {replicas} replicas "
                                f"(batch_size {stage.batch_size}); choose a batch_size that leaves none or at least "
                                f"{replicas} in the last batch, or change the number of validation images")
        build_loss(stage.loss)  # a bad loss spec fails now, not after the first stage
    files_dir.mkdir(parents=True, exist_ok=True)
    state.setdefault("config", json.loads(json.dumps(config_dict)))
    state.setdefault("completed_stages", [])
    summary = {"output_dir": str(run_dir), "stages": []}

    chief = files_dir == run_dir
    for name in {*state["completed_stages"], state.get("stage")} - {None}:
        if chief:
            _publish(run_dir, state, name)   # a run killed between its commit and the publishing

    for stage in config.stages:
        if stage.name in state["completed_stages"]:
            log(f"[{stage.name}] already complete, skipping")
            continue
        stage_dir = run_dir / stage.name
        (files_dir / stage.name).mkdir(exist_ok=True)
        resuming = state.get("stage") == stage.name and state.get("epoch", 0) > 0
        if not resuming:
            state.update({"stage": stage.name, "epoch": 0, "best": None, "best_epoch": None})
            state.get("files", {}).pop(stage.name, None)
            state.get("history", {}).pop(stage.name, None)
            if chief:
                _publish(run_dir, state, stage.name)     # drops an uncommitted first epoch's files
        initial_epoch = state["epoch"]
        if resuming and "history" in state:
            history = [dict(r) for r in state["history"].get(stage.name, [])]
        else:   # a run folder written before state.json named its files
            history = _read_history(stage_dir / "history.csv", initial_epoch) if resuming else []
        # every worker must run the same number of steps: a last batch that would leave some
        # replica without a full slice is dropped
        drop = config.strategy == "tpu" or (multiworker and len(train_source) % stage.batch_size != 0)
        steps = steps_per_epoch(train_source, stage.batch_size, drop)
        with strategy.scope():
            if resuming:
                last = run_dir / state.get("files", {}).get(stage.name, {}).get("last", f"{stage.name}/last.keras")
                try:
                    model = keras.models.load_model(last)
                except Exception as e:
                    raise TrainingError(f"{last}: cannot resume from this checkpoint ({type(e).__name__}: "
                                        f"{str(e).splitlines()[0] if str(e) else ''}); start a new output "
                                        "folder") from e
                log(f"[{stage.name}] resuming after epoch {initial_epoch} from {last}")
            elif stage.average_of:
                model = _average_of_stages(stage, run_dir, log)
            else:
                model = build_model(stage.model, input_shape=(*stage.input_size, 3), **stage.model_kwargs)
                _initialize(model, stage, run_dir, log)
                model = _compile(model, stage, steps)
        network = getattr(model, "network", model)  # the deployable network inside a two-view wrapper
        out_hw = network.outputs[0].shape[1:3]
        label_stride = stage.input_size[0] // out_hw[0] if stage.label_stride == 1 else stage.label_stride
        if stage.input_size[0] % out_hw[0] or stage.input_size[0] // out_hw[0] != label_stride:
            raise TrainingError(f"stage {stage.name!r}: model output {out_hw} does not match label_stride {label_stride}")
        if initial_epoch >= stage.epochs:
            log(f"[{stage.name}] all {stage.epochs} epochs already done")
        elif stage.average_of:
            val_ds = make_pipeline(val_source, stage.input_size, stage.batch_size, augment=False, shuffle=False,
                                   label_stride=label_stride)
            run_state = _RunState(files_dir, stage, state, history, publish=chief)
            run_state.commit_validation(model, _validate(model, stage, _unsharded(val_ds) if multiworker else val_ds))
            if run_state.diverged:
                raise TrainingDiverged(run_state.diverged)
            log(f"[{stage.name}] val person IoU of the average {state['best']}")
        else:
            def train_pipeline(slices=None):
                return make_pipeline(train_source, stage.input_size, stage.batch_size, augment=stage.augment,
                                     backend=stage.backend, seed=config.seed + stage.seed_offset,
                                     two_views=stage.two_views,
                                     drop_remainder=drop, label_stride=label_stride, epochs=stage.epochs,
                                     initial_epoch=initial_epoch, slices=slices)

            train_ds = _sliced_datasets(strategy, train_pipeline) if multiworker else train_pipeline()
            val_ds = make_pipeline(val_source, stage.input_size, stage.batch_size, augment=False, shuffle=False,
                                   label_stride=label_stride)
            if multiworker:
                val_ds = _unsharded(val_ds)
            average = _MovingAverage() if stage.ema else None
            run_state = _RunState(files_dir, stage, state, history, average=average, publish=chief)
            callbacks = [*([average] if average else []), run_state, keras.callbacks.TerminateOnNaN(),
                         keras.callbacks.TensorBoard(str(files_dir / stage.name / "tensorboard"), write_graph=False),
                         *extra_callbacks]
            if stage.early_stopping_patience:
                callbacks.append(keras.callbacks.EarlyStopping("val_person_iou", mode="max",
                                                               patience=stage.early_stopping_patience))
            log(f"[{stage.name}] {stage.model}: epochs {initial_epoch + 1}..{stage.epochs}, batch {stage.batch_size}, "
                f"{len(train_source)} training / {len(val_source)} validation images, "
                f"{replicas} replica(s)" + (" on this worker's slices of every batch" if multiworker else ""))
            t0 = time.perf_counter()
            model.fit(train_ds, validation_data=val_ds, epochs=stage.epochs, initial_epoch=initial_epoch,
                      steps_per_epoch=steps, callbacks=callbacks, verbose=verbose)
            wall = time.perf_counter() - t0
            if run_state.diverged:
                raise TrainingDiverged(run_state.diverged)
            done = state["epoch"] - initial_epoch
            log(f"[{stage.name}] {done} epochs in {wall:.0f} s; best val person IoU {state['best']} "
                f"(epoch {state['best_epoch']})")
        # throughput from the epochs after the first of this stage (the first includes graph tracing)
        timed = [r for r in history if r["epoch"] > 1] or history
        train_seconds = sum(r.get("seconds", 0.0) for r in timed)
        summary["stages"].append({
            "name": stage.name, "model": stage.model, "epochs": state["epoch"],
            "best_val_person_iou": state["best"], "best_epoch": state["best_epoch"],
            "images_per_s": (round(len(train_source) * len(timed) / train_seconds, 1)
                             if train_seconds and not stage.average_of else None),
            "best": str(stage_dir / "best.keras"), "last": str(stage_dir / "last.keras"),
            "history": history})
        state["completed_stages"].append(stage.name)
        _commit(files_dir, state)
    return summary
