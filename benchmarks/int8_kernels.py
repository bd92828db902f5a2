"""Micro-benchmark: the same single layer as float32 and as full-int8 TFLite, timed side
by side under LiteRT/XNNPACK (rounds interleaved), at the shapes SINet runs them.

Answers "is XNNPACK's int8 kernel for this op faster than its f32 kernel on this CPU?"
independently of the rest of the graph. int8 files have int8 I/O (no QUANTIZE or
DEQUANTIZE in the timed model).

    python benchmarks/int8_kernels.py [--threads 1,2] [--runs 200] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _cases():
    import keras
    import numpy as np
    import tensorflow as tf

    from sinet_tf.layers.resize import BilinearResize

    L = keras.layers

    def single(shape, fn):
        def build():
            x = keras.Input(shape, batch_size=1)
            return keras.Model(x, fn(x))
        return build

    def double(shape, fn):
        def build():
            x, y = keras.Input(shape, batch_size=1), keras.Input(shape, batch_size=1)
            return keras.Model([x, y], fn(x, y))
        return build

    class ChannelScale(L.Layer):
        def __init__(self, sign=1.0, rank=1):
            super().__init__()
            self.sign, self.rank = sign, rank

        def call(self, x):
            c = self.sign * np.linspace(0.1, 0.9, x.shape[-1]).astype("float32")
            return x * keras.ops.convert_to_tensor(c.reshape((1,) * (self.rank - 1) + (-1,)))

    class SpaceToDepth(L.Layer):
        def call(self, x):
            return tf.nn.space_to_depth(x, 2)

    class DepthToSpace(L.Layer):
        def call(self, x):
            return tf.nn.depth_to_space(x, 2)

    def prelu(c):
        return L.PReLU(shared_axes=[1, 2], alpha_initializer=keras.initializers.RandomUniform(0.0, 0.5))

    return {
        "conv3x3 s2 3->12 @224 (pad 1)": single((224, 224, 3), lambda x: L.Conv2D(12, 3, strides=2)(L.ZeroPadding2D(1)(x))),
        "conv3x3 s2 3->12 @224 (same)": single((224, 224, 3), lambda x: L.Conv2D(12, 3, strides=2, padding="same")(x)),
        "s2d + conv2x2 12->12 (= conv3x3 s2 3->12)": single(
            (224, 224, 3), lambda x: L.Conv2D(12, 2)(L.ZeroPadding2D(((1, 0), (1, 0)))(SpaceToDepth()(x)))),
        "conv1x1 3->3 @224": single((224, 224, 3), lambda x: L.Conv2D(3, 1)(x)),
        "conv3x3 2->2 @224": single((224, 224, 2), lambda x: L.Conv2D(2, 3, padding="same")(x)),
        "conv3x3 2->8 @224": single((224, 224, 2), lambda x: L.Conv2D(8, 3, padding="same")(x)),
        "conv3x3 8->8 @112": single((112, 112, 8), lambda x: L.Conv2D(8, 3, padding="same")(x)),
        "conv1x1 12->16 @56": single((56, 56, 12), lambda x: L.Conv2D(16, 1)(x)),
        "conv1x1 48->24 @56": single((56, 56, 48), lambda x: L.Conv2D(24, 1)(x)),
        "conv1x1 24->24 @56": single((56, 56, 24), lambda x: L.Conv2D(24, 1)(x)),
        "conv1x1 96->48 @28": single((28, 28, 96), lambda x: L.Conv2D(48, 1)(x)),
        "conv1x1 48->48 @28": single((28, 28, 48), lambda x: L.Conv2D(48, 1)(x)),
        "conv1x1 144->2 @28": single((28, 28, 144), lambda x: L.Conv2D(2, 1)(x)),
        "dw3x3 @56x56x24": single((56, 56, 24), lambda x: L.DepthwiseConv2D(3, padding="same")(x)),
        "dw5x5 @56x56x24": single((56, 56, 24), lambda x: L.DepthwiseConv2D(5, padding="same")(x)),
        "dw3x3 @28x28x48": single((28, 28, 48), lambda x: L.DepthwiseConv2D(3, padding="same")(x)),
        "dw3x3 s2 @112x112x12": single((112, 112, 12), lambda x: L.DepthwiseConv2D(3, strides=2, padding="same")(x)),
        "dw1x1 @56x56x48": single((56, 56, 48), lambda x: L.DepthwiseConv2D(1)(x)),
        "dw1x1 @28x28x96": single((28, 28, 96), lambda x: L.DepthwiseConv2D(1)(x)),
        "prelu @56x56x48": single((56, 56, 48), lambda x: prelu(48)(x)),
        "prelu @28x28x96": single((28, 28, 96), lambda x: prelu(96)(x)),
        "relu @28x28x96": single((28, 28, 96), lambda x: L.ReLU()(x)),
        "add @56x56x48": double((56, 56, 48), lambda x, y: L.Add()([x, y])),
        "add @28x28x96": double((28, 28, 96), lambda x, y: L.Add()([x, y])),
        "mul @28x28x96": double((28, 28, 96), lambda x, y: L.Multiply()([x, y])),
        "mul by [96] @28x28x96": single((28, 28, 96), lambda x: ChannelScale()(x)),
        "mul by [1,1,1,96] @28x28x96": single((28, 28, 96), lambda x: ChannelScale(rank=4)(x)),
        "maximum @28x28x96": double((28, 28, 96), lambda x, y: L.Maximum()([x, y])),
        "leaky_relu 0.2 @28x28x96": single((28, 28, 96), lambda x: L.LeakyReLU(0.2)(x)),
        "concat 2x48 @28": double((28, 28, 48), lambda x, y: L.Concatenate()([x, y])),
        "space_to_depth 2 @224x224x2": single((224, 224, 2), lambda x: SpaceToDepth()(x)),
        "depth_to_space 2 @112x112x8": single((112, 112, 8), lambda x: DepthToSpace()(x)),
        "conv3x3 12->12 @112": single((112, 112, 12), lambda x: L.Conv2D(12, 3, padding="same")(x)),
        "conv2x2 12->12 @112 (valid)": single((113, 113, 12), lambda x: L.Conv2D(12, 2)(x)),
        "resize x2 ac @112x112x2": single((112, 112, 2), lambda x: BilinearResize(scale=2)(x)),
        "resize x4 ac @7x7x48": single((7, 7, 48), lambda x: BilinearResize(scale=4)(x)),
        "grouped conv1x1 96->48 g2 @28": single((28, 28, 96), lambda x: L.Conv2D(48, 1, groups=2)(x)),
        "grouped conv1x1 48->24 g2 @56": single((56, 56, 48), lambda x: L.Conv2D(24, 1, groups=2)(x)),
        "grouped conv1x1 48->48 g2 @28": single((28, 28, 48), lambda x: L.Conv2D(48, 1, groups=2)(x)),
        "prelu as mul(relu)+add @28x28x96": single((28, 28, 96), lambda x: L.Add()([x, L.ReLU()(ChannelScale(-1)(x))])),
        "prelu as mul(relu)+add @56x56x48": single((56, 56, 48), lambda x: L.Add()([x, L.ReLU()(ChannelScale(-1)(x))])),
        "prelu as 2 dw1x1+add @28x28x96": single((28, 28, 96), lambda x: L.Add()([L.DepthwiseConv2D(1)(x), L.DepthwiseConv2D(1, activation="relu")(x)])),
        "avgpool 2 @28x28x48": single((28, 28, 48), lambda x: L.AveragePooling2D(2)(x)),
    }


def _convert(model, int8: bool, seed: int = 0):
    import contextlib
    import io

    import numpy as np
    import tensorflow as tf

    shapes = [[int(d) for d in t.shape] for t in model.inputs]
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        rng = np.random.default_rng(seed)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([rng.normal(0, 1, s).astype(np.float32) for s in shapes]
                                                     for _ in range(8))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def main() -> int:
    from sinet_tf.bench.op_profile import time_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--only", default=None, help="substring of the case names to run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    files = {}
    for name, build in _cases().items():
        if args.only and args.only not in name:
            continue
        model = build()
        files[f"{name} | f32"] = _convert(model, False)
        files[f"{name} | int8"] = _convert(model, True)
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        timed = time_models(files, threads, True, warmup=10, runs=args.runs)
        print(f"\n{threads} thread(s), XNNPACK, median ms (min), int8 / f32")
        for key in files:
            name, kind = key.split(" | ")
            if kind != "f32":
                continue
            f, q = timed[f"{name} | f32"], timed[f"{name} | int8"]
            ratio = q["median_ms"] / f["median_ms"]
            rows.append({"case": name, "threads": threads, "f32_median_ms": f["median_ms"], "f32_min_ms": f["min_ms"],
                         "int8_median_ms": q["median_ms"], "int8_min_ms": q["min_ms"], "int8_over_f32": ratio,
                         "f32_delegated": f["delegate_nodes"] > 0, "int8_delegated": q["delegate_nodes"] > 0})
            print(f"  {name:32s} f32 {f['median_ms']:.4f} ({f['min_ms']:.4f})  int8 {q['median_ms']:.4f} "
                  f"({q['min_ms']:.4f})  {ratio:5.2f}x  delegated f32/int8: {f['delegate_nodes']}/{q['delegate_nodes']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
