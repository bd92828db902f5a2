"""Where an int8 export loses accuracy: every layer's output in the full-int8 TFLite
model (dequantized) against the same layer of the rewritten float Keras model, on real
images.

The int8 file is converted from :func:`sinet_tf.export.rewrite.int8_friendly`'s model, so
its tensors are named after that model's layers; for each Keras layer the output of the
last TFLite op named after it is compared. Printed per layer: relative RMS error
``||q - f|| / ||f||`` and that error in units of the tensor's int8 step.

    python benchmarks/int8_layer_error.py sinet|extremec3net [--calibration 50] [--images 4]
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WEIGHTS = {"sinet": SHARED / "reference/official/sinet_official_state_dict.npz",
           "extremec3net": SHARED / "reference/official/extremec3_official_state_dict.npz"}
DATA = SHARED / "datasets/humanseg290"


def layer_errors(model, data: bytes, images):
    """``[(layer name, relative RMS error, error / int8 step, fraction of float values
    outside the int8 tensor's range)]`` in graph order."""
    import keras
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from sinet_tf.compat import interpreter_ops

    it = Interpreter(model_content=data, experimental_preserve_all_tensors=True, num_threads=1)
    it.allocate_tensors()
    ops = interpreter_ops(it)
    details = {d["index"]: d for d in it.get_tensor_details()}
    producer_of = {}
    for op in ops:
        for t in op["outputs"]:
            name = details[t]["name"]
            m = re.match(r"^[^/]+_\d+/([^/]+?)_\d+/", name)
            if m:
                producer_of[m.group(1)] = t  # the last op named after the layer wins
    layers = [layer for layer in model.layers if layer.name in producer_of and len(layer.output.shape) == 4]
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    stats = {layer.name: [0.0, 0.0, 0.0, 0.0] for layer in layers}
    inp = it.get_input_details()[0]
    for x in images:
        it.set_tensor(inp["index"], x[None].astype(inp["dtype"]))
        it.invoke()
        floats = probe(x[None])
        for layer, f in zip(layers, floats):
            t = producer_of[layer.name]
            d = details[t]
            q = it.get_tensor(t).astype(np.float64)
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
            if scale:
                info = np.iinfo(d["dtype"])
                lo, hi = (info.min - zero) * scale, (info.max - zero) * scale
                s[3] += float(((f < lo - scale / 2) | (f > hi + scale / 2)).sum())
    out = []
    for layer in layers:
        err, ref, scale, clipped = stats[layer.name]
        n = np.prod(layer.output.shape[1:]) * len(images)
        rms = (err / n) ** 0.5
        out.append((layer.name, (err / max(ref, 1e-30)) ** 0.5, rms / scale if scale else float("nan"), clipped / n))
    return out


def main() -> int:
    from sinet_tf.export import calibration_images
    from sinet_tf.export.exporter import representative_dataset
    from sinet_tf.export.heads import with_output_head
    from sinet_tf.export.quantize import convert
    from sinet_tf.export.rewrite import int8_friendly
    from sinet_tf.export.tflite import with_fixed_batch
    from sinet_tf.loading import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(WEIGHTS))
    parser.add_argument("--calibration", type=int, default=50)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--prelu", default=None, help="DecomposedPReLU mode (default: int8_friendly's choice)")
    args = parser.parse_args()
    model = with_output_head(with_fixed_batch(load_model(args.model, WEIGHTS[args.model], input_size=(224, 224)), 1),
                             "probabilities")
    rewritten = int8_friendly(model) if args.prelu is None else int8_friendly(model, prelu_mode=args.prelu)
    images, _ = calibration_images(DATA, "train", (224, 224), args.calibration)
    data = convert(rewritten, "int8", "float32", representative_dataset(images))
    val, _ = calibration_images(DATA, "val", (224, 224), args.images, seed=1)
    for name, rel, steps, clipped in layer_errors(rewritten, data, val):
        print(f"{name:45s} rel {rel:8.4f}   {steps:6.2f} steps   clipped {clipped:.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
