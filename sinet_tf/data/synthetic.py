"""Deterministic, photo-like synthetic head-and-shoulders portraits with exact masks.

This is the project's embedded default dataset (``sinet demo`` and the tests use it), so a
fresh machine needs no download. Every sample is drawn from scratch by
:meth:`SyntheticPortraits.read` and depends only on ``(seed, index, size)``.

How a sample is made
--------------------
* **Person**: torso (optionally separate arms with sleeves and hands), neck with a neckline,
  ears, a head with a jaw line, hair in several styles (bald, short, fringe, bob, long,
  curly/afro, bun), optional hat / glasses / headphones, and facial features (eyes, brows,
  nose shading, mouth, beard) drawn in the image only. Head tilt and turn, shoulder roll,
  horizontal offset and a scale from close-ups to half-body views. Sometimes a second
  person stands behind, partly out of frame (also labelled "person").
* **Rendering**: every person part is a polygon (or stroke) in sub-pixel fixed point. It is
  drawn with ``cv2.LINE_AA`` into a *premultiplied* colour layer and a coverage (alpha)
  layer, and with the same geometry without anti-aliasing into the binary mask, so the mask
  is the exact rasterised union of the parts and the image edges are anti-aliased.
* **Background**: gradients, smooth value noise, indoor clutter, outdoor scenes
  (sky / horizon / foliage), bokeh and studio backdrops, drawn at half resolution,
  defocused, sometimes in colours close to the person's skin or clothes.
* **Photographic look**: directional light and form shading on the person, a soft cast
  shadow, colour cast, exposure and gamma, vignette, sensor noise and mild lens softness.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import cv2
import numpy as np

from sinet_tf.data.base import SegmentationSource
from sinet_tf.files import write_atomic

__all__ = ["SyntheticPortraits", "write_synthetic_dataset", "render_background", "render_portrait"]

_SHIFT = 4                      # sub-pixel bits for cv2 polygon drawing
_ONE = float(1 << _SHIFT)
_AA = cv2.LINE_AA
_HARD = cv2.LINE_8


# ----------------------------------------------------------------------------- geometry

def _fixed(pts) -> np.ndarray:
    return np.round(np.asarray(pts, np.float64).reshape(-1, 2) * _ONE).astype(np.int32)


def _chaikin(pts, iters: int = 2, closed: bool = True) -> np.ndarray:
    """Corner-cutting smoothing of a polygon (closed) or polyline (open)."""
    p = np.asarray(pts, np.float64).reshape(-1, 2)
    for _ in range(iters):
        if closed:
            q = np.concatenate([p[1:], p[:1]])
            out = np.empty((2 * len(p), 2))
            out[0::2] = 0.75 * p + 0.25 * q
            out[1::2] = 0.25 * p + 0.75 * q
            p = out
        else:
            a = 0.75 * p[:-1] + 0.25 * p[1:]
            b = 0.25 * p[:-1] + 0.75 * p[1:]
            p = np.concatenate([p[:1], np.stack([a, b], 1).reshape(-1, 2), p[-1:]])
    return p


_UNIT: dict = {}


def _ellipse(cx, cy, rx, ry, n: int = 40, t0: float = 0.0, t1: float = 2 * np.pi,
             angle: float = 0.0) -> np.ndarray:
    if t0 == 0.0 and t1 == 2 * np.pi:
        if n not in _UNIT:
            t = np.arange(n) * (2 * np.pi / n)
            _UNIT[n] = (np.cos(t), np.sin(t))
        x, y = _UNIT[n]
        x, y = rx * x, ry * y
    else:
        t = np.linspace(t0, t1, n)
        x, y = rx * np.cos(t), ry * np.sin(t)
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        x, y = c * x - s * y, s * x + c * y
    return np.stack([cx + x, cy + y], 1)


def _rotation(cx, cy, angle, pre=(0.0, 0.0)):
    """``f(pts)``: translate by ``pre``, then rotate by ``angle`` about ``(cx, cy)``."""
    c, s = math.cos(angle), math.sin(angle)
    m = np.array([[c, s], [-s, c]])
    off = np.array([cx, cy]) + (np.array(pre) - (cx, cy)) @ m

    def f(pts):
        return np.asarray(pts, np.float64).reshape(-1, 2) @ m + off
    return f


# ----------------------------------------------------------------------------- colours

def _hsv(h, s, v) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(float(h) % 1.0, min(1.0, max(0.0, float(s))),
                                        min(1.0, max(0.0, float(v))))) * 255.0


_SKIN = np.array([(252, 226, 212), (240, 200, 172), (222, 172, 135), (196, 140, 100),
                  (160, 108, 72), (122, 80, 52), (88, 56, 38), (58, 38, 28)], np.float64)

_HAIR = [  # (rgb, weight)
    ((20, 17, 16), 5.0), ((48, 33, 24), 4.0), ((88, 58, 38), 3.0), ((130, 92, 58), 2.0),
    ((196, 162, 105), 1.6), ((226, 208, 165), 0.7), ((120, 48, 24), 0.9),
    ((178, 88, 42), 0.9), ((128, 126, 124), 1.0), ((205, 203, 198), 0.6),
]


def _skin_colour(rng) -> np.ndarray:
    t = rng.uniform(0, len(_SKIN) - 1)
    i = min(int(t), len(_SKIN) - 2)
    c = _SKIN[i] * (1 - (t - i)) + _SKIN[i + 1] * (t - i)
    c = c * rng.uniform(0.93, 1.06) + rng.normal(0, 4, 3) + np.array([1, 0, -1]) * rng.normal(0, 5)
    return np.clip(c, 15, 252)


def _hair_colour(rng) -> np.ndarray:
    if rng.random() < 0.07:  # dyed
        return _hsv(rng.random(), rng.uniform(0.5, 0.9), rng.uniform(0.35, 0.85))
    w = np.array([w for _, w in _HAIR])
    c = np.array(_HAIR[rng.choice(len(_HAIR), p=w / w.sum())][0], np.float64)
    return np.clip(c * rng.uniform(0.85, 1.15) + rng.normal(0, 4, 3), 8, 250)


def _cloth_colour(rng) -> np.ndarray:
    if rng.random() < 0.35:  # neutrals: black, white, greys, navy, beige, olive
        base = [(25, 25, 28), (235, 235, 232), (128, 128, 130), (70, 72, 78), (30, 40, 75),
                (200, 185, 160), (85, 90, 60), (110, 70, 50)]
        c = np.array(base[rng.integers(len(base))], np.float64)
        return np.clip(c * rng.uniform(0.85, 1.12) + rng.normal(0, 6, 3), 5, 250)
    return _hsv(rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.25, 0.95))


# ----------------------------------------------------------------------------- textures

def _noise(rng, gh: int, gw: int, h: int, w: int, ch: int = 1) -> np.ndarray:
    """Smooth value noise in [0, 1], float32 [h, w, ch] (from a gh x gw random grid)."""
    g = rng.random((gh, gw, ch), dtype=np.float32)
    mh, mw = min(h, gh * 8), min(w, gw * 8)
    m = cv2.resize(g, (mw, mh), interpolation=cv2.INTER_CUBIC)
    out = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    return out.reshape(h, w, ch)


def _noise2(rng, gh: int, gw: int, h: int, w: int) -> np.ndarray:
    """Single-channel smooth value noise in [0, 1], float32 [h, w]."""
    return np.ascontiguousarray(_noise(rng, gh, gw, h, w)[..., 0])


def _mul(img: np.ndarray, f) -> np.ndarray:
    """float32 [h, w, 3] times a [h, w] map (cv2, no broadcasting)."""
    f = np.ascontiguousarray(np.broadcast_to(f, img.shape[:2]), np.float32)
    return cv2.multiply(img, cv2.merge([f, f, f]))


def _grid(x0, y0, x1, y1):
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
    return xs, ys


def _coarse(x0, y0, x1, y1, step: int = 2):
    """Grid at ``step`` pixel spacing over a box (smooth textures are computed coarse)."""
    w2, h2 = max(1, -(-(x1 - x0) // step)), max(1, -(-(y1 - y0) // step))
    xs = (np.arange(w2, dtype=np.float32) * step + (x0 + step / 2))[None, :]
    ys = (np.arange(h2, dtype=np.float32) * step + (y0 + step / 2))[:, None]
    return xs, ys


def _up(f: np.ndarray, x0, y0, x1, y1) -> np.ndarray:
    f = np.ascontiguousarray(f, np.float32)
    if f.shape != (y1 - y0, x1 - x0):
        f = cv2.resize(f, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return f


def _tint(f: np.ndarray, rgb) -> np.ndarray:
    """[h, w] factor map times an RGB colour -> float32 [h, w, 3] (cv2, no broadcasting)."""
    return cv2.multiply(cv2.merge([f, f, f]), (float(rgb[0]), float(rgb[1]), float(rgb[2]), 0.0))


# ----------------------------------------------------------------------------- layers

class _Layers:
    """Premultiplied person colour layer + anti-aliased coverage + exact binary mask."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.color = np.zeros((h, w, 3), np.uint8)
        self.alpha = np.zeros((h, w), np.uint8)
        self.mask = np.zeros((h, w), np.uint8)

    def fill(self, pts, color, mask: bool = True):
        p = [_fixed(pts)]
        cv2.fillPoly(self.color, p, _tup(color), _AA, _SHIFT)
        cv2.fillPoly(self.alpha, p, 255, _AA, _SHIFT)
        if mask:
            cv2.fillPoly(self.mask, p, 1, _HARD, _SHIFT)

    def fill_tex(self, pts, tex_fn, mask: bool = True):
        """Fill a polygon with a texture ``tex_fn(x0, y0, x1, y1) -> float32 [h, w, 3]``."""
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        if mask:
            cv2.fillPoly(self.mask, [_fixed(pts)], 1, _HARD, _SHIFT)
        x0 = max(int(np.floor(pts[:, 0].min())) - 2, 0)
        y0 = max(int(np.floor(pts[:, 1].min())) - 2, 0)
        x1 = min(int(np.ceil(pts[:, 0].max())) + 3, self.w)
        y1 = min(int(np.ceil(pts[:, 1].max())) + 3, self.h)
        if x1 <= x0 or y1 <= y0:
            return
        cov = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillPoly(cov, [_fixed(pts - (x0, y0))], 255, _AA, _SHIFT)
        a = cov.astype(np.float32) * np.float32(1 / 255)
        tex = cv2.convertScaleAbs(np.ascontiguousarray(tex_fn(x0, y0, x1, y1), np.float32))
        roi = self.color[y0:y1, x0:x1]
        roi[...] = cv2.blendLinear(np.ascontiguousarray(roi), tex, 1 - a, a)
        al = self.alpha[y0:y1, x0:x1]
        np.maximum(al, cov, out=al)

    def stroke(self, pts, color, thickness: int, closed: bool = False, mask: bool = True):
        p = [_fixed(pts)]
        t = max(1, int(round(thickness)))
        cv2.polylines(self.color, p, closed, _tup(color), t, _AA, _SHIFT)
        cv2.polylines(self.alpha, p, closed, 255, t, _AA, _SHIFT)
        if mask:
            cv2.polylines(self.mask, p, closed, 1, t, _HARD, _SHIFT)

    # image-only details, drawn inside existing coverage
    def detail(self, pts, color):
        cv2.fillPoly(self.color, [_fixed(pts)], _tup(color), _AA, _SHIFT)

    def detail_line(self, pts, color, thickness, closed=False):
        cv2.polylines(self.color, [_fixed(pts)], closed, _tup(color),
                      max(1, int(round(thickness))), _AA, _SHIFT)

    def blob(self, cx, cy, rx, ry, gain):
        """Soft multiplicative shading blob (shadows, highlights) on the colour layer."""
        rx, ry = max(rx, 0.8), max(ry, 0.8)
        x0, x1 = max(int(cx - 2 * rx), 0), min(int(cx + 2 * rx) + 2, self.w)
        y0, y1 = max(int(cy - 2 * ry), 0), min(int(cy + 2 * ry) + 2, self.h)
        if x1 <= x0 or y1 <= y0:
            return
        gx = np.exp(-((np.arange(x0, x1, dtype=np.float32) + 0.5 - cx) / rx) ** 2)
        gy = np.exp(-((np.arange(y0, y1, dtype=np.float32) + 0.5 - cy) / ry) ** 2)
        f = np.float32(gain - 1) * np.outer(gy, gx) + np.float32(1)
        roi = self.color[y0:y1, x0:x1]
        roi[...] = cv2.convertScaleAbs(cv2.multiply(roi, cv2.merge([f, f, f]), dtype=cv2.CV_32F))


def _tup(c):
    c = c.tolist() if isinstance(c, np.ndarray) else c
    return tuple(min(255.0, max(0.0, float(v))) for v in c)


# ----------------------------------------------------------------------------- person

def _draw_person(L: _Layers, rng, H: int, W: int, scale: float, cx: float, light) -> dict:
    """Draw one person; ``scale`` = head height / H; returns colours used."""
    lx, ly, lk = light
    head_h = scale * min(H, 1.25 * W)
    b = head_h / 2
    a = b * rng.uniform(0.74, 0.86)
    # vertical placement: top of the head
    if rng.random() < 0.08:
        top = -rng.uniform(0.0, 0.25) * head_h
    else:
        top = H * rng.uniform(0.01, max(0.03, min(0.3, 0.82 - scale)))
    cy = top + b
    tilt = rng.normal(0, 0.12)
    turn = float(np.clip(rng.normal(0, 0.3), -0.7, 0.7))
    skin = _skin_colour(rng)
    hair = _hair_colour(rng)
    masc = rng.random() < 0.5

    # --- body frame
    xc = cx + rng.normal(0, 0.15) * a - tilt * b * 0.6
    neck_hw = a * rng.uniform(0.40, 0.52) * (1.1 if masc else 1.0)
    neck_len = b * rng.uniform(0.2, 0.5)
    y_sh = cy + b + neck_len                       # shoulder (trapezius) line at the neck
    sw = a * rng.uniform(2.3, 2.9) * (1.1 if masc else 1.0)
    roll = rng.normal(0, 0.06) + tilt * 0.15
    bottom = max(H, y_sh) + b + 20
    sx_r = 1 - 0.35 * max(turn, 0) * rng.uniform(0.3, 1)
    sx_l = 1 - 0.35 * max(-turn, 0) * rng.uniform(0.3, 1)
    slope = rng.uniform(0.25, 0.55) * b
    sep_arms = scale < 0.36 and rng.random() < 0.75

    body_rot = _rotation(xc, y_sh, roll, pre=(xc, y_sh))

    def body(pts):
        p = np.array(pts, np.float64).reshape(-1, 2)
        p[:, 0] *= np.where(p[:, 0] >= 0, sx_r, sx_l)
        return body_rot(p)

    def side(sign):
        if sep_arms:
            pts = [(neck_hw * 1.0, -0.3 * b), (sw * 0.5, -0.05 * b + slope * 0.4),
                   (sw * 0.78, 0.1 * b + slope * 0.7), (sw * 0.86, 0.6 * b + slope),
                   (sw * 0.80, 1.5 * b + slope), (sw * rng.uniform(0.62, 0.74), 3.2 * b),
                   (sw * rng.uniform(0.66, 0.8), bottom - y_sh)]
        else:
            fl = rng.uniform(-0.05, 0.12)
            pts = [(neck_hw * 1.0, -0.3 * b), (sw * 0.5, -0.05 * b + slope * 0.4),
                   (sw * 0.84, 0.08 * b + slope * 0.75), (sw * 1.0, 0.5 * b + slope),
                   (sw * (1.02 + fl / 2), 1.6 * b + slope), (sw * (1.02 + fl), bottom - y_sh)]
        return [(sign * x, y) for x, y in pts]

    right, left = side(1), side(-1)
    torso_local = right + [(right[-1][0], bottom - y_sh + b), (left[-1][0], bottom - y_sh + b)] \
        + left[::-1]
    torso = body(_chaikin(torso_local, 2))
    # closed Chaikin also rounds the bottom corners, but those are far below the frame.

    # --- clothes
    c1 = _cloth_colour(rng)
    style = rng.choice(["solid", "solid", "stripes", "checks", "noise", "solid"])
    c2 = _cloth_colour(rng) if rng.random() < 0.6 else np.clip(c1 * rng.uniform(0.4, 1.6), 0, 255)
    period = max(3.0, a * rng.uniform(0.18, 0.6))
    sang = rng.choice([0.0, np.pi / 2, rng.uniform(0, np.pi)]) + roll
    duty = rng.uniform(0.25, 0.6)
    fold_g = rng.random((3, 7, 1), dtype=np.float32)
    fold_k = rng.uniform(0.05, 0.18)
    cloth_rng = np.random.default_rng(rng.integers(1 << 62))
    neck_style = rng.choice(["crew", "crew", "v", "scoop", "shirt", "jacket", "turtle"])
    if neck_style == "jacket":   # the torso is the jacket; a V of shirt (and a tie) on top
        c1 = _cloth_colour(rng) * 0.8
        c2 = c1 * 0.85
        style = "solid" if rng.random() < 0.7 else "noise"

    def cloth_tex(base1, base2, pattern):
        def tex(x0, y0, x1, y1):
            h, w = y1 - y0, x1 - x0
            xs, ys = _coarse(x0, y0, x1, y1)
            folds = cv2.resize(fold_g, (xs.shape[1], ys.shape[0]), interpolation=cv2.INTER_CUBIC)
            cyl = 1 - 0.35 * np.minimum(np.abs(xs - xc) * np.float32(1 / (sw * 1.1)), 1) ** 3
            shade = _up(((1 - fold_k) + 2 * fold_k * folds) * cyl, x0, y0, x1, y1)
            if pattern == "solid":
                return _tint(shade, base1)
            xs, ys = _grid(x0, y0, x1, y1)
            u = (xs - xc) * np.float32(np.cos(sang) / period) + (ys - y_sh) * np.float32(np.sin(sang) / period)
            if pattern == "stripes":
                m = ((u % 1.0) < duty).astype(np.float32)
            elif pattern == "checks":
                v = -(xs - xc) * np.float32(np.sin(sang) / period) + (ys - y_sh) * np.float32(np.cos(sang) / period)
                m = np.float32(0.5) * (((u % 1.0) < 0.5).astype(np.float32) + ((v % 1.0) < 0.5))
            else:  # heathered / knit noise
                m = np.frombuffer(cloth_rng.bytes(h * w), np.uint8).reshape(h, w) * np.float32(0.5 / 255) \
                    + 0.5 * _noise(cloth_rng, 12, 12, h, w)[..., 0]
            b1 = np.asarray(base1, np.float32)
            col = cv2.add(_tint(m, np.asarray(base2, np.float32) - b1), (float(b1[0]), float(b1[1]), float(b1[2]), 0.0))
            return cv2.multiply(col, cv2.merge([shade, shade, shade]))
        return tex

    # --- head frame helpers
    pivot = (cx, cy + 0.8 * b)

    head = _rotation(pivot[0], pivot[1], tilt, pre=(cx, cy))

    hx, hy = head([(0.0, 0.0)])[0]

    # --- hair style
    styles = ["bald", "short", "short", "fringe", "bob", "long", "long", "curly", "bun"]
    w_st = np.array([0.6, 2.0, 1.0, 0.8, 1.0, 1.6 if not masc else 0.3, 0.8, 1.0, 0.6])
    hstyle = styles[rng.choice(len(styles), p=w_st / w_st.sum())]
    curly = hstyle == "curly" or (hstyle in ("long", "bob") and rng.random() < 0.25)
    vol = rng.uniform(1.04, 1.13)
    hair_g = rng.random((4, 24 if not curly else 12, 1), dtype=np.float32)
    hair_k = rng.uniform(0.15, 0.35)

    def hair_tex(x0, y0, x1, y1):
        xs, ys = _coarse(x0, y0, x1, y1)
        n = cv2.resize(hair_g, (xs.shape[1], ys.shape[0]), interpolation=cv2.INTER_LINEAR)
        dx, dy = (xs - hx) * np.float32(1 / a), (ys - hy) * np.float32(1 / b)
        sheen = 0.3 * np.exp(-((dx + 0.5 * lx) ** 2 * 3 + (dy + 0.75) ** 2 * 10))
        dark = 1 - 0.25 * np.clip(dy - 0.3, 0, 2)
        f = ((1 - hair_k) + 2 * hair_k * n) * (dark + sheen) + sheen * np.float32(25 / max(hair.mean(), 20))
        return _tint(_up(f, x0, y0, x1, y1), hair)

    def noisy(r, th, amp, kmin=7, kmax=16):
        k = rng.integers(kmin, kmax, 3)
        ph = rng.uniform(0, 2 * np.pi, 3)
        return r * (1 + amp * sum(np.sin(ki * th + pi) for ki, pi in zip(k, ph)) / 3)

    # back hair (behind neck and head)
    if hstyle in ("long", "bob"):
        length = b * (rng.uniform(1.6, 3.4) if hstyle == "long" else rng.uniform(0.7, 1.15))
        wide = a * (rng.uniform(1.15, 1.45) if curly else rng.uniform(1.05, 1.25))
        th = np.linspace(np.pi, 2 * np.pi, 20)
        top = np.stack([a * vol * 1.03 * np.cos(th), b * vol * 1.02 * np.sin(th)], 1)
        right_side = [(wide, 0.3 * b), (wide * 1.05, 0.5 * length), (wide * rng.uniform(0.95, 1.2), length)]
        jag = [(x, length + rng.uniform(-0.12, 0.12) * b) for x in np.linspace(wide * 0.9, -wide * 0.9, 5)]
        left_side = [(-wide * rng.uniform(0.95, 1.2), length), (-wide * 1.05, 0.5 * length), (-wide, 0.3 * b)]
        pts = np.concatenate([top, right_side, jag, left_side])
        pts = _chaikin(pts, 2)
        if curly:
            c = pts.mean(0)
            d = pts - c
            r = np.hypot(d[:, 0], d[:, 1])
            th2 = np.arctan2(d[:, 1], d[:, 0])
            r2 = noisy(r, th2, 0.07, 10, 24)
            pts = c + np.stack([np.cos(th2), np.sin(th2)], 1) * r2[:, None]
        L.fill_tex(head(pts), hair_tex)
    elif hstyle == "curly":
        th = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        rx, ry = a * rng.uniform(1.3, 1.7), b * rng.uniform(1.15, 1.4)
        r = noisy(np.ones_like(th), th, 0.12, 9, 22)
        pts = np.stack([rx * r * np.cos(th), -0.2 * b + ry * r * np.sin(th)], 1)
        L.fill_tex(head(pts), hair_tex)
    elif hstyle == "bun":
        bx = rng.uniform(-0.3, 0.3) * a
        br = a * rng.uniform(0.33, 0.5)
        L.fill_tex(head(_ellipse(bx, -b * 1.0 - br * 0.5, br, br * 0.9, 28)), hair_tex)

    L.fill_tex(torso, cloth_tex(c1, c2, style))

    # separate arms with sleeves and hands
    if sep_arms:
        sleeve_len = rng.choice([0.35, 1.0, 1.0])
        arm_w = a * rng.uniform(0.55, 0.75)
        for sign in (1, -1):
            t = np.linspace(0, 1, 12)
            ax = sign * (sw * (0.86 - 0.06 * t + rng.uniform(-0.03, 0.08) * np.sin(np.pi * t)))
            ay = 0.35 * b + slope + t * b * 3.6
            nx = np.full_like(t, sign * 1.0)
            wd = arm_w * (1.0 - 0.25 * t)
            outer = np.stack([ax + nx * wd * 0.5, ay], 1)
            inner = np.stack([ax - nx * wd * 0.5, ay], 1)
            arm_skin = np.concatenate([outer, inner[::-1]])
            L.fill(body(arm_skin), skin * rng.uniform(0.9, 1.0))
            n_s = max(2, int(round(12 * sleeve_len)))
            sl = np.concatenate([outer[:n_s] + (sign * 1.0, 0), inner[:n_s][::-1] - (sign * 1.0, 0)])
            L.fill_tex(body(sl), cloth_tex(c1 * 0.92, c2 * 0.92, style))
            hand = _ellipse(ax[-1], ay[-1] + 0.35 * b, wd[-1] * 0.6, 0.45 * b, 20)
            L.fill(body(hand), skin * 0.95)

    # --- neck with neckline
    nl_depth = {"crew": 0.15, "v": 0.7, "scoop": 0.45, "shirt": 0.5, "jacket": 0.6,
                "turtle": -0.1}[neck_style] * b * rng.uniform(0.8, 1.3)
    nl_w = {"crew": 1.35, "v": 1.5, "scoop": 2.2, "shirt": 1.3, "jacket": 1.3,
            "turtle": 1.0}[neck_style] * neck_hw
    neck_top = cy + 0.3 * b - y_sh
    neck_local = [(-neck_hw * 0.92, neck_top), (neck_hw * 0.92, neck_top),
                  (neck_hw * 0.95, -0.4 * b), (neck_hw * 1.05, -0.12 * b),
                  (nl_w, -0.02 * b)]
    if neck_style in ("v", "shirt", "jacket"):
        neck_local += [(nl_w * 0.3, nl_depth * 0.7), (0, nl_depth), (-nl_w * 0.3, nl_depth * 0.7)]
    else:
        neck_local += [(nl_w * 0.6, nl_depth * 0.8), (0, nl_depth), (-nl_w * 0.6, nl_depth * 0.8)]
    neck_local += [(-nl_w, -0.02 * b), (-neck_hw * 1.05, -0.12 * b), (-neck_hw * 0.95, -0.4 * b)]
    neck_pts = body(_chaikin(neck_local, 1))
    chin_y = cy + b

    def neck_tex(x0, y0, x1, y1):
        xs, ys = _coarse(x0, y0, x1, y1)
        sh = 0.62 + 0.38 * np.clip((ys - chin_y) / (0.5 * b), 0, 1)
        sh = sh * (1 - 0.15 * np.clip(np.abs(xs - xc) / neck_hw, 0, 1.5) ** 2)
        return _tint(_up(sh, x0, y0, x1, y1), skin)

    L.fill_tex(neck_pts, neck_tex)
    dk = np.clip(c1 * 0.75, 0, 255)
    if neck_style in ("crew", "scoop", "v"):
        edge = np.asarray([neck_local[4]] + neck_local[5:8] + [neck_local[8]])
        L.detail_line(body(_chaikin(edge, 2, closed=False)), dk, max(1, a * 0.07))
    elif neck_style == "turtle":
        tn = [(-neck_hw * 1.08, -0.55 * b), (neck_hw * 1.08, -0.55 * b), (neck_hw * 1.25, 0.1 * b),
              (-neck_hw * 1.25, 0.1 * b)]
        L.fill_tex(body(_chaikin(tn, 1)), cloth_tex(c1 * 0.95, c2 * 0.95, style))
    if neck_style == "jacket":
        shirt_c = np.array([235, 235, 232.]) if rng.random() < 0.6 else _cloth_colour(rng)
        vd = b * rng.uniform(1.8, 3.0)
        L.fill(body([(-nl_w * 1.15, -0.08 * b), (nl_w * 1.15, -0.08 * b), (0, vd)]), shirt_c * 0.97)
        for sign in (1, -1):  # lapel edges
            L.detail_line(body([(sign * nl_w * 1.15, -0.08 * b), (0, vd)]), c1 * 0.6, max(1, a * 0.05))
        L.fill(body(neck_local[:5] + [(0, nl_depth)] + neck_local[-3:]), skin * 0.9)
        if rng.random() < 0.6:
            tie = _cloth_colour(rng)
            L.fill(body([(-0.18 * neck_hw, nl_depth), (0.18 * neck_hw, nl_depth),
                         (0.3 * neck_hw, nl_depth + 2.0 * b), (0, nl_depth + 2.3 * b),
                         (-0.3 * neck_hw, nl_depth + 2.0 * b)]), tie)
    if neck_style in ("shirt", "jacket"):
        col = c1 * 1.05 if neck_style == "shirt" else np.array([240, 240, 238.])
        for sign in (1, -1):
            L.fill(body([(sign * neck_hw * 0.9, -0.45 * b), (sign * nl_w * 1.25, -0.05 * b),
                         (sign * nl_w * 0.8, 0.3 * b), (sign * 0.1 * neck_hw, nl_depth * 0.75)]),
                   np.clip(col, 0, 255))
    # long hair: locks falling in front of the shoulders
    if hstyle == "long" and rng.random() < 0.65:
        for sign in (1, -1):
            if rng.random() < 0.25:
                continue  # this side stays behind the shoulder
            ln = length * rng.uniform(0.8, 1.05)
            lk_pts = [(sign * a * 0.6, -0.2 * b), (sign * wide * 1.02, -0.1 * b),
                      (sign * wide * 1.1, 0.6 * ln), (sign * wide * rng.uniform(1.0, 1.25), ln),
                      (sign * a * rng.uniform(0.72, 0.95), ln + 0.1 * b), (sign * a * 0.7, 0.5 * ln),
                      (sign * a * 0.62, 0.4 * b)]
            L.fill_tex(head(_chaikin(lk_pts, 2)), hair_tex)
    # shadow of the head on the neck
    L.blob(hx, cy + b * 1.05, a * 0.7, b * 0.22, rng.uniform(0.55, 0.8))

    # --- ears
    jaw = rng.uniform(0.12, 0.32)
    for sign in (1, -1):
        if sign * turn > 0.35:  # far ear hidden by the turned head
            continue
        ex = sign * a * (0.96 - 0.12 * sign * turn)
        L.fill(head(_ellipse(ex, 0.1 * b, a * 0.17, b * 0.27, 20)), skin * 0.92)

    # --- head
    th = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    s = np.sin(th)
    hxl = a * np.cos(th) * (1 - jaw * np.clip(s, 0, 1) ** 2.2)
    hxl += turn * a * 0.1 * np.clip(s, 0, 1)
    hyl = b * s * np.where(s > 0, rng.uniform(0.95, 1.0), 1.0)
    head_pts = head(np.stack([hxl, hyl], 1))
    fx = turn * a * 0.32
    ang = tilt
    hl = np.array([np.cos(ang), np.sin(ang)])          # head x axis in the image

    def head_tex(x0, y0, x1, y1):
        xs, ys = _coarse(x0, y0, x1, y1)
        dx, dy = (xs - hx), (ys - hy)
        u = (dx * hl[0] + dy * hl[1]) / a - turn * 0.3
        v = (-dx * hl[1] + dy * hl[0]) / b
        r2 = u * u + v * v
        f = 1.0 + lk * 0.6 * (u * lx + v * ly) - 0.22 * r2 * r2 + 0.05 * (1 - r2)
        return _tint(_up(f, x0, y0, x1, y1), skin)

    L.fill_tex(head_pts, head_tex)

    def hp(pts):  # face feature points, in head frame, shifted by the turn
        p = np.asarray(pts, np.float64).reshape(-1, 2) + (fx, 0)
        return head(p)

    # --- face
    ey = rng.uniform(-0.05, 0.08) * b
    esp = a * rng.uniform(0.36, 0.44)
    ew = a * rng.uniform(0.15, 0.2)
    eh = b * rng.uniform(0.045, 0.08)
    iris = np.array([(70, 45, 30), (40, 28, 20), (90, 110, 130), (80, 100, 70)][rng.integers(4)],
                    np.float64)
    dark = np.clip(skin * 0.35, 0, 80)
    brow_c = np.clip(hair * 0.8 if hstyle != "bald" else skin * 0.45, 0, 120)
    brow_t = max(1, a * rng.uniform(0.05, 0.1))
    for sign in (1, -1):
        sc = 1 - 0.3 * max(sign * turn, 0)
        ex = sign * esp * (1 - 0.25 * sign * turn)
        if a > 9:
            L.blob(*head([(ex + fx, ey - 0.03 * b)])[0], ew * 1.3, eh * 2.2, 0.82)  # eye socket
            L.detail(hp(_ellipse(ex, ey, ew * sc, eh, 20)), skin * 0.45 + np.array([210, 205, 200.]) * 0.4)
            L.detail(hp(_ellipse(ex + fx * 0.1, ey, eh * 1.05, eh * 0.98, 14)), iris)
            L.detail(hp(_ellipse(ex + fx * 0.1, ey, eh * 0.45, eh * 0.45, 10)), (15, 12, 12))
            L.detail_line(hp(_ellipse(ex, ey, ew * sc * 1.05, eh * 1.1, 12, np.pi, 2 * np.pi)),
                          dark, max(1, a * 0.035))
        else:
            L.detail(hp(_ellipse(ex, ey, ew * sc * 0.8, eh * 0.8, 12)), dark)
        by = ey - b * rng.uniform(0.14, 0.2)
        brow = [(ex - sign * ew * 1.1 * sc, by + 0.03 * b), (ex, by - 0.02 * b),
                (ex + sign * ew * 1.2 * sc, by + 0.02 * b)]
        L.detail_line(hp(_chaikin(brow, 2, closed=False)), brow_c, brow_t)
    # nose: shaded side and nostrils
    ns = 1 if (lx > 0) else -1
    ny = b * rng.uniform(0.3, 0.4)
    L.blob(*head([(fx * 1.2 - ns * a * 0.1, ny - 0.12 * b)])[0], a * 0.08, b * 0.2, 0.85)
    L.blob(*head([(fx * 1.25, ny + 0.06 * b)])[0], a * 0.2, b * 0.05, 0.75)
    # mouth
    my = b * rng.uniform(0.55, 0.64)
    mw = a * rng.uniform(0.28, 0.42)
    lip = np.clip(skin * np.array([0.82, 0.58, 0.58]) + rng.normal(0, 6, 3), 10, 240)
    smile = rng.random() < 0.45
    upper = [(-mw, my), (-mw * 0.4, my - 0.06 * b), (0, my - 0.04 * b), (mw * 0.4, my - 0.06 * b),
             (mw, my)]
    lower = [(mw * 0.5, my + (0.1 if smile else 0.07) * b), (-mw * 0.5, my + (0.1 if smile else 0.07) * b)]
    L.detail(hp(_chaikin(upper + lower, 2)), lip)
    if smile and a > 10:
        L.detail(hp(_ellipse(0, my + 0.025 * b, mw * 0.62, 0.035 * b, 16)), (230, 226, 215))
    L.detail_line(hp(_chaikin([(-mw, my), (0, my + (0.02 if smile else 0.0) * b), (mw, my)], 2,
                              closed=False)), np.clip(lip * 0.6, 0, 255), max(1, a * 0.03))
    L.blob(*head([(fx, my + 0.17 * b)])[0], mw * 0.6, b * 0.06, 0.9)
    # beard / stubble
    if masc and hstyle != "bald" and rng.random() < 0.3 or (masc and hstyle == "bald" and rng.random() < 0.4):
        bc = np.clip(hair * 0.9, 0, 255) if rng.random() < 0.7 else skin * 0.6
        th = np.linspace(0.05, np.pi - 0.05, 24)
        outer = np.stack([hxl.max() * 0.98 * np.cos(th), b * (0.1 + 0.9 * np.sin(th) ** 0.8)], 1)
        inner = np.stack([mw * 1.3 * np.cos(th[::-1]), my - 0.1 * b + 0.35 * b * np.sin(th[::-1])], 1)
        L.detail(hp(np.concatenate([outer, inner])), bc)
        L.detail(hp(_ellipse(0, my - 0.08 * b, mw * 1.05, 0.05 * b, 16)), bc)

    # --- front hair (cap with hairline)
    if hstyle != "bald":
        hl_y = b * (rng.uniform(0.25, 0.5) if hstyle != "fringe" else rng.uniform(0.08, 0.25))
        part = rng.uniform(-0.4, 0.4) * a
        low = rng.uniform(0.0, 0.25)
        th = np.linspace(np.pi - low, 2 * np.pi + low, 40)
        r = np.ones_like(th) * vol
        if curly:
            r = noisy(r, th, 0.08, 10, 24)
        outer = np.stack([a * r * np.cos(th), b * r * np.sin(th) - b * 0.05 * (vol - 1) * 10 * (np.sin(th) < 0)], 1)
        if hstyle in ("long",) and rng.random() < 0.7:
            lock = b * rng.uniform(0.7, 1.3)
            outer = np.concatenate([[(-a * 1.12, lock), (-a * 1.1, 0.4 * b)], outer,
                                    [(a * 1.1, 0.4 * b), (a * 1.12, lock)]])
            inner = [(a * 0.82, lock), (a * 0.86, 0.2 * b)]
            inner_end = [(-a * 0.86, 0.2 * b), (-a * 0.82, lock)]
        else:
            inner = [(a * 0.97, b * np.sin(low) * 0.8)]
            inner_end = [(-a * 0.97, b * np.sin(low) * 0.8)]
        if hstyle == "fringe":
            line = [(a * 0.8, -hl_y * 1.1), (a * 0.3, -hl_y), (-a * 0.3, -hl_y), (-a * 0.8, -hl_y * 1.1)]
        else:
            line = [(a * 0.85, -hl_y * 0.6), (a * 0.62, -hl_y * 1.15), (part + 0.15 * a, -hl_y * 1.05),
                    (part, -hl_y - 0.08 * b), (part - 0.15 * a, -hl_y * 1.02), (-a * 0.62, -hl_y * 1.15),
                    (-a * 0.85, -hl_y * 0.6)]
        cap = np.concatenate([outer, inner, line, inner_end])
        L.fill_tex(head(_chaikin(cap, 2)), hair_tex)
        if hstyle == "bun":
            bx = rng.uniform(-0.3, 0.3) * a
            L.detail_line(head(_chaikin([(bx - 0.5 * a, -0.6 * b), (bx, -0.9 * b), (bx + 0.5 * a, -0.6 * b)],
                                        2, closed=False)), hair * 0.7, max(1, a * 0.04))

    # --- accessories
    acc = rng.random()
    if acc < 0.09 and hstyle not in ("curly", "bun"):           # hat
        hc = _cloth_colour(rng)
        if rng.random() < 0.5:   # beanie
            th = np.linspace(np.pi, 2 * np.pi, 24)
            dome = np.stack([a * 1.1 * np.cos(th), -0.35 * b + b * 0.95 * np.sin(th)], 1)
            L.fill_tex(head(np.concatenate([[(-a * 1.1, -0.2 * b)], dome, [(a * 1.1, -0.2 * b)]])),
                       cloth_tex(hc, hc * 0.8, rng.choice(["solid", "noise", "stripes"])))
            L.detail_line(head([(-a * 1.08, -0.38 * b), (a * 1.08, -0.38 * b)]), hc * 0.7, max(1, b * 0.05))
        else:                    # brimmed hat
            crown = _chaikin([(-a * 0.95, -0.55 * b), (-a * 0.85, -1.35 * b), (a * 0.85, -1.35 * b),
                              (a * 0.95, -0.55 * b)], 2)
            L.fill(head(crown), hc * 0.9)
            L.fill(head(_ellipse(0, -0.55 * b, a * rng.uniform(1.4, 1.9), b * 0.16, 40)), hc)
            L.detail_line(head([(-a * 0.93, -0.65 * b), (a * 0.93, -0.65 * b)]), hc * 0.5, max(1, b * 0.06))
    elif acc < 0.15:                                             # headphones
        pc = np.array([(25, 25, 28), (230, 230, 230), (60, 60, 70), (150, 30, 40)][rng.integers(4)], float)
        L.stroke(head(_ellipse(0, -0.05 * b, a * 1.12, b * 1.12 * vol, 30, np.pi + 0.25, 2 * np.pi - 0.25)),
                 pc * 0.9, max(2, a * 0.14))
        for sign in (1, -1):
            L.fill(head(_ellipse(sign * a * 1.04, 0.08 * b, a * 0.26, b * 0.36, 24)), pc)
    if rng.random() < 0.2:                                       # glasses
        gc = np.array([(20, 20, 22), (90, 60, 40), (160, 160, 165), (120, 30, 30)][rng.integers(4)], float)
        sun = rng.random() < 0.3
        gw, gh = ew * rng.uniform(1.45, 1.8), eh * rng.uniform(2.2, 3.0)
        t = max(1, a * 0.045)
        lens = []
        pw = rng.choice([2.0, 4.0])
        for sign in (1, -1):
            ex = sign * esp * (1 - 0.25 * sign * turn)
            th = np.linspace(0, 2 * np.pi, 28, endpoint=False)
            x = gw * np.sign(np.cos(th)) * np.abs(np.cos(th)) ** (2 / pw)
            y = gh * np.sign(np.sin(th)) * np.abs(np.sin(th)) ** (2 / pw)
            lens.append(hp(np.stack([ex + x, ey + 0.01 * b + y], 1)))
            if sun:
                L.detail(lens[-1], (22, 22, 26))
            L.stroke(lens[-1], gc, t, closed=True)
            L.stroke(hp([(ex + sign * gw, ey), (sign * a * 1.0 - fx, ey - 0.04 * b)]), gc, t)
        L.stroke(hp([(-esp + gw * 0.9, ey - 0.02 * b), (esp - gw * 0.9, ey - 0.02 * b)]), gc, t)

    return {"skin": skin, "cloth": c1, "hair": hair}


# ----------------------------------------------------------------------------- background

def _background(rng, H: int, W: int, person: dict) -> np.ndarray:
    kind = rng.choice(["gradient", "noise", "indoor", "indoor", "outdoor", "outdoor", "bokeh",
                       "studio"])
    div = 2 if kind in ("indoor", "outdoor") else 4   # smooth kinds are drawn coarser
    h, w = max(H // div, 32), max(W // div, 32)
    similar = rng.random() < 0.22

    def colour():
        if similar and rng.random() < 0.6:
            src = person["skin"] if rng.random() < 0.5 else person["cloth"]
            return np.clip(src * rng.uniform(0.85, 1.15) + rng.normal(0, 10, 3), 0, 255)
        return _hsv(rng.random(), rng.uniform(0.0, 0.7) ** 1.5, rng.uniform(0.2, 0.95))

    xs = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    ys = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    if kind == "gradient" or kind == "studio":
        c0, c1 = colour(), colour()
        if kind == "studio":
            c1 = c0 * rng.uniform(0.35, 0.7)
            r = np.sqrt((xs - rng.uniform(-0.3, 0.3)) ** 2 + (ys + rng.uniform(0, 0.5)) ** 2) / 1.6
            t = np.clip(r, 0, 1)
        else:
            ang = rng.uniform(0, 2 * np.pi)
            t = np.clip((xs * np.cos(ang) + ys * np.sin(ang)) * 0.5 + 0.5, 0, 1)
        t = np.ascontiguousarray(np.broadcast_to(t, (h, w)), np.float32)
        img = cv2.add(_tint(1 - t, c0), _tint(t, c1))
        img = _mul(img, 0.9 + 0.2 * _noise2(rng, 6, 6, h, w))
    elif kind == "noise":
        n1 = _noise(rng, int(rng.integers(2, 6)), int(rng.integers(2, 6)), h, w)
        n2 = _noise(rng, int(rng.integers(6, 16)), int(rng.integers(6, 16)), h, w)
        t = np.clip(0.65 * n1 + 0.35 * n2, 0, 1)
        cs = [colour() for _ in range(3)]
        img = np.where(t < 0.5, cs[0] * (1 - 2 * t) + cs[1] * 2 * t, cs[1] * (2 - 2 * t) + cs[2] * (2 * t - 1))
        img = img.astype(np.float32)
    elif kind == "indoor":
        wall = colour()
        img = _tint(0.8 + 0.35 * _noise2(rng, 3, 3, h, w), wall)
        if rng.random() < 0.5:  # floor / wainscot
            fy = int(h * rng.uniform(0.55, 0.85))
            img[fy:] = _tint(0.85 + 0.2 * _noise2(rng, 4, 4, h - fy, w), colour())
        for _ in range(int(rng.integers(3, 12))):
            x0, y0 = int(rng.uniform(-0.2, 1) * w), int(rng.uniform(-0.2, 0.9) * h)
            x1, y1 = x0 + int(rng.uniform(0.05, 0.5) * w), y0 + int(rng.uniform(0.05, 0.7) * h)
            kindr = rng.random()
            if kindr < 0.25:   # window: bright, with frame bars
                c = np.clip(_hsv(0.58, rng.uniform(0, 0.3), 1.0) * rng.uniform(0.9, 1.2), 0, 255)
                cv2.rectangle(img, (x0, y0), (x1, y1), _tup(c), -1)
                fc = _tup(colour())
                cv2.rectangle(img, (x0, y0), (x1, y1), fc, max(1, w // 60))
                cv2.line(img, ((x0 + x1) // 2, y0), ((x0 + x1) // 2, y1), fc, max(1, w // 80))
            elif kindr < 0.5:  # shelf with books
                c = colour() * 0.6
                cv2.rectangle(img, (x0, y0), (x1, y1), _tup(c), -1)
                for k in range(int(rng.integers(3, 15))):
                    bx = x0 + int(rng.uniform(0, 1) * (x1 - x0))
                    bw = max(1, int(rng.uniform(0.01, 0.04) * w))
                    cv2.rectangle(img, (bx, y0 + int(rng.uniform(0.1, 0.5) * (y1 - y0))), (bx + bw, y1),
                                  _tup(_hsv(rng.random(), rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.9))), -1)
            elif kindr < 0.8:  # door / frame / cabinet
                c = colour()
                cv2.rectangle(img, (x0, y0), (x1, y1), _tup(c), -1)
                cv2.rectangle(img, (x0, y0), (x1, y1), _tup(c * 0.7), max(1, w // 70))
            else:              # lamp / clock / plant
                r = int(rng.uniform(0.03, 0.15) * w)
                cv2.circle(img, (x0, y0), r, _tup(colour()), -1)
        for _ in range(int(rng.integers(0, 5))):
            p0 = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            p1 = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            cv2.line(img, p0, p1, _tup(colour()), int(rng.integers(1, 4)))
        img = _mul(img, 1 + 0.25 * (xs * rng.normal(0, 1) + ys * rng.normal(0, 1)) * 0.5)
    elif kind == "outdoor":
        hy = rng.uniform(0.2, 0.75)
        sky_top = _hsv(rng.uniform(0.55, 0.62), rng.uniform(0.2, 0.7), rng.uniform(0.7, 1.0))
        if rng.random() < 0.25:  # sunset / overcast
            sky_top = _hsv(rng.uniform(0.0, 0.12), rng.uniform(0.1, 0.5), rng.uniform(0.7, 1.0))
        sky_bot = np.clip(sky_top * 0.5 + 255 * 0.5, 0, 255)
        t = np.clip((ys * 0.5 + 0.5) / hy, 0, 1)
        t = np.ascontiguousarray(np.broadcast_to(t, (h, w)), np.float32)
        img = cv2.add(_tint(1 - t, sky_top), _tint(t, sky_bot))
        gy = int(h * hy)
        ground = [np.array([70, 110, 50.]), np.array([120, 120, 118.]), np.array([190, 170, 130.]),
                  np.array([60, 90, 130.])][rng.integers(4)] * rng.uniform(0.7, 1.2)
        if gy < h:
            img[gy:] = _tint(0.75 + 0.4 * _noise2(rng, 4, 8, h - gy, w), ground)
        if rng.random() < 0.35:  # buildings
            for _ in range(int(rng.integers(2, 7))):
                x0 = int(rng.uniform(-0.1, 1) * w)
                bw, bh = int(rng.uniform(0.1, 0.4) * w), int(rng.uniform(0.1, 0.6) * h)
                cv2.rectangle(img, (x0, gy - bh), (x0 + bw, gy + 2), _tup(_hsv(0.08, rng.uniform(0, 0.3),
                                                                                 rng.uniform(0.3, 0.9))), -1)
        palette = [np.array([40, 80, 30.]), np.array([70, 120, 40.]), np.array([110, 140, 50.]),
                   np.array([150, 110, 40.]), np.array([190, 150, 60.]), np.array([30, 55, 30.])]
        autumn = rng.random() < 0.25
        nb = int(rng.integers(10, 60))
        for _ in range(nb):
            c = palette[rng.integers(3, 6) if autumn else rng.integers(0, 3)] * rng.uniform(0.6, 1.3)
            x = int(rng.uniform(-0.1, 1.1) * w)
            y = int(h * rng.uniform(-0.1, hy + 0.15) if rng.random() < 0.8 else rng.uniform(0, h))
            cv2.circle(img, (x, y), int(rng.uniform(0.02, 0.14) * w), _tup(c), -1)
        for _ in range(int(rng.integers(0, 4))):  # trunks
            x = int(rng.uniform(0, w))
            cv2.rectangle(img, (x, int(h * rng.uniform(0, 0.4))), (x + int(rng.uniform(0.01, 0.05) * w), h),
                          _tup(np.array([60, 45, 35.]) * rng.uniform(0.6, 1.3)), -1)
        img = _mul(img, 0.85 + 0.3 * _noise2(rng, 8, 8, h, w))
    else:  # bokeh
        img = _tint(0.6 + 0.8 * _noise2(rng, 4, 4, h, w), colour() * 0.5)
        add = np.zeros((h, w, 3), np.float32)
        hue = rng.random()
        for _ in range(int(rng.integers(8, 40))):
            c = _hsv(hue + rng.normal(0, 0.08), rng.uniform(0.1, 0.8), 1.0) * rng.uniform(0.15, 0.5)
            r = int(rng.uniform(0.02, 0.09) * w) + 1
            cv2.circle(add, (int(rng.uniform(0, w)), int(rng.uniform(0, h))), r, _tup(c), -1)
        img = img + cv2.GaussianBlur(add, (0, 0), 0.8)
    sigma = rng.uniform(0.3, 2.5) if kind != "bokeh" else rng.uniform(0.3, 1.0)
    img = cv2.GaussianBlur(np.ascontiguousarray(img, np.float32), (0, 0), sigma * 2 / div)
    return cv2.resize(img, (W, H), interpolation=cv2.INTER_LINEAR)


def render_background(seed: int, index: int, size: tuple[int, int], person_colour=None) -> np.ndarray:
    """One of the generator's backgrounds alone (gradients, noise, indoor, outdoor, bokeh,
    studio), RGB ``uint8 [H, W, 3]``, a pure function of ``(seed, index, size, person_colour)``.
    ``person_colour`` (RGB), when given, is the colour the "similar to the person" backgrounds
    borrow (as they borrow the drawn person's skin and clothes in :func:`render_portrait`)."""
    H, W = _check_size(size)
    rng = np.random.default_rng([seed, index, 2])
    if person_colour is None:
        skin, cloth = _skin_colour(rng), _cloth_colour(rng)
    else:
        skin = cloth = np.asarray(person_colour, np.float64).reshape(3)
    img = _background(rng, H, W, {"skin": skin, "cloth": cloth})
    return np.clip(np.asarray(img, np.float32) + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- composite

def render_portrait(seed: int, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Render sample ``index`` of seed ``seed`` at ``size = (H, W)``: (RGB uint8, mask uint8 0/1)."""
    H, W = size
    rng = np.random.default_rng([seed, index])
    L = _Layers(H, W)
    la = rng.uniform(0, 2 * np.pi)
    light = (float(np.cos(la)), float(np.sin(la)) * 0.5 - 0.3, rng.uniform(0.2, 0.8))

    scale = float(np.exp(rng.uniform(np.log(0.09), np.log(0.62))))
    head_w = scale * min(H, 1.25 * W) * 0.8
    off = rng.uniform(-1, 1) * rng.uniform(0.2, 1)
    cx = W / 2 + off * max(W / 2 - head_w * 0.5, 0) * 0.85
    if rng.random() < 0.12:   # a second person behind, at one side
        s2 = scale * rng.uniform(0.8, 1.25)
        side = 1 if cx < W / 2 else -1
        cx2 = W / 2 + side * W * rng.uniform(0.35, 0.55)
        _draw_person(L, rng, H, W, s2, cx2, light)
        # the front person will occlude; slightly darken the one behind (depth)
        L.color[...] = (L.color * np.float32(rng.uniform(0.75, 0.95))).astype(np.uint8)
    person = _draw_person(L, rng, H, W, scale, cx, light)
    bg = _background(rng, H, W, person)

    # lighting on the person: directional ramp + form shading near the silhouette; vignette
    # low-frequency maps are computed on a 16 x 16 grid and resized
    xs = (np.arange(16, dtype=np.float32)[None, :] + 0.5) / 16 - 0.5
    ys = (np.arange(16, dtype=np.float32)[:, None] + 0.5) / 16 - 0.5
    k = light[2] * 0.35
    vk = rng.uniform(0.0, 0.9)
    vig_s = (1 - vk * xs * xs) * (1 - vk * ys * ys)
    ramp_s = vig_s * (1.0 + k * (xs * light[0] + ys * light[1]))
    vig = cv2.resize(vig_s, (W, H), interpolation=cv2.INTER_LINEAR)
    ramp = cv2.resize(ramp_s, (W, H), interpolation=cv2.INTER_LINEAR)
    dist = cv2.distanceTransform(L.mask, cv2.DIST_L2, 3)
    r = max(2.0, scale * H * 0.12)
    fk = rng.uniform(0.05, 0.2)
    form = np.minimum(dist, np.float32(r)) * np.float32(fk / r) + np.float32(1 - fk)
    # sensor noise: multiplicative luminance grain, from an independent stream
    nrng = np.random.default_rng([seed, index, 1])
    sigma = rng.uniform(0.5, 5.0)
    grain = np.frombuffer(nrng.bytes(H * W), np.int8).reshape(H, W)
    gf = grain * np.float32(sigma / 74.0 / 128.0) + np.float32(1)
    pf = form * ramp * gf
    bf = (np.float32(1) - L.alpha * np.float32(1 / 255)) * vig * gf

    # cast shadow of the person on the background
    if rng.random() < 0.35:
        sh = cv2.resize(L.alpha, (max(W // 4, 16), max(H // 4, 16)), interpolation=cv2.INTER_AREA)
        dx, dy = -light[0] * 0.04 * sh.shape[1], 0.02 * sh.shape[0]
        M = np.float32([[1, 0, dx], [0, 1, dy]])
        sh = cv2.warpAffine(sh, M, (sh.shape[1], sh.shape[0]), borderMode=cv2.BORDER_REPLICATE)
        sh = cv2.GaussianBlur(sh.astype(np.float32), (0, 0), rng.uniform(1.0, 3.0))
        sh = cv2.resize(sh, (W, H), interpolation=cv2.INTER_LINEAR)
        bf *= 1 - np.float32(rng.uniform(0.15, 0.4) / 255) * sh

    out = cv2.add(cv2.multiply(bg, cv2.merge([bf, bf, bf])),
                  cv2.multiply(L.color, cv2.merge([pf, pf, pf]), dtype=cv2.CV_32F))
    img = cv2.convertScaleAbs(out)

    # tone curve: colour cast, exposure, gamma, contrast — one LUT per channel
    x = np.arange(256, dtype=np.float64) / 255.0
    gains = 1 + rng.normal(0, 0.05, 3)
    exposure = rng.uniform(0.85, 1.15)
    gamma = rng.uniform(0.8, 1.2)
    contrast = rng.uniform(-0.15, 0.25)
    lut = np.empty((256, 1, 3), np.uint8)
    for c in range(3):
        y = np.clip(x * gains[c] * exposure, 0, 1) ** gamma
        y = y + contrast * (y - 0.5) * (1 - np.abs(2 * y - 1))
        lut[:, 0, c] = np.clip(y * 255 + 0.5, 0, 255).astype(np.uint8)
    img = cv2.LUT(img, lut)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.4, 0.8))
    return img, L.mask


# ----------------------------------------------------------------------------- API

def _check_size(size) -> tuple[int, int]:
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be a (height, width) pair, got {size!r}") from None
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 64:
            raise ValueError(f"size must be two integers >= 64 (height, width), got {size!r}")
    return int(h), int(w)


def _check_int(name, v, minimum):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


class SyntheticPortraits(SegmentationSource):
    """``num_samples`` procedurally drawn portraits; ``read(i)`` depends only on
    ``(seed, i, size)``. ``size`` is ``(H, W)`` with both >= 64."""

    def __init__(self, num_samples: int = 1000, size: tuple[int, int] = (256, 256), seed: int = 0,
                 name: str = "synthetic"):
        self.num_samples = _check_int("num_samples", num_samples, 1)
        self.size = _check_size(size)
        self.seed = _check_int("seed", seed, 0)
        self.name = name

    def __len__(self) -> int:
        return self.num_samples

    def _index(self, index) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an integer, got {index!r}")
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.name} with "
                             f"{self.num_samples} samples")
        return int(index)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return render_portrait(self.seed, self._index(index), self.size)

    def describe(self, index: int) -> str:
        return f"{self.name}(seed={self.seed})[{index}]"

    def __repr__(self) -> str:
        return (f"SyntheticPortraits(num_samples={self.num_samples}, size={self.size}, "
                f"seed={self.seed}, name={self.name!r})")


def write_synthetic_dataset(out_dir, num_samples: int, size: tuple[int, int] = (256, 256),
                            seed: int = 0, val_fraction: float = 0.2) -> Path:
    """Write ``num_samples`` portraits in the humanseg290 layout: ``images/{i}.jpg``
    (quality 95), ``masks/{i}.png`` (0/255), ``train.txt`` / ``val.txt`` with lines
    ``images/{i}.jpg masks/{i}.png``; the last ``round(num_samples * val_fraction)``
    samples form the validation split. Every file is replaced atomically."""
    src = SyntheticPortraits(num_samples, size, seed)
    vf = float(val_fraction)
    if not 0.0 <= vf < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    n_val = int(round(num_samples * vf))
    if vf > 0 and num_samples >= 2:
        n_val = min(max(n_val, 1), num_samples - 1)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(num_samples):
        image, label = src.read(i)
        ok1, jpg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, 95])
        ok2, png = cv2.imencode(".png", (label * 255).astype(np.uint8))
        if not (ok1 and ok2):
            raise ValueError(f"could not encode {src.describe(i)}")
        write_atomic(jpg.tobytes(), out / "images" / f"{i}.jpg")
        write_atomic(png.tobytes(), out / "masks" / f"{i}.png")
        lines.append(f"images/{i}.jpg masks/{i}.png\n")
    n_train = num_samples - n_val
    write_atomic("".join(lines[:n_train]).encode(), out / "train.txt")
    write_atomic("".join(lines[n_train:]).encode(), out / "val.txt")
    return out
