"""Per-op latency of a ``.tflite`` file under LiteRT (:func:`op_profile`).

LiteRT's Python interpreter has no op profiler, and XNNPACK runs a whole model as one
DELEGATE node: every op, or any set of ops, is cut out into a model of its own (the same
tensors, quantization and constants; the non-constant tensors it reads become inputs) and
timed under the same interpreter."""

from __future__ import annotations

import keras
import numpy as np

from sinet_tf.bench.host import interleaved_times
from sinet_tf.compat import interpreter_ops
from sinet_tf.export.frozen import frozen_graph_converter
from sinet_tf.runtime.interpreter import make_interpreter
from sinet_tf.runtime.model_file import (
    is_constant,
    op_name,
    pack_model,
    parse_model,
    type_name,
)

__all__ = ["invoke_overhead_ms", "op_profile", "subgraph_model", "summarize_profile", "time_models"]


def subgraph_model(data: bytes, op_indices) -> bytes:
    """A ``.tflite`` model holding only the ops ``op_indices`` of ``data`` (first
    subgraph), in their original order: its inputs are the non-constant tensors those ops
    read that none of them produces, its outputs the tensors they produce that an op
    outside the set (or the model's output) reads, or, failing that, the last op's outputs.
    Tensors, quantization parameters, constants and op options are the original's."""
    model = parse_model(data)
    sub = model.subgraphs[0]
    keep = sorted(set(int(i) for i in op_indices))
    chosen = set(keep)
    produced, read = set(), []
    for i in keep:
        op = sub.operators[i]
        read += [int(t) for t in op.inputs if t >= 0]
        produced |= {int(t) for t in op.outputs}
    outside = {int(t) for j, op in enumerate(sub.operators) if j not in chosen for t in op.inputs if t >= 0}
    outside |= {int(t) for t in sub.outputs}
    inputs = list(dict.fromkeys(t for t in read if t not in produced and not is_constant(model, sub.tensors[t])))
    outputs = [t for t in sorted(produced) if t in outside] or [int(t) for t in sub.operators[keep[-1]].outputs]
    sub.operators = [sub.operators[i] for i in keep]
    sub.inputs, sub.outputs = inputs, outputs
    model.subgraphs = [sub]
    model.signatureDefs = None
    return pack_model(model)


def _random_inputs(interpreter, seed: int = 0):
    rng = np.random.default_rng(seed)
    for d in interpreter.get_input_details():
        if d["dtype"] == np.bool_:
            interpreter.set_tensor(d["index"], rng.integers(0, 2, d["shape"]).astype(np.bool_))
            continue
        dtype = d["dtype"]
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            x = rng.integers(max(info.min, -128), min(info.max, 255) + 1, d["shape"]).astype(dtype)
        else:
            x = rng.normal(0.0, 1.0, d["shape"]).astype(dtype)
        interpreter.set_tensor(d["index"], x)


def _profile_interpreter(data: bytes, threads: int, xnnpack: bool):
    interpreter = make_interpreter(data, threads=threads, xnnpack=xnnpack)
    _random_inputs(interpreter)
    return interpreter


def time_models(models: dict, threads: int = 1, xnnpack: bool = True, warmup: int = 3, runs: int = 30,
                inner: int = 1) -> dict:
    """``{name: {"median_ms", "min_ms", "delegate_nodes"}}`` for ``{name: .tflite bytes}``:
    ``invoke()`` times with the rounds interleaved over the models (as
    :func:`sinet_tf.bench.benchmark` does; random inputs set once), and how many DELEGATE
    nodes XNNPACK made of each model (1: one partition; 0: the builtin kernels run it).
    With ``inner > 1`` a sample is the mean of ``inner`` back-to-back invokes of one model:
    warm caches, as an op sees them inside a whole graph."""
    its = {k: _profile_interpreter(v, threads, xnnpack) for k, v in models.items()}
    times = interleaved_times({k: it.invoke for k, it in its.items()}, warmup, runs, inner)
    out = {}
    for k, it in its.items():
        kinds = [o["op_name"] for o in interpreter_ops(it)]
        out[k] = {"median_ms": float(np.median(times[k])), "min_ms": float(np.min(times[k])),
                  "delegate_nodes": kinds.count("DELEGATE")}
    return out


def _weight_producers(model) -> dict:
    """``{op index: [indices of the DEQUANTIZE ops of constants it reads]}``: an fp16 model's
    weights reach their ops through DEQUANTIZE, which the runtime folds at load time; an op
    cut out alone needs them with it (a custom op such as MediaPipe's
    Convolution2DTransposeBias refuses non-constant weights)."""
    sub = model.subgraphs[0]
    dequantized = {}
    for j, op in enumerate(sub.operators):
        if op_name(model, op.opcodeIndex) == "DEQUANTIZE" and all(
                is_constant(model, sub.tensors[int(t)]) for t in op.inputs if t >= 0):
            dequantized.update({int(t): j for t in op.outputs})
    return {i: [dequantized[int(t)] for t in op.inputs if int(t) in dequantized]
            for i, op in enumerate(sub.operators)}


def op_profile(data: bytes, threads: int = 1, xnnpack: bool = True, warmup: int = 3, runs: int = 20,
               inner: int = 10) -> list[dict]:
    """Per-op latency of a ``.tflite`` model: each op timed alone (:func:`subgraph_model`),
    rounds interleaved over all ops, each sample the mean of ``inner`` back-to-back
    invokes (warm caches: inside the whole model an op reads what the previous op just
    wrote; ``inner=1`` gives cold-cache times, which overstate memory-bound float ops).
    One dict per op, in graph order: ``index``, ``op``, ``output_shape``, ``dtype`` (of its
    first output), ``delegated`` (XNNPACK took it), ``median_ms``, ``min_ms`` (and
    ``folded_at_load``, with times 0, for a weight's DEQUANTIZE). Each time
    includes one ``invoke()`` overhead (about 2 us here; :func:`invoke_overhead_ms`).
    Inside a whole model XNNPACK also fuses some ops (a PAD into the conv after it), so
    the sum over ops is an upper bound of the whole model's time. An op that reads
    dequantized constants (fp16 weights) is timed with those DEQUANTIZE ops, which the
    runtime folds at load time."""
    model = parse_model(data)
    sub = model.subgraphs[0]
    weights = _weight_producers(model)
    folded = {j for js in weights.values() for j in js}
    singles = {i: subgraph_model(data, [*weights[i], i]) for i in range(len(sub.operators)) if i not in folded}
    timed = time_models(singles, threads, xnnpack, warmup, runs, inner)
    rows = []
    for i, op in enumerate(sub.operators):
        out = sub.tensors[int(op.outputs[0])]
        row = {"index": i, "op": op_name(model, op.opcodeIndex), "output_shape": [int(d) for d in out.shape],
               "dtype": type_name(out.type).lower()}
        if i in folded:  # a weight's DEQUANTIZE: folded at load time, timed with the op that reads it
            row.update(delegated=True, median_ms=0.0, min_ms=0.0, folded_at_load=True)
        else:
            row.update(delegated=timed[i]["delegate_nodes"] > 0, median_ms=timed[i]["median_ms"],
                       min_ms=timed[i]["min_ms"])
        rows.append(row)
    return rows


def invoke_overhead_ms(threads: int = 1, runs: int = 200) -> float:
    """Median ``invoke()`` time of a one-op model on a ``[1, 1, 1, 1]`` tensor: what every
    per-op time of :func:`op_profile` includes besides the op itself."""
    x = keras.Input(batch_shape=(1, 1, 1, 1))
    converter = frozen_graph_converter(keras.Model(x, x + 1.0))
    return time_models({"add": converter.convert()}, threads, True, 10, runs)["add"]["median_ms"]


def summarize_profile(rows: list[dict]) -> list[dict]:
    """Per-op-type totals of :func:`op_profile` rows, largest first: ``op``, ``count``,
    ``median_ms`` (sum of the ops' medians), ``share`` of the total and ``not_delegated``."""
    total = sum(r["median_ms"] for r in rows) or 1.0
    by = {}
    for r in rows:
        e = by.setdefault(r["op"], {"op": r["op"], "count": 0, "median_ms": 0.0, "not_delegated": 0})
        e["count"] += 1
        e["median_ms"] += r["median_ms"]
        e["not_delegated"] += 0 if r["delegated"] else 1
    out = sorted(by.values(), key=lambda e: -e["median_ms"])
    for e in out:
        e["share"] = e["median_ms"] / total
    return out
