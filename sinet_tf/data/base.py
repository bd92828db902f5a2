"""The interface every data source implements (file datasets and synthetic portraits).

A source yields photos and label maps at their own size; augmentation, resizing to the
model input and batching happen later, in :mod:`sinet_tf.data.pipeline`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SegmentationSource", "ArraySource", "ConcatSource", "IGNORE_INDEX", "BINARY_CLASSES"]

IGNORE_INDEX = 255
BINARY_CLASSES = ("background", "person")


class SegmentationSource:
    """Base class: subclasses set ``name``, ``classes``, ``ignore_index`` and implement
    ``__len__``, ``read`` and ``describe``.

    ``read(i)`` returns ``(image, label)``: ``image`` RGB ``uint8 [H, W, 3]`` and ``label``
    ``uint8 [H, W]`` holding class indices ``0 .. len(classes) - 1`` or ``ignore_index``,
    already at the image's size. It raises ``ValueError`` naming the file(s) when a sample
    cannot be read.
    """

    name: str = "dataset"
    classes: tuple[str, ...] = BINARY_CLASSES
    ignore_index: int = IGNORE_INDEX

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """Human-readable identity of sample ``index`` (file names), for messages."""
        return f"{self.name}[{index}]"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def as_tf_dataset(self):
        """``tf.data.Dataset`` of ``{"image": uint8 [H, W, 3], "label": uint8 [H, W],
        "index": int32}`` in index order, sizes as stored. Decoding runs in
        ``tf.numpy_function`` (OpenCV releases the GIL), parallel under AUTOTUNE."""
        import tensorflow as tf

        def _read(i):
            image, label = self.read(int(i))
            return np.ascontiguousarray(image, np.uint8), np.ascontiguousarray(label, np.uint8)

        def _map(i):
            image, label = tf.numpy_function(_read, [i], [tf.uint8, tf.uint8], stateful=False)
            image.set_shape([None, None, 3])
            label.set_shape([None, None])
            return {"image": image, "label": label, "index": tf.cast(i, tf.int32)}

        return tf.data.Dataset.range(len(self)).map(
            _map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class ArraySource(SegmentationSource):
    """In-memory photos and label maps (lists of arrays, sizes may differ)."""

    def __init__(self, images, labels, name: str = "arrays", classes=BINARY_CLASSES,
                 ignore_index: int = IGNORE_INDEX):
        if len(images) != len(labels):
            raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels")
        self.images, self.labels = list(images), list(labels)
        for i, (im, lb) in enumerate(zip(self.images, self.labels)):
            if im.ndim != 3 or im.shape[-1] != 3 or lb.shape != im.shape[:2]:
                raise ValueError(f"{name}[{i}]: image {im.shape} and label {lb.shape} do not match "
                                 "([H, W, 3] and [H, W])")
        self.name, self.classes, self.ignore_index = name, tuple(classes), ignore_index

    def __len__(self):
        return len(self.images)

    def read(self, index):
        return self.images[index], self.labels[index]


class ConcatSource(SegmentationSource):
    """The examples of several sources one after the other (same classes and ignore value)."""

    def __init__(self, sources, name: str | None = None):
        self.sources = list(sources)
        if not self.sources:
            raise ValueError("ConcatSource needs at least one source")
        first = self.sources[0]
        for s in self.sources[1:]:
            if tuple(s.classes) != tuple(first.classes) or s.ignore_index != first.ignore_index:
                raise ValueError(f"cannot concatenate {first.name} (classes {first.classes}, ignore {first.ignore_index})"
                                 f" and {s.name} (classes {s.classes}, ignore {s.ignore_index})")
        self.classes, self.ignore_index = first.classes, first.ignore_index
        self.name = name or "+".join(s.name for s in self.sources)
        self._starts = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self):
        return int(self._starts[-1])

    def _locate(self, index):
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name} ({len(self)} examples)")
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.sources[k], index - int(self._starts[k])

    def read(self, index):
        source, i = self._locate(index)
        return source.read(i)

    def describe(self, index):
        source, i = self._locate(index)
        return source.describe(i)
