"""Every private TensorFlow / Keras / LiteRT call the project makes, in one place.

These are the calls that break on the next release of the stack: each is wrapped in a
function here with a test of its own (``tests/test_compat.py``), and a failure names the
call and the versions it was written for, so an upgrade fails here, clearly, and not
deep inside an export or a training run. Nothing else in ``sinet_tf`` reaches into
``tensorflow.python``, ``tensorflow.lite.python``, ``keras.src`` or an underscored
attribute of a TensorFlow, Keras or LiteRT object.

Written for TensorFlow 2.21, Keras 3.15 and ai-edge-litert 2.3.
"""

from __future__ import annotations

import contextlib
import logging
from io import StringIO

__all__ = ["StackChanged", "freeze_concrete_function", "converter_from_frozen_function", "calibrate_only",
           "quantize_calibrated", "layer_input_producers", "optimizer_variable_key", "optimizer_ema_pairs", "interpreter_ops",
           "xla_window_gather", "multiworker_fit_builds_locally"]

TESTED_WITH = "TensorFlow 2.21, Keras 3.15, ai-edge-litert 2.3"


class StackChanged(RuntimeError):
    """A private API of TensorFlow, Keras or LiteRT that sinet-tf relies on has changed."""


@contextlib.contextmanager
def _private(what: str):
    try:
        yield
    except (AttributeError, ImportError, TypeError) as e:
        raise StackChanged(f"{what} is not what sinet-tf was written for ({TESTED_WITH}): "
                           f"{type(e).__name__}: {e}") from e


def freeze_concrete_function(concrete):
    """The concrete function with its variables folded to constants
    (``tensorflow.python.framework.convert_to_constants.convert_variables_to_constants_v2``)."""
    with _private("tensorflow.python.framework.convert_to_constants.convert_variables_to_constants_v2"):
        from tensorflow.python.framework.convert_to_constants import (
            convert_variables_to_constants_v2,
        )
    return convert_variables_to_constants_v2(concrete)


def converter_from_frozen_function(frozen):
    """``tf.lite.TFLiteConverter.from_concrete_functions([frozen])`` for a function whose
    graph holds no variables (they are constants already), converting that graph as it is:
    the converter's own freezing step (``_freeze_concrete_function``, which rebuilds the
    function from its GraphDef even when there is nothing to fold: 1-2 s per conversion of
    SINet) is given the function's graph instead. Without the deprecation notice and the
    absl warning "consider providing the trackable_obj argument"."""
    import tensorflow as tf

    if frozen.graph.captures:
        raise ValueError(f"{frozen.name}: the function captures {len(frozen.graph.captures)} tensor(s) "
                         "(variables?); fold them to constants first (freeze_concrete_function)")
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(StringIO()):
            converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    finally:
        absl.setLevel(level)
    graph_def = frozen.graph.as_graph_def()
    with _private("TFLiteFrozenGraphConverterV2._freeze_concrete_function"):
        if not hasattr(converter, "_freeze_concrete_function"):
            raise AttributeError("the converter has no method '_freeze_concrete_function'")
        # no captures, so no resource inputs to leave out (what the converter's own step filters)
        converter._freeze_concrete_function = lambda: (graph_def, list(frozen.inputs), frozen.outputs, frozen)
    return converter


def calibrate_only(converter) -> None:
    """Make ``converter.convert()`` stop after calibration: it then returns the float model
    with the calibration statistics (min/max per tensor) instead of the quantized model
    (``TFLiteConverter._experimental_calibrate_only``)."""
    with _private("TFLiteConverter._experimental_calibrate_only"):
        if not hasattr(converter, "_experimental_calibrate_only"):
            raise AttributeError("the converter has no attribute '_experimental_calibrate_only'")
        converter._experimental_calibrate_only = True


def quantize_calibrated(calibrated: bytes, io_dtype) -> bytes:
    """The full-integer model of a calibrated float model, as ``TFLiteConverter.convert()``
    makes it with its default (MLIR) quantizer: per-channel weights, I/O of ``io_dtype``,
    read-only buffers deduplicated (``tensorflow.lite.python.convert.mlir_quantize`` and
    ``deduplicate_readonly_buffers``)."""
    with _private("tensorflow.lite.python.convert.mlir_quantize"):
        from tensorflow.lite.python import convert as tfl_convert

        quantize, dedupe = tfl_convert.mlir_quantize, tfl_convert.deduplicate_readonly_buffers
    data = quantize(calibrated, False, input_data_type=io_dtype, output_data_type=io_dtype)
    return dedupe(data)


def layer_input_producers(model) -> dict[str, list[str]]:
    """For each layer of a functional ``model``, the names of the layers whose outputs it
    takes, in call order, plus ``"<outputs>"``: the layers producing the model's outputs.
    Read from the layers' inbound call nodes (``layer._inbound_nodes``, the tensors'
    ``_keras_history``, ``keras.src.tree``, a functional model's ``_nodes``: the keys
    ``make_node_key`` gives its own call nodes); every layer here is called once within the
    model (nodes from other models' calls, such as a layer shared with another model has,
    are ignored)."""
    with _private("keras layer._inbound_nodes / tensor._keras_history / keras.src.tree / Functional._nodes"):
        import keras.src.tree as tree
        from keras.src.ops.function import make_node_key

        names = {layer.name for layer in model.layers}
        own = getattr(model, "_nodes", None)

        def producer(t):
            return t._keras_history.operation.name

        def in_model(layer, index, node):
            if own is not None:
                return make_node_key(layer, index) in own
            return all(producer(t) in names for t in tree.flatten(node.input_tensors))

        out = {}
        for layer in model.layers:
            nodes = [n for i, n in enumerate(layer._inbound_nodes) if in_model(layer, i, n)]
            out[layer.name] = [producer(t) for t in tree.flatten(nodes[0].input_tensors)] if nodes else []
        out["<outputs>"] = [producer(t) for t in tree.flatten(model.outputs)]
    return out


def optimizer_variable_key(optimizer, variable):
    """The key a Keras optimizer uses for ``variable`` in its slot tables
    (``Optimizer._var_key``): stable across replicas of a distributed variable."""
    with _private("keras Optimizer._var_key"):
        return optimizer._var_key(variable)


def optimizer_ema_pairs(optimizer) -> list[tuple]:
    """``(variable, moving average)`` for every trainable variable of a Keras optimizer built
    with ``use_ema=True`` (``Optimizer._trainable_variables`` and
    ``_model_variables_moving_average``; a loss-scale wrapper's inner optimizer)."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    with _private("keras Optimizer._trainable_variables / _model_variables_moving_average"):
        return list(zip(optimizer._trainable_variables, optimizer._model_variables_moving_average))


def interpreter_ops(interpreter) -> list[dict]:
    """Every node the LiteRT interpreter will run, in order, as dicts with ``op_name``,
    ``index``, ``inputs`` and ``outputs`` (``Interpreter._get_ops_details``): after
    delegation, a delegated partition is one ``DELEGATE`` node."""
    with _private("ai_edge_litert Interpreter._get_ops_details"):
        return interpreter._get_ops_details()


def xla_window_gather(flat, starts, window: int):
    """``flat[s : s + window]`` for every start index in ``starts`` (``[..., 1]``, int32) of a
    1-D tensor, as one XLA Gather whose slice is the window (``tf2xla``'s ``xla.gather``
    with ``GatherDimensionNumbers(offset_dims=[rank], start_index_map=[0])``). Out-of-range
    starts are clamped, as XLA does. Result ``[..., window]``. ``tf.gather`` can only take
    single elements, and ``window`` of them cost ``window`` gathers."""
    with _private("tensorflow.compiler.tf2xla.python.xla.gather"):
        from tensorflow.compiler.tf2xla.python import xla as tfxla

        rank = len(starts.shape) - 1
        dims = tfxla.xla_data_pb2.GatherDimensionNumbers(offset_dims=[rank], collapsed_slice_dims=[],
                                                         start_index_map=[0], index_vector_dim=rank)
        return tfxla.gather(flat, starts, dims, [window], True)


_LOCAL_BUILD_PATCHED = False


def multiworker_fit_builds_locally() -> None:
    """Make Keras' ``fit`` / ``evaluate`` work under ``MultiWorkerMirroredStrategy``; two
    places of Keras 3's TensorFlow trainer fail there as soon as there are two workers
    (keras-team/keras#20585):

    * a model is built from its first batch reduced across replicas,
      ``strategy.reduce("MEAN", (x, y))`` (``TensorFlowTrainer._maybe_symbolic_build``), and
      the collective strategy's ``reduce`` takes no nested structure ("Attempt to convert a
      value (PerReplica...) to a Tensor"). The build needs shapes and dtypes only: this
      worker's first local replica's batch is used instead.
    * every step's logs (scalars: the loss, the metrics' results) are averaged over workers
      with ``strategy.reduce("MEAN", v, axis=0)`` (``trainer.reduce_per_replica``), which a
      scalar has no axis 0 for; scalars are averaged with ``axis=None`` instead (the same
      mean over replicas; tensors with a batch axis keep Keras' own code).

    Other strategies keep Keras' own code. Idempotent."""
    global _LOCAL_BUILD_PATCHED
    if _LOCAL_BUILD_PATCHED:
        return
    with _private("keras.src.backend.tensorflow.trainer.TensorFlowTrainer._maybe_symbolic_build"):
        import tensorflow as tf
        from keras.src import tree
        from keras.src.backend.tensorflow import trainer as tf_trainer
        from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

        original = TensorFlowTrainer._maybe_symbolic_build
        original_reduce = tf_trainer.reduce_per_replica
        if original.__code__.co_varnames[:3] != ("self", "iterator", "data_batch"):
            raise TypeError(f"_maybe_symbolic_build{original.__code__.co_varnames[:3]} has another signature")

        def maybe_symbolic_build(self, iterator=None, data_batch=None):
            strategy = self._distribute_strategy
            if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
                return original(self, iterator=iterator, data_batch=data_batch)
            if iterator is not None:
                for _, _, it in iterator:
                    data_batch = tree.map_structure(
                        lambda v: strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues) else v, next(it))
                    break
            with strategy.scope():
                self._symbolic_build(data_batch=data_batch)

        def reduce_per_replica(values, strategy, reduction):
            if not (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                    and reduction in ("auto", "mean")):
                return original_reduce(values, strategy, reduction)

            def scalar_mean(v):
                local = strategy.experimental_local_results(v)[0] if isinstance(
                    v, tf.distribute.DistributedValues) else v
                if getattr(local, "shape", None) is not None and local.shape.rank == 0:
                    return strategy.reduce("MEAN", v, axis=None)
                return original_reduce(v, strategy, reduction)

            return tree.map_structure(scalar_mean, values)

        TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
        tf_trainer.reduce_per_replica = reduce_per_replica
    _LOCAL_BUILD_PATCHED = True

