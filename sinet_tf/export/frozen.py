"""A TFLite converter over a Keras model's frozen inference graph.

``TFLiteConverter.from_keras_model`` on a Keras 3 model writes a SavedModel first (Keras'
``ExportArchive``: every variable saved, the call traced several times, the SavedModel read
back), which is most of the conversion time (timings in the commit history and
``benchmarks/results``). Here the model is traced once at its static batch-1 input with
every variable read as a constant of its current value (``keras.StatelessScope``), so the
traced graph already is the frozen graph, and that graph is converted as it is
(:func:`sinet_tf.compat.converter_from_frozen_function`; no variable folding and no
rebuilding of the function from its GraphDef, by us or by the converter). The converter
sees the same computation with the weights constant, so it produces the same ops and the
same numbers as the Keras route (the same file up to tensor names, float32 and int8
alike, checked in the tests) in a fraction of the time. Constant weights are also what
keeps ``from_concrete_functions`` usable with Keras 3 models: left as variables they would
stay resource reads that break int8 calibration.

The converted file gets back the ``serving_default`` signature that the SavedModel route
writes (inputs named like the Keras inputs, outputs ``output_0``, ...), so
``Interpreter.get_signature_runner()`` works on it as on any exported model.
"""

from __future__ import annotations

import re

import keras
import tensorflow as tf

from sinet_tf.compat import converter_from_frozen_function, freeze_concrete_function
from sinet_tf.runtime.model_file import pack_model, parse_model, schema

__all__ = ["frozen_graph_converter", "add_serving_signature", "input_names"]


def frozen_graph_converter(model):
    """A ``tf.lite.TFLiteConverter`` for ``model`` in inference mode, traced at batch 1
    (a dynamic batch dimension is fixed to 1; height and width must be static)."""
    specs = []
    for t, name in zip(model.inputs, input_names(model)):
        shape = tuple(t.shape)
        if shape and shape[0] is None:
            shape = (1,) + shape[1:]  # phones run batch 1; a dynamic batch would leave SHAPE ops behind
        if any(d is None for d in shape):
            raise ValueError(f"model {model.name!r}: input {name!r} has a dynamic shape {tuple(t.shape)}; "
                             "conversion needs a fixed height and width (build the model with input_shape=(H, W, 3))")
        specs.append(tf.TensorSpec(shape, t.dtype, name=name))
    single = len(specs) == 1
    variables = list(model.variables)
    values = [v.numpy() for v in variables]

    def infer(*inputs):
        # each weight a Const node named after its variable (what a viewer such as Netron shows)
        constants = [tf.constant(a, name=_const_name(v.path)) for v, a in zip(variables, values)]
        with keras.StatelessScope(state_mapping=list(zip(variables, constants))):
            return model(inputs[0] if single else list(inputs), training=False)

    concrete = tf.function(infer).get_concrete_function(*specs)
    if concrete.graph.captures:  # state Keras does not track as a model variable: fold whatever was read
        concrete = freeze_concrete_function(concrete)
    return converter_from_frozen_function(concrete)


def _const_name(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-/]", "_", path).lstrip("_./-") or "weight"


def input_names(model) -> list[str]:
    """The names of the model's inputs (``image`` for every registered model; ``input_i``
    where Keras generated the name)."""
    names = []
    for i, t in enumerate(model.inputs):
        name = str(getattr(t, "name", "") or "").split(":")[0]
        names.append(name if name and not name.startswith("keras_tensor") else f"input_{i}")
    return names


def add_serving_signature(tflite: bytes, input_names: list[str]) -> bytes:
    """``tflite`` with a ``serving_default`` signature over its subgraph's inputs and outputs."""
    model = parse_model(tflite)
    if model.signatureDefs:
        return tflite
    sub = model.subgraphs[0]

    def tensor_map(name, index):
        m = schema.TensorMapT()
        m.name, m.tensorIndex = name, int(index)
        return m

    signature = schema.SignatureDefT()
    signature.signatureKey = "serving_default"
    signature.subgraphIndex = 0
    signature.inputs = [tensor_map(n, t) for n, t in zip(input_names, sub.inputs)]
    signature.outputs = [tensor_map(f"output_{i}", t) for i, t in enumerate(sub.outputs)]
    model.signatureDefs = [signature]
    return pack_model(model)
