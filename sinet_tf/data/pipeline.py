"""The ``tf.data`` input pipeline: source -> (cache) -> per-epoch order -> augment + batch -> prefetch.

Every random choice is a pure function of ``(seed, epoch, position)``: the order of epoch
``e`` is a stateless shuffle seeded by ``(seed, e)``, and the augmentation of the example
at position ``p`` is seeded by ``(seed, e * n + p)``. A run resumed at epoch ``e`` therefore
sees exactly the batches the uninterrupted run would have seen, and two runs with the same
seed are identical.

With the ``tf`` backend the order is batched first: one ``tf.numpy_function`` hands over a
batch of cached canvases (:func:`sinet_tf.data.augment.make_canvas`, built once per photo;
``cache=False`` rebuilds them every epoch) and XLA-compiled calls augment the whole batch
(:func:`sinet_tf.data.augment.augment_batch`). A last, smaller batch is padded to the batch
size for those calls (one compiled shape) and cut back; each example still depends only on
its own photo and seed. The augmentation maps the batches of all epochs at once (one
function instance per iterator, however many epochs). The ``imgaug`` backend and the plain
resize (no augmentation) map one example at a time, then batch.
"""

from __future__ import annotations

import threading

import numpy as np
import tensorflow as tf

from sinet_tf.data.augment import (
    RING, PortraitNetAugmentation, augment_batch, canvas_size, make_canvas, resize_example)
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


class _CanvasReader:
    """A batch of packed canvases (:func:`make_canvas`) by index for ``tf.numpy_function``,
    optionally keeping them (the decoded photo itself is not kept: the canvas is all the
    augmentation reads, and it is smaller than most photos)."""

    def __init__(self, source: SegmentationSource, cache: bool, canvas_hw, image_fill, label_fill):
        self.source, self.cache = source, cache
        self.canvas_hw, self.fills = canvas_hw, (image_fill, label_fill)
        self._store: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _canvas(self, i):
        item = self._store.get(i)
        if item is None:
            image, label = self.source.read(i)
            try:
                item = make_canvas(image, label, self.canvas_hw, *self.fills)
            except ValueError as e:
                raise ValueError(f"{self.source.describe(i)}: {e}") from None
            if self.cache:
                with self._lock:
                    self._store[i] = item
        return item

    def __call__(self, indices):
        # 64-byte aligned, as TensorFlow wants its buffers: handed over without a copy
        first = self._canvas(int(indices[0]))
        shape, nbytes = (len(indices), *first.shape), len(indices) * first.nbytes
        raw = np.empty(nbytes + 64, np.uint8)
        start = -raw.ctypes.data % 64
        out = raw[start:start + nbytes].view(first.dtype).reshape(shape)
        for k, i in enumerate(indices):
            out[k] = first if k == 0 else self._canvas(int(i))
        return out


def steps_per_epoch(source: SegmentationSource, batch_size: int, drop_remainder: bool = False) -> int:
    n = len(source)
    return n // batch_size if drop_remainder else -(-n // batch_size)


def make_pipeline(source: SegmentationSource, input_size: tuple[int, int], batch_size: int,
                  augment: PortraitNetAugmentation | bool | None = True, backend: str = "tf",
                  shuffle: bool = True, seed: int = 0, cache: bool = True,
                  two_views: bool = False, drop_remainder: bool = False,
                  label_stride: int = 1, epochs: int = 1, initial_epoch: int = 0,
                  slices: tuple[int, int, int] | None = None) -> tf.data.Dataset:
    """Batches of ``(image float32 [B, h, w, 3] RGB in [0, 255], label uint8 [B, h', w'])``
    for epochs ``initial_epoch .. epochs - 1`` (batches never straddle two epochs).

    * ``augment``: ``True`` for PortraitNet's spec, a :class:`PortraitNetAugmentation`, or
      ``False``/``None`` for the plain resize (validation, calibration).
    * ``backend``: ``"tf"`` (TensorFlow + XLA on whole batches, default) or ``"imgaug"``
      (the ``imgaug`` extra, numpy<2), the same spec either way.
    * ``cache``: keep decoded photos in memory after their first read (the ``tf`` backend
      keeps their canvases: :func:`sinet_tf.data.augment.canvas_size`, 336x336 packed
      int32 for 224x224 with PortraitNet's zoom, ~0.46 MB per photo).
    * ``two_views``: images become ``{"image": textured, "plain": untextured}`` with the
      same geometry, for PortraitNet's consistency loss.
    * ``label_stride``: labels subsampled (nearest, centre of each cell) by this factor,
      e.g. 8 for SINet's stage-1 encoder, whose logits are at 1/8 resolution.
    * ``slices``: ``(first, stop, total)`` for distributed training: every batch of
      ``batch_size`` (the global batch) is cut into ``total`` consecutive slices of
      ``batch_size / total`` examples, one per replica, and this pipeline yields slices
      ``first .. stop - 1`` of every batch in order, each a batch of its own (a worker's
      share, for its local replicas). Examples keep their global positions, hence their
      seeds: the slices of all workers together are exactly the single-device batches.
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
    out_batch = batch_size
    if slices is not None:
        first, stop, total = (int(v) for v in slices)
        if total < 1 or batch_size % total:
            raise ValueError(f"batch size {batch_size} does not divide into {total} replicas "
                             f"({batch_size} / {total} = {batch_size / total:g} examples each)")
        if not 0 <= first < stop <= total:
            raise ValueError(f"slices {first}..{stop - 1} of {total} are not slices of a batch")
        out_batch = batch_size // total
        slices = (first, stop, total)
    spec = PortraitNetAugmentation() if augment is True else (augment or None)
    if two_views and spec is None:
        raise ValueError("two_views needs augmentation (the views differ by texture changes)")

    if spec is not None and backend == "tf":
        return _tf_backend(source, out_hw, batch_size, spec, shuffle, seed, cache, two_views,
                           drop_remainder, label_stride, epochs, initial_epoch, slices)

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
        ds = _epoch_order(n, shuffle, seed, epoch, batch_size, drop_remainder, slices)
        ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.map(pack, num_parallel_calls=tf.data.AUTOTUNE).batch(out_batch, drop_remainder=drop_remainder)

    ds = tf.data.Dataset.range(initial_epoch, epochs).flat_map(one_epoch)
    return ds.prefetch(tf.data.AUTOTUNE)


def _epoch_order(n, shuffle, seed, epoch, batch_size=None, drop_remainder=False, slices=None) -> tf.data.Dataset:
    """``(index, example seed [2])`` of epoch ``epoch`` in order: the stateless shuffle of
    ``(seed, epoch)`` and the seeds ``(seed, epoch * n + position)``; with ``slices``
    (``(first, stop, total)``), only the positions in slices ``first .. stop - 1`` of each
    global batch of ``batch_size`` (and none of a last batch that ``drop_remainder`` drops)."""
    order = tf.range(n, dtype=tf.int64)
    if shuffle:
        order = tf.random.experimental.stateless_shuffle(order, seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
    positions = tf.range(n, dtype=tf.int64)
    seeds = tf.stack([tf.fill([n], tf.constant(seed, tf.int64)), epoch * n + positions], axis=1)
    if slices is not None:
        first, stop, total = slices
        slice_of = (positions % batch_size) // (batch_size // total)
        keep = (slice_of >= first) & (slice_of < stop)
        if drop_remainder:
            keep &= positions < (n // batch_size) * batch_size
        order, seeds = tf.boolean_mask(order, keep), tf.boolean_mask(seeds, keep)
    return tf.data.Dataset.from_tensor_slices((order, seeds))


def _tf_backend(source, out_hw, batch_size, spec, shuffle, seed, cache, two_views, drop_remainder,
                label_stride, epochs, initial_epoch, slices=None) -> tf.data.Dataset:
    """The ``tf`` backend: batches of indices -> cached canvases -> one :func:`augment_batch`."""
    n = len(source)
    hw = canvas_size(spec, out_hw)
    reader = _CanvasReader(source, cache, hw, spec.image_fill, spec.label_fill)
    out_batch = batch_size if slices is None else batch_size // slices[2]
    full = min(out_batch, n)  # the size every batch is augmented at

    def augment(indices, seeds):
        k = tf.shape(indices)[0]
        # pad a short last batch to the batch size: one compiled shape; examples are independent
        pad = [[0, full - k]]
        indices = tf.pad(indices, pad, constant_values=indices[0])
        seeds = tf.ensure_shape(tf.pad(seeds, pad + [[0, 0]]), [full, 2])
        canvas = tf.numpy_function(reader, [indices], tf.int32, stateful=False)
        canvas.set_shape([full, hw[0] + 2 * RING, hw[1] + 2 * RING])
        parts = [t[:k] for t in augment_batch(canvas, seeds, out_hw, spec, two_views)]
        label = parts[-1]
        if label_stride > 1:
            label = label[:, label_stride // 2::label_stride, label_stride // 2::label_stride]
        if two_views:
            return {"image": parts[0], "plain": parts[1]}, label
        return parts[0], label

    def one_epoch(epoch):
        return _epoch_order(n, shuffle, seed, epoch, batch_size, drop_remainder, slices).batch(
            out_batch, drop_remainder=drop_remainder)

    # the augmentation maps the batches of all epochs: one function instance per iterator
    ds = tf.data.Dataset.range(initial_epoch, epochs).flat_map(one_epoch)
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
