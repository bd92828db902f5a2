"""Data: readers for dataset layouts, data sources by name, PortraitNet augmentation, the
tf.data pipeline and synthetic portraits.

Names are imported on first use, so reading photos and masks (the readers, the synthetic
portraits: NumPy and OpenCV) does not load TensorFlow: ``sinet predict``, ``evaluate`` and
``bench`` on a ``.tflite`` file start without it. The augmentation and the pipeline
(``PortraitNetAugmentation``, ``make_pipeline``) bring it in.
"""

from __future__ import annotations

from sinet_tf.lazy import lazy_attributes

_NAMES = {
    "PortraitNetAugmentation": "augment",
    "ArraySource": "base", "BINARY_CLASSES": "base", "IGNORE_INDEX": "base", "SegmentationSource": "base",
    "make_pipeline": "pipeline",
    "DataError": "readers", "DataReport": "readers", "FileDataset": "readers", "check_dataset": "readers",
    "load_dataset": "readers",
}

__all__ = sorted(_NAMES)

__getattr__, __dir__ = lazy_attributes(__name__, {name: f"{__name__}.{module}" for name, module in _NAMES.items()})
