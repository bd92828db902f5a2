"""Data: normalization presets (more readers and augmentation arrive with the data issue)."""

from sinet_tf.data.normalization import PRESETS, NormalizationPreset, get_preset

__all__ = ["PRESETS", "NormalizationPreset", "get_preset"]
