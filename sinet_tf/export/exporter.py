"""Export to ``.tflite`` (fp32 / fp16 / dynamic / full int8) with a JSON report.

:func:`export_tflite` is what ``sinet export`` runs: fix the batch at 1, put the asked
output head on top (:mod:`sinet_tf.export.heads`), convert (:mod:`sinet_tf.export.quantize`;
int8 after the numerically equivalent rewrites of :mod:`sinet_tf.export.rewrite`, calibrated
on real images through the dataset readers, the calibration chosen by parity on held-out
photos and gated, :mod:`sinet_tf.export.calibration`, with quantization-aware fine-tuning
when asked and needed, :mod:`sinet_tf.export.qat`), reject files that break the rules
(Flex/custom ops, variables, SHAPE, float islands in int8), check the GPU delegate's op
rules, measure parity with the Keras model, optionally add MediaPipe-readable metadata,
and write ``OUT.tflite`` and ``OUT.json`` as one commit (:func:`export_tflite`). With the
``mask`` head the file can carry the post-processing of :mod:`sinet_tf.postprocess` too: the
guided edge refinement (``refine="guided"``) and the gated-EMA temporal smoothing behind a
second input, the previous matte (``temporal="ema"``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from sinet_tf.data.sources import open_source
from sinet_tf.export.calibration import (
    DEFAULT_MAX_DROP,
    ESTIMATORS,
    Candidate,
    Int8GateError,
    ParityImages,
    candidate_name,
    collect_statistics,
    estimate_ranges,
    parse_candidate_name,
    rank,
    score_keras,
    score_tflite,
    write_ranges,
)
from sinet_tf.export.frozen import input_names
from sinet_tf.export.gpu_compat import GpuReport, check_gpu_compatibility
from sinet_tf.export.heads import OUTPUT_HEADS, with_output_head
from sinet_tf.export.layer_error import layer_errors, worst_layers
from sinet_tf.export.metadata import add_segmenter_metadata
from sinet_tf.export.qat import quantization_aware_export
from sinet_tf.export.quantize import (
    QUANTIZE_MODES,
    ExportError,
    calibrate,
    convert,
    inspect_tflite,
    quantize_calibrated_model,
    representative_dataset,
)
from sinet_tf.export.rewrite import float_friendly, int8_friendly_variants
from sinet_tf.export.tflite import with_fixed_batch
from sinet_tf.files import atomic_path
from sinet_tf.inference import resize_to_input
from sinet_tf.loading import load_model
from sinet_tf.postprocess import layers
from sinet_tf.postprocess import refine as refine_mod
from sinet_tf.postprocess import temporal as temporal_mod
from sinet_tf.postprocess.refine import check_refine
from sinet_tf.postprocess.temporal import NO_HISTORY, check_strength
from sinet_tf.progress import progress_bar
from sinet_tf.runtime.heads import person_probability_from_output
from sinet_tf.runtime.interpreter import TFLiteRunner

__all__ = ["ExportReport", "calibration_images", "export_tflite", "load_export_source", "read_export_report"]

log = logging.getLogger("sinet_tf.export")

EQUALIZATION_IMAGES = 32  # calibration images whose channel ranges int8 equalization uses


@dataclass
class ExportReport:
    output: str
    model: str
    quantize: str
    io: str
    head: str
    size_bytes: int
    ops: dict
    inputs: list
    outputs: list
    parity: dict
    convert_seconds: float
    gpu: GpuReport
    extra: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> list[int]:
        return self.inputs[0]["shape"]

    @property
    def output_shape(self) -> list[int]:
        return self.outputs[0]["shape"]

    @property
    def max_abs_diff_logits(self) -> float:  # the float32 logits comparison (kept for callers)
        return self.parity["max_abs_diff_output"]

    def to_dict(self) -> dict:
        return {"output": self.output, "model": self.model, "quantize": self.quantize, "io": self.io,
                "head": self.head, "size_bytes": self.size_bytes, "ops": self.ops,
                "inputs": self.inputs, "outputs": self.outputs, "parity": self.parity,
                "convert_seconds": round(self.convert_seconds, 2), "gpu_delegate": self.gpu.to_dict(),
                **self.extra}

    def summary(self) -> str:
        p = self.parity
        lines = [f"{self.output}: {self.quantize} ({self.io} I/O, {self.head} head), "
                 f"{self.size_bytes / 1024:.0f} KiB, input {self.input_shape} {self.inputs[0]['dtype']}, "
                 f"output {self.output_shape} {self.outputs[0]['dtype']}, converted in {self.convert_seconds:.1f} s",
                 f"parity on {p['images']}: max |TFLite - Keras| output {p['max_abs_diff_output']:.3g}, "
                 f"person probability {p['max_abs_diff_probability']:.3g}"]
        if "person_iou_tflite" in p:
            lines.append(f"person IoU (as sinet evaluate scores it): Keras {p['person_iou_keras']:.4f}, "
                         f"TFLite {p['person_iou_tflite']:.4f} (difference {p['person_iou_difference']:+.4f}), "
                         f"mask distance {p['mask_distance']:.4f}")
        int8 = self.extra.get("int8")
        if int8:
            tried = [c for c in int8["candidates"] if c["name"] != "qat"]
            lines.append(f"int8 calibration: {int8['chosen']} chosen of {len(tried)} tried "
                         f"({', '.join(c['name'] for c in tried)}) by parity on {int8['parity_images']}; "
                         f"gate --max-drop {int8['max_drop']:g}: {int8['gate']}"
                         + (f"; quantization-aware fine-tuning: {int8['qat']['epochs']} epochs, "
                            f"{int8['qat']['train_seconds']:.0f} s" if int8.get("qat") else ""))
        lines.append(self.gpu.summary())
        return "\n".join(lines)


def load_export_source(source, weights=None, input_size=None):
    """A Keras model from a ``.keras`` file or a registry name (+ optional checkpoint),
    at ``input_size`` (H, W) when given."""
    return load_model(source, weights, input_size=input_size)


def calibration_images(data, split: str | None, input_size: tuple[int, int], count: int, seed: int = 0,
                       progress: bool | None = False, what: str = "reading calibration images"):
    """``count`` images of ``data`` (a dataset path or ``synthetic[:N]``) through the
    deployment preprocessing (:func:`sinet_tf.inference.resize_to_input`), with their
    labels resized (nearest) to the input size. No augmentation."""
    source = open_source(str(data), split, seed=seed, size=tuple(input_size))
    if count < 1:
        raise ExportError(f"the number of calibration images must be at least 1, got {count}")
    if len(source) < count:
        raise ExportError(f"calibration data {data} (split {split}) has {len(source)} images; "
                          f"{count} were asked (--num-calibration)")
    images, labels = [], []
    with progress_bar(what, count, progress) as advance:
        for i in range(count):
            image, label = source.read(i)
            images.append(resize_to_input(image, input_size))
            labels.append(resize_to_input(label, input_size, nearest=True))
            advance()
    return np.stack(images), np.stack(labels)


def _run_with_previous(runner, x, previous) -> np.ndarray:
    """A float two-input file (image, previous matte) on one image."""
    interpreter = runner.interpreter
    image, prev = sorted(runner.input_details[:2], key=lambda d: -int(d["shape"][-1]))  # RGB first, matte second
    interpreter.set_tensor(image["index"], np.asarray(x, np.float32))
    interpreter.set_tensor(prev["index"], np.asarray(previous, np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(runner.output_details[0]["index"]).astype(np.float32)


def _parity(model, runner, head, images, progress: bool | None = False) -> dict:
    """Keras (same head) against TFLite on the given images. A two-input model (image and
    previous matte, ``temporal="ema"``) also runs the images as a sequence, each with the
    Keras output for the image before as its previous matte, for the output differences;
    its person IoU is scored on the first-frame outputs (previous matte ``NO_HISTORY``),
    which are the per-image mattes."""
    if len(model.inputs) == 2:

        keras_fn = tf.function(lambda x, prev: model([x, prev], training=False))
        start = np.full((1, *model.inputs[1].shape[1:]), NO_HISTORY, np.float32)
        previous, sequence_diffs = start, []
        for x in images:
            y_k = np.asarray(keras_fn(x[None], previous), np.float32)
            sequence_diffs.append(float(np.abs(y_k - _run_with_previous(runner, x[None], previous)).max()))
            previous = y_k

        def fn(x):
            return keras_fn(x, start)

        def lite(x):
            return _run_with_previous(runner, x, start)
    else:
        fn, lite, sequence_diffs = tf.function(lambda x: model(x, training=False)), runner, []
    diffs, pdiffs, p_keras, p_lite = [], [], [], []
    with progress_bar(f"parity with Keras on {len(images)} images", len(images), progress) as advance:
        for x in images:
            y_k = np.asarray(fn(x[None]), dtype=np.float32)
            y_l = lite(x[None])
            diffs.append(float(np.abs(y_k - y_l).max()))
            pk, pl = person_probability_from_output(y_k, head)[0], person_probability_from_output(y_l, head)[0]
            pdiffs.append(float(np.abs(pk - pl).max()))
            p_keras.append(pk)
            p_lite.append(pl)
            advance()
    out = {"n_images": len(images), "max_abs_diff_output": max(diffs + sequence_diffs),
           "max_abs_diff_probability": max(pdiffs + sequence_diffs),
           "mean_abs_diff_probability": float(np.mean([np.abs(a - b).mean() for a, b in zip(p_keras, p_lite)]))}
    return out


def _keras_outputs(model, images, chunk: int = 4, eager_up_to: int = 8) -> list[np.ndarray]:
    """The Keras model's output for each image (inference mode), each ``[1, ...]``. Up to
    ``eager_up_to`` images run eagerly, ``chunk`` per call, through a twin of the model with
    a free batch dimension (sharing its layers): for the four noise images of a parity check
    that is a third of the cost of tracing the model (SINet 96x96 and 224x224: 0.4-0.8 s
    against 1.6-2.5 s, outputs within 5e-6 of the traced ones); more images are traced once
    and run one at a time."""
    if len(images) <= eager_up_to:
        dynamic = model if model.inputs[0].shape[0] is None else with_fixed_batch(model, None)
        out = []
        for i in range(0, len(images), chunk):
            y = np.asarray(dynamic(np.asarray(images[i:i + chunk], np.float32), training=False), np.float32)
            out.extend(y[j:j + 1] for j in range(len(y)))
        return out
    fn = tf.function(lambda x: model(x, training=False), autograph=False)
    return [np.asarray(fn(np.asarray(x, np.float32)[None]), np.float32) for x in images]


def _max_differences(model, runner, head, images) -> dict:
    """Keras (same head) against TFLite on the given model inputs: max |difference| of the
    output and of the person probability, mean |difference| of the probability."""
    diffs, pdiffs, means = [], [], []
    for x, y_k in zip(images, _keras_outputs(model, images)):
        y_l = runner(x[None])
        diffs.append(float(np.abs(y_k - y_l).max()))
        pk, pl = person_probability_from_output(y_k, head)[0], person_probability_from_output(y_l, head)[0]
        pdiffs.append(float(np.abs(pk - pl).max()))
        means.append(float(np.abs(pk - pl).mean()))
    return {"n_images": len(images), "max_abs_diff_output": max(diffs), "max_abs_diff_probability": max(pdiffs),
            "mean_abs_diff_probability": float(np.mean(means))}


def _parity_images(calibration_data, calibration_split, num_calibration, parity_data, parity_split, num_parity,
                   size, seed, held_out: bool):
    """The labelled photos parity is measured on: ``parity_data`` when given; otherwise the
    calibration data's ``parity_split`` (default ``val``), or, where it has no such split,
    the images of the calibration split after the calibration ones. With ``held_out``, images
    of the calibration split itself start after the calibration images."""
    if parity_data is not None:
        same = str(parity_data) == str(calibration_data) and parity_split == calibration_split
        return ParityImages.load(parity_data, parity_split, size, num_parity,
                                 skip=num_calibration if (same and held_out) else 0, seed=seed)
    if calibration_data is None:
        return None
    if parity_split is not None and parity_split != calibration_split:
        try:
            return ParityImages.load(calibration_data, parity_split, size, num_parity, seed=seed)
        except (ValueError, FileNotFoundError):  # no such split: hold out images of the calibration split
            log.info("%s has no %s split; parity on held-out %s images", calibration_data, parity_split,
                     calibration_split)
    return ParityImages.load(calibration_data, calibration_split, size, num_parity,
                             skip=num_calibration if held_out else 0, seed=seed)


def _check_max_drop(max_drop) -> float:
    try:
        value = float(max_drop)
    except (TypeError, ValueError):
        raise ExportError(f"--max-drop {max_drop!r}: expected a number of person IoU between 0 and 1") from None
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ExportError(f"--max-drop {max_drop}: must be between 0 and 1 (person IoU, e.g. 0.01)")
    return value


def _int8_options(int8_ranges: str, equalize) -> tuple[list[str], list[bool]]:
    """The range estimators and equalization settings to try."""
    if int8_ranges in (None, "auto"):
        estimators = list(ESTIMATORS)
    else:
        estimator, fixed = parse_candidate_name(int8_ranges)
        estimators = [estimator]
        if fixed:
            if equalize is False:
                raise ExportError(f"--int8-ranges {int8_ranges} asks for equalization and --no-equalize skips it")
            equalize = True
    if equalize in (None, "auto"):
        settings = [False, True]
    elif isinstance(equalize, bool):
        settings = [equalize]
    else:
        raise ExportError(f"equalize={equalize!r}: expected True, False or 'auto'")
    return estimators, settings


def _calibration_candidates(model, images, io, parity, estimators, settings, folder, say) -> list[Candidate]:
    """Every (estimator, equalization) candidate converted and scored on ``parity``;
    statistics collected once per rewritten model."""
    candidates = []
    names = input_names(model)
    t0 = time.perf_counter()
    # converted and run only, never trained: the rewritten models may share layers with model
    rewritten = int8_friendly_variants(model, [images[:EQUALIZATION_IMAGES] if eq else None for eq in settings],
                                       copy=False)
    say(f"rewritten for int8 ({', '.join('with' if eq else 'without' for eq in settings)} equalization) in "
        f"{time.perf_counter() - t0:.0f} s")
    for equalize, friendly in zip(settings, rewritten):
        t0 = time.perf_counter()
        calibrated = calibrate(friendly, representative_dataset(images), io)
        stats = collect_statistics(calibrated, images) if estimators != ["minmax"] else None
        say(f"calibrated {'with' if equalize else 'without'} equalization in {time.perf_counter() - t0:.0f} s")
        for estimator in estimators:
            t1 = time.perf_counter()
            name = candidate_name(estimator, equalize)
            ranged = calibrated if estimator == "minmax" else write_ranges(
                calibrated, stats.indices, *estimate_ranges(stats, estimator))
            data = quantize_calibrated_model(ranged, io, names)
            contents = inspect_tflite(data, "int8")
            problems = list(contents.problems)
            try:
                _check_io_scale(contents, io)
            except ExportError as e:
                problems.append(str(e))
            try:
                score = score_tflite(parity, data, folder, name)
            except RuntimeError as e:  # e.g. XNNPACK refuses a requantization scale the ranges imply
                score = {"person_iou": None, "drop": None, "mask_distance": None}
                problems.append(f"the file does not run: {str(e).strip().splitlines()[0]}")
            candidate = Candidate(name, data, score, model=friendly, seconds=time.perf_counter() - t1,
                                  problems=problems)
            candidates.append(candidate)
            say(f"  {name:22s} " + (f"person IoU {score['person_iou']:.4f} (drop {score['drop']:+.4f}), "
                                     f"mask distance {score['mask_distance']:.4f}" if score["drop"] is not None
                                     else "not scored") + (f"  [{problems[0]}]" if problems else ""))
    return candidates


def _gate_message(chosen: Candidate, parity: ParityImages, max_drop: float, worst, tried: int) -> str:
    layers = "; ".join(e.describe() for e in worst) or "none measurable"
    return (f"int8 loses {chosen.score['drop']:.4f} person IoU on {parity.description} (Keras "
            f"{parity.reference_iou:.4f}, int8 {chosen.score['person_iou']:.4f}; --max-drop {max_drop:g}) with the "
            f"best of {tried} calibration{'s' if tried != 1 else ''} ({chosen.name}). The layers that lose most: "
            f"{layers}. Fine-tune with quantization-aware training (--qat-epochs N --data SRC), or write the file "
            f"anyway with --allow-drop")


def export_tflite(source, output, weights=None, quantize: str = "none", io: str = "float32",
                  head: str = "logits", calibration_data=None, calibration_split: str | None = "train",
                  num_calibration: int = 200, parity_data=None, parity_split: str | None = "val",
                  num_parity: int = 50, metadata: bool = False, input_size=None, seed: int = 0,
                  int8_ranges: str = "auto", equalize="auto", max_drop: float = DEFAULT_MAX_DROP,
                  allow_drop: bool = False, qat=None, temporal: str = "none", temporal_strength: float | None = None,
                  refine: str = "none", refine_radius: int | None = None, refine_eps: float | None = None,
                  refine_subsample: int | None = None, progress: bool | None = False, log=None) -> ExportReport:
    """Export ``source`` (a Keras model, ``.keras`` file, or registry name + ``weights``)
    to ``output`` (``.tflite``) and write ``<output>.json`` beside it.

    int8: the model is first rewritten for int8 (:func:`sinet_tf.export.rewrite.int8_friendly`),
    then every calibration candidate (range estimator ``int8_ranges``, ``"auto"``: all of
    :data:`sinet_tf.export.calibration.ESTIMATORS`; per-channel range equalization
    ``equalize``: True, False or ``"auto"``: both) is converted and scored on held-out
    labelled photos (``parity_data``, default the calibration data's ``parity_split``, or the
    calibration split's images after the calibration ones) as ``sinet evaluate`` scores,
    and the best one is kept (:mod:`sinet_tf.export.calibration`). The gate: when even that
    one loses more than ``max_drop`` person IoU, :class:`Int8GateError` names the layers
    that lose most (nothing is written) unless ``allow_drop``; with ``qat``
    (:class:`sinet_tf.export.qat.QATSettings`: data, epochs and the model's recipe), the
    model is then fine-tuned with quantization-aware training (:mod:`sinet_tf.export.qat`),
    the file converted with the learned ranges scored the same way, and the gate applies to
    the better of the two.

    Other modes: parity with the Keras model on ``parity_data`` (default: the calibration
    data, as above; without either, seeded uniform noise): max |difference| of the output and
    of the person probability, and person IoU of both when labels exist. ``log``: a function
    that takes one line of progress (default: none).

    ``refine="guided"`` puts the guided filter (:class:`sinet_tf.postprocess.layers.GuidedFilter`,
    ``refine_radius``, ``refine_eps``, coefficients on ``refine_subsample`` (default 2)
    square blocks, the input image as guide) on the ``mask`` head;
    ``temporal="ema"`` then adds a second input, the previous matte, and returns the gated
    EMA (:class:`sinet_tf.postprocess.layers.GatedEMA`, ``temporal_strength``) of the
    (refined) probability against it: feed each output back, and -1 everywhere for a
    video's first frame. Both need the ``mask`` head and float arithmetic (not int8).

    The two files are one commit: both are first written completely under temporary names
    (a full disk or a kill then leaves the earlier pair untouched); then ``OUT.json``, which
    records the ``sha256`` of the new ``OUT.tflite``, is renamed into place, and the
    ``.tflite``'s rename is the commit. A reader therefore never finds a new ``.tflite`` beside
    an old or missing report; the one state in between (new report, earlier model) is told
    apart by the hash, which :func:`read_export_report` checks. ``progress`` shows bars on
    stderr (``None``: when it is a terminal).
    """
    say = log or (lambda text: None)
    output = Path(output)
    if output.suffix != ".tflite":
        raise ExportError(f"{output}: the output must be a .tflite file")
    if quantize not in QUANTIZE_MODES:
        raise ExportError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZE_MODES)}")
    if quantize == "int8" and calibration_data is None:
        raise ExportError("int8 quantization needs calibration images: give --calibration-data SRC "
                          "(a dataset folder/list file, or synthetic[:N])")
    if io != "float32" and quantize != "int8":
        raise ExportError(f"--io {io} needs --quantize int8; a {quantize} model takes and returns float32")
    if head not in OUTPUT_HEADS:
        raise ExportError(f"unknown output head {head!r}; choose one of {', '.join(OUTPUT_HEADS)}")
    _check_postprocess(head, quantize, metadata, temporal, refine, temporal_strength, refine_radius, refine_eps)
    max_drop = _check_max_drop(max_drop)
    estimators, settings = _int8_options(int8_ranges, equalize)
    if qat is not None:
        if quantize != "int8":
            raise ExportError(f"--qat-epochs fine-tunes for int8; it needs --quantize int8, not {quantize}")
        qat.check()
    if isinstance(source, (str, os.PathLike)):
        keras_model = load_export_source(source, weights, input_size=input_size)
    else:
        keras_model = source
    base = with_fixed_batch(keras_model, 1)
    model = with_output_head(base, head)
    model, postprocess = _with_postprocess(model, temporal, temporal_strength, refine, refine_radius, refine_eps,
                                           refine_subsample)
    size = tuple(int(d) for d in model.inputs[0].shape[1:3])
    images = None
    if calibration_data is not None:
        images, _ = calibration_images(calibration_data, calibration_split, size, num_calibration, seed,
                                       progress=progress)
    parity_set = _parity_images(calibration_data, calibration_split, num_calibration, parity_data, parity_split,
                                num_parity, size, seed, held_out=quantize == "int8")
    extra = {"keras_outputs": [model.output_names[0]], "num_calibration": 0 if images is None else len(images)}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sinet_export_") as tmp:
        if parity_set is not None:
            score_keras(parity_set, base)
        if quantize == "int8":
            say(f"int8: trying {len(estimators) * len(settings)} calibration(s) on {len(images)} calibration images, "
                f"parity on {parity_set.description} (Keras person IoU {parity_set.reference_iou:.4f})")
            candidates = _calibration_candidates(model, images, io, parity_set, estimators, settings, Path(tmp), say)
            ranked = rank(candidates, max_drop)
            chosen = ranked[0]
            if chosen.problems:
                raise ExportError(f"{output}: the converted model breaks the export rules:\n  - "
                                  + "\n  - ".join(chosen.problems))
            info = {"chosen": chosen.name, "max_drop": max_drop, "parity_images": parity_set.description,
                    "person_iou_keras": round(parity_set.reference_iou, 5),
                    "candidates": [c.to_dict() for c in candidates], "qat": None}
            if chosen.score["drop"] > max_drop and qat is not None:

                say(f"best post-training calibration {chosen.name} loses {chosen.score['drop']:.4f} > {max_drop:g}: "
                    f"quantization-aware fine-tuning for {qat.epochs} epoch(s)")
                done = quantization_aware_export(with_output_head(base, "logits"), qat, images, io, head=head,
                                                 equalize=chosen.name.endswith("+equalize"),
                                                 equalization_images=images[:EQUALIZATION_IMAGES], log=say)
                qat_candidate = Candidate("qat", done.data, score_tflite(parity_set, done.data, Path(tmp), "qat"),
                                          model=done.model, seconds=done.seconds)
                score = qat_candidate.score
                say(f"  {'qat':22s} person IoU {score['person_iou']:.4f} (drop {score['drop']:+.4f}), "
                    f"mask distance {score['mask_distance']:.4f}")
                info["qat"] = {**done.summary, **qat_candidate.to_dict()}
                info["candidates"].append(qat_candidate.to_dict())
                if qat_candidate.score["drop"] < chosen.score["drop"]:
                    chosen = qat_candidate
                    info["chosen"] = "qat"
            if chosen.score["drop"] > max_drop:

                worst = worst_layers(layer_errors(chosen.model, chosen.data, parity_set.inputs[:4]))
                info["worst_layers"] = [e.to_dict() for e in worst]
                message = _gate_message(chosen, parity_set, max_drop, worst, len(info["candidates"]))
                if not allow_drop:
                    raise Int8GateError(message, info)
                say(f"warning: {message.split('. Fine-tune')[0]} (--allow-drop: written anyway)")
                info["gate"] = "failed, written with --allow-drop"
            else:
                info["gate"] = "passed"
            data = chosen.data
            extra["int8"] = info
        else:
            with progress_bar(f"converting to {quantize if quantize != 'none' else 'float32'} .tflite", None,
                              progress):
                # float32 / fp16 / dynamic: the float pass list (sinet_tf.export.rewrite), same function
                data = convert(float_friendly(model, copy=False), quantize, io)
        seconds = time.perf_counter() - t0
        contents = inspect_tflite(data, quantize)
        if contents.problems:
            raise ExportError(f"{output}: the converted model breaks the export rules:\n  - "
                              + "\n  - ".join(contents.problems))
        _check_io_scale(contents, io)

        runner = TFLiteRunner(data)
        if len(model.inputs) == 2:  # image + previous matte (temporal="ema"): no single-image scoring
            p_inputs = parity_set.inputs if parity_set is not None else \
                np.random.default_rng(seed).uniform(0, 255, (4, *size, 3)).astype(np.float32)
            what = parity_set.description if parity_set is not None else "seeded uniform-noise inputs in [0, 255]"
            parity = {"images": what, **_parity(model, runner, head, p_inputs, progress=progress)}
        elif parity_set is not None:
            p_inputs, what = parity_set.inputs, parity_set.description
            score = (chosen.score if quantize == "int8" else
                     score_tflite(parity_set, data, Path(tmp), "export"))
            ious = {"person_iou_keras": round(parity_set.reference_iou, 5),
                    "person_iou_tflite": score["person_iou"],
                    "person_iou_difference": round(score["person_iou"] - parity_set.reference_iou, 5),
                    "mask_distance": score["mask_distance"]}
        else:
            p_inputs = np.random.default_rng(seed).uniform(0, 255, (4, *size, 3)).astype(np.float32)
            what, ious = "seeded uniform-noise inputs in [0, 255]", {}
        if len(model.inputs) != 2:
            parity = {"images": what, **_max_differences(model, runner, head, p_inputs), **ious}
    gpu = check_gpu_compatibility(data)
    if postprocess:
        extra["postprocess"] = postprocess

    if metadata:
        labels_names = ["background", "person"] if model.outputs[0].shape[-1] in (1, 2) else [
            f"class_{i}" for i in range(int(model.outputs[0].shape[-1]))]
        if head == "mask":
            labels_names = ["person"]
        activation = "none" if head != "logits" else ("sigmoid" if model.outputs[0].shape[-1] == 1 else "softmax")
        data, metadata_json = add_segmenter_metadata(data, labels=labels_names, activation=activation)
        extra["metadata"] = json.loads(metadata_json)
    extra["sha256"] = hashlib.sha256(data).hexdigest()
    report = ExportReport(
        output=str(output), model=model.name, quantize=quantize, io=io, head=head, size_bytes=len(data),
        ops=contents.op_counts(), inputs=contents.inputs, outputs=contents.outputs, parity=parity,
        convert_seconds=seconds, gpu=gpu, extra=extra)
    _write_pair(data, json.dumps(report.to_dict(), indent=2).encode(), output)
    return report


def _write_pair(model_bytes: bytes, report_bytes: bytes, output: Path):
    """Both files complete under temporary names, then the report's rename, then the
    model's: the commit (see :func:`export_tflite`)."""
    with contextlib.ExitStack() as stack:
        # atomic_path renames when its block ends; the stack ends the last one entered first
        tmp_model = stack.enter_context(atomic_path(output))
        tmp_report = stack.enter_context(atomic_path(output.with_suffix(".json")))
        tmp_model.write_bytes(model_bytes)
        tmp_report.write_bytes(report_bytes)


def read_export_report(tflite_path) -> dict:
    """The ``OUT.json`` report of ``OUT.tflite``, checked to describe this very file (its
    ``sha256``); an export interrupted between its two renames, or a report of another
    export, raises :class:`ExportError`."""
    path = Path(tflite_path)
    report_path = path.with_suffix(".json")
    if not report_path.is_file():
        raise ExportError(f"{path}: no export report {report_path.name} beside it")
    try:
        report = json.loads(report_path.read_text())
    except ValueError as e:
        raise ExportError(f"{report_path}: not a readable export report ({e})") from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if report.get("sha256") != digest:
        raise ExportError(f"{report_path} describes another version of {path.name} (sha256 differs): the export "
                          "was interrupted or the files were mixed; export again")
    return report


EXPORT_TEMPORAL = ("none", "ema")
EXPORT_REFINE = ("none", "guided")


def _check_postprocess(head, quantize, metadata, temporal, refine, strength, radius, eps) -> None:

    if strength is not None:
        check_strength(strength)
    if radius is not None or eps is not None:
        check_refine(1 if radius is None else radius, 1.0 if eps is None else eps)
    if temporal not in EXPORT_TEMPORAL:
        extra = " (flow needs the optical flow between frames, which the model does not compute)" \
            if temporal == "flow" else ""
        raise ExportError(f"--temporal {temporal!r}: an exported model can carry {', '.join(EXPORT_TEMPORAL)}{extra}")
    if refine not in EXPORT_REFINE:
        raise ExportError(f"--refine {refine!r}: choose one of {', '.join(EXPORT_REFINE)}")
    if temporal == "none" and refine == "none":
        return
    flags = " and ".join(f for f, v in (("--temporal", temporal), ("--refine", refine)) if v != "none")
    if head != "mask":
        raise ExportError(f"{flags}: the post-processing works on the person probability: export with --head mask "
                          f"(not {head})")
    if quantize == "int8":
        raise ExportError(f"{flags}: the post-processing needs float arithmetic (the guided filter's variances and "
                          "the matte feedback lose too much in int8): use --quantize none, fp16 or dynamic")
    if metadata and temporal != "none":
        raise ExportError("--metadata describes a one-input image segmenter; MediaPipe's ImageSegmenter cannot feed "
                          "the previous matte of a --temporal model")


def _with_postprocess(model, temporal, strength, refine, radius, eps, subsample):
    """``model`` with the asked post-processing layers, and what they are (for the report)."""
    info = {}
    if refine == "guided":
        radius = refine_mod.DEFAULT_RADIUS if radius is None else radius
        eps = refine_mod.DEFAULT_EPS if eps is None else eps
        subsample = refine_mod.DEFAULT_EXPORT_SUBSAMPLE if subsample is None else subsample
        try:
            model = layers.with_guided_refinement(model, radius, eps, subsample)
        except ValueError as e:
            raise ExportError(str(e)) from None
        info["refine"] = {"mode": "guided", "radius": int(radius), "eps": float(eps), "subsample": int(subsample)}
    if temporal == "ema":
        strength = temporal_mod.DEFAULT_STRENGTH if strength is None else strength
        model = layers.with_temporal_input(model, strength)
        info["temporal"] = {"mode": "ema", "strength": float(strength), "second_input": "previous_matte",
                            "first_frame_previous": temporal_mod.NO_HISTORY}
    return model, info


def _check_io_scale(contents, io: str) -> None:
    """uint8/int8 inputs must carry pixels as they are (scale 1), so a phone feeds camera bytes."""
    if io == "float32":
        return
    d = contents.inputs[0]
    want = 0 if io == "uint8" else -128
    if d["scale"] is None or abs(d["scale"] - 1.0) > 1e-6 or d["zero_point"] != want:
        raise ExportError(f"the {io} input was calibrated to scale {d['scale']}, zero point {d['zero_point']}; "
                          f"expected 1.0 and {want} (pixels as they are)")
