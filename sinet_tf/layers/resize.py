"""Bilinear resizing with the corner alignment PyTorch models were trained with."""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["BilinearResize"]


@keras.saving.register_keras_serializable(package="sinet_tf")
class BilinearResize(keras.layers.Layer):
    """Bilinear resize by an integer ``scale`` or to a fixed ``size``.

    ``align_corners=True`` reproduces PyTorch's ``F.interpolate(..., mode="bilinear",
    align_corners=True)`` used by SINet and ExtremeC3Net (corner pixels map onto
    corner pixels, ``src = dst * (in - 1) / (out - 1)``); ``False`` gives the
    half-pixel-centre convention of ``tf.image.resize`` / Keras ``UpSampling2D``.
    Either converts to one TFLite RESIZE_BILINEAR that the GPU delegate accepts
    (it refuses only align_corners together with half_pixel_centers).
    """

    def __init__(self, scale: int | None = None, size: tuple[int, int] | None = None,
                 align_corners: bool = True, **kwargs):
        super().__init__(**kwargs)
        if (scale is None) == (size is None):
            raise ValueError("BilinearResize needs exactly one of scale or size")
        self.scale = None if scale is None else int(scale)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.align_corners = bool(align_corners)

    def _out_hw(self, input_shape):
        if self.size is not None:
            return self.size
        h, w = input_shape[1], input_shape[2]
        return (None if h is None else h * self.scale, None if w is None else w * self.scale)

    def call(self, inputs):
        out_hw = self._out_hw(inputs.shape)
        if None in out_hw:
            shape = tf.shape(inputs)
            out_hw = (shape[1] * self.scale, shape[2] * self.scale)
        # ResizeBilinear always returns float32, whatever the input dtype.
        y = tf.raw_ops.ResizeBilinear(images=inputs, size=tf.stack(list(out_hw)),
                                      align_corners=self.align_corners,
                                      half_pixel_centers=not self.align_corners)
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self._out_hw(input_shape), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "size": self.size,
                "align_corners": self.align_corners}
