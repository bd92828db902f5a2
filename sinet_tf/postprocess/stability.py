"""Synthetic videos with known camera motion, and how much a matte flickers in them.

A still photo and its person mask become a video by moving a virtual camera over the
photo: frame ``t`` shows the photo through a window whose zoom, rotation and centre follow
smooth random curves (:func:`camera_path`), with per-frame sensor noise and exposure
jitter added to the pixels. Frame ``t``'s pixel ``p`` (``x, y``) shows the photo's point

    ``q = B_t [p; 1]``,   ``B_t = [R(theta_t) / s_t | c_t - R(theta_t) / s_t * c_f]``

(``s_t`` zoom, ``theta_t`` rotation, ``c_t`` the window's centre in the photo, ``c_f`` the
frame's centre), so the ground truth of every frame is the photo's mask sampled at
``B_t [p; 1]`` (nearest neighbour: :func:`warp_labels`), and the motion between two
frames is known exactly: frame ``t``'s pixel ``p`` shows what frame ``t-1`` showed at
``B_{t-1}^{-1} B_t [p; 1]`` (:func:`frame_to_frame`).

Temporal instability (:func:`instability`) is the change of a predicted matte between
frames that this known motion does not explain: frame ``t-1``'s matte is warped into frame
``t`` (bilinear) and compared with frame ``t``'s, over the pixels that both frames see:
the mean absolute difference of the mattes and the fraction of pixels whose mask
(matte > 0.5) flips.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["CameraPath", "SyntheticVideo", "camera_path", "frame_to_frame", "instability", "photo_to_video",
           "sample_map", "warp_labels"]


@dataclass(frozen=True)
class CameraPath:
    """Per-frame camera parameters: ``zoom`` (>= 1: the window is smaller than the photo),
    ``angle`` (radians), ``centre`` ``[T, 2]`` (x, y of the window's centre in the photo)."""

    zoom: np.ndarray
    angle: np.ndarray
    centre: np.ndarray

    def __len__(self) -> int:
        return len(self.zoom)

    def frame_to_photo(self, t: int, frame_size: tuple[int, int]) -> np.ndarray:
        """``B_t`` (2x3, float64): frame pixel ``(x, y, 1)`` -> photo point ``(x, y)``."""
        h, w = frame_size
        s, a = float(self.zoom[t]), float(self.angle[t])
        r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / s
        cf = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        return np.concatenate([r, (self.centre[t] - r @ cf)[:, None]], axis=1)


def _smooth_curve(rng: np.random.Generator, n: int, periods=(40.0, 160.0), waves: int = 3) -> np.ndarray:
    """A smooth curve in [-1, 1]: a sum of ``waves`` sinusoids with random periods (in frames)
    and phases, scaled by its largest possible value."""
    t = np.arange(n, dtype=np.float64)
    amp = rng.uniform(0.5, 1.0, waves)
    period = rng.uniform(*periods, waves)
    phase = rng.uniform(0, 2 * np.pi, waves)
    return (amp[:, None] * np.sin(2 * np.pi * t[None] / period[:, None] + phase[:, None])).sum(0) / amp.sum()


def camera_path(n_frames: int, photo_size: tuple[int, int], seed: int, zoom=(1.12, 1.35),
                max_angle_deg: float = 3.0) -> CameraPath:
    """A smooth random camera path over a photo of ``photo_size`` ``(h, w)``, shown in frames
    of the same size: zoom in ``zoom``, rotation within +-``max_angle_deg``, and a pan that
    keeps the rotated window inside the photo where the zoom leaves room (so every frame
    pixel shows the photo; at photos more than about twice as wide as tall a corner may
    leave it, and frames then repeat the photo's edge pixels)."""
    if n_frames < 1:
        raise ValueError(f"a video needs at least one frame, got {n_frames}")
    rng = np.random.default_rng(seed)
    h, w = photo_size
    s = zoom[0] + (zoom[1] - zoom[0]) * (0.5 + 0.5 * _smooth_curve(rng, n_frames))
    a = np.radians(max_angle_deg) * _smooth_curve(rng, n_frames)
    ca, sa = np.abs(np.cos(a)), np.abs(np.sin(a))
    # half extent of the rotated window in the photo; what is left is the room to pan
    room_x = np.maximum(0.0, (w - 1) / 2.0 - ((w - 1) / 2.0 * ca + (h - 1) / 2.0 * sa) / s)
    room_y = np.maximum(0.0, (h - 1) / 2.0 - ((w - 1) / 2.0 * sa + (h - 1) / 2.0 * ca) / s)
    cx = (w - 1) / 2.0 + room_x * _smooth_curve(rng, n_frames)
    cy = (h - 1) / 2.0 + room_y * _smooth_curve(rng, n_frames)
    return CameraPath(zoom=s, angle=a, centre=np.stack([cx, cy], axis=1))


def sample_map(b: np.ndarray, frame_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For every pixel ``(x, y)`` of a frame of ``frame_size`` ``(h, w)``, the point
    ``b [x, y, 1]`` (float64 maps ``[h, w]``, x then y)."""
    h, w = frame_size
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return b[0, 0] * x + b[0, 1] * y + b[0, 2], b[1, 0] * x + b[1, 1] * y + b[1, 2]


def warp_labels(labels: np.ndarray, b: np.ndarray, frame_size: tuple[int, int]) -> np.ndarray:
    """``labels`` (an integer map) sampled at ``b [x, y, 1]`` for every frame pixel, nearest
    neighbour (coordinates rounded half up, clamped to the map): a frame's ground truth."""
    mx, my = sample_map(b, frame_size)
    h, w = labels.shape[:2]
    xi = np.clip(np.floor(mx + 0.5), 0, w - 1).astype(np.intp)
    yi = np.clip(np.floor(my + 0.5), 0, h - 1).astype(np.intp)
    return labels[yi, xi]


def _warp_linear(image: np.ndarray, mx: np.ndarray, my: np.ndarray, border=cv2.BORDER_REPLICATE) -> np.ndarray:
    return cv2.remap(image, mx.astype(np.float32), my.astype(np.float32), cv2.INTER_LINEAR, borderMode=border)


@dataclass
class SyntheticVideo:
    """Frames (uint8 RGB), their ground-truth label maps and the camera path."""

    frames: list
    labels: list
    path: CameraPath
    frame_size: tuple[int, int]

    def frame_to_photo(self, t: int) -> np.ndarray:
        return self.path.frame_to_photo(t, self.frame_size)


def photo_to_video(image: np.ndarray, labels: np.ndarray, n_frames: int, seed: int, noise_sigma: float = 4.0,
                   exposure_jitter: float = 0.04, **path_kw) -> SyntheticVideo:
    """A video of ``n_frames`` frames (the photo's size) of ``image`` (uint8 RGB) seen by the
    camera of :func:`camera_path`; each frame's pixels get an exposure gain ``1 + g``
    (``g`` uniform in +-``exposure_jitter``, new every frame) and Gaussian sensor noise of
    ``noise_sigma`` grey levels, then are rounded to uint8. ``labels[t]`` is ``labels``
    warped to frame ``t`` (:func:`warp_labels`). Deterministic in ``seed``."""
    if image.shape[:2] != labels.shape[:2]:
        raise ValueError(f"photo {image.shape[:2]} and labels {labels.shape[:2]} differ in size")
    size = image.shape[:2]
    path = camera_path(n_frames, size, seed, **path_kw)
    rng = np.random.default_rng([seed, 1])
    frames, truth = [], []
    for t in range(n_frames):
        b = path.frame_to_photo(t, size)
        clean = _warp_linear(image, *sample_map(b, size)).astype(np.float32)
        gain = 1.0 + rng.uniform(-exposure_jitter, exposure_jitter)
        noisy = clean * gain + rng.normal(0.0, noise_sigma, clean.shape)
        frames.append(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))
        truth.append(warp_labels(labels, b, size))
    return SyntheticVideo(frames, truth, path, size)


def frame_to_frame(video: SyntheticVideo, t: int) -> np.ndarray:
    """2x3 map from frame ``t``'s pixels to frame ``t-1``'s: ``B_{t-1}^{-1} B_t``."""
    def full(b):
        return np.vstack([b, [0.0, 0.0, 1.0]])

    return (np.linalg.inv(full(video.frame_to_photo(t - 1))) @ full(video.frame_to_photo(t)))[:2]


def instability(video: SyntheticVideo, mattes, threshold: float = 0.5) -> dict:
    """How much ``mattes`` (one float ``[h, w]`` per frame, in [0, 1]) change between frames
    beyond the known camera motion: for every ``t >= 1``, frame ``t-1``'s matte warped to
    frame ``t`` (bilinear) against frame ``t``'s, on the pixels whose source lies inside
    frame ``t-1``. Returns ``mean_abs_diff`` (mean over frames of the mean |difference|)
    and ``flip_rate`` (mean over frames of the fraction of pixels where ``matte >
    threshold`` differs); NaN for a single frame."""
    h, w = video.frame_size
    mads, flips = [], []
    for t in range(1, len(mattes)):
        mx, my = sample_map(frame_to_frame(video, t), (h, w))
        valid = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
        warped = _warp_linear(np.asarray(mattes[t - 1], np.float32), mx, my)
        cur = np.asarray(mattes[t], np.float32)
        mads.append(float(np.abs(cur - warped)[valid].mean()))
        flips.append(float(((cur > threshold) != (warped > threshold))[valid].mean()))
    if not mads:
        return {"mean_abs_diff": float("nan"), "flip_rate": float("nan")}
    return {"mean_abs_diff": float(np.mean(mads)), "flip_rate": float(np.mean(flips))}
