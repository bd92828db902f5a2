"""Post-processing of person mattes: temporal smoothing for videos (:mod:`.temporal`), edge
refinement guided by the photo (:mod:`.refine`), the frame-to-matte pipeline ``sinet
predict`` runs (:mod:`.pipeline`), and synthetic camera-motion videos with a flicker
measure (:mod:`.stability`)."""

from sinet_tf.postprocess.pipeline import MattePipeline, MattePostprocessor, ModelFrame, model_frame
from sinet_tf.postprocess.refine import (DEFAULT_EPS, DEFAULT_RADIUS, REFINE_MODES, GuidedFilter, guided_filter,
                                         guided_upsample, with_guided_refinement)
from sinet_tf.postprocess.temporal import (DEFAULT_STRENGTH, DEFAULT_TEMPORAL, NO_HISTORY, TEMPORAL_MODES, GatedEMA,
                                           TemporalSmoother, gated_ema_step, with_temporal_input)

__all__ = ["DEFAULT_EPS", "DEFAULT_RADIUS", "DEFAULT_STRENGTH", "DEFAULT_TEMPORAL", "NO_HISTORY", "REFINE_MODES",
           "TEMPORAL_MODES", "GatedEMA", "GuidedFilter", "MattePipeline", "MattePostprocessor", "ModelFrame",
           "TemporalSmoother", "gated_ema_step", "guided_filter", "guided_upsample", "model_frame",
           "with_guided_refinement", "with_temporal_input"]
