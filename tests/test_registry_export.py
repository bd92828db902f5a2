"""Every registered model converts to a batch-1 float32 ``.tflite`` that matches Keras and
passes the GPU-delegate check, and whose multiply-adds are the ones
:func:`sinet_tf.model_cost.count_macs` reports: a new architecture joins with no new test
code (full int8: test_registry_int8.py, a module of its own so the two spread over the test
workers).

The models' BatchNorm statistics come from data (registry_cases.batchnorm_from_data), so
their outputs are O(1) and a wrong conversion cannot hide below the tolerance.

SINet and ExtremeC3Net are converted with their official weights and compared with the
official outputs by test_cli.py, test_console.py and test_presets.py (and test_official_parity.py,
ExtremeC3Net's with -m slow), so they are
not repeated here with random ones; the stage-1 encoders (tag ``stage1``) and HRNet-W18-small
join with -m slow."""

import math


from sinet_tf.export import check_gpu_compatibility, convert_float32
from sinet_tf.layers.information_blocking import InformationBlockingGate
from sinet_tf.layers.normalization import InputNormalization
from sinet_tf.layers.s2 import GroupedPointwiseConv
from sinet_tf.model_cost import count_macs, iter_layers
from sinet_tf.models.bisenetv2 import ExpandingDepthwiseConv2D
from sinet_tf.runtime import TFLiteRunner
from sinet_tf.runtime.model_file import op_name, parse_model

from registry_cases import assert_outputs_match, model_params, parity_rtol, pixels, small_model_fixture

# HRNet-W18-small's conversion (its four parallel branches, 25 s of CI's two cores) joins with
# -m slow; its builder's forward pass and round trips stay in the default suite (test_registry.py)
small_model = small_model_fixture([p for p in model_params(slow_tags=("large", "stage1", "hrnet"))
                                   if p not in ("sinet", "extremec3net")])


def graph_macs(data: bytes) -> int:
    """Multiply-adds of the converted graph, from its op list and tensor shapes alone: CONV_2D
    and DEPTHWISE_CONV_2D cost the output's H x W times the filter's size, TRANSPOSE_CONV the
    input's H x W times the filter's size, FULLY_CONNECTED the rows times the weight matrix's size."""
    model = parse_model(data)
    sub = model.subgraphs[0]

    def shape(i):
        return [int(d) for d in sub.tensors[i].shape]

    total = 0
    for op in sub.operators:
        name = op_name(model, op.opcodeIndex)
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            out = shape(op.outputs[0])
            total += out[1] * out[2] * math.prod(shape(op.inputs[1]))
        elif name == "TRANSPOSE_CONV":   # inputs: output shape, filter, input
            inp = shape(op.inputs[2])
            total += inp[1] * inp[2] * math.prod(shape(op.inputs[1]))
        elif name == "FULLY_CONNECTED":
            weights = shape(op.inputs[1])
            total += math.prod(shape(op.inputs[0])) // weights[1] * math.prod(weights)
    return total


def device_only_macs(model) -> int:
    """Multiply-adds the converted graph runs beyond the paper convention of ``count_macs``,
    each from the layer's documented graph: the input normalization is one 1x1 conv 3 -> 3;
    a grouped pointwise conv runs as one dense 1x1 conv with a block-diagonal kernel; an
    expanding depthwise conv first repeats each channel with a 1x1 conv C -> C x m; SINet's
    Information Blocking gate on two classes is a constant 1x1 conv 2 -> 2 (the logit
    differences) before LOGISTIC."""
    extra = 0
    for layer in iter_layers(model):
        if isinstance(layer, InputNormalization):
            extra += math.prod(layer.output.shape[1:3]) * 3 * 3
        elif isinstance(layer, GroupedPointwiseConv) and layer.groups > 1:
            c_in = int(layer.input.shape[-1])
            extra += math.prod(layer.output.shape[1:3]) * c_in * layer.filters * (layer.groups - 1) // layer.groups
        elif isinstance(layer, ExpandingDepthwiseConv2D) and layer.depth_multiplier > 1:
            h, w, c = (int(d) for d in layer.input.shape[1:])
            extra += h * w * c * c * layer.depth_multiplier
        elif isinstance(layer, InformationBlockingGate) and layer.input.shape[-1] == 2:
            extra += math.prod(layer.input.shape[1:3]) * 2 * 2
    return extra


def test_tflite_conversion_matches_keras_and_is_gpu_compatible(small_model):
    data = convert_float32(small_model)
    runner = TFLiteRunner(data)
    assert runner.input_shape == (1, *small_model.input_shape[1:])
    x = pixels(6, small_model.input_shape[1:])
    # measured: 1e-6 to 3e-5 of the output's scale (XNNPACK vs TensorFlow kernels); the
    # chaotic deep variants more (registry_cases.parity_rtol)
    assert_outputs_match(runner(x), small_model(x), rtol=parity_rtol(small_model.name),
                         what=f"{small_model.name} TFLite vs Keras")
    report = check_gpu_compatibility(data)
    assert report.compatible, report.summary()
    # the multiply-adds `sinet models` reports are the converted graph's, less what only the device runs
    macs = count_macs(small_model)
    assert macs == graph_macs(data) - device_only_macs(small_model), (macs, graph_macs(data))
