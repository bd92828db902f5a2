"""Post-processing of person mattes: temporal smoothing for videos (:mod:`.temporal`), edge
refinement guided by the photo (:mod:`.refine`), both as Keras layers for export
(:mod:`.layers`), the frame-to-matte pipeline ``sinet predict`` runs (:mod:`.pipeline`),
and synthetic camera-motion videos with a flicker measure (:mod:`.stability`).

Names are imported on first use, so the ``sinet`` command reads the defaults without
loading TensorFlow.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "MattePipeline": "pipeline", "MattePostprocessor": "pipeline", "ModelFrame": "pipeline",
    "model_frame": "pipeline",
    "DEFAULT_EPS": "refine", "DEFAULT_RADIUS": "refine", "REFINE_MODES": "refine", "guided_filter": "refine",
    "guided_upsample": "refine",
    "DEFAULT_STRENGTH": "temporal", "DEFAULT_TEMPORAL": "temporal", "NO_HISTORY": "temporal",
    "TEMPORAL_MODES": "temporal", "TemporalSmoother": "temporal", "gated_ema_step": "temporal",
    "GatedEMA": "layers", "GuidedFilter": "layers", "with_guided_refinement": "layers",
    "with_temporal_input": "layers",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_NAMES))
