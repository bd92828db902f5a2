"""The training engine behind ``sinet train``.

Per stage: build the model inside the distribution strategy's scope, initialize it
(official checkpoint, a ``.keras`` file, or the best model of an earlier stage), compile
it with the recipe's loss, Adam or SGD with coupled L2 weight decay and a step or "poly"
schedule, and fit it on the deterministic pipeline of :mod:`sinet_tf.data.pipeline`. A
network with an auxiliary head (``[logits, aux_logits]``) trains on the weighted sum of both
losses (:mod:`sinet_tf.train.aux_head`).

Files in the output folder, each written through a temporary file and a rename:
``<stage>/last.keras`` (model + optimizer state, every epoch), ``<stage>/best.keras``
(best validation person IoU), ``<stage>/history.csv`` and ``state.json``, written last,
which is the commit point ``--resume`` reads. A run killed at any moment resumes at the
first epoch it had not committed and, since the data of every epoch is a function of the
seed and the epoch, ends with the same history as an uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
import warnings
from pathlib import Path

import keras
import tensorflow as tf

from sinet_tf.compat import optimizer_variable_key
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
from sinet_tf.train.config import StageConfig, TrainConfig
from sinet_tf.train.distill import wrap_for_distillation
from sinet_tf.train.param_groups import PerVariableLearningRate
from sinet_tf.train.two_view import TwoViewLoss, TwoViewModel, TwoViewPersonIoU
from sinet_tf.weights import load_weights

__all__ = ["AdamL2", "SGDL2", "make_strategy", "transfer_weights", "train", "TrainingError"]


class TrainingError(ValueError):
    """Raised before any training starts when the run cannot go ahead."""


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
        if "TF_CONFIG" not in os.environ:
            raise TrainingError("strategy 'multiworker' needs the TF_CONFIG environment variable "
                                "(cluster and task of this worker)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise TrainingError(f"unknown strategy {name!r}; choose default, mirrored, multiworker or tpu")


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


class _RunState(keras.callbacks.Callback):
    """Commits every epoch: last.keras, best.keras when improved, history.csv, then state.json."""

    def __init__(self, run_dir: Path, stage: StageConfig, state: dict, history: list[dict], monitor="val_person_iou"):
        super().__init__()
        self.run_dir, self.stage, self.state, self.history, self.monitor = run_dir, stage, state, history, monitor
        self.stage_dir = run_dir / stage.name
        self._t0 = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        logs["epoch"] = epoch + 1
        logs["seconds"] = round(time.perf_counter() - self._t0, 2)
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.history.append(logs)
        save_keras_atomic(self.model, self.stage_dir / "last.keras")
        value = logs.get(self.monitor)
        best = self.state.get("best")
        if value is not None and (best is None or value > best):
            # best.keras is the deployable network (without a training wrapper)
            save_keras_atomic(getattr(self.model, "network", self.model), self.stage_dir / "best.keras")
            self.state["best"], self.state["best_epoch"] = value, epoch + 1
        _write_history(self.stage_dir / "history.csv", self.history)
        self.state["epoch"] = epoch + 1
        _atomic_text(self.run_dir / "state.json", json.dumps(self.state, indent=2))


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
        load_weights(model, path, strict=stage.init_strict)
        log(f"[{stage.name}] initialized from checkpoint {path}")


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
    boundaries = [m * steps_per_epoch for m in sorted(milestones)]
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
    return model


def train(config: TrainConfig, output_dir: str | Path, resume: bool = False, verbose="auto",
          log=print, extra_callbacks=()) -> dict:
    """Run every stage of ``config``; returns a summary (per stage: epochs, best val person IoU,
    wall time, training images/s, paths)."""
    run_dir = Path(output_dir)
    state_path = run_dir / "state.json"
    config_dict = config.to_dict()
    if state_path.exists() and not resume:
        raise TrainingError(f"{run_dir} already holds a run (state.json); pass --resume to continue it "
                            "or choose another output folder")
    state = json.loads(state_path.read_text()) if (resume and state_path.exists()) else {}
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
    state_path = run_dir / "state.json"
    config_dict = config.to_dict()
    keras.utils.set_random_seed(config.seed)
    # The pipeline is already shuffled per epoch and holds exactly epochs x steps batches.
    warnings.filterwarnings("ignore", message=".*shuffle=True. was passed.*")
    warnings.filterwarnings("ignore", message=".*Your input ran out of data.*")
    if _use_mixed_precision(config.mixed_precision):
        keras.mixed_precision.set_global_policy("mixed_float16")
        log("mixed precision: mixed_float16")
    strategy = make_strategy(config.strategy)

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
        if stage.batch_size > len(train_source):
            raise TrainingError(f"stage {stage.name!r}: batch_size {stage.batch_size} is larger than the training "
                                f"set ({len(train_source)} examples in {config.data!r})")
        build_loss(stage.loss)  # a bad loss spec fails now, not after the first stage
    run_dir.mkdir(parents=True, exist_ok=True)
    state.setdefault("config", json.loads(json.dumps(config_dict)))
    state.setdefault("completed_stages", [])
    summary = {"output_dir": str(run_dir), "stages": []}

    for stage in config.stages:
        if stage.name in state["completed_stages"]:
            log(f"[{stage.name}] already complete, skipping")
            continue
        stage_dir = run_dir / stage.name
        stage_dir.mkdir(exist_ok=True)
        resuming = state.get("stage") == stage.name and state.get("epoch", 0) > 0
        if not resuming:
            state.update({"stage": stage.name, "epoch": 0, "best": None, "best_epoch": None})
        initial_epoch = state["epoch"]
        history = _read_history(stage_dir / "history.csv", initial_epoch) if resuming else []
        drop = config.strategy == "tpu"
        steps = steps_per_epoch(train_source, stage.batch_size, drop)
        with strategy.scope():
            if resuming:
                model = keras.models.load_model(stage_dir / "last.keras")
                log(f"[{stage.name}] resuming after epoch {initial_epoch} from {stage_dir / 'last.keras'}")
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
        else:
            train_ds = make_pipeline(train_source, stage.input_size, stage.batch_size, augment=stage.augment,
                                     backend=stage.backend, seed=config.seed, two_views=stage.two_views,
                                     drop_remainder=drop, label_stride=label_stride, epochs=stage.epochs,
                                     initial_epoch=initial_epoch)
            val_ds = make_pipeline(val_source, stage.input_size, stage.batch_size, augment=False, shuffle=False,
                                   label_stride=label_stride)
            callbacks = [_RunState(run_dir, stage, state, history), keras.callbacks.TerminateOnNaN(),
                         keras.callbacks.TensorBoard(str(stage_dir / "tensorboard"), write_graph=False),
                         *extra_callbacks]
            if stage.early_stopping_patience:
                callbacks.append(keras.callbacks.EarlyStopping("val_person_iou", mode="max",
                                                               patience=stage.early_stopping_patience))
            log(f"[{stage.name}] {stage.model}: epochs {initial_epoch + 1}..{stage.epochs}, batch {stage.batch_size}, "
                f"{len(train_source)} training / {len(val_source)} validation images, "
                f"{strategy.num_replicas_in_sync} replica(s)")
            t0 = time.perf_counter()
            model.fit(train_ds, validation_data=val_ds, epochs=stage.epochs, initial_epoch=initial_epoch,
                      steps_per_epoch=steps, callbacks=callbacks, verbose=verbose)
            wall = time.perf_counter() - t0
            done = state["epoch"] - initial_epoch
            log(f"[{stage.name}] {done} epochs in {wall:.0f} s; best val person IoU {state['best']} "
                f"(epoch {state['best_epoch']})")
        # throughput from the epochs after the first of this stage (the first includes graph tracing)
        timed = [r for r in history if r["epoch"] > 1] or history
        train_seconds = sum(r.get("seconds", 0.0) for r in timed)
        summary["stages"].append({
            "name": stage.name, "model": stage.model, "epochs": state["epoch"],
            "best_val_person_iou": state["best"], "best_epoch": state["best_epoch"],
            "images_per_s": round(len(train_source) * len(timed) / train_seconds, 1) if train_seconds else None,
            "best": str(stage_dir / "best.keras"), "last": str(stage_dir / "last.keras"),
            "history": history})
        if history and math.isnan(history[-1].get("loss", 0.0)):
            raise TrainingError(f"stage {stage.name!r}: the loss became NaN at epoch {history[-1]['epoch']} "
                                "(TerminateOnNaN stopped the run); lower the learning rate")
        state["completed_stages"].append(stage.name)
        _atomic_text(state_path, json.dumps(state, indent=2))
    return summary
