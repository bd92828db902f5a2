"""Training a network with an auxiliary head (deep supervision; PSPNet, Zhao et al., CVPR 2017,
Sec. 3.3 and Fig. 4).

The network outputs ``[logits, aux_logits]``, both at the label resolution; the loss is

    L = L_m(logits) + aux_weight * L_m(aux_logits)

with ``L_m`` the recipe's loss (PSPNet: cross-entropy, ``aux_weight`` 0.4, Sec. 4.1). Only the
main logits feed the metrics, and the deployable network (:attr:`AuxHeadModel.network`, saved
as ``best.keras``) is the sub-model from the input to the main logits: the same layers and
weights without the auxiliary branch, which "is abandoned in the testing phase".

As in :mod:`sinet_tf.train.two_view`, the wrapper stacks both outputs on the channel axis so the
objective is one ordinary Keras loss and ``fit`` keeps its distribution and metric machinery.
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["AUX_OUTPUT", "AuxHeadModel", "AuxLoss", "has_aux_output"]

AUX_OUTPUT = "aux_logits"


def has_aux_output(network: keras.Model) -> bool:
    """True for a network whose outputs are ``[logits, aux_logits]`` (e.g. PSPNet with ``aux_head=True``)."""
    return list(getattr(network, "output_names", None) or [])[1:] == [AUX_OUTPUT]


@keras.saving.register_keras_serializable(package="sinet_tf")
class AuxHeadModel(keras.Model):
    """Runs ``full_network`` (outputs ``[logits, aux_logits]``) and returns
    ``concat([logits, aux_logits], -1)`` in float32."""

    def __init__(self, full_network: keras.Model, **kwargs):
        super().__init__(**kwargs)
        if not has_aux_output(full_network):
            raise ValueError(f"AuxHeadModel: {full_network.name} must output [logits, {AUX_OUTPUT}], "
                             f"got {getattr(full_network, 'output_names', None)}")
        self.full_network = full_network
        self.num_classes = int(full_network.outputs[0].shape[-1])

    @property
    def network(self) -> keras.Model:
        """The deployable network: input -> main logits, sharing ``full_network``'s layers."""
        net = self.full_network
        return keras.Model(net.inputs, net.outputs[0], name=net.name)

    def call(self, inputs, training=False):
        logits, aux = self.full_network(inputs, training=training)
        return ops.concatenate([ops.cast(logits, "float32"), ops.cast(aux, "float32")], axis=-1)

    def get_config(self):
        return {"full_network": keras.saving.serialize_keras_object(self.full_network), "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        network = keras.saving.deserialize_keras_object(config.pop("full_network"))
        return cls(network, **config)


@keras.saving.register_keras_serializable(package="sinet_tf")
class AuxLoss(keras.losses.Loss):
    """``L_m(logits) + aux_weight * L_m(aux_logits)`` on :class:`AuxHeadModel`'s stacked output."""

    def __init__(self, mask_loss, num_classes: int = 2, aux_weight: float = 0.4, name="aux_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.mask_loss = keras.losses.get(mask_loss) if isinstance(mask_loss, dict) else mask_loss
        self.num_classes, self.aux_weight = int(num_classes), float(aux_weight)

    def call(self, y_true, y_pred):
        c = self.num_classes
        loss = self.mask_loss.call(y_true, y_pred[..., :c])
        if self.aux_weight:
            loss = loss + self.aux_weight * self.mask_loss.call(y_true, y_pred[..., c:2 * c])
        return loss

    def get_config(self):
        return {**super().get_config(), "mask_loss": keras.losses.serialize(self.mask_loss),
                "num_classes": self.num_classes, "aux_weight": self.aux_weight}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["mask_loss"] = keras.losses.deserialize(config["mask_loss"])
        return cls(**config)
