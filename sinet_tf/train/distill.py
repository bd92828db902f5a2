"""Training a network against a teacher as well as the labels: knowledge distillation
(Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015).

A stage with ``teacher:`` runs a frozen teacher next to the network on every training batch
(the augmented photos the network sees) and a ``kd`` term of the loss spec pulls the
network's softened per-pixel distribution toward the teacher's
(:class:`sinet_tf.losses.KnowledgeDistillation`); every other term still reads the labels:

    L = sum_i w_i * L_i(labels, z_s) + w_kd * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

Distilling from the checkpoint a fine-tune starts from (``teacher: init``) is Learning
without Forgetting (Li and Hoiem, ECCV 2016 / TPAMI 2018, Sec. 3): the old network's
responses on the new photos are kept as soft targets while the labels teach the new task.

The teacher (``teacher:``):

* ``init``: a frozen copy of the network as the stage initialized it;
* a ``.keras`` file, or a preset name (whatever :func:`sinet_tf.loading.load_model` takes
  that carries its own weights; a bare architecture name is refused, it has no weights);
* a ``.tflite`` file (e.g. MediaPipe's selfie segmentation model), run by the LiteRT
  interpreter inside the training step (``tf.numpy_function``, one thread, one photo at a
  time: the same photos give the same outputs, so the run stays deterministic). Its input
  range comes from the file (``(0, 1)`` for MediaPipe's selfie models, else ``(0, 255)``) or
  ``teacher_input_range``; a probability output is turned back into logits
  (``log p``; ``log(p / (1 - p))`` for one sigmoid channel, ``p`` clipped to
  ``[1e-6, 1 - 1e-6]``).

The teacher must predict the same classes as the network (two softmax classes and one
sigmoid channel both mean background/person) and take the same input size. A teacher of
another input size is an error unless ``teacher_resize: true``: then the network's batch is
resized (bilinear) to the teacher's input and the teacher's logits are resized (bilinear)
back to the network's output size, which is what running the teacher on the photo at its own
resolution would approximately give.

As in :mod:`sinet_tf.train.two_view`, :class:`DistillModel` stacks the network's and the
teacher's logits on the channel axis, so the objective is one ordinary Keras loss
(:class:`DistillLoss`) and ``fit`` keeps its distribution and metric machinery; the
deployable network is :attr:`DistillModel.network` (what ``best.keras`` holds).
"""

from __future__ import annotations

import threading
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from sinet_tf.losses import KnowledgeDistillation, WeightedSum, build_loss

__all__ = ["DistillLoss", "DistillModel", "DistillationError", "TFLiteTeacher", "check_stage", "has_kd_term",
           "load_teacher", "wrap_for_distillation"]

_EPS = 1e-6


class DistillationError(ValueError):
    """A teacher that cannot teach this network (names the teacher and what does not fit)."""


def _terms(loss):
    return list(loss.terms) if isinstance(loss, WeightedSum) else [(1.0, loss)]


def has_kd_term(loss) -> bool:
    """Whether the loss (spec or object) has a ``kd`` term."""
    return any(isinstance(term, KnowledgeDistillation) for _, term in _terms(build_loss(loss)))


def check_stage(stage) -> None:
    """Recipe-level checks (before anything is built): ``teacher`` and a ``kd`` term go
    together, the teacher's file exists, ``teacher_input_range`` is two numbers."""
    kd = has_kd_term(stage.loss)
    if stage.teacher and not kd:
        raise DistillationError(f"teacher {stage.teacher!r} is set but the loss {stage.loss!r} has no kd term "
                                "(add e.g. '+ 0.5 * kd(temperature=2)')")
    if kd and not stage.teacher:
        raise DistillationError(f"the loss {stage.loss!r} has a kd term but no teacher is set "
                                "(teacher: init, a .keras or .tflite file, or a preset name)")
    if not stage.teacher:
        return
    suffix = Path(str(stage.teacher)).suffix.lower()
    if suffix in (".keras", ".tflite") and not Path(stage.teacher).is_file():
        raise DistillationError(f"teacher file not found: {stage.teacher}")
    r = stage.teacher_input_range
    if r is not None:
        try:
            lo, hi = (float(v) for v in r)
        except (TypeError, ValueError):
            raise DistillationError(f"teacher_input_range must be two numbers [lo, hi], got {r!r}") from None
        if not lo < hi:
            raise DistillationError(f"teacher_input_range must have lo < hi, got {r!r}")


def _probabilities_to_logits(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), _EPS, 1.0 - _EPS)
    if p.shape[-1] == 1:
        return (np.log(p) - np.log1p(-p)).astype(np.float32)
    return np.log(p).astype(np.float32)


@keras.saving.register_keras_serializable(package="sinet_tf")
class TFLiteTeacher(keras.layers.Layer):
    """A ``.tflite`` model as a frozen Keras layer: RGB pixels in [0, 255] ``[B, h, w, 3]`` ->
    logits ``[B, h', w', C]`` float32, computed by the LiteRT interpreter (one thread) in a
    ``tf.numpy_function``. Not differentiable (a teacher needs no gradient), not XLA-compilable."""

    def __init__(self, model_path, input_range=None, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        from sinet_tf.runtime.model_file import input_range as file_input_range
        from sinet_tf.runtime.model_file import output_kind, read_contents, read_tflite

        self.model_path = str(model_path)
        self._data = read_tflite(self.model_path)
        contents = read_contents(self._data, label=self.model_path)
        if len(contents.inputs) != 1:
            raise DistillationError(f"teacher {self.model_path}: {len(contents.inputs)} inputs; a teacher takes one photo")
        shape = [int(d) for d in contents.inputs[0]["shape"]]
        out = [int(d) for d in contents.outputs[0]["shape"]]
        if len(shape) != 4 or shape[-1] != 3 or len(out) != 4:
            raise DistillationError(f"teacher {self.model_path}: expected an image input [1, h, w, 3] and an output "
                                    f"[1, h, w, C], got {shape} and {out}")
        self.input_hw, self.output_hw, self.channels = tuple(shape[1:3]), tuple(out[1:3]), out[-1]
        self.kind = output_kind(self._data)
        self.input_range = (tuple(float(v) for v in input_range) if input_range is not None
                            else file_input_range(contents)[0])
        self._runner = None
        self._run_lock = threading.Lock()

    def _run(self, x):
        from sinet_tf.runtime.interpreter import TFLiteRunner

        with self._run_lock:
            if self._runner is None:
                self._runner = TFLiteRunner(self._data, num_threads=1)
            lo, hi = self.input_range
            x = lo + np.asarray(x, np.float32) * np.float32((hi - lo) / 255.0)
            y = np.concatenate([self._runner(x[i:i + 1]) for i in range(len(x))], axis=0)
        return _probabilities_to_logits(y) if self.kind == "probabilities" else y.astype(np.float32)

    def call(self, x):
        y = tf.numpy_function(self._run, [tf.cast(x, tf.float32)], tf.float32, stateful=False)
        return tf.ensure_shape(y, [x.shape[0], *self.output_hw, self.channels])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_hw, self.channels)

    def get_config(self):
        return {**super().get_config(), "model_path": self.model_path,
                "input_range": None if self.input_range is None else list(self.input_range)}


def _static_hw(shape):
    return tuple(int(d) for d in shape[1:3]) if all(d is not None for d in shape[1:3]) else None


def _teacher_io(teacher):
    """``(input hw, output hw, channels)`` of a Keras teacher or a :class:`TFLiteTeacher`."""
    if isinstance(teacher, TFLiteTeacher):
        return teacher.input_hw, teacher.output_hw, teacher.channels
    outputs = teacher.outputs if isinstance(teacher.outputs, (list, tuple)) else [teacher.outputs]
    return _static_hw(teacher.inputs[0].shape), _static_hw(outputs[0].shape), int(outputs[0].shape[-1])


def load_teacher(spec: str, network: keras.Model, input_range=None):
    """The teacher of ``teacher: spec`` for ``network`` (already initialized): a frozen Keras
    model or :class:`TFLiteTeacher`."""
    spec = str(spec)
    suffix = Path(spec).suffix.lower()
    if spec == "init":
        teacher = keras.models.clone_model(network)
        teacher.set_weights(network.get_weights())
    elif suffix == ".tflite":
        teacher = TFLiteTeacher(spec, input_range=input_range, name="teacher")
    else:
        from sinet_tf.loading import load_model
        from sinet_tf.registry import list_models

        if suffix != ".keras" and spec in list_models():
            raise DistillationError(f"teacher {spec!r} is an architecture without weights; give 'init', a .keras "
                                    "or .tflite file, or a preset name")
        try:
            teacher = load_model(spec)
        except (KeyError, ValueError, FileNotFoundError, OSError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise DistillationError(f"teacher {spec!r}: not 'init', a .keras or .tflite file, or a preset name "
                                    f"({msg})") from None
    if input_range is not None and not isinstance(teacher, TFLiteTeacher):
        raise DistillationError("teacher_input_range applies to a .tflite teacher; Keras models take RGB "
                                "pixels in [0, 255] and normalize inside")
    teacher.trainable = False
    return teacher


@keras.saving.register_keras_serializable(package="sinet_tf")
class DistillModel(keras.Model):
    """Runs ``network`` and the frozen ``teacher`` on the same batch and returns
    ``concat([network logits, teacher logits], -1)`` in float32, the teacher's part at the
    network's output size and without gradient. With ``resize`` the teacher sees the batch
    resized (bilinear) to its own input size and its logits are resized back (bilinear)."""

    def __init__(self, network: keras.Model, teacher, resize: bool = False, **kwargs):
        super().__init__(**kwargs)
        outputs = network.outputs if isinstance(network.outputs, (list, tuple)) else [network.outputs]
        if len(outputs) != 1:
            raise DistillationError(f"distillation trains single-output networks; {network.name} has "
                                    f"{len(outputs)} outputs")
        self.network, self.teacher, self.resize = network, teacher, bool(resize)
        self.num_classes = int(outputs[0].shape[-1])
        in_hw, out_hw = _static_hw(network.inputs[0].shape), _static_hw(outputs[0].shape)
        t_in, t_out, t_classes = _teacher_io(teacher)
        name = getattr(teacher, "model_path", None) or teacher.name
        if t_classes != self.num_classes and sorted((t_classes, self.num_classes)) != [1, 2]:
            raise DistillationError(f"teacher {name}: {t_classes} output channels, the network {self.num_classes}; "
                                    "teacher and network must predict the same classes (a one-channel sigmoid "
                                    "counts as two classes)")
        if not self.resize and (t_in != in_hw or t_out != out_hw):
            raise DistillationError(f"teacher {name}: input {t_in} and output {t_out}, the network's input {in_hw} "
                                    f"and output {out_hw}; set teacher_resize: true to resize the batch to the "
                                    "teacher's input and its logits back")
        self._in_hw, self._out_hw, self._t_in, self._t_out = in_hw, out_hw, t_in, t_out

    def teacher_logits(self, x):
        """The teacher's logits ``[B, h, w, C_t]`` (float32, no gradient) at the network's output size."""
        if self.resize and self._t_in != self._in_hw:
            x = tf.image.resize(x, self._t_in, method="bilinear")
        z = self.teacher(x, training=False)
        z = ops.cast(z[0] if isinstance(z, (list, tuple)) else z, "float32")
        if self.resize and self._t_out != self._out_hw:
            z = tf.image.resize(z, self._out_hw, method="bilinear")
        return ops.stop_gradient(z)

    def call(self, inputs, training=False):
        z = self.network(inputs, training=training)
        return ops.concatenate([ops.cast(z, "float32"), self.teacher_logits(ops.cast(inputs, "float32"))], axis=-1)

    def get_config(self):
        return {"network": keras.saving.serialize_keras_object(self.network),
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "resize": self.resize, "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(config.pop("network"))
        teacher = keras.saving.deserialize_keras_object(config.pop("teacher"))
        teacher.trainable = False
        return cls(network, teacher, **config)


@keras.saving.register_keras_serializable(package="sinet_tf")
class DistillLoss(keras.losses.Loss):
    """The recipe's loss on :class:`DistillModel`'s stacked output: its ``kd`` terms get
    ``(teacher logits, network logits)``, every other term ``(labels, network logits)``."""

    def __init__(self, loss, num_classes: int = 2, name="distill_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.loss = keras.losses.get(loss) if isinstance(loss, dict) else loss
        self.num_classes = int(num_classes)

    def call(self, y_true, y_pred):
        c = self.num_classes
        student, teacher = y_pred[..., :c], y_pred[..., c:]
        total = None
        for weight, term in _terms(self.loss):
            value = term.call(teacher, student) if isinstance(term, KnowledgeDistillation) else term.call(y_true, student)
            value = tf.cast(value, tf.float32)
            if value.shape.rank is not None and value.shape.rank > 1:
                value = tf.reduce_mean(value, axis=list(range(1, value.shape.rank)))
            total = weight * value if total is None else total + weight * value
        return total

    def get_config(self):
        return {**super().get_config(), "loss": keras.losses.serialize(self.loss), "num_classes": self.num_classes}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["loss"] = keras.losses.deserialize(config["loss"])
        return cls(**config)


def wrap_for_distillation(network: keras.Model, loss, stage):
    """``(DistillModel, DistillLoss)`` for a stage with a teacher (``network`` initialized)."""
    if isinstance(stage.teacher, str) and stage.teacher.lower().endswith(".tflite") and stage.jit_compile:
        raise DistillationError(f"teacher {stage.teacher}: a .tflite teacher runs outside the compiled graph; "
                                "set jit_compile: false")
    teacher = load_teacher(stage.teacher, network, stage.teacher_input_range)
    model = DistillModel(network, teacher, resize=stage.teacher_resize, name=f"{network.name}_distill")
    return model, DistillLoss(loss, num_classes=model.num_classes)
