"""Segmentation metrics: a NumPy/OpenCV evaluation accumulator (:mod:`.scores`) and a Keras
``PersonIoU`` (:mod:`.keras_metric`).

Conventions: predictions and labels are integer label maps (class 1 = person) and label
pixels equal to ``ignore_index`` (default 255) are skipped by every metric.

* :class:`SegmentationMetrics` - the evaluation path, images of any size, NumPy/OpenCV.
* :class:`PersonIoU` - a :class:`keras.metrics.Metric` for ``model.fit`` validation, taking
  logits; equals ``SegmentationMetrics(...).result()["person_iou"]`` on the same data.

For a confusion-matrix mIoU inside Keras use ``keras.metrics.MeanIoU(num_classes,
ignore_class=255, sparse_y_true=True, sparse_y_pred=False)``: Keras 3's ``MeanIoU`` accepts
``ignore_class`` and then drops those label pixels; it needs C >= 2 logits/probabilities
(argmax) and, unlike ``PersonIoU``, accumulates one dataset-level confusion matrix.

Names are imported on first use: scoring masks (``sinet evaluate`` on a ``.tflite`` file)
does not load TensorFlow.
"""

from __future__ import annotations

from sinet_tf.lazy import lazy_attributes

_NAMES = {"SegmentationMetrics": "scores", "boundary_f_score": "scores", "mask_boundary": "scores",
          "person_iou": "scores", "PersonIoU": "keras_metric"}

__all__ = sorted(_NAMES)

__getattr__, __dir__ = lazy_attributes(__name__, {name: f"{__name__}.{module}" for name, module in _NAMES.items()})
