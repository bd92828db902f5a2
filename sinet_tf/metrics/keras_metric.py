"""``PersonIoU``, the person IoU as a Keras metric for ``model.fit`` validation
(conventions: :mod:`sinet_tf.metrics`)."""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["PersonIoU"]

_PACKAGE = "sinet_tf"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PersonIoU(keras.metrics.Metric):
    """Mean over examples of the per-example IoU of the person class, from logits.

    Prediction: ``argmax(z) == 1`` (C >= 2) or ``z > 0`` (C == 1); label pixels equal to
    ``ignore_index`` are skipped; an example where prediction and truth are both empty
    counts 1.0.  State: ``total`` (sum of IoUs) and ``count`` (examples), both updated with
    ``assign_add`` and summed across replicas, so it works under ``tf.distribute``
    (``MirroredStrategy``) and equals ``SegmentationMetrics.person_iou`` on the same data.
    ``sample_weight`` (optional, ``[B]``) weights examples.
    """

    def __init__(self, name="person_iou", ignore_index=255, dtype="float32"):
        super().__init__(name=name, dtype=dtype)
        self.ignore_index = int(ignore_index)
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float32",
                                       name="total", aggregation="sum")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float32",
                                       name="count", aggregation="sum")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y = tf.convert_to_tensor(y_true)
        if y.shape.rank == 4 and y.shape[-1] == 1:
            y = tf.squeeze(y, -1)
        if y.dtype.is_floating:
            y = tf.round(y)
        y = tf.cast(y, tf.int32)
        z = tf.convert_to_tensor(y_pred)
        if z.shape.rank == 3:
            z = z[..., None]
        ys, zs = y.shape[1:3], z.shape[1:3]
        if all(d is not None for d in list(ys) + list(zs)) and tuple(ys) != tuple(zs):
            raise ValueError(f"spatial shape mismatch: labels {tuple(ys)} vs logits {tuple(zs)}")
        if z.shape[-1] == 1:
            pred = z[..., 0] > 0
        else:
            pred = tf.equal(tf.argmax(z, axis=-1, output_type=tf.int32), 1)
        valid = tf.not_equal(y, self.ignore_index)
        pred = tf.logical_and(pred, valid)
        true = tf.logical_and(tf.equal(y, 1), valid)
        inter = tf.reduce_sum(tf.cast(tf.logical_and(pred, true), tf.float32), axis=[1, 2])
        union = tf.reduce_sum(tf.cast(tf.logical_or(pred, true), tf.float32), axis=[1, 2])
        iou = tf.where(union > 0, tf.math.divide_no_nan(inter, union), tf.ones_like(union))
        if sample_weight is not None:
            w = tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
            w = tf.broadcast_to(w, tf.shape(iou))
            self.total.assign_add(tf.reduce_sum(iou * w))
            self.count.assign_add(tf.reduce_sum(w))
        else:
            self.total.assign_add(tf.reduce_sum(iou))
            self.count.assign_add(tf.cast(tf.shape(iou)[0], tf.float32))

    def result(self):
        return tf.math.divide_no_nan(tf.convert_to_tensor(self.total),
                                     tf.convert_to_tensor(self.count))

    def get_config(self):
        return {**super().get_config(), "ignore_index": self.ignore_index}
