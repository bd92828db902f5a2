"""sinet-tf: mobile portrait segmentation with Keras 3 / TensorFlow, from architecture to phone."""

__version__ = "0.1.0"

from sinet_tf.registry import (  # noqa: E402
    UnknownModelError,
    build_model,
    get_model_info,
    list_models,
    register_model,
)
from sinet_tf import models  # noqa: E402,F401  (registers every architecture)

__all__ = [
    "UnknownModelError",
    "build_model",
    "get_model_info",
    "list_models",
    "register_model",
]
