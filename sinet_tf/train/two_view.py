"""PortraitNet's two-view training (Zhang et al., Computers & Graphics 2019, Sec. 3.2-3.3).

Every example comes as two views with the same geometry: one with PortraitNet's texture
changes, one without. The network sees both; the loss is

    L = L_m(textured) + L_m(plain) + alpha * L_c + beta * (L_e(textured) + L_e(plain))

with ``L_m`` the mask loss, ``L_c`` the consistency loss (KL between the softened plain and
textured outputs, temperature T, the plain view as the target) and ``L_e`` the boundary focal
loss on the network's edge head, when it has one. Defaults: beta = 0.1 (the paper's weight of
the boundary loss); alpha = 2 and T = 1 are taken as the authors' training setting and are
recipe keys, to be checked against the paper.

The wrapper's output stacks both views' logits on the channel axis, so the whole objective is
one ordinary Keras loss and ``fit`` keeps its distribution and metric machinery.
"""

from __future__ import annotations

import keras
from keras import ops

from sinet_tf.losses import BoundaryFocalLoss, consistency_loss
from sinet_tf.metrics import PersonIoU

__all__ = ["TwoViewModel", "TwoViewLoss", "TwoViewPersonIoU"]


def _outputs(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


@keras.saving.register_keras_serializable(package="sinet_tf")
class TwoViewModel(keras.Model):
    """Runs ``network`` on ``{"image": textured, "plain": plain}`` (or the same tensor twice)
    and returns ``concat([mask_tex, mask_plain, edge_tex?, edge_plain?], -1)`` in float32."""

    def __init__(self, network: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.num_classes = int(_outputs(network.outputs)[0].shape[-1])
        self.has_edge = len(network.outputs) > 1

    def call(self, inputs, training=False):
        if isinstance(inputs, dict):
            textured, plain = inputs["image"], inputs["plain"]
        else:
            textured = plain = inputs
        out_t = _outputs(self.network(textured, training=training))
        out_p = _outputs(self.network(plain, training=training))
        parts = [out_t[0], out_p[0]] + ([out_t[1], out_p[1]] if self.has_edge else [])
        return ops.concatenate([ops.cast(p, "float32") for p in parts], axis=-1)

    def get_config(self):
        return {"network": keras.saving.serialize_keras_object(self.network), "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(config.pop("network"))
        return cls(network, **config)


@keras.saving.register_keras_serializable(package="sinet_tf")
class TwoViewLoss(keras.losses.Loss):
    """The two-view objective above on :class:`TwoViewModel`'s stacked output."""

    def __init__(self, mask_loss, num_classes: int = 2, has_edge: bool = False, consistency_weight: float = 2.0,
                 temperature: float = 1.0, edge_weight: float = 0.1, edge_width: int = 4, gamma: float = 2.0,
                 name="two_view_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.mask_loss = keras.losses.get(mask_loss) if isinstance(mask_loss, dict) else mask_loss
        self.num_classes, self.has_edge = int(num_classes), bool(has_edge)
        self.consistency_weight, self.temperature = float(consistency_weight), float(temperature)
        self.edge_weight, self.edge_width, self.gamma = float(edge_weight), int(edge_width), float(gamma)
        self._focal = BoundaryFocalLoss(gamma=self.gamma, edge_width=self.edge_width)

    def call(self, y_true, y_pred):
        c = self.num_classes
        seg_t, seg_p = y_pred[..., :c], y_pred[..., c:2 * c]
        loss = self.mask_loss.call(y_true, seg_t) + self.mask_loss.call(y_true, seg_p)
        if self.consistency_weight:
            loss = loss + self.consistency_weight * consistency_loss(seg_t, seg_p, self.temperature, per_example=True)
        if self.has_edge and self.edge_weight:
            e_t, e_p = y_pred[..., 2 * c:2 * c + 1], y_pred[..., 2 * c + 1:2 * c + 2]
            loss = loss + self.edge_weight * (self._focal.call(y_true, e_t) + self._focal.call(y_true, e_p))
        return loss

    def get_config(self):
        return {**super().get_config(), "mask_loss": keras.losses.serialize(self.mask_loss),
                "num_classes": self.num_classes, "has_edge": self.has_edge,
                "consistency_weight": self.consistency_weight, "temperature": self.temperature,
                "edge_weight": self.edge_weight, "edge_width": self.edge_width, "gamma": self.gamma}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["mask_loss"] = keras.losses.deserialize(config["mask_loss"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="sinet_tf")
class TwoViewPersonIoU(PersonIoU):
    """:class:`~sinet_tf.metrics.PersonIoU` of the first ``num_classes`` channels: the textured
    view's mask logits here, the main logits of :class:`~sinet_tf.train.aux_head.AuxHeadModel`."""

    def __init__(self, num_classes: int = 2, name="person_iou", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true, y_pred[..., :self.num_classes], sample_weight)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}
