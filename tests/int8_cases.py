"""Small models and datasets built so that post-training int8 fails in a known way, for the
int8 calibration, gate and QAT tests.

Photos: 32x32, person = a centred ellipse; the red and green channels carry the person
(``person_level`` inside, ``background_level`` outside, +-1 noise), the blue channel is
independent noise. Models: ``x -> 1x1 conv (3 -> 2) -> ReLU -> 1x1 conv (2 -> 2 logits)``
with hand-set weights: channel 0 of the hidden tensor is ``(R + G) / 128`` (the signal; the
decision is ``ch0 > 2``, i.e. a red/green level above 128), channel 1 is a nuisance the
logits do not use, and it sets the hidden tensor's int8 range.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import keras
import numpy as np

SIZE = 32


def write_dataset(root: Path, n_train: int, n_val: int, person_level: float, background_level: float,
                  blue=None, spikes: dict | None = None, seed: int = 0, size: int = SIZE) -> Path:
    """``root/{train,val}/{images,masks}/*.png``, ``size`` x ``size`` photos. ``blue(rng,
    shape)``: the blue channel (default uniform noise in [0, 255]); ``spikes``:
    ``{(split, index): value}`` sets the blue value of one pixel of that photo."""
    rng = np.random.default_rng(seed)
    spikes = spikes or {}
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = np.zeros((size, size), np.uint8)
            axes = (int(rng.integers(6, 12)) * size // SIZE, int(rng.integers(8, 14)) * size // SIZE)
            cv2.ellipse(label, (size // 2, size // 2), axes, 0, 0, 360, 1, -1)
            level = np.where(label == 1, person_level, background_level) + rng.uniform(-1, 1, label.shape)
            image = np.zeros((size, size, 3), np.float64)
            image[..., 0] = image[..., 1] = level
            image[..., 2] = rng.uniform(0, 255, label.shape) if blue is None else blue(rng, label.shape)
            if (split, i) in spikes:
                image[3, 3, 2] = spikes[(split, i)]
            image = np.clip(np.round(image), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / split / "images" / f"{i:03d}.png"), image[..., ::-1])
            cv2.imwrite(str(root / split / "masks" / f"{i:03d}.png"), label)
    return root


def two_layer_model(nuisance_gain: float, gain: float = 8.0, relu_fused: bool = True, size: int = SIZE,
                    padding: str = "valid") -> keras.Model:
    """Hidden ``[ch0, ch1] = relu([(R + G) / 128, nuisance_gain * B])`` (pixels in [0, 255]),
    logits ``[-gain (ch0 - 2), gain (ch0 - 2)]`` (ch1 unused), on ``size`` x ``size``
    photos. ``relu_fused``: the ReLU is the conv's activation (the conv is then no root of
    an equalization chain) rather than a layer of its own. ``padding`` of the 1x1 convs
    (the same function either way; "same" convs at least 64 wide are what the int8
    exporter's column_blocks pass rewrites)."""
    inputs = keras.Input((size, size, 3), batch_size=1, name="image")
    if relu_fused:
        hidden = keras.layers.Conv2D(2, 1, activation="relu", padding=padding, name="features")(inputs)
    else:
        hidden = keras.layers.ReLU(name="features_relu")(
            keras.layers.Conv2D(2, 1, padding=padding, name="features")(inputs))
    logits = keras.layers.Conv2D(2, 1, padding=padding, name="classifier")(hidden)
    model = keras.Model(inputs, logits, name="two_layer")
    k1 = np.zeros((1, 1, 3, 2), np.float32)
    k1[0, 0, 0, 0] = k1[0, 0, 1, 0] = 1.0 / 128.0
    k1[0, 0, 2, 1] = nuisance_gain
    model.get_layer("features").set_weights([k1, np.zeros(2, np.float32)])
    k2 = np.array([[[[-gain, gain], [0.0, 0.0]]]], np.float32)
    model.get_layer("classifier").set_weights([k2, np.array([2 * gain, -2 * gain], np.float32)])
    return model
