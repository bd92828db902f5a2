"""int8 activation ranges chosen by measurement, per model, and the parity gate.

Post-training int8 gives every activation tensor one range ``[lo, hi]`` (255 steps). How
that range is estimated from calibration images decides what a model keeps: min/max over
all images is set by the rarest, most extreme pixel, and a freshly trained model can have
a channel whose peaks are a hundred times its typical values, which then leaves the other
channels of the tensor a handful of steps. No single estimator is best for every model, so
the exporter tries several and measures.

**Candidates.** Each range estimator (:data:`ESTIMATORS`), with and without per-channel
range equalization (:func:`sinet_tf.export.rewrite.int8_friendly`):

``minmax``      TFLite's own: the minimum and maximum over all calibration images.
``average``     the mean over images of each image's minimum and maximum (the moving
                average that quantization-aware training keeps; Jacob et al., CVPR 2018,
                Sec. 3.1).
``percentile``  the :data:`PERCENTILE` / (100 - :data:`PERCENTILE`) percentiles of all
                values (McKinstry et al., 2019, "Discovering low-precision networks
                close to full-precision networks for efficient inference", Sec. 3).
``mse``         per tensor, the range that minimizes the expected squared error of
                rounding (``step^2 / 12`` per value inside the range) plus clipping
                (squared distance to the range for values outside), over the values'
                histogram (Banner et al., NeurIPS 2019, Eq. 2-5, without their Laplace
                prior; Sung et al., 2015, Sec. 3).

Calibration statistics are collected once per rewritten model (one TFLite calibration over
all calibration images, and one pass of the calibrated float model over up to
:data:`STATISTICS_IMAGES` of them: :func:`collect_statistics`), and each estimator only
rewrites the ranges before the converter's quantizer runs (:func:`write_ranges`).

**Parity**, on held-out images that calibration did not see, is measured as
``sinet evaluate`` measures (:class:`ParityImages`): each photo resized to the model's
input, predicted, the person probability resized back to the photo, thresholded, and
person IoU against the full-size ground truth (:class:`sinet_tf.inference.Segmenter`,
:class:`sinet_tf.metrics.SegmentationMetrics`). For each candidate: the drop in person IoU
against the float model, and the *mask distance* ``1 - IoU(int8 mask, float mask)``,
averaged over the images. Jaccard distance is a metric, so per image
``|IoU(int8, truth) - IoU(float, truth)| <= 1 - IoU(int8, float)`` for any ground truth:
the mask distance bounds the drop on any labels, also on photos that are not in the
parity set, where a measured drop near zero (or a gain) can be luck.

**Choice** (:func:`rank`). A few dozen parity photos measure a candidate's drop only to
about +-0.01 (on the official SINet the same eight files moved by up to 0.025 between 30
held-out training photos and the 60 validation photos, in both directions), so "the
smallest measured drop" or "the smallest mask distance" picks noise as often as a better
calibration. The choice is therefore: the candidates that meet the gate (drop at most
``max_drop``), and of those the first in :data:`PREFERENCE` (min/max with equalization,
the calibration validated on the official checkpoints and on photos outside the project,
first; the clipping estimators, which trade a tensor's extremes for resolution, after the
ones that keep them) unless another one is better by more than the measurement's noise: a
paired comparison of per-image person IoU, mean difference above :data:`SIGNIFICANCE`
standard errors. The gate is one-sided (a gain never fails it), but the choice is about
parity, not about the parity photos' score: a candidate that scores *more* than
``max_drop`` above the float model has moved a large share of the mask away from it (in
fresh ``sinet demo`` runs, 10-15% of the pixels), and its gain is no more likely to hold on
other photos than a loss of that size. Such candidates come after every candidate within
``max_drop`` of the float model in either direction, the one nearest the float model
(smallest mask distance) first. When no candidate meets the gate, the one with the
smallest drop, and the gate refuses it unless told otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sinet_tf.data.sources import open_source
from sinet_tf.export.quantize import ExportError
from sinet_tf.inference import Segmenter, resize_to_input
from sinet_tf.metrics import SegmentationMetrics, person_iou
from sinet_tf.runtime.interpreter import make_interpreter
from sinet_tf.runtime.model_file import pack_model, parse_model, read_model

__all__ = ["DEFAULT_MAX_DROP", "ESTIMATORS", "PERCENTILE", "PREFERENCE", "SIGNIFICANCE", "CalibrationStatistics", "Candidate", "Int8GateError",
           "ParityImages", "collect_statistics", "estimate_ranges", "candidate_name", "parse_candidate_name", "rank",
           "write_ranges"]

ESTIMATORS = ("minmax", "average", "percentile", "mse")
PERCENTILE = 99.99      # percent of values inside the range (two-sided) for the "percentile" estimator
DEFAULT_MAX_DROP = 0.01  # person IoU the gate lets int8 lose on the parity images
PREFERENCE = ("minmax+equalize", "minmax", "average+equalize", "average", "mse+equalize", "mse",
              "percentile+equalize", "percentile")  # among candidates meeting the gate, absent a significant difference
SIGNIFICANCE = 2.0       # standard errors of the paired per-image IoU difference that overrule PREFERENCE
BINS = 2048              # histogram bins per tensor over its min/max range
MAX_SAMPLES = 1 << 15    # values per tensor and image that enter its histogram (evenly strided)
STATISTICS_IMAGES = 64   # calibration images (evenly spaced) the per-image statistics come from


class Int8GateError(ExportError):
    """The best int8 calibration loses more person IoU than the gate allows. ``report``:
    what was measured (candidates, worst layers)."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report or {}


def candidate_name(estimator: str, equalize: bool) -> str:
    return f"{estimator}+equalize" if equalize else estimator


def parse_candidate_name(name: str) -> tuple[str, bool]:
    estimator, _, suffix = name.partition("+")
    if estimator not in ESTIMATORS or suffix not in ("", "equalize"):
        raise ExportError(f"unknown int8 calibration {name!r}; choose one of "
                          f"{', '.join(candidate_name(e, q) for q in (False, True) for e in ESTIMATORS)}")
    return estimator, bool(suffix)


# --------------------------------------------------------------------------- statistics


@dataclass
class CalibrationStatistics:
    """Per activation tensor of a calibrated float model (the tensors whose range the
    quantizer reads; not the model input): TFLite's ``lo``/``hi`` (each including 0),
    each image's minimum and maximum, and a histogram over ``[lo, hi]``."""

    indices: list[int]
    names: list[str]
    lo: np.ndarray            # [T]
    hi: np.ndarray            # [T]
    image_min: np.ndarray     # [N, T]
    image_max: np.ndarray     # [N, T]
    hist: np.ndarray          # [T, BINS]


def _range_tensors(model) -> list[int]:
    sub = model.subgraphs[0]
    inputs = {int(i) for i in sub.inputs}
    return [i for i, t in enumerate(sub.tensors) if i not in inputs and t.quantization is not None
            and t.quantization.min is not None and len(t.quantization.min) == 1]


def collect_statistics(calibrated: bytes, images, progress: Callable[[int, int], None] | None = None,
                       max_images: int = STATISTICS_IMAGES) -> CalibrationStatistics:
    """One pass of the calibrated float model over ``images`` (``[N, H, W, 3]``; at most
    ``max_images`` of them, evenly spaced) with every tensor kept: the statistics every
    estimator needs (TFLite's min/max, ``lo``/``hi``, cover all calibration images)."""
    if len(images) > max_images:
        images = [images[int(i)] for i in np.linspace(0, len(images) - 1, max_images).round()]
    model = read_model(calibrated)
    sub = model.subgraphs[0]
    indices = _range_tensors(model)
    lo = np.array([min(float(sub.tensors[i].quantization.min[0]), 0.0) for i in indices], np.float64)
    hi = np.array([max(float(sub.tensors[i].quantization.max[0]), 0.0) for i in indices], np.float64)
    names = [(sub.tensors[i].name or b"").decode() if isinstance(sub.tensors[i].name, bytes)
             else str(sub.tensors[i].name) for i in indices]
    interpreter = make_interpreter(calibrated, xnnpack=False, keep_all_tensors=True)
    inp = interpreter.get_input_details()[0]
    n, t = len(images), len(indices)
    image_min, image_max = np.zeros((n, t)), np.zeros((n, t))
    hist = np.zeros((t, BINS), np.int64)
    width = np.where(hi > lo, hi - lo, 1.0)
    for k, x in enumerate(images):
        interpreter.set_tensor(inp["index"], np.asarray(x, np.float32)[None])
        interpreter.invoke()
        for j, i in enumerate(indices):
            v = interpreter.get_tensor(i).ravel()
            image_min[k, j], image_max[k, j] = float(v.min()), float(v.max())
            if v.size > MAX_SAMPLES:
                v = v[::math.ceil(v.size / MAX_SAMPLES)]
            b = ((v.astype(np.float64) - lo[j]) * (BINS / width[j])).astype(np.int64)
            hist[j] += np.bincount(np.clip(b, 0, BINS - 1), minlength=BINS)
        if progress is not None:
            progress(k + 1, n)
    return CalibrationStatistics(indices, names, lo, hi, image_min, image_max, hist)


def _percentile_ranges(stats: CalibrationStatistics, percent: float):
    cum = np.cumsum(stats.hist, axis=1).astype(np.float64)
    total = np.maximum(cum[:, -1:], 1.0)
    tail = (100.0 - percent) / 200.0
    edges = np.linspace(0.0, 1.0, BINS + 1)
    lo_bin = np.argmax(cum / total > tail, axis=1)                 # first bin past the lower tail
    hi_bin = np.argmax(cum / total >= 1.0 - tail, axis=1)          # bin holding the upper quantile
    span = stats.hi - stats.lo
    return stats.lo + edges[lo_bin] * span, stats.lo + edges[hi_bin + 1] * span


def _mse_ranges(stats: CalibrationStatistics, grid: int = 96):
    """Per tensor, ``argmin_{a <= 0 <= b} E[(q_{a,b}(x) - x)^2]`` over a grid of clipping
    points (geometric between the full range and 1/1000 of it): rounding noise
    ``((b - a) / 255)^2 / 12`` per value inside, squared distance to the edge outside."""
    t = len(stats.indices)
    lo, hi = stats.lo.copy(), stats.hi.copy()
    fractions = np.concatenate([[1.0], np.geomspace(1.0, 1e-3, grid - 1)[1:], [0.0]])
    for j in range(t):
        n = stats.hist[j].astype(np.float64)
        if n.sum() == 0 or stats.hi[j] <= stats.lo[j]:
            continue
        span = stats.hi[j] - stats.lo[j]
        centers = stats.lo[j] + (np.arange(BINS) + 0.5) * span / BINS
        s0, s1, s2 = np.cumsum(n), np.cumsum(n * centers), np.cumsum(n * centers ** 2)
        total0, total1, total2 = s0[-1], s1[-1], s2[-1]
        a = stats.lo[j] * fractions if stats.lo[j] < 0 else np.zeros(1)      # lower clip candidates
        b = stats.hi[j] * fractions if stats.hi[j] > 0 else np.zeros(1)      # upper clip candidates

        def below(c):  # prefix sums of the bins whose center is below c
            k = np.searchsorted(centers, c, side="left") - 1
            ok = k >= 0
            kk = np.maximum(k, 0)
            return (np.where(ok, s0[kk], 0.0), np.where(ok, s1[kk], 0.0), np.where(ok, s2[kk], 0.0))

        a0, a1, a2 = below(a)
        low_err = a2 - 2 * a * a1 + a ** 2 * a0                           # sum n (x - a)^2 for x < a
        b0, b1, b2 = below(b)
        b0, b1, b2 = total0 - b0, total1 - b1, total2 - b2               # bins at or above b
        # values exactly in b's bin and above are clipped to b (bins centers >= b)
        high_err = b2 - 2 * b * b1 + b ** 2 * b0
        inside = np.maximum(total0 - a0[:, None] - b0[None, :], 0.0)
        step = (b[None, :] - a[:, None]) / 255.0
        err = low_err[:, None] + high_err[None, :] + inside * step ** 2 / 12.0
        err = np.where(b[None, :] - a[:, None] > 0, err, np.inf)
        i, k = np.unravel_index(int(np.argmin(err)), err.shape)
        lo[j], hi[j] = a[i], b[k]
    return lo, hi


def estimate_ranges(stats: CalibrationStatistics, estimator: str):
    """``(lo, hi)`` per tensor of ``stats`` by ``estimator`` (:data:`ESTIMATORS`), each
    range containing 0."""
    if estimator == "minmax":
        lo, hi = stats.lo, stats.hi
    elif estimator == "average":
        lo, hi = stats.image_min.mean(axis=0), stats.image_max.mean(axis=0)
    elif estimator == "percentile":
        lo, hi = _percentile_ranges(stats, PERCENTILE)
    elif estimator == "mse":
        lo, hi = _mse_ranges(stats)
    else:
        raise ExportError(f"unknown range estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    dead = hi - lo <= 0  # a tensor that is always 0: keep TFLite's (degenerate) range
    return np.where(dead, stats.lo, lo), np.where(dead, stats.hi, hi)


def write_ranges(calibrated: bytes, indices, lo, hi) -> bytes:
    """``calibrated`` with the range of tensor ``indices[j]`` set to ``[lo[j], hi[j]]``."""
    model = parse_model(calibrated)
    sub = model.subgraphs[0]
    for i, a, b in zip(indices, lo, hi):
        q = sub.tensors[int(i)].quantization
        q.min = np.array([a], np.float32)
        q.max = np.array([b], np.float32)
    return pack_model(model)


# --------------------------------------------------------------------------- parity


@dataclass
class ParityImages:
    """Held-out labelled photos for the parity gate, at full size, and the model inputs
    made from them (:func:`sinet_tf.inference.resize_to_input`, what ``sinet evaluate``
    feeds the model)."""

    photos: list
    labels: list
    inputs: np.ndarray
    ignore_index: int
    description: str
    reference_iou: float | None = None
    reference_masks: list = field(default_factory=list)

    @classmethod
    def load(cls, data, split, size, count: int, skip: int = 0, seed: int = 0) -> "ParityImages":
        source = open_source(str(data), split, seed=seed)
        available = len(source) - skip
        if available < 1:
            raise ExportError(f"no held-out images for the int8 parity check: {data} (split {split}) has "
                              f"{len(source)} images and the first {skip} are used for calibration; give "
                              "--parity-data SRC, or fewer --num-calibration")
        count = min(count, available)
        photos, labels = [], []
        for i in range(skip, skip + count):
            image, label = source.read(i)
            photos.append(image)
            labels.append(label)
        inputs = np.stack([resize_to_input(p, size) for p in photos])
        where = f"{data} ({split or 'all'})" + (f", after the first {skip} (calibration)" if skip else "")
        return cls(photos, labels, inputs, int(getattr(source, "ignore_index", 255)),
                   f"{count} held-out images of {where}")

    def masks(self, segmenter: Segmenter) -> list:
        return [segmenter.mask(p) for p in self.photos]

    def person_iou(self, masks) -> float:
        """Mean per-image person IoU, as ``sinet evaluate`` computes it."""
        metrics = SegmentationMetrics(num_classes=2, ignore_index=self.ignore_index)
        for m, y in zip(masks, self.labels):
            metrics.update(m, y)
        return float(metrics.result()["person_iou"])

    def set_reference(self, segmenter: Segmenter) -> None:
        self.reference_masks = self.masks(segmenter)
        self.reference_iou = self.person_iou(self.reference_masks)

    def score(self, segmenter: Segmenter) -> dict:
        """Person IoU of ``segmenter``, its drop against the reference (float) model, and
        the mean mask distance ``1 - IoU(mask, reference mask)``."""
        masks = self.masks(segmenter)
        iou = self.person_iou(masks)
        distance = float(np.mean([1.0 - person_iou(m, r, ignore_index=256)[0]
                                  for m, r in zip(masks, self.reference_masks)]))
        per_image = [float(person_iou(m, y, ignore_index=self.ignore_index)[0]) for m, y in zip(masks, self.labels)]
        return {"person_iou": round(iou, 5), "drop": round(self.reference_iou - iou, 5),
                "mask_distance": round(distance, 5), "per_image_iou": per_image}


def score_tflite(parity: ParityImages, data: bytes, folder: Path, name: str) -> dict:
    """:meth:`ParityImages.score` of a ``.tflite`` model given as bytes."""
    path = Path(folder) / f"{name.replace('+', '_')}.tflite"
    path.write_bytes(data)
    return parity.score(Segmenter(path))


def score_keras(parity: ParityImages, model) -> None:
    """Make ``model`` (a Keras model with a logits output) the parity reference."""
    parity.set_reference(Segmenter(model))


# --------------------------------------------------------------------------- candidates


@dataclass
class Candidate:
    """One int8 file and what it was measured to lose."""

    name: str
    data: bytes = field(repr=False)
    score: dict
    model: object = field(default=None, repr=False)   # the rewritten Keras model it was converted from
    seconds: float = 0.0
    problems: list = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {"name": self.name, **{k: v for k, v in self.score.items() if k != "per_image_iou"},
               "quantize_seconds": round(self.seconds, 1)}
        if self.problems:
            out["problems"] = list(self.problems)
        return out


def _advantage(a: Candidate, b: Candidate) -> float:
    """How many standard errors ``a``'s per-image person IoU is above ``b``'s (paired)."""
    x, y = a.score.get("per_image_iou"), b.score.get("per_image_iou")
    if not x or not y or len(x) != len(y) or len(x) < 2:
        return 0.0
    d = np.asarray(x) - np.asarray(y)
    se = float(d.std(ddof=1)) / math.sqrt(len(d))
    if se == 0.0:
        return math.inf if d.mean() > 0 else 0.0
    return float(d.mean()) / se


def rank(candidates: list[Candidate], max_drop: float) -> list[Candidate]:
    """Candidates, the chosen one first (see the module docstring): those without export
    problems within ``max_drop`` of the float model's person IoU either way, by
    :data:`PREFERENCE` unless one is better by more than :data:`SIGNIFICANCE` standard errors
    (paired per-image person IoU); then those that gain more than ``max_drop``, by mask
    distance; then those that miss the gate, by drop; then those with problems."""
    def drop(c):
        return c.score["drop"] if c.score.get("drop") is not None else math.inf

    def preference(c):
        return PREFERENCE.index(c.name) if c.name in PREFERENCE else len(PREFERENCE)

    usable = [c for c in candidates if not c.problems]
    within = sorted([c for c in usable if abs(drop(c)) <= max_drop + 1e-9], key=preference)
    gains = sorted([c for c in usable if drop(c) < -max_drop - 1e-9], key=lambda c: c.score["mask_distance"])
    misses = sorted([c for c in usable if drop(c) > max_drop + 1e-9], key=drop)
    if within:
        first = within[0]
        better = [(adv, c) for c in within[1:] if (adv := _advantage(c, first)) > SIGNIFICANCE]
        if better:
            first = max(better, key=lambda t: t[0])[1]
            within = [first] + [c for c in within if c is not first]
    return within + gains + misses + [c for c in candidates if c.problems]
