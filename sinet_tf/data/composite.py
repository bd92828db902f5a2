"""Copy-paste composites: the people of a dataset pasted over new backgrounds.

Simple copy-paste (Ghiasi et al., "Simple Copy-Paste is a Strong Data Augmentation Method for
Instance Segmentation", CVPR 2021) pastes the labelled objects of one image onto another;
for portrait matting the backgrounds come from elsewhere, since every photo has a person.
:class:`CompositeSource` keeps every example of a source and appends ``count`` composites:
composite ``k`` is the person of example ``k mod len(source)`` (its person pixels, at the
photo's own size and place) over a background of the synthetic generator
(:func:`sinet_tf.data.synthetic.render_background`, drawn from ``(seed, k)``; the backgrounds
that borrow the person's colour get the mean colour of this person's pixels). The paste edge
is blended with the person mask smoothed by a Gaussian (sigma 1 px), the blending that
Dwibedi et al. ("Cut, Paste and Learn", ICCV 2017, Sec. 3.3) found to keep a network from
learning the hard cut line. Labels are unchanged; pixels labelled ``ignore_index`` keep the
photo. Every composite is a pure function of ``(source, seed, k)``, so the pipeline's
determinism holds; augmentation then applies to composites as to photos.
"""

from __future__ import annotations

import cv2
import numpy as np

from sinet_tf.data.base import SegmentationSource
from sinet_tf.data.synthetic import render_background

__all__ = ["CompositeSource"]

PERSON = 1
EDGE_SIGMA = 1.0


class CompositeSource(SegmentationSource):
    """``source``'s examples, then ``count`` copy-paste composites of them (module docstring)."""

    def __init__(self, source: SegmentationSource, count: int, seed: int = 0):
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"copy-paste count must be an integer >= 0, got {count!r}")
        if len(source) == 0 and count:
            raise ValueError(f"{source.name}: no examples to paste")
        self.source, self.count, self.seed = source, int(count), int(seed)
        self.name = f"{source.name}+copy_paste{self.count}"
        self.classes, self.ignore_index = source.classes, source.ignore_index

    def __len__(self) -> int:
        return len(self.source) + self.count

    def _k(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name} ({len(self)} examples)")
        return index - len(self.source)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        k = self._k(int(index))
        if k < 0:
            return self.source.read(int(index))
        image, label = self.source.read(k % len(self.source))
        person = label == PERSON
        colour = image[person].mean(axis=0) if person.any() else None
        background = render_background(self.seed, k, image.shape[:2], colour)
        alpha = cv2.GaussianBlur(person.astype(np.float32), (0, 0), EDGE_SIGMA)
        alpha[label == self.ignore_index] = 1.0
        alpha = alpha[..., None]
        out = alpha * image.astype(np.float32) + (1.0 - alpha) * background.astype(np.float32)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8), label

    def describe(self, index: int) -> str:
        k = self._k(int(index))
        if k < 0:
            return self.source.describe(int(index))
        return f"copy-paste {k}: {self.source.describe(k % len(self.source))} over background {k} (seed {self.seed})"
