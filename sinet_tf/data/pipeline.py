"""The ``tf.data`` input pipeline: source -> (cache) -> per-epoch order -> augment -> batch -> prefetch.

Every random choice is a pure function of ``(seed, epoch, position)``: the order of epoch
``e`` is a stateless shuffle seeded by ``(seed, e)``, and the augmentation of the example
at position ``p`` is seeded by ``(seed, e * n + p)``. A run resumed at epoch ``e`` therefore
sees exactly the batches the uninterrupted run would have seen, and two runs with the same
seed are identical.
"""

from __future__ import annotations

import threading

import numpy as np
import tensorflow as tf

from sinet_tf.data.augment import PortraitNetAugmentation, augment_example, resize_example
from sinet_tf.data.base import SegmentationSource

__all__ = ["make_pipeline", "BACKENDS", "steps_per_epoch"]

BACKENDS = ("tf", "imgaug")


class _Reader:
    """``source.read`` by index for ``tf.numpy_function``, optionally keeping decoded arrays."""

    def __init__(self, source: SegmentationSource, cache: bool):
        self.source, self.cache = source, cache
        self._store: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def __call__(self, index):
        i = int(index)
        item = self._store.get(i)
        if item is None:
            image, label = self.source.read(i)
            item = (np.ascontiguousarray(image, np.uint8), np.ascontiguousarray(label, np.uint8))
            if self.cache:
                with self._lock:
                    self._store[i] = item
        return item


def steps_per_epoch(source: SegmentationSource, batch_size: int, drop_remainder: bool = False) -> int:
    n = len(source)
    return n // batch_size if drop_remainder else -(-n // batch_size)


def make_pipeline(source: SegmentationSource, input_size: tuple[int, int], batch_size: int,
                  augment: PortraitNetAugmentation | bool | None = True, backend: str = "tf",
                  shuffle: bool = True, seed: int = 0, cache: bool = True,
                  two_views: bool = False, drop_remainder: bool = False,
                  label_stride: int = 1, epochs: int = 1, initial_epoch: int = 0) -> tf.data.Dataset:
    """Batches of ``(image float32 [B, h, w, 3] RGB in [0, 255], label uint8 [B, h', w'])``
    for epochs ``initial_epoch .. epochs - 1`` (batches never straddle two epochs).

    * ``augment``: ``True`` for PortraitNet's spec, a :class:`PortraitNetAugmentation`, or
      ``False``/``None`` for the plain resize (validation, calibration).
    * ``backend``: ``"tf"`` (pure TensorFlow ops, default) or ``"imgaug"`` (the ``imgaug``
      extra, numpy<2), the same spec either way.
    * ``cache``: keep decoded photos in memory after their first read.
    * ``two_views``: images become ``{"image": textured, "plain": untextured}`` with the
      same geometry, for PortraitNet's consistency loss.
    * ``label_stride``: labels subsampled (nearest, centre of each cell) by this factor,
      e.g. 8 for SINet's stage-1 encoder, whose logits are at 1/8 resolution.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown augmentation backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    n = len(source)
    if n == 0:
        raise ValueError(f"{source.name}: the dataset is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if drop_remainder and batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset {source.name!r} "
                         f"({n} examples) and drop_remainder is set: no batch would be produced")
    if not 0 <= initial_epoch < epochs:
        raise ValueError(f"initial_epoch {initial_epoch} must be in [0, epochs={epochs})")
    out_hw = (int(input_size[0]), int(input_size[1]))
    if label_stride < 1 or out_hw[0] % label_stride or out_hw[1] % label_stride:
        raise ValueError(f"label_stride {label_stride} does not divide the input size {out_hw}")
    spec = PortraitNetAugmentation() if augment is True else (augment or None)
    if two_views and spec is None:
        raise ValueError("two_views needs augmentation (the views differ by texture changes)")

    reader = _Reader(source, cache)

    def load(index):
        image, label = tf.numpy_function(reader, [index], [tf.uint8, tf.uint8], stateful=False)
        image.set_shape([None, None, 3])
        label.set_shape([None, None])
        return image, label

    if spec is None:
        def transform(index, example_seed):
            image, label = load(index)
            return resize_example(image, label, out_hw)
    elif backend == "tf":
        def transform(index, example_seed):
            image, label = load(index)
            return augment_example(image, label, example_seed, out_hw, spec, two_views)
    else:
        from sinet_tf.data.augment_imgaug import imgaug_map_fn

        imgaug_fn = imgaug_map_fn(spec, out_hw, two_views)

        def transform(index, example_seed):
            image, label = load(index)
            return imgaug_fn(image, label, example_seed)

    def pack(*parts):
        label = parts[-1]
        if label_stride > 1:
            label = label[label_stride // 2::label_stride, label_stride // 2::label_stride]
        if two_views:
            return {"image": parts[0], "plain": parts[1]}, label
        return parts[0], label

    def one_epoch(epoch):
        order = tf.range(n, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        positions = tf.range(n, dtype=tf.int64)
        seeds = tf.stack([tf.fill([n], tf.constant(seed, tf.int64)), epoch * n + positions], axis=1)
        ds = tf.data.Dataset.from_tensor_slices((order, seeds))
        ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.map(pack, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size, drop_remainder=drop_remainder)

    ds = tf.data.Dataset.range(initial_epoch, epochs).flat_map(one_epoch)
    return ds.prefetch(tf.data.AUTOTUNE)
