"""Post-processing of person mattes: temporal smoothing for videos (:mod:`.temporal`), edge
refinement guided by the photo (:mod:`.refine`), both as Keras layers for export
(:mod:`.layers`), the frame-to-matte pipeline ``sinet predict`` runs (:mod:`.pipeline`),
and synthetic camera-motion videos with a flicker measure (:mod:`.stability`).

Names are imported on first use, so the ``sinet`` command reads the defaults without
loading TensorFlow.
"""

from __future__ import annotations

from sinet_tf.lazy import lazy_attributes

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


__getattr__, __dir__ = lazy_attributes(__name__, {name: f"{__name__}.{module}" for name, module in _NAMES.items()})
