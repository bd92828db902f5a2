"""``sinet predict``: masks, mattes and composites for photos, folders, videos and webcams.

Inputs (:func:`expand_inputs`): image files, folders (their top-level images and videos,
not sub-folders), video files (``.mp4 .avi .mov .mkv .webm``, read with
``cv2.VideoCapture``) and a webcam index (``"0"``). Photos are read upright
(:func:`sinet_tf.files.read_rgb` applies the EXIF orientation).

Outputs in the output folder, each written to a temporary file and renamed:

* photo ``<stem>.jpg``: ``<stem>_mask.png`` (0 / 255), ``<stem>_matte.png`` (the soft person
  probability, 0..255) and, with a background, ``<stem>_composite.jpg``;
* video or webcam: ``<stem>_mask.mp4`` and, with a background, ``<stem>_composite.mp4``,
  at the input's frame rate and with its frame count (``mp4v``; the audio track is not
  carried over).

Composites blend with the soft matte: ``matte * photo + (1 - matte) * background``, where
the background (:func:`parse_background`) is the photo blurred, a colour, or an image
scaled to cover the frame.

Every frame goes through :class:`sinet_tf.postprocess.MattePipeline`: the model, then for
videos and webcams temporal smoothing (``temporal``: ``none``, ``ema`` or ``flow``, default
:data:`~sinet_tf.postprocess.DEFAULT_TEMPORAL`, see :mod:`sinet_tf.postprocess.temporal`),
then the probability back at the frame's size, with edge refinement guided by the photo
(``refine``: ``guided``, the default, or ``none``; :mod:`sinet_tf.postprocess.refine`).
A video whose frames change size is an error naming the file and the frame.
"""

from __future__ import annotations

import contextlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from sinet_tf.files import IMAGE_SUFFIXES, atomic_path, read_rgb, write_image_atomic
from sinet_tf.postprocess import (DEFAULT_EPS, DEFAULT_RADIUS, DEFAULT_STRENGTH, DEFAULT_TEMPORAL, REFINE_MODES,
                                  TEMPORAL_MODES, MattePipeline, MattePostprocessor)

__all__ = ["DEFAULT_REFINE", "VIDEO_SUFFIXES", "InputsFailed", "PredictInput", "check_threshold", "expand_inputs",
           "parse_background", "composite", "predict", "postprocessors"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
DEFAULT_REFINE = "guided"
_FALLBACK_FPS = 30.0


@dataclass(frozen=True)
class PredictInput:
    """One thing to segment: ``kind`` is ``"image"``, ``"video"`` or ``"webcam"``;
    ``source`` the file, or the webcam index; ``stem`` names the outputs."""

    kind: str
    source: Path | int
    stem: str

    def __str__(self) -> str:
        return f"webcam {self.source}" if self.kind == "webcam" else str(self.source)


def _classify(path: Path) -> PredictInput:
    kind = "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"
    return PredictInput(kind, path, path.stem)


def expand_inputs(items) -> list[PredictInput]:
    """Files, folders (top level only: their images and videos, sorted by name) and webcam
    indices (a whole number that is not an existing file) as :class:`PredictInput`s."""
    inputs = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                           and f.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
            if not found:
                raise ValueError(f"{p}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)}) or videos "
                                 f"({', '.join(VIDEO_SUFFIXES)}); sub-folders are not searched")
            inputs.extend(_classify(f) for f in found)
        elif p.is_file():
            inputs.append(_classify(p))
        elif str(item).isdigit():
            inputs.append(PredictInput("webcam", int(item), f"webcam{int(item)}"))
        else:
            raise FileNotFoundError(f"input not found: {p}")
    by_stem: dict[str, PredictInput] = {}
    for x in inputs:
        if x.stem in by_stem:
            raise ValueError(f"{by_stem[x.stem]} and {x} would both write {x.stem}_*: "
                             "predict them into different output folders")
        by_stem[x.stem] = x
    return inputs


# --------------------------------------------------------------------------- backgrounds

_COLOUR = re.compile(r"#?([0-9a-fA-F]{6})")


def _blurred(image: np.ndarray) -> np.ndarray:
    """A strong, size-independent blur: downscale to at most 256 px, Gaussian, upscale."""
    h, w = image.shape[:2]
    s = min(1.0, 256 / max(h, w))
    small = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=max(small.shape[:2]) / 30)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _cover(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """``image`` scaled to cover ``h x w`` (aspect ratio kept) and centre-cropped."""
    ih, iw = image.shape[:2]
    s = max(h / ih, w / iw)
    nh, nw = max(h, round(ih * s)), max(w, round(iw * s))
    scaled = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    top, left = (nh - h) // 2, (nw - w) // 2
    return scaled[top:top + h, left:left + w]


def parse_background(spec: str | None) -> Callable[[np.ndarray], np.ndarray] | None:
    """``--background``: ``blur`` (the photo itself, blurred), a colour ``#RRGGBB`` (the ``#``
    may be left out, since a shell takes an unquoted ``#...`` for a comment), or an image
    file (scaled to cover the frame). Returns ``photo -> background`` (uint8 RGB, the
    photo's size), or None when ``spec`` is None."""
    if spec is None:
        return None
    if spec == "blur":
        return _blurred
    path = Path(spec)
    if path.is_file():
        picture = read_rgb(path)
        cache: dict[tuple[int, int], np.ndarray] = {}

        def covered(image):
            key = image.shape[:2]
            if key not in cache:
                cache[key] = _cover(picture, *key)
            return cache[key]

        return covered
    m = _COLOUR.fullmatch(spec)
    if m:
        rgb = np.array([int(m.group(1)[i:i + 2], 16) for i in (0, 2, 4)], np.uint8)
        return lambda image: np.broadcast_to(rgb, image.shape)
    raise ValueError(f"--background {spec!r}: expected blur, a colour #RRGGBB, or an image file "
                     "(no such file)")


def composite(image: np.ndarray, probability: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``probability * image + (1 - probability) * background``, uint8 RGB."""
    a = np.clip(probability, 0.0, 1.0)[..., None]
    out = a * image.astype(np.float32) + (1.0 - a) * background.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- photos


def _predict_image(pipeline, item: PredictInput, out_dir: Path, threshold: float, background) -> list[Path]:
    try:
        image = read_rgb(item.source)
    except OSError as e:   # e.g. no read permission: a problem of this input, not of the run
        raise ValueError(f"{item.source}: cannot read it ({e.strerror or e})") from None
    prob = pipeline(image)
    mask = (prob > threshold).astype(np.uint8)
    written = [write_image_atomic(mask * 255, out_dir / f"{item.stem}_mask.png"),
               write_image_atomic(np.clip(np.rint(prob * 255), 0, 255).astype(np.uint8),
                                  out_dir / f"{item.stem}_matte.png")]
    if background is not None:
        written.append(write_image_atomic(composite(image, prob, background(image)),
                                          out_dir / f"{item.stem}_composite.jpg"))
    print(f"{item} -> {', '.join(p.name for p in written)} in {out_dir} (person pixels: {mask.mean():.1%})")
    return written


# --------------------------------------------------------------------------- videos


@contextlib.contextmanager
def _quiet_opencv():
    """OpenCV logs its own warnings when a camera index is not there; the error says it."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:
        yield
        return
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(level)


def _open_capture(item: PredictInput) -> cv2.VideoCapture:
    if item.kind == "webcam":
        with _quiet_opencv():
            cap = cv2.VideoCapture(item.source)
        if not cap.isOpened():
            raise ValueError(f"webcam {item.source} could not be opened (no such camera, or it is in use)")
        return cap
    cap = cv2.VideoCapture(str(item.source))
    if not cap.isOpened():
        raise ValueError(f"could not read video {item.source}: OpenCV cannot open it "
                         "(corrupt, truncated, not a video, or a codec FFmpeg lacks)")
    return cap


def _video_writer(path: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size, True)
    if not writer.isOpened():
        raise ValueError(f"{path}: OpenCV cannot write an mp4v video here")
    return writer


def _predict_video(pipeline, item: PredictInput, out_dir: Path, threshold: float, background,
                   max_frames: int | None) -> list[Path]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    cap = _open_capture(item)
    pipeline.reset()
    try:
        ok, frame = cap.read()
        if not ok or frame is None:
            if item.kind == "webcam":
                raise ValueError(f"webcam {item.source} could not be opened (it returned no frame)")
            raise ValueError(f"could not read video {item.source}: no frame could be decoded")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not np.isfinite(fps) or fps <= 0:
            print(f"{item}: the frame rate is unknown; writing {_FALLBACK_FPS:g} fps")
            fps = _FALLBACK_FPS
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if item.kind == "video" else 0
        total = min(count, max_frames) if (count > 0 and max_frames) else (count or max_frames or None)
        h, w = frame.shape[:2]
        targets = [out_dir / f"{item.stem}_mask.mp4"]
        if background is not None:
            targets.append(out_dir / f"{item.stem}_composite.mp4")
        if item.kind == "webcam" and not max_frames:
            print(f"webcam {item.source}: recording until Ctrl-C (or give --frames N)")
        n = 0
        with contextlib.ExitStack() as stack:
            tmps = [stack.enter_context(atomic_path(t, suffix=".mp4")) for t in targets]
            writers = [_video_writer(t, fps, (w, h)) for t in tmps]
            try:
                with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeRemainingColumn()) as progress:
                    task = progress.add_task(f"segmenting {item}", total=total)
                    try:
                        while ok and (not max_frames or n < max_frames):
                            if frame.shape[:2] != (h, w):
                                raise ValueError(
                                    f"{item}: frame {n} (counting from 0) is {frame.shape[1]}x{frame.shape[0]}, "
                                    f"but the video started at {w}x{h}; videos whose frames change size are not "
                                    f"supported (re-encode it at one size: ffmpeg -i IN -vf scale={w}:{h} OUT.mp4)")
                            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                            prob = pipeline(rgb)
                            writers[0].write(np.repeat(((prob > threshold) * 255).astype(np.uint8)[..., None], 3, -1))
                            if background is not None:
                                writers[1].write(cv2.cvtColor(composite(rgb, prob, background(rgb)),
                                                              cv2.COLOR_RGB2BGR))
                            n += 1
                            progress.advance(task)
                            ok, frame = cap.read()
                    except KeyboardInterrupt:
                        if item.kind != "webcam":
                            raise
                        print(f"webcam {item.source}: stopped after {n} frames")
            finally:
                for writer in writers:
                    writer.release()
    finally:
        cap.release()
    if item.kind == "video" and count > 0 and n < min(count, max_frames or count) - 1:
        print(f"{item}: warning: the file announces {count} frames but only {n} could be decoded")
    post = pipeline.post
    smoothing = "no temporal smoothing" if post.temporal == "none" else \
        f"temporal {post.temporal} {post.smoother.strength:g}"
    print(f"{item} -> {', '.join(p.name for p in targets)} in {out_dir} ({n} frames at {fps:g} fps, "
          f"{w}x{h}; {smoothing}, refine {post.refine}; audio is not carried over)")
    return targets


# --------------------------------------------------------------------------- entry point


class InputsFailed(ValueError):
    """Some inputs could not be segmented (the others were): ``failed`` holds ``(input,
    message)`` pairs, ``total`` the number of inputs."""

    def __init__(self, failed: list[tuple[PredictInput, str]], total: int):
        self.failed, self.total = failed, total
        if len(failed) == 1 and total == 1:
            text = failed[0][1]
        else:
            text = (f"{len(failed)} of {total} inputs failed: "
                    + "; ".join(f"{item}: {message}" for item, message in failed))
        super().__init__(text)


def check_threshold(threshold: float) -> float:
    """A person-probability threshold strictly between 0 and 1 (at 0 or 1 and beyond, the
    mask is all person or empty whatever the photo)."""
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"--threshold {threshold:g}: expected a probability strictly between 0 and 1 "
                         "(default 0.5)")
    return float(threshold)


def postprocessors(temporal: str = DEFAULT_TEMPORAL, temporal_strength: float = DEFAULT_STRENGTH,
                   refine: str = DEFAULT_REFINE, refine_radius: int = DEFAULT_RADIUS,
                   refine_eps: float = DEFAULT_EPS) -> tuple[MattePostprocessor, MattePostprocessor]:
    """The post-processing for photos (no temporal smoothing) and for videos, validated:
    a bad value is a one-line ``ValueError`` naming the flag and the value."""
    if temporal not in TEMPORAL_MODES:
        raise ValueError(f"--temporal {temporal!r}: choose one of {', '.join(TEMPORAL_MODES)}")
    if refine not in REFINE_MODES:
        raise ValueError(f"--refine {refine!r}: choose one of {', '.join(REFINE_MODES)}")
    video = MattePostprocessor(temporal, temporal_strength, refine, refine_radius, refine_eps)
    return MattePostprocessor("none", 0.0, refine, refine_radius, refine_eps), video


def predict(segmenter, inputs, output, threshold: float = 0.5, background: str | None = None,
            max_frames: int | None = None, temporal: str = DEFAULT_TEMPORAL,
            temporal_strength: float = DEFAULT_STRENGTH, refine: str = DEFAULT_REFINE,
            refine_radius: int = DEFAULT_RADIUS, refine_eps: float = DEFAULT_EPS) -> list[Path]:
    """Segment every input (see the module docstring) with ``segmenter`` (a
    :class:`~sinet_tf.inference.Segmenter`) into the folder ``output``; returns the files
    written. ``max_frames`` stops videos and webcams after that many frames; ``temporal``
    and ``temporal_strength`` smooth videos and webcams over time, ``refine`` (with
    ``refine_radius``, ``refine_eps``) refines edges with the photo as guide
    (:mod:`sinet_tf.postprocess`)."""
    from rich.progress import track

    check_threshold(threshold)
    items = expand_inputs(inputs)
    make_background = parse_background(background)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--frames must be at least 1, got {max_frames}")
    photo_post, video_post = postprocessors(temporal, temporal_strength, refine, refine_radius, refine_eps)
    out_dir = Path(output)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    failed: list[tuple[PredictInput, str]] = []

    def attempt(item, run):
        # a photo or video that cannot be read is reported and skipped; the output folder's
        # errors (permissions, full disk) end the run, as every later input would fail the same way
        try:
            written.extend(run())
        except ValueError as e:
            failed.append((item, str(e)))
            if len(items) > 1:
                print(f"{item}: error: {e}", file=sys.stderr, flush=True)

    images = [x for x in items if x.kind == "image"]
    photo_pipeline = MattePipeline(segmenter, photo_post)
    for item in track(images, description="segmenting photos", disable=len(images) < 2):
        attempt(item, lambda: _predict_image(photo_pipeline, item, out_dir, threshold, make_background))
    video_pipeline = MattePipeline(segmenter, video_post)
    for item in items:
        if item.kind != "image":
            attempt(item, lambda: _predict_video(video_pipeline, item, out_dir, threshold, make_background,
                                                 max_frames))
    if failed:
        raise InputsFailed(failed, len(items))
    return written
