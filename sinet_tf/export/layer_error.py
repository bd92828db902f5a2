"""Where an int8 file loses accuracy: every layer's output in the full-integer TFLite model
(dequantized) against the same layer of the float Keras model it was converted from.

The int8 file is converted from the rewritten model
(:func:`sinet_tf.export.rewrite.int8_friendly`), so its tensors are named after that model's
layers: for each Keras layer the output of the last TFLite op named after it is compared.
Per layer: relative RMS error ``||q - f|| / ||f||``, that error in units of the tensor's
int8 step, the fraction of float values outside the int8 tensor's range (clipped), and the
error the layer *adds*: its relative error minus the largest one among the layers that feed
it. The layers that add most are where a calibration loses: :func:`worst_layers`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from sinet_tf.compat import interpreter_ops
from sinet_tf.runtime.interpreter import make_interpreter

__all__ = ["LayerError", "layer_errors", "tensors_by_layer", "worst_layers"]

# a frozen-graph tensor name: "<model>_<n>/<layer>_<n>/<op>..." (fused ops join several with ";")
_LAYER_OF_TENSOR = re.compile(r"^[^/]+_\d+/([^/]+?)_\d+/")


@dataclass(frozen=True)
class LayerError:
    layer: str
    relative_error: float      # ||q - f|| / ||f|| over the images
    error_steps: float         # RMS error / the tensor's int8 step
    clipped: float             # fraction of float values outside the int8 range
    added: float               # relative_error minus the largest relative error of its inputs

    def to_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def describe(self) -> str:
        text = f"{self.layer} (relative error {self.relative_error:.3f}, +{max(self.added, 0.0):.3f} over its inputs"
        if self.clipped > 1e-4:
            text += f", {self.clipped:.2%} of its values clipped"
        return text + ")"


def tensors_by_layer(interpreter) -> dict[str, int]:
    """``{Keras layer name: index of the output tensor of the last op named after it}`` of
    a LiteRT interpreter over a file converted from a Keras functional model."""
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    out = {}
    for op in interpreter_ops(interpreter):
        for t in op["outputs"]:
            m = _LAYER_OF_TENSOR.match(details[t]["name"])
            if m:
                out[m.group(1)] = int(t)  # the last op named after the layer wins
    return out


def layer_errors(model, data: bytes, images) -> list[LayerError]:
    """:class:`LayerError` of every 4-D layer output of ``model`` (the rewritten float Keras
    model ``data`` was converted from) found in the int8 file ``data``, on ``images``
    (``[N, H, W, 3]`` at the model's input), in graph order."""
    import keras

    from sinet_tf.export.passes.graph import copy_model, read_graph

    # the probe reads layer.output: a copy owns its layers (the exporter's rewritten models may
    # share theirs with the model they were rewritten from, whose graph layer.output would be)
    model = copy_model(model)
    interpreter = make_interpreter(data, xnnpack=False, keep_all_tensors=True)
    producer_of = tensors_by_layer(interpreter)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    layers = [layer for layer in model.layers if layer.name in producer_of and len(layer.output.shape) == 4]
    if not layers:
        return []
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    stats = {layer.name: [0.0, 0.0, 0.0, 0.0, 0] for layer in layers}
    inp = interpreter.get_input_details()[0]
    for image in images:
        x = np.asarray(image, np.float32)[None]
        feed = x
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            feed = np.clip(np.round(x / scale + zero), info.min, info.max)
        interpreter.set_tensor(inp["index"], feed.astype(inp["dtype"]))
        interpreter.invoke()
        floats = probe(x)
        floats = floats if isinstance(floats, (list, tuple)) else [floats]
        for layer, f in zip(layers, floats):
            d = details[producer_of[layer.name]]
            q = interpreter.get_tensor(d["index"]).astype(np.float64)
            scale, zero = d["quantization"]
            if scale:
                q = (q - zero) * scale
            f = np.asarray(f, np.float64)
            if q.shape != f.shape:
                continue
            s = stats[layer.name]
            s[0] += float(((q - f) ** 2).sum())
            s[1] += float((f ** 2).sum())
            s[2] = scale or 0.0
            s[4] += f.size
            if scale:
                info = np.iinfo(d["dtype"])
                lo, hi = (info.min - zero) * scale, (info.max - zero) * scale
                s[3] += float(((f < lo - scale / 2) | (f > hi + scale / 2)).sum())
    graph = read_graph(model)
    relative = {}
    out = []
    for layer in layers:
        err, ref, scale, clipped, n = stats[layer.name]
        if not n:
            continue
        rms = (err / n) ** 0.5
        rel = (err / max(ref, 1e-30)) ** 0.5
        relative[layer.name] = rel
        inputs = _measured_inputs(layer.name, graph, relative)
        out.append(LayerError(layer.name, rel, rms / scale if scale else float("nan"), clipped / n,
                              rel - max((relative[p] for p in inputs), default=0.0)))
    return out


def _measured_inputs(name, graph, relative) -> set[str]:
    """The nearest measured layers upstream of ``name`` (through unmeasured ones)."""
    found, frontier, seen = set(), list(graph.producers.get(name, [])), set()
    while frontier:
        p = frontier.pop()
        if p in seen:
            continue
        seen.add(p)
        if p in relative:
            found.add(p)
        else:
            frontier += graph.producers.get(p, [])
    return found


def worst_layers(errors: list[LayerError], count: int = 3) -> list[LayerError]:
    """The ``count`` layers that add the most error over their inputs."""
    return sorted(errors, key=lambda e: -e.added)[:count]
