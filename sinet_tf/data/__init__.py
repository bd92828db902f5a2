"""Data: readers for dataset layouts, data sources by name, PortraitNet augmentation, the
tf.data pipeline and synthetic portraits."""

from sinet_tf.data.augment import PortraitNetAugmentation
from sinet_tf.data.base import BINARY_CLASSES, IGNORE_INDEX, ArraySource, SegmentationSource
from sinet_tf.data.pipeline import make_pipeline
from sinet_tf.data.readers import DataError, DataReport, FileDataset, check_dataset, load_dataset

__all__ = [
    "ArraySource", "BINARY_CLASSES", "DataError", "DataReport", "FileDataset", "IGNORE_INDEX",
    "PortraitNetAugmentation", "SegmentationSource", "check_dataset", "load_dataset", "make_pipeline",
]
