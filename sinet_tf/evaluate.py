"""Scoring a model on a dataset the way portrait papers do (what ``sinet evaluate``,
``sinet bench --data`` and ``sinet demo`` report).

Each photo is resized to the model's input, predicted, the person probability resized
back to the photo, thresholded at 0.5 (argmax for two classes) and scored against the
full-size ground truth (:class:`sinet_tf.metrics.SegmentationMetrics`).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from sinet_tf.data.sources import open_source
from sinet_tf.files import write_png_atomic
from sinet_tf.inference import Segmenter
from sinet_tf.metrics import SegmentationMetrics

__all__ = ["evaluate"]


def evaluate(model, data, split: str | None = "val", weights=None, boundary_width: int = 3,
             gallery: str | Path | None = None, worst: int = 8, progress: bool = False,
             num_images: int | None = None, on_metrics=None) -> dict:
    """Metrics of ``model`` (``.keras``, ``.tflite``, registry name + ``weights``, or a
    :class:`~sinet_tf.inference.Segmenter`) on ``data`` (a dataset path or ``synthetic``);
    on its first ``num_images`` images when given. ``on_metrics(result)`` is called with
    the metrics before the gallery is written, so a gallery that cannot be written loses
    nothing that was computed."""
    segmenter = model if isinstance(model, Segmenter) else Segmenter(model, weights=weights)
    source = open_source(data, split, seed=0)
    if len(source) == 0:
        raise ValueError(f"{data}: no images to evaluate")
    metrics = SegmentationMetrics(num_classes=2, ignore_index=source.ignore_index, boundary_width=boundary_width)
    if num_images is not None and num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    indices = range(len(source) if num_images is None else min(num_images, len(source)))
    if progress:
        from sinet_tf.progress import progress as bar

        indices = bar(indices, f"evaluating on {len(indices)} images")
    for i in indices:
        image, label = source.read(i)
        metrics.update(segmenter.mask(image), label)
    result = metrics.result()
    out = {"model": str(getattr(segmenter, "source", model)), "data": str(data), "split": split,
           **{k: float(result[k]) for k in ("person_iou", "miou", "pixel_accuracy", "boundary_f")},
           "n_images": int(result["n_images"])}
    if on_metrics is not None:
        on_metrics(dict(out))
    if gallery:
        out["gallery"] = _write_gallery(Path(gallery), source, segmenter, result["per_image_iou"], worst)
    return out


def _write_gallery(folder: Path, source, segmenter, ious, worst: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for rank, i in enumerate(np.argsort(ious)[:worst]):
        image, label = source.read(int(i))
        mask = segmenter.mask(image).astype(bool)
        truth = label == 1
        overlay = image.astype(np.float32)
        overlay[mask & ~truth] = 0.5 * overlay[mask & ~truth] + [127, 0, 0]      # false positive: red
        overlay[~mask & truth] = 0.5 * overlay[~mask & truth] + [0, 0, 127]      # missed: blue
        overlay[mask & truth] = 0.6 * overlay[mask & truth] + [0, 102, 0]         # correct: green
        h = 320
        w = int(round(image.shape[1] * h / image.shape[0]))
        tile = cv2.resize(np.concatenate([image, overlay.astype(np.uint8)], axis=1), (2 * w, h))
        name = f"{rank:02d}_iou{ious[i]:.3f}_{Path(source.describe(int(i)).split()[0]).stem}.png"
        written.append(str(write_png_atomic(tile, folder / name)))
    return written
