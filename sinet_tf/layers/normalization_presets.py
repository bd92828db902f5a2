"""The one table of input-normalization presets.

Every model takes RGB pixels in [0, 255] and its first layer
(:class:`sinet_tf.layers.InputNormalization`) applies one of these presets, so
training, evaluation, export and benchmarks never disagree about preprocessing.

A preset maps an RGB pixel ``x`` to ``(x[channel_order] - mean) * scale`` per channel,
with ``mean`` and ``scale`` given in the *output* channel order.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NormalizationPreset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class NormalizationPreset:
    name: str
    bgr: bool                       # the network sees channels in B, G, R order
    mean: tuple[float, float, float]
    scale: tuple[float, float, float]
    description: str = ""

    @property
    def channel_order(self) -> tuple[int, int, int]:
        """Index into the RGB input for each output channel."""
        return (2, 1, 0) if self.bgr else (0, 1, 2)

    def apply_numpy(self, rgb):
        """Reference implementation on a NumPy array ``[..., 3]`` of RGB pixels (float64)."""
        import numpy as np

        x = np.asarray(rgb, dtype=np.float64)[..., list(self.channel_order)]
        return (x - np.asarray(self.mean)) * np.asarray(self.scale)


_SINET_MEAN_BGR = (107.304565, 115.69884, 132.35703)
_SINET_STD_BGR = (63.97182, 65.1337, 68.29726)

PRESETS: dict[str, NormalizationPreset] = {
    p.name: p
    for p in [
        NormalizationPreset(
            "official_sinet", bgr=True, mean=_SINET_MEAN_BGR,
            scale=tuple(1.0 / (s * 255.0) for s in _SINET_STD_BGR),
            description="SINet / ExtremeC3Net official code: BGR, (x - mean) / std / 255 "
                        "(the extra /255 is what the released checkpoints expect)"),
        NormalizationPreset(
            "portraitnet", bgr=True, mean=(103.94, 116.78, 123.68), scale=(0.017, 0.017, 0.017),
            description="PortraitNet: BGR, (x - [103.94, 116.78, 123.68]) * 0.017"),
        NormalizationPreset(
            "mediapipe", bgr=False, mean=(0.0, 0.0, 0.0), scale=(1 / 255.0,) * 3,
            description="MediaPipe selfie segmentation: RGB in [0, 1]"),
        NormalizationPreset(
            "imagenet", bgr=False, mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
            scale=(1 / (0.229 * 255), 1 / (0.224 * 255), 1 / (0.225 * 255)),
            description="torchvision / keras.applications 'torch' mode: RGB, ImageNet mean and std"),
        NormalizationPreset(
            "symmetric", bgr=False, mean=(127.5, 127.5, 127.5), scale=(1 / 127.5,) * 3,
            description="RGB in [-1, 1] (keras.applications MobileNetV2 / Xception 'tf' mode)"),
        NormalizationPreset(
            "none", bgr=False, mean=(0.0, 0.0, 0.0), scale=(1.0, 1.0, 1.0),
            description="identity: the model sees raw RGB pixels in [0, 255]"),
    ]
}


def get_preset(name: str | NormalizationPreset) -> NormalizationPreset:
    if isinstance(name, NormalizationPreset):
        return name
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown normalization preset {name!r}; choose one of {', '.join(PRESETS)}") from None
