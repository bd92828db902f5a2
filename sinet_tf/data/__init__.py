"""Data: readers for dataset layouts, PortraitNet augmentation, the tf.data pipeline,
synthetic portraits and the normalization presets."""

from sinet_tf.data.augment import PortraitNetAugmentation
from sinet_tf.data.base import BINARY_CLASSES, IGNORE_INDEX, ArraySource, SegmentationSource
from sinet_tf.data.normalization import PRESETS, NormalizationPreset, get_preset
from sinet_tf.data.pipeline import make_pipeline
from sinet_tf.data.readers import DataError, DataReport, FileDataset, check_dataset, load_dataset

__all__ = [
    "ArraySource", "BINARY_CLASSES", "DataError", "DataReport", "FileDataset", "IGNORE_INDEX",
    "NormalizationPreset", "PRESETS", "PortraitNetAugmentation", "SegmentationSource", "check_dataset",
    "get_preset", "load_dataset", "make_pipeline",
]
