"""What a segmentation model's output means: the person probability from logits,
per-class probabilities or a one-channel mask head."""

from __future__ import annotations

import numpy as np

__all__ = ["PERSON_CLASS", "person_probability_from_output"]

PERSON_CLASS = 1  # class index of "person" in every binary portrait label map


def person_probability_from_output(y: np.ndarray, kind: str) -> np.ndarray:
    """Person probability ``[..., H, W]`` from a model output ``[..., H, W, C]`` of head ``kind``
    (``logits``: softmax over C channels, or the sigmoid of a single logit; ``probabilities``
    or ``mask``: the person channel as it is)."""
    y = np.asarray(y, dtype=np.float32)
    if kind in ("probabilities", "mask"):
        return y[..., 0] if y.shape[-1] == 1 else y[..., PERSON_CLASS]
    if kind != "logits":
        raise ValueError(f"unknown output kind {kind!r}")
    if y.shape[-1] == 1:
        return 1.0 / (1.0 + np.exp(-y[..., 0]))
    e = np.exp(y - y.max(axis=-1, keepdims=True))
    return e[..., PERSON_CLASS] / e.sum(axis=-1)
