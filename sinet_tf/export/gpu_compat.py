"""Offline TFLite **GPU delegate** compatibility checker.

TensorFlow 2.21's ``tf.lite.experimental.Analyzer.analyze(...,
gpu_compatibility=True)`` no longer checks anything (it calls a model ending
in ARG_MAX "compatible"), so this module re-implements the GPU delegate's
rules in pure Python on top of the ``.tflite`` flatbuffer
(``ai_edge_litert.schema_py_generated``).

Sources mirrored (TensorFlow, ``tensorflow/tensorflow``):

* ``tensorflow/lite/tools/versioning/gpu_compatibility.cc`` --
  ``CheckGpuDelegateCompatibility(const OpSignature&, GpuCompatibilityFlags)``
  and its helpers (``IsActivationSupported``, ``CheckInputsOutputs``,
  ``CheckConvoultionInputOutput``, ``CheckAxesAreInt32Const``,
  ``CheckPooling2DGpuDelegateCompatibility``,
  ``CheckDepthwiseConvGpuDelegateCompatibility``,
  ``CheckCustomOpsGpuDelegateCompatibility``,
  ``CheckAddMulBroadcastCompatibility``, ...).  Line numbers quoted as
  ``gpu_compatibility.cc:L<a>-<b>`` refer to the version at commit
  ``03a5e4e19a9c8200e13c85f1c637877fdf589be6`` (TF ~2.15-2.17; 1182 lines).
* ``tensorflow/lite/tools/versioning/op_signature.cc`` -- how an operator is
  turned into an ``OpSignature`` (a tensor is *constant* when its buffer holds
  data; optional inputs have index -1 and type ``kTfLiteNoType``).
* ``tensorflow/lite/delegates/gpu/common/model_builder.cc`` -- the delegate's
  graph-level requirements that live outside ``gpu_compatibility.cc``:
  ``GetOpsToReplace`` / ``IsAllAllowedTensors`` (no tensor of rank >= 5;
  non-constant tensors must be FLOAT32/FLOAT16, INT8/UINT8 when quantized ops
  are enabled, BOOL outputs for comparisons, BOOL/INT32 for CAST),
  ``NewOperationParser`` (QUANTIZE/DEQUANTIZE need quantized ops enabled;
  anything without a parser is "not supported"), and the parsers'
  ``IsSupported``/``Parse`` requirements: ``CheckMaxSupportedOpVersion`` caps
  (e.g. RESHAPE v1, PRELU v1, CONV_2D v6), ``PReLUOperationParser`` (alpha
  constant, per-channel or a full HxWxC tensor), comparison ops only when
  their BOOL output feeds one CAST to float (and BOOL->float CAST only after
  a comparison), no identical runtime inputs except for ADD/MUL, constant
  STRIDED_SLICE begin/end/strides with positive strides, no grouped runtime
  CONV_2D weights, BATCH_MATMUL with a runtime and a constant 2D input, and
  FULLY_CONNECTED whose per-batch input size equals the weights' width (a
  Dense layer on a (1, H, W, C) tensor fails at delegate Init).
* ``tensorflow/lite/delegates/gpu/common/model_builder_helper.cc`` --
  ``MaybeFuseActivation`` (fused activations the delegate can emit),
  ``ExtractTensorShape`` (rank <= 4, dim 0 is the batch),
  ``SetAllDimensions`` (shape rules used for PReLU's alpha).

Model-level problems that the phone-side delegate runs into and that we also
report: dynamic shapes (any ``shape_signature`` entry of -1, e.g. a ``None``
batch), an input batch other than 1, and models with more than one subgraph
(control flow such as WHILE/IF, which the GPU delegate cannot run).

Rule map (builtin op -> ``gpu_compatibility.cc`` lines): see ``_RULES``; e.g.
ADD L514-527, CAST L548-570, CONV_2D L578-587, DEPTHWISE_CONV_2D L261-303,
MEAN L827-833, MUL L835-874, SOFTMAX L918-925, STRIDED_SLICE L950-975,
RESIZE_BILINEAR L998-1009, reductions L1025-1033, PAD L1035-1066,
elementwise L1068-1128, custom ops L409-439, "Not supported op" L1153-1159.

Only the standard library, numpy and ``ai_edge_litert`` are imported here; no
TensorFlow.

Usage::

    from sinet_tf.export.gpu_compat import check_gpu_compatibility
    report = check_gpu_compatibility("model.tflite")
    print(report.summary())
    assert report.compatible, report.summary()
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from sinet_tf.runtime.model_file import op_name, read_model, read_tflite, type_name
from sinet_tf.runtime.model_file import schema as _schema

__all__ = [
    "GpuReport",
    "OpVerdict",
    "TensorSpec",
    "check_gpu_compatibility",
    "check_op",
    "SUPPORTED_BUILTIN_OPS",
    "SUPPORTED_CUSTOM_OPS",
]


# --------------------------------------------------------------------------
# Enum name tables.
# --------------------------------------------------------------------------
def _enum_names(enum_cls: type) -> dict[int, str]:
    return {
        value: name
        for name, value in vars(enum_cls).items()
        if not name.startswith("_") and isinstance(value, int)
    }


_ACT_NAMES: dict[int, str] = _enum_names(_schema.ActivationFunctionType)
_INT32 = _schema.TensorType.INT32

# TfLiteFusedActivation (C enum, used in custom-op option structs):
# kTfLiteActNone=0, Relu=1, ReluN1To1=2, Relu6=3, Tanh=4, SignBit=5, Sigmoid=6.
_TFLITE_ACT_NAMES = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6",
                     4: "TANH", 5: "SIGN_BIT", 6: "SIGMOID"}
_SUPPORTED_ACTS = {"NONE", "RELU", "RELU_N1_TO_1", "RELU6", "TANH", "SIGMOID"}

#: Custom ops the GPU delegate implements itself
#: (gpu_compatibility.cc:L409-439, model_builder.cc NewOperationParser).
SUPPORTED_CUSTOM_OPS = (
    "Convolution2DTransposeBias",
    "MaxPoolingWithArgmax2D",
    "MaxUnpooling2D",
    "Resampler",
)

_CONTROL_FLOW_OPS = {"WHILE", "IF", "CALL_ONCE", "CALL", "STABLEHLO_WHILE",
                     "STABLEHLO_CASE", "STABLEHLO_COMPOSITE"}

# model_builder.cc IsLogicalCode(): comparison ops may output BOOL.
_LOGICAL_OPS = {"GREATER", "GREATER_EQUAL", "LESS", "LESS_EQUAL", "EQUAL",
                "NOT_EQUAL"}


# --------------------------------------------------------------------------
# Public result types.
# --------------------------------------------------------------------------
@dataclass
class OpVerdict:
    """Verdict for one operator of the model."""

    subgraph: int
    index: int  # operator index inside the subgraph
    op: str  # "CONV_2D", "CUSTOM:Resampler", "FLEX:BitwiseAnd", ...
    compatible: bool
    reasons: list[str] = field(default_factory=list)  # empty when compatible

    def to_dict(self) -> dict:
        return {
            "subgraph": self.subgraph,
            "index": self.index,
            "op": self.op,
            "compatible": self.compatible,
            "reasons": list(self.reasons),
        }


@dataclass
class GpuReport:
    """Result of :func:`check_gpu_compatibility`."""

    ops: list[OpVerdict]
    graph_problems: list[str]
    source: str = "<bytes>"

    @property
    def compatible(self) -> bool:
        """True when there is no graph problem and every op is accepted."""
        return not self.graph_problems and all(v.compatible for v in self.ops)

    @property
    def incompatible(self) -> list[OpVerdict]:
        return [v for v in self.ops if not v.compatible]

    def op_counts(self) -> dict[str, int]:
        """Number of operators per op type (first-appearance order)."""
        return dict(Counter(v.op for v in self.ops))

    def _op_type_table(self) -> dict[str, dict]:
        table: dict[str, dict] = {}
        for v in self.ops:
            row = table.setdefault(
                v.op, {"count": 0, "incompatible": 0, "compatible": True})
            row["count"] += 1
            if not v.compatible:
                row["incompatible"] += 1
                row["compatible"] = False
        return table

    def to_dict(self) -> dict:
        """JSON-serialisable summary.

        ``ops`` lists only the rejected operators (with their reasons);
        ``op_types`` is a per-op-type verdict table covering every op type.
        """
        return {
            "source": self.source,
            "compatible": self.compatible,
            "graph_problems": list(self.graph_problems),
            "op_counts": self.op_counts(),
            "num_ops": len(self.ops),
            "num_incompatible_ops": len(self.incompatible),
            "ops": [v.to_dict() for v in self.incompatible],
            "op_types": self._op_type_table(),
        }

    def _where(self) -> str:
        return "" if self.source == "<bytes>" else f" [{self.source}]"

    def summary(self) -> str:
        """Human-readable report: verdict line, then one line per problem."""
        n_ops = len(self.ops)
        n_types = len(self.op_counts())
        bad = self.incompatible
        if self.compatible:
            head = (f"GPU delegate: COMPATIBLE - all {n_ops} ops "
                    f"({n_types} op types) are accepted{self._where()}")
            return head
        parts = []
        if bad:
            parts.append(f"{len(bad)} of {n_ops} ops rejected")
        if self.graph_problems:
            parts.append(f"{len(self.graph_problems)} graph problem(s)")
        lines = [f"GPU delegate: INCOMPATIBLE - {', '.join(parts)}{self._where()}"]
        for problem in self.graph_problems:
            lines.append(f"  graph: {problem}")
        for v in bad:
            where = f"op #{v.index}" if v.subgraph == 0 else (
                f"subgraph {v.subgraph} op #{v.index}")
            for reason in v.reasons:
                lines.append(f"  {where} {v.op}: {_strip_prefix(reason, v.op)}")
        return "\n".join(lines)

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.summary()


def _strip_prefix(reason: str, op: str) -> str:
    prefix = op + ": "
    return reason[len(prefix):] if reason.startswith(prefix) else reason


# --------------------------------------------------------------------------
# Operator signature (mirror of tflite::OpSignature).
# --------------------------------------------------------------------------
@dataclass
class TensorSpec:
    """One input/output of an operator, as the GPU rules see it.

    Mirrors ``OpSignatureTensorSpec``: ``dims`` is the static shape,
    ``is_const`` is True when the tensor's buffer holds data.  ``type`` is a
    schema ``TensorType`` name ("FLOAT32", "INT64", ...) or None for an
    omitted optional input (``kTfLiteNoType``).
    """

    dims: Sequence[int] = ()
    type: str | None = "FLOAT32"
    is_const: bool = False
    name: str = ""
    shape_signature: Sequence[int] | None = None
    is_variable: bool = False
    index: int = -2  # tensor index in the subgraph (-1: omitted input, -2: unknown)
    data: Any = None  # values of a small int32 constant (e.g. strides), if known

    def __post_init__(self) -> None:
        self.dims = tuple(int(d) for d in self.dims)
        if self.shape_signature is not None:
            self.shape_signature = tuple(int(d) for d in self.shape_signature)

    @property
    def is_optional(self) -> bool:
        return self.type is None

    @property
    def is_runtime(self) -> bool:
        """Non-constant and present (op_signature.cc / GetNumberOfRuntimeInputs)."""
        return not self.is_const and self.type is not None

    @property
    def label(self) -> str:
        if self.name:
            return f"'{self.name}'"
        return f"#{self.index}" if self.index >= 0 else "(unnamed)"


_OPTIONAL = TensorSpec(type=None, index=-1)


@dataclass
class _OpSig:
    op: str  # display name (CONV_2D, CUSTOM:Foo, FLEX:Foo)
    builtin: str  # builtin operator name (CUSTOM for custom ops)
    custom_name: str | None
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    options: Any  # object-API builtin options (e.g. Conv2DOptionsT) or None
    custom_options: bytes | None
    enhanced_broadcast: bool = False
    allow_quant_ops: bool = True
    version: int = 1  # OperatorCode.version
    graph: "_Graph | None" = None  # producer/consumer maps (None: op in isolation)

    def opt(self, name: str, default: Any = 0) -> Any:
        """Builtin option value; missing options read as the zero-initialised
        TfLite*Params the C++ parser would produce."""
        if self.options is None:
            return default
        return getattr(self.options, name, default)


@dataclass
class _Graph:
    """Producer/consumer maps of one subgraph (model_builder.cc GetTensorInfo)."""

    ops: list[_OpSig]
    producers: dict[int, list[int]]
    consumers: dict[int, list[int]]

    @classmethod
    def build(cls, ops: list[_OpSig]) -> "_Graph":
        producers: dict[int, list[int]] = {}
        consumers: dict[int, list[int]] = {}
        for i, sig in enumerate(ops):
            for t in sig.inputs:
                if t.index >= 0:
                    consumers.setdefault(t.index, []).append(i)
            for t in sig.outputs:
                if t.index >= 0:
                    producers.setdefault(t.index, []).append(i)
        return cls(ops, producers, consumers)


class _Reject(Exception):
    """Raised by a rule: the first failing check, like RETURN_IF_ERROR."""


# --------------------------------------------------------------------------
# Helpers mirroring gpu_compatibility.cc.
# --------------------------------------------------------------------------
def _num_runtime_inputs(sig: _OpSig) -> int:  # L96-106
    return sum(1 for t in sig.inputs if t.is_runtime)


def _num_const_inputs(sig: _OpSig) -> int:
    return sum(1 for t in sig.inputs if t.is_const)


def _check_inputs_outputs(sig: _OpSig, runtime_inputs: int, outputs: int) -> None:
    """gpu_compatibility.cc:L108-128 CheckInputsOutputs."""
    have = _num_runtime_inputs(sig)
    if have != runtime_inputs:
        raise _Reject(f"expected {runtime_inputs} runtime (non-constant) input "
                      f"tensor(s), but the node has {have}")
    if len(sig.outputs) != outputs:
        raise _Reject(f"expected {outputs} output tensor(s), but the node has "
                      f"{len(sig.outputs)}")


def _check_inputs_consts_outputs(sig: _OpSig, runtime_inputs: int,
                                 const_inputs: int, outputs: int) -> None:
    """gpu_compatibility.cc:L130-151 CheckInputsConstsOutputs."""
    have = _num_const_inputs(sig)
    if have != const_inputs:
        raise _Reject(f"expected {const_inputs} constant input tensor(s), but "
                      f"the node has {have}")
    _check_inputs_outputs(sig, runtime_inputs, outputs)


def _ok(fn: Callable[[], None]) -> bool:
    try:
        fn()
    except _Reject:
        return False
    return True


def _check_tensor_available(sig: _OpSig, idx: int) -> None:
    """gpu_compatibility.cc:L153-161 CheckTensorIsAvailable."""
    if idx >= len(sig.inputs):
        raise _Reject(f"input #{idx} is missing (node has {len(sig.inputs)} "
                      "inputs)")


def _check_convolution_io(sig: _OpSig) -> None:
    """gpu_compatibility.cc:L163-183 CheckConvoultionInputOutput."""
    runtime = _num_runtime_inputs(sig)
    if runtime > 2:
        raise _Reject(f"expected 1 or 2 runtime input tensor(s), but the node "
                      f"has {runtime}")
    if len(sig.outputs) != 1:
        raise _Reject(f"expected 1 output tensor, but the node has "
                      f"{len(sig.outputs)}")
    if runtime == 1:
        _check_tensor_available(sig, 1)


def _check_strides(h: int, w: int) -> None:  # L185-192
    if h <= 0 or w <= 0:
        raise _Reject(f"incorrect stride values: stride_height = {h}, "
                      f"stride_width = {w}")


def _check_dilation(h: int, w: int) -> None:  # L194-201
    if h <= 0 or w <= 0:
        raise _Reject(f"incorrect dilation values: dilation_height = {h}, "
                      f"dilation_width = {w}")


def _check_kernels(h: int, w: int) -> None:  # L210-217
    if h <= 0 or w <= 0:
        raise _Reject(f"incorrect kernel values: kernel_height = {h}, "
                      f"kernel_width = {w}")


def _check_activation(name: str) -> None:
    """gpu_compatibility.cc:L78-92 IsActivationSupported (and
    model_builder_helper.cc MaybeFuseActivation)."""
    if name not in _SUPPORTED_ACTS:
        raise _Reject(f"fused activation {name} is not supported by the GPU "
                      "delegate (supported: NONE, RELU, RELU_N1_TO_1, RELU6, "
                      "TANH, SIGMOID)")


def _check_axes_int32_const(sig: _OpSig, idx: int) -> None:
    """gpu_compatibility.cc:L226-239 CheckAxesAreInt32Const."""
    if idx >= len(sig.inputs):
        raise _Reject("axes tensor is missing")
    axes = sig.inputs[idx]
    if not axes.is_const:
        raise _Reject(f"{sig.op} is only supported with constant axes "
                      f"(axes tensor {axes.label} is computed at runtime)")
    if axes.type != "INT32":
        raise _Reject(f"{sig.op} supports an int32 tensor for axes, but the "
                      f"node has {axes.type}")


def _tensor_shape_bhwc(dims: Sequence[int]) -> tuple[int, int, int, int] | None:
    """model_builder_helper.cc ExtractTensorShape: B / BC / BWC / BHWC."""
    n = len(dims)
    if n == 1:
        return (dims[0], 1, 1, 1)
    if n == 2:
        return (dims[0], 1, 1, dims[1])
    if n == 3:
        return (dims[0], 1, dims[1], dims[2])
    if n == 4:
        return (dims[0], dims[1], dims[2], dims[3])
    return None


def _is_broadcastable(longer: Sequence[int], shorter: Sequence[int]) -> bool:
    """gpu_compatibility.cc:L441-458 CheckIsBroadcastable (numpy-style)."""
    i1, i2 = len(longer) - 1, len(shorter) - 1
    for _ in range(max(i1, i2), -1, -1):
        d1 = 1 if i1 < 0 else longer[i1]
        d2 = 1 if i2 < 0 else shorter[i2]
        if d1 != d2 and d1 != 1 and d2 != 1:
            return False
        i1 -= 1
        i2 -= 1
    return True


def _check_add_mul_broadcast(sig: _OpSig, in0: TensorSpec, in1: TensorSpec) -> None:
    """gpu_compatibility.cc:L460-503 CheckAddMulBroadcastCompatibility.

    Only tensors of *different* rank, both of rank > 1, are restricted.  With
    the standard flags (the runtime delegate's default) only 3D->4D with batch
    1, [1,1]->4D and [b,c]->[b,h,w,c] broadcasts are accepted; with
    ``enhanced_broadcast`` (what the offline Analyzer assumed) any
    numpy-compatible broadcast passes.
    """
    d0, d1 = in0.dims, in1.dims
    if len(d0) > 1 and len(d1) > 1 and len(d0) != len(d1):
        longer, shorter = (d0, d1) if len(d0) >= len(d1) else (d1, d0)
        if sig.enhanced_broadcast:
            ok = _is_broadcastable(longer, shorter)
        else:
            ok = (
                (len(longer) == 4 and len(shorter) == 3 and longer[0] == 1)
                or (len(longer) == 4 and len(shorter) == 2 and longer[0] == 1
                    and shorter[0] == 1 and shorter[1] == 1)
                or (len(longer) == 4 and len(shorter) == 2
                    and longer[0] == shorter[0] and longer[3] == shorter[1])
            )
        if not ok:
            raise _Reject(f"broadcasting is not supported between input0 "
                          f"{list(d0)} and input1 {list(d1)}")


def _custom_struct(sig: _OpSig, fmt: str, what: str) -> tuple[int, ...]:
    """Reads the raw TfLite*Params struct a MediaPipe-style custom op stores in
    its custom options (op_signature.cc custom_initial_data)."""
    data = sig.custom_options
    if not data:
        raise _Reject("unable to retrieve custom_initial_data (the custom op "
                      f"has no options holding {what})")
    size = struct.calcsize(fmt)
    if len(data) < size:
        raise _Reject(f"custom options are {len(data)} bytes, too short to hold "
                      f"{what} ({size} bytes)")
    return struct.unpack_from(fmt, data, 0)


# TfLitePoolParams: padding, stride_width, stride_height, filter_width,
# filter_height, activation, (computed padding...).
_POOL_FMT = "<6i"
# TfLiteTransposeConvParams: padding, stride_width, stride_height, ...
_TCONV_FMT = "<3i"


# --------------------------------------------------------------------------
# Per-op rules. Each raises _Reject on the first failing check.
# --------------------------------------------------------------------------
def _rule_add(sig: _OpSig) -> None:  # L514-527
    if len(sig.inputs) != 2:
        raise _Reject("ADD requires two input tensors")
    _check_add_mul_broadcast(sig, sig.inputs[0], sig.inputs[1])


def _rule_add_n(sig: _OpSig) -> None:  # L528-532
    if len(sig.inputs) != 2:
        raise _Reject(f"ADD_N only supports 2 inputs (node has {len(sig.inputs)})")


def _rule_pooling(sig: _OpSig) -> None:
    """gpu_compatibility.cc:L241-259 CheckPooling2DGpuDelegateCompatibility."""
    if sig.builtin == "CUSTOM":  # MaxPoolingWithArgmax2D: indices as 2nd output
        _p, sw, sh, fw, fh, act = _custom_struct(sig, _POOL_FMT,
                                                 "TfLitePoolParams")
        _check_inputs_outputs(sig, 1, 2)
        act_name = _TFLITE_ACT_NAMES.get(act, f"<{act}>")
    else:
        _check_inputs_outputs(sig, 1, 1)
        fh, fw = sig.opt("filterHeight"), sig.opt("filterWidth")
        sh, sw = sig.opt("strideH"), sig.opt("strideW")
        act_name = _ACT_NAMES.get(sig.opt("fusedActivationFunction"), "?")
    _check_kernels(fh, fw)
    _check_strides(sh, sw)
    _check_activation(act_name)


def _rule_batch_matmul(sig: _OpSig) -> None:  # L537-546
    if not (len(sig.inputs) == 2 and len(sig.outputs) == 1):
        raise _Reject(f"expected 2 inputs and 1 output, got {len(sig.inputs)} "
                      f"inputs and {len(sig.outputs)} outputs")


def _rule_cast(sig: _OpSig) -> None:  # L548-570
    _check_inputs_outputs(sig, 1, 1)
    src, dst = sig.inputs[0].type, sig.outputs[0].type
    floats = ("FLOAT16", "FLOAT32")
    if src == "BOOL" and dst in floats:
        return
    if src in floats and dst == "BOOL":
        return
    if src in ("FLOAT32", "INT32") and dst in ("FLOAT32", "INT32"):
        return
    raise _Reject(f"cast from {src} to {dst} is not supported (the GPU delegate "
                  "casts only bool->float, float->bool and between "
                  "float32/int32)")


def _rule_noop(sig: _OpSig) -> None:
    """Ops that gpu_compatibility.cc accepts without further checks:
    CONCATENATION (L572-576), PACK (L876-877), RELU_N1_TO_1 (L888-889),
    SPLIT / SPLIT_V (L944-948), RELU / RELU6 / LEAKY_RELU (L1020-1023)."""


def _rule_conv2d(sig: _OpSig) -> None:  # L578-587
    _check_convolution_io(sig)
    _check_strides(sig.opt("strideH"), sig.opt("strideW"))
    _check_dilation(sig.opt("dilationHFactor"), sig.opt("dilationWFactor"))


def _rule_cumsum(sig: _OpSig) -> None:  # L305-320 (case L589-590)
    if len(sig.inputs) != 2:
        raise _Reject("expects 2 inputs and 1 output")
    x, axis, out = sig.inputs[0], sig.inputs[1], sig.outputs[0]
    if (x.type not in ("FLOAT16", "FLOAT32") or out.type != x.type
            or axis.type != "INT32" or not axis.is_const):
        raise _Reject("input/output must be float and the axis must be a "
                      "constant int32 tensor")


def _rule_densify(sig: _OpSig) -> None:  # L592-594
    _check_inputs_outputs(sig, 0, 1)


def _rule_depthwise(sig: _OpSig) -> None:
    """gpu_compatibility.cc:L261-303 CheckDepthwiseConvGpuDelegateCompatibility."""
    _check_convolution_io(sig)
    _check_strides(sig.opt("strideH"), sig.opt("strideW"))
    _check_dilation(sig.opt("dilationHFactor"), sig.opt("dilationWFactor"))
    multiplier = sig.opt("depthMultiplier")
    if len(sig.inputs) < 2:
        raise _Reject("filter tensor is missing")
    inp, flt, out = sig.inputs[0], sig.inputs[1], sig.outputs[0]
    bias = sig.inputs[2] if len(sig.inputs) > 2 else None
    for what, t in (("input", inp), ("filter", flt), ("output", out)):
        if len(t.dims) != 4:
            raise _Reject(f"{what}.dims.size != 4 ({what} shape {list(t.dims)})")
    if inp.dims[0] != out.dims[0]:
        raise _Reject("input.b != output.b")
    in_c, out_c = inp.dims[3], out.dims[3]
    if flt.dims[3] != out_c:
        raise _Reject(f"filter.i != output.c ({flt.dims[3]} vs {out_c})")
    if out_c != in_c * multiplier:
        raise _Reject(f"output.c != input.c * depth_multiplier "
                      f"({out_c} != {in_c} * {multiplier})")
    if bias is not None and not bias.is_optional and \
            int(np.prod(bias.dims, dtype=np.int64)) != out_c:
        raise _Reject("bias.size != output.c")
    if multiplier != 1 and in_c != 1:
        raise _Reject(f"depth_multiplier != 1 && input.c != 1 (depth_multiplier "
                      f"{multiplier}, input channels {in_c}); the GPU delegate "
                      "only supports depth multipliers > 1 on 1-channel inputs")


def _rule_block_size(sig: _OpSig) -> None:
    """DEPTH_TO_SPACE (L599-614) and SPACE_TO_DEPTH (L927-942)."""
    _check_inputs_outputs(sig, 1, 1)
    block = sig.opt("blockSize")
    if block == 1:
        raise _Reject(f"{sig.op} block_size = 1 is a no-op")
    if block < 1:
        raise _Reject(f"{sig.op} block_size must be > 1 (got {block})")


def _rule_dequantize(sig: _OpSig) -> None:  # L616-628
    if not sig.allow_quant_ops:
        raise _Reject("DEQUANTIZE needs the delegate's quantized-ops support "
                      "(model_builder.cc NewOperationParser)")
    if len(sig.inputs) != 1 or len(sig.outputs) != 1:
        raise _Reject("expected 1 input and 1 output")
    if sig.inputs[0].type == "INT16":
        raise _Reject("unsupported dequantization type INT16")


def _rule_quantize(sig: _OpSig) -> None:  # L882-886
    if not sig.allow_quant_ops:
        raise _Reject("QUANTIZE needs the delegate's quantized-ops support "
                      "(model_builder.cc NewOperationParser)")
    _check_inputs_outputs(sig, 1, 1)


def _rule_embedding_lookup(sig: _OpSig) -> None:  # L630-676
    if len(sig.inputs) != 2:
        raise _Reject(f"expected 2 inputs, got {len(sig.inputs)}")
    ids, value = sig.inputs
    if len(ids.dims) != 1:
        raise _Reject(f"expected 1D ids, got {len(ids.dims)}D input #0")
    if len(value.dims) < 2:
        raise _Reject(f"expected > 1D values, got {len(value.dims)}D input #1")
    if len(sig.outputs) != 1:
        raise _Reject(f"expected 1 output, got {len(sig.outputs)}")
    out = sig.outputs[0]
    if len(value.dims) != len(out.dims):
        raise _Reject("output rank differs from the value tensor's rank")
    for i in range(1, len(out.dims)):
        if value.dims[i] != out.dims[i]:
            raise _Reject(f"output.dim[{i}] is {out.dims[i]}, expected "
                          f"{value.dims[i]}")
    if value.type not in ("INT8", "INT4", "FLOAT32"):
        raise _Reject(f"expected int8, int4 or float32 values, got {value.type}")


def _rule_dynamic_update_slice(sig: _OpSig) -> None:  # L678-722
    if len(sig.inputs) != 3:
        raise _Reject("DYNAMIC_UPDATE_SLICE requires 3 inputs")
    operand, update, start = sig.inputs
    if len(operand.dims) == 4 and operand.dims[0] != 1:
        raise _Reject("only 4D operands with batch size 1 are supported")
    if len(start.dims) != 1:
        raise _Reject("only 1D start_indices are supported")
    if operand.type != update.type:
        raise _Reject("operand and update must have the same data type")
    if start.type != "INT32":
        raise _Reject("start_indices must be of type int32")
    if len(update.dims) != len(operand.dims):
        raise _Reject("operand and update must have the same rank")


def _rule_fully_connected(sig: _OpSig) -> None:  # L723-751
    if sig.opt("weightsFormat") != _schema.FullyConnectedOptionsWeightsFormat.DEFAULT:
        raise _Reject(f"unsupported weights format {sig.opt('weightsFormat')} "
                      "(only DEFAULT)")
    if _num_runtime_inputs(sig) > 2:
        raise _Reject("FULLY_CONNECTED doesn't support more than 2 runtime inputs")
    if sig.inputs and sig.inputs[0].is_const:
        raise _Reject("FULLY_CONNECTED doesn't support a constant input")
    if sig.opt("keepNumDims", False):
        if len(sig.inputs[0].dims) != len(sig.outputs[0].dims):
            raise _Reject("input and output ranks differ and keep_num_dims is "
                          "not supported")


def _one_or_two_operands(sig: _OpSig) -> None:
    """2 runtime inputs, or 1 runtime + 1 constant (L753-765, L1106-1116)."""
    if not (_ok(lambda: _check_inputs_consts_outputs(sig, 2, 0, 1))
            or _ok(lambda: _check_inputs_consts_outputs(sig, 1, 1, 1))):
        raise _Reject("op can only handle 1 or 2 operand(s) (2 runtime inputs, "
                      "or 1 runtime and 1 constant input, and 1 output); node "
                      f"has {_num_runtime_inputs(sig)} runtime and "
                      f"{_num_const_inputs(sig)} constant inputs")


def _rule_gather(sig: _OpSig) -> None:  # L753-773
    _one_or_two_operands(sig)
    if sig.inputs[0].type == "INT32":
        raise _Reject("does not accept INT32 input")
    if len(sig.inputs[1].dims) != 1:
        raise _Reject("only 1D indices are supported")
    if sig.inputs[1].type != "INT32":
        raise _Reject("only INT32 indices are accepted")


def _rule_one_in_one_out(sig: _OpSig) -> None:
    """HARD_SWISH (L775-777), RESHAPE (L894-897), TILE (L977-981),
    TRANSPOSE (L983-987), RESIZE_NEAREST_NEIGHBOR (L1011-1018)."""
    _check_inputs_outputs(sig, 1, 1)


def _rule_lstm(sig: _OpSig) -> None:  # L779-822
    kernel = sig.opt("kernelType")
    act = _ACT_NAMES.get(sig.opt("fusedActivationFunction"), "?")
    if kernel == _schema.LSTMKernelType.FULL:
        if len(sig.inputs) not in (20, 24):
            raise _Reject(f"expected 20 or 24 input tensors, node has "
                          f"{len(sig.inputs)}")
        if len(sig.outputs) != 1:
            raise _Reject(f"expected 1 output tensor, node has {len(sig.outputs)}")
        if act not in ("TANH",):  # schema has no SIGMOID activation
            raise _Reject(f"only sigmoid or tanh activation is supported, node "
                          f"has {act}")
        return
    _check_inputs_consts_outputs(sig, 3, 2, 4)
    if act != "TANH":
        raise _Reject(f"only TANH activation is supported, node has {act}")
    if sig.opt("cellClip", 0.0) != 0.0:
        raise _Reject("cell_clip is not supported")
    if sig.opt("projClip", 0.0) != 0.0:
        raise _Reject("proj_clip is not supported")


def _rule_mean(sig: _OpSig) -> None:  # L827-833
    _check_inputs_consts_outputs(sig, 1, 1, 1)
    _check_axes_int32_const(sig, 1)


def _rule_reduce(sig: _OpSig) -> None:
    """REDUCE_MAX / REDUCE_MIN / REDUCE_PROD / SUM (L1025-1033).

    The C++ checks the runtime-input count first; a runtime axes tensor fails
    that check, so we test the axes first to give the clearer message."""
    if len(sig.inputs) > 1 and sig.inputs[0].is_runtime and sig.inputs[1].is_runtime:
        _check_axes_int32_const(sig, 1)
    _check_inputs_outputs(sig, 1, 1)
    _check_axes_int32_const(sig, 1)


def _rule_mul(sig: _OpSig) -> None:  # L835-874
    if len(sig.inputs) != 2:
        raise _Reject("MUL requires two input tensors")
    in0, in1 = sig.inputs
    if len(in0.dims) == len(in1.dims):
        first_smaller = any(a < b for a, b in zip(in0.dims, in1.dims))
        second_smaller = any(b < a for a, b in zip(in0.dims, in1.dims))
        if first_smaller and second_smaller:
            raise _Reject(f"MUL requires one input that is not smaller than the "
                          f"other in every dimension (got {list(in0.dims)} and "
                          f"{list(in1.dims)}; an outer-product style broadcast "
                          "should be a convolution)")
    else:
        _check_add_mul_broadcast(sig, in0, in1)


def _rule_one_hot(sig: _OpSig) -> None:  # L322-366 (case L879-880)
    if len(sig.inputs) != 4 and len(sig.outputs) != 1:
        raise _Reject("expects 4 inputs and 1 output")
    msg = ("indices must be int32, on/off values constant float32 scalars and "
           "axis -1 or the last dimension")
    ind = sig.inputs[0]
    if ind.type != "INT32":
        raise _Reject(msg)
    n = len(ind.dims)
    axis = sig.opt("axis")
    # The C++ compares axis with the *size* of the last dim; mirrored as is.
    if axis != -1 and (n == 0 or axis != ind.dims[n - 1]):
        raise _Reject(msg)
    for i in range(n - 1):
        if n > 3 and i == 0:
            continue
        if ind.dims[i] != 1:
            raise _Reject(f"unsupported non-singleton dim at {i}")
    on, off = sig.inputs[2], sig.inputs[3]
    if on.type != "FLOAT32" or off.type != "FLOAT32":
        raise _Reject(msg)
    if not on.is_const or not off.is_const or len(on.dims) > 1 or len(off.dims) > 1:
        raise _Reject(msg)
    if (on.dims and on.dims[0] > 1) or (off.dims and off.dims[0] > 1):
        raise _Reject(msg)


def _rule_prelu(sig: _OpSig) -> None:
    """gpu_compatibility.cc:L891-892 accepts PRELU; the parse-time rule lives
    in model_builder.cc PReLUOperationParser::Parse + model_builder_helper.cc
    SetAllDimensions: alpha must be constant and either *linear* (every dim
    but the last is 1, last == input channels) or an HxWxC / 1xHxWxC tensor
    equal to the input's H, W, C."""
    if len(sig.inputs) < 2:
        raise _Reject("alpha tensor is missing")
    x, alpha = sig.inputs[0], sig.inputs[1]
    if not alpha.is_const:
        raise _Reject(f"alpha tensor {alpha.label} must be a constant")
    bhwc = _tensor_shape_bhwc(x.dims)
    if bhwc is None:
        raise _Reject(f"input has {len(x.dims)} dimensions")
    _, h, w, c = bhwc
    a = alpha.dims
    if len(a) > 0 and all(d == 1 for d in a[:-1]):
        if a[-1] != c:
            raise _Reject(f"linear alpha shape {list(a)} does not match the "
                          f"number of input channels ({c}); alpha must be "
                          "per-channel (e.g. PReLU(shared_axes=[1, 2]))")
        return
    if len(a) == 3:
        ah, aw, ac = a
    elif len(a) == 4 and a[0] == 1:
        ah, aw, ac = a[1:]
    else:
        raise _Reject(f"alpha shape {list(a)} is neither per-channel (1x..xC) "
                      "nor HxWxC")
    if (ah, aw, ac) != (h, w, c):
        raise _Reject(f"alpha shape {list(a)} does not match the input shape "
                      f"{list(x.dims)}; alpha must be per-channel or a full "
                      "HxWxC tensor")


def _rule_select(sig: _OpSig) -> None:  # L368-407 (case L899-901)
    if len(sig.inputs) != 3 or len(sig.outputs) != 1:
        raise _Reject("expected 3 inputs and 1 output")
    cond, a, b = sig.inputs
    floats = ("FLOAT16", "FLOAT32")
    msg = ("cond must be float or bool; if/else tensors must be float and "
           "either have the output's shape or be a constant scalar")
    if cond.type not in floats + ("BOOL",) or a.type not in floats or \
            b.type not in floats:
        raise _Reject(msg)
    out_dims = sig.outputs[0].dims
    for what, t in (("if", a), ("else", b)):
        if t.dims and t.dims != out_dims and (len(t.dims) > 1 or t.dims[0] > 1):
            raise _Reject(msg)
        if t.is_const and len(t.dims) == 2:
            raise _Reject(f"2-D {what} tensor only supported if constant")


def _rule_slice(sig: _OpSig) -> None:  # L903-916
    if len(sig.inputs) < 3:
        raise _Reject(f"SLICE requires 3 inputs, node has {len(sig.inputs)}")
    n = len(sig.inputs[0].dims)
    if n not in (3, 4):
        raise _Reject(f"SLICE supports 3 or 4 dimensional tensors only, node "
                      f"has {n} dimensions")


def _rule_softmax(sig: _OpSig) -> None:  # L918-925
    beta = sig.opt("beta", 0.0)
    if beta != 1:
        raise _Reject(f"softmax beta != 1 is not supported (beta = {beta})")


def _rule_strided_slice(sig: _OpSig) -> None:  # L950-975
    if sig.opt("ellipsisMask"):
        raise _Reject("ellipsis_mask is not supported")
    if sig.opt("newAxisMask"):
        raise _Reject("new_axis_mask is not supported")
    if sig.opt("shrinkAxisMask"):
        raise _Reject("shrink_axis_mask is not supported (slice without "
                      "dropping the dimension, then reshape)")
    if len(sig.inputs) < 4:
        raise _Reject("STRIDED_SLICE requires 4 inputs")
    n = len(sig.inputs[0].dims)
    if n not in (3, 4):
        raise _Reject(f"STRIDED_SLICE supports 3 or 4 dimensional tensors only "
                      f"(input has {n})")


def _rule_transpose_conv(sig: _OpSig) -> None:  # L989-996
    _check_convolution_io(sig)
    _check_strides(sig.opt("strideH"), sig.opt("strideW"))


def _rule_resize_bilinear(sig: _OpSig) -> None:  # L998-1009
    _check_inputs_outputs(sig, 1, 1)
    if sig.opt("alignCorners", False) and sig.opt("halfPixelCenters", False):
        raise _Reject("align_corners and half_pixel_centers are both set (if "
                      "half_pixel_centers is True, align_corners must be False)")


def _rule_pad(sig: _OpSig) -> None:  # L1035-1066
    if sig.builtin == "MIRROR_PAD" and sig.opt("mode") != _schema.MirrorPadMode.REFLECT:
        raise _Reject("only REFLECT padding is supported for MIRROR_PAD (got "
                      "SYMMETRIC)")
    _check_inputs_outputs(sig, 1, 1)
    _check_tensor_available(sig, 1)
    pad = sig.inputs[1]
    if len(pad.dims) != 2:
        raise _Reject(f"invalid paddings tensor rank: expected 2, got "
                      f"{len(pad.dims)}")
    if pad.dims[0] not in (3, 4) or pad.dims[1] != 2:
        raise _Reject(f"invalid paddings tensor shape: expected 4x2 or 3x2, got "
                      f"{pad.dims[0]}x{pad.dims[1]}")


def _rule_unary(sig: _OpSig) -> None:
    """One-argument elementwise ops (L1068-1087): exactly 1 runtime input, no
    constant input, 1 output."""
    _check_inputs_consts_outputs(sig, 1, 0, 1)


def _rule_binary(sig: _OpSig) -> None:
    """Two-argument elementwise ops (L1089-1128)."""
    _one_or_two_operands(sig)


def _rule_clamp(sig: _OpSig) -> None:  # L1130-1149
    if len(sig.inputs) < 3:
        raise _Reject("STABLEHLO_CLAMP requires 3 inputs")
    lo, x, hi = sig.inputs[:3]
    if lo.type != x.type or x.type != hi.type:
        raise _Reject("clamp tensors must all be the same type")
    lo_n = int(np.prod(lo.dims, dtype=np.int64))
    if lo.dims != x.dims and lo_n != 1:
        raise _Reject("min tensor must have the input's shape or be a scalar")
    if hi.dims != x.dims and lo_n != 1:
        raise _Reject("max tensor must have the input's shape or be a scalar")
    _check_inputs_consts_outputs(sig, 3, 0, 1)


def _rule_custom(sig: _OpSig) -> None:
    """gpu_compatibility.cc:L409-439 CheckCustomOpsGpuDelegateCompatibility."""
    name = sig.custom_name or ""
    if name == "Convolution2DTransposeBias":
        _check_tensor_available(sig, 1)
        _p, sw, sh = _custom_struct(sig, _TCONV_FMT, "TfLiteTransposeConvParams")
        _check_strides(sh, sw)
        return
    if name == "MaxPoolingWithArgmax2D":
        _rule_pooling(sig)
        return
    if name == "MaxUnpooling2D":
        _check_inputs_outputs(sig, 2, 1)
        _p, sw, sh, fw, fh, _act = _custom_struct(sig, _POOL_FMT,
                                                  "TfLitePoolParams")
        _check_kernels(fh, fw)
        _check_strides(sh, sw)
        return
    if name == "Resampler":
        _check_inputs_outputs(sig, 2, 1)
        return
    raise _Reject(f"custom op '{name}' is not supported by the GPU delegate "
                  f"(it only implements {', '.join(SUPPORTED_CUSTOM_OPS)})")


_UNARY_OPS = ("ABS", "CEIL", "COS", "ELU", "EXP", "FLOOR", "GELU", "LOG",
              "LOGISTIC", "NEG", "RSQRT", "SIGN", "SIN", "SQRT", "SQUARE",
              "TANH")
_BINARY_OPS = ("ATAN2", "DIV", "EQUAL", "FLOOR_DIV", "FLOOR_MOD", "GREATER",
               "GREATER_EQUAL", "LOGICAL_AND", "LESS", "LESS_EQUAL", "MAXIMUM",
               "MINIMUM", "NOT_EQUAL", "POW", "SQUARED_DIFFERENCE", "SUB")

#: builtin op name -> (rule, gpu_compatibility.cc line region it mirrors)
_RULES: dict[str, tuple[Callable[[_OpSig], None], str]] = {
    "ADD": (_rule_add, "L514-527"),
    "ADD_N": (_rule_add_n, "L528-532"),
    "AVERAGE_POOL_2D": (_rule_pooling, "L534-535, L241-259"),
    "BATCH_MATMUL": (_rule_batch_matmul, "L537-546"),
    "CAST": (_rule_cast, "L548-570"),
    "CONCATENATION": (_rule_noop, "L572-576"),
    "CONV_2D": (_rule_conv2d, "L578-587"),
    "CUMSUM": (_rule_cumsum, "L589-590, L305-320"),
    "DENSIFY": (_rule_densify, "L592-594"),
    "DEPTHWISE_CONV_2D": (_rule_depthwise, "L596-597, L261-303"),
    "DEPTH_TO_SPACE": (_rule_block_size, "L599-614"),
    "DEQUANTIZE": (_rule_dequantize, "L616-628"),
    "EMBEDDING_LOOKUP": (_rule_embedding_lookup, "L630-676"),
    "DYNAMIC_UPDATE_SLICE": (_rule_dynamic_update_slice, "L678-722"),
    "FULLY_CONNECTED": (_rule_fully_connected, "L723-751"),
    "GATHER": (_rule_gather, "L753-773"),
    "HARD_SWISH": (_rule_one_in_one_out, "L775-777"),
    "LSTM": (_rule_lstm, "L779-822"),
    "MAX_POOL_2D": (_rule_pooling, "L824-825, L241-259"),
    "MEAN": (_rule_mean, "L827-833, L226-239"),
    "MUL": (_rule_mul, "L835-874, L460-503"),
    "PACK": (_rule_noop, "L876-877"),
    "ONE_HOT": (_rule_one_hot, "L879-880, L322-366"),
    "QUANTIZE": (_rule_quantize, "L882-886"),
    "RELU_N1_TO_1": (_rule_noop, "L888-889"),
    "PRELU": (_rule_prelu, "L891-892 + model_builder.cc PReLUOperationParser"),
    "RESHAPE": (_rule_one_in_one_out, "L894-897"),
    "SELECT": (_rule_select, "L899-901, L368-407"),
    "SELECT_V2": (_rule_select, "L899-901, L368-407"),
    "SLICE": (_rule_slice, "L903-916"),
    "SOFTMAX": (_rule_softmax, "L918-925"),
    "SPACE_TO_DEPTH": (_rule_block_size, "L927-942"),
    "SPLIT": (_rule_noop, "L944-945"),
    "SPLIT_V": (_rule_noop, "L947-948"),
    "STRIDED_SLICE": (_rule_strided_slice, "L950-975"),
    "TILE": (_rule_one_in_one_out, "L977-981"),
    "TRANSPOSE": (_rule_one_in_one_out, "L983-987"),
    "TRANSPOSE_CONV": (_rule_transpose_conv, "L989-996"),
    "RESIZE_BILINEAR": (_rule_resize_bilinear, "L998-1009"),
    "RESIZE_NEAREST_NEIGHBOR": (_rule_one_in_one_out, "L1011-1018"),
    "RELU": (_rule_noop, "L1020-1023"),
    "RELU6": (_rule_noop, "L1020-1023"),
    "LEAKY_RELU": (_rule_noop, "L1020-1023"),
    "REDUCE_MAX": (_rule_reduce, "L1025-1033, L226-239"),
    "REDUCE_MIN": (_rule_reduce, "L1025-1033, L226-239"),
    "REDUCE_PROD": (_rule_reduce, "L1025-1033, L226-239"),
    "SUM": (_rule_reduce, "L1025-1033, L226-239"),
    "PAD": (_rule_pad, "L1035-1066"),
    "PADV2": (_rule_pad, "L1035-1066"),
    "MIRROR_PAD": (_rule_pad, "L1035-1066"),
    **{op: (_rule_unary, "L1068-1087") for op in _UNARY_OPS},
    **{op: (_rule_binary, "L1089-1128") for op in _BINARY_OPS},
    "STABLEHLO_CLAMP": (_rule_clamp, "L1130-1149"),
    "CUSTOM": (_rule_custom, "L1150-1151, L409-439"),
}

# --------------------------------------------------------------------------
# Runtime parser rules (model_builder.cc), checked on top of
# gpu_compatibility.cc: op-version caps and parse-time requirements.
# --------------------------------------------------------------------------
# ElementwiseOperationParser handles these; its IsSupported caps the op
# version at 2 (3 for MUL).
_ELEMENTWISE_PARSER_OPS = (
    "ABS", "ADD", "COS", "DIV", "EQUAL", "ELU", "EXP", "FLOOR", "FLOOR_DIV",
    "FLOOR_MOD", "GREATER", "GREATER_EQUAL", "LESS", "LESS_EQUAL", "LOGISTIC",
    "LOG", "MAXIMUM", "MINIMUM", "NEG", "NOT_EQUAL", "POW", "RSQRT", "SIN",
    "SQRT", "SQUARE", "SQUARED_DIFFERENCE", "SUB", "TANH")

#: CheckMaxSupportedOpVersion(registration, N) of each parser's IsSupported.
_MAX_OP_VERSION: dict[str, int] = {
    **{op: 2 for op in _ELEMENTWISE_PARSER_OPS},
    "MUL": 3,
    "AVERAGE_POOL_2D": 2, "MAX_POOL_2D": 2,
    "CONCATENATION": 2, "CONV_2D": 6, "CUMSUM": 1, "DENSIFY": 1,
    "DEPTHWISE_CONV_2D": 6, "DEQUANTIZE": 3, "FULLY_CONNECTED": 9, "LSTM": 4,
    "ONE_HOT": 1, "PRELU": 1, "PAD": 2, "MIRROR_PAD": 2, "QUANTIZE": 2,
    "RELU": 2, "RELU6": 2, "LEAKY_RELU": 2, "RESHAPE": 1,
    "RESIZE_BILINEAR": 3, "RESIZE_NEAREST_NEIGHBOR": 3, "SELECT_V2": 1,
    "SLICE": 2, "SOFTMAX": 2, "SPACE_TO_DEPTH": 2, "STRIDED_SLICE": 2,
    "TRANSPOSE_CONV": 3, "TRANSPOSE": 2,
}

_TWO_ARG_ELEMENTWISE = ("DIV", "EQUAL", "FLOOR_DIV", "FLOOR_MOD", "GREATER",
                        "GREATER_EQUAL", "LESS", "LESS_EQUAL", "MAXIMUM",
                        "MINIMUM", "NOT_EQUAL", "POW", "SQUARED_DIFFERENCE",
                        "SUB")


def _check_op_version(sig: _OpSig) -> None:
    cap = _MAX_OP_VERSION.get(sig.builtin)
    if cap is not None and sig.version > cap:
        raise _Reject(f"op version {sig.version} is newer than the GPU delegate's "
                      f"{sig.builtin} parser accepts (max version {cap})")


def _parse_logical(sig: _OpSig) -> None:
    """ElementwiseOperationParser::IsSupported for comparison ops: the BOOL
    result must have one producer and one consumer, a CAST to float."""
    g = sig.graph
    if g is None or not sig.outputs:
        return
    out = sig.outputs[0]
    prods, cons = g.producers.get(out.index, []), g.consumers.get(out.index, [])
    if len(prods) == 1 and len(cons) == 1:
        nxt = g.ops[cons[0]]
        if nxt.builtin == "CAST" and nxt.outputs and \
                nxt.outputs[0].type in ("FLOAT16", "FLOAT32"):
            return
    raise _Reject("comparison ops are only supported when their BOOL output "
                  "feeds exactly one CAST to float (not supported logical op "
                  "case)")


def _parse_cast(sig: _OpSig) -> None:
    """CastOperationParser::IsSupported: a BOOL->float CAST must directly
    follow a comparison op whose output has no other consumer."""
    g = sig.graph
    if g is None or not sig.inputs or not sig.outputs:
        return
    src, dst = sig.inputs[0], sig.outputs[0]
    if src.type != "BOOL" or dst.type not in ("FLOAT16", "FLOAT32"):
        return
    prods, cons = g.producers.get(src.index, []), g.consumers.get(src.index, [])
    if len(prods) != 1 or len(cons) != 1 or \
            g.ops[prods[0]].builtin not in _LOGICAL_OPS:
        raise _Reject("a BOOL->float CAST is only supported right after a "
                      "comparison op (not supported cast case)")


def _parse_identical_inputs(sig: _OpSig) -> None:
    """ElementwiseOperationParser::Parse: the same runtime tensor on both
    inputs is only handled for ADD (-> MUL by 2) and MUL (-> SQUARE)."""
    if sig.graph is None or len(sig.inputs) != 2:
        return
    a, b = sig.inputs
    if a.is_runtime and b.is_runtime and a.index == b.index:
        raise _Reject(f"the same tensor {a.label} feeds both inputs (no support "
                      "of identical inputs in the same operation; only ADD and "
                      "MUL allow it)")


def _parse_strided_slice(sig: _OpSig) -> None:
    """StridedSliceOperationParser::Parse: begin/end/strides are read as
    constants with 3 or 4 entries; strides must be positive."""
    for idx, what in ((1, "begin"), (2, "end"), (3, "strides")):
        if not sig.inputs[idx].is_const:
            raise _Reject(f"{what} tensor {sig.inputs[idx].label} must be a "
                          "constant")
    n = int(np.prod(sig.inputs[1].dims, dtype=np.int64))
    if n not in (3, 4):
        raise _Reject(f"slicing is supported for 3 or 4 dimensional tensors "
                      f"only (begin has {n} entries)")
    strides = sig.inputs[3].data
    if strides is not None:
        values = [int(v) for v in np.asarray(strides).reshape(-1)]
        if any(v == 0 for v in values):
            raise _Reject("stride values must be non-zero")
        if any(v < 0 for v in values):
            raise _Reject(f"reverse slices (negative strides {values}) are not "
                          "supported")


def _parse_conv2d(sig: _OpSig) -> None:
    """Conv2DOperationParser::Parse: runtime weights cannot be grouped."""
    if _num_runtime_inputs(sig) != 2:
        return
    src = _tensor_shape_bhwc(sig.inputs[0].dims)
    w = _tensor_shape_bhwc(sig.inputs[1].dims)
    if src and w and src[3] != w[3]:
        raise _Reject("no support of CONV_2D with runtime grouped weights")


def _parse_batch_matmul(sig: _OpSig) -> None:
    """BatchedMatMulOperationParser::Parse: two runtime inputs, or a runtime
    input times a constant 2D matrix."""
    runtime = _num_runtime_inputs(sig)
    if runtime == 2:
        return
    second = sig.inputs[1]
    if runtime == 1 and sig.inputs[0].is_runtime and second.is_const and \
            len(second.dims) == 2:
        return
    raise _Reject("not supported batched mat mul case (needs 2 runtime inputs "
                  "or a runtime input and a constant 2D matrix)")


def _parse_fully_connected(sig: _OpSig) -> None:
    """FullyConnectedOperationParser::Parse (constant weights): all input
    elements per batch must equal the weights' width, i.e. a 3D/4D input
    such as Dense on (1, N, C) or (1, H, W, C) fails at delegate Init."""
    if _num_runtime_inputs(sig) == 2 or len(sig.inputs) < 2:
        return
    weights = sig.inputs[1]
    bhwc = _tensor_shape_bhwc(sig.inputs[0].dims)
    if len(weights.dims) != 2 or bhwc is None or bhwc[0] <= 0:
        return
    width = weights.dims[1]
    per_batch = int(np.prod(bhwc, dtype=np.int64)) // bhwc[0]
    if per_batch != width:
        raise _Reject(f"amount of input data should match weights width: input "
                      f"{list(sig.inputs[0].dims)} has {per_batch} values per "
                      f"batch but the weights expect {width} (use a 1x1 "
                      "CONV_2D, or reshape to 2D, for a Dense layer on a 3D/4D "
                      "tensor)")


_PARSER_RULES: dict[str, Callable[[_OpSig], None]] = {
    **{op: _parse_logical for op in _LOGICAL_OPS},
    "CAST": _parse_cast,
    "STRIDED_SLICE": _parse_strided_slice,
    "CONV_2D": _parse_conv2d,
    "BATCH_MATMUL": _parse_batch_matmul,
    "FULLY_CONNECTED": _parse_fully_connected,
}
for _op in _TWO_ARG_ELEMENTWISE:
    if _op not in _PARSER_RULES:
        _PARSER_RULES[_op] = _parse_identical_inputs


#: Builtin ops the GPU delegate has a rule for; everything else is rejected
#: ("Not supported op", gpu_compatibility.cc:L1153-1159).
SUPPORTED_BUILTIN_OPS = frozenset(op for op in _RULES if op != "CUSTOM")


# --------------------------------------------------------------------------
# Delegate-level tensor rules (model_builder.cc GetOpsToReplace).
# --------------------------------------------------------------------------
def _tensor_reasons(sig: _OpSig) -> list[str]:
    """model_builder.cc IsAllAllowedTensors as called from GetOpsToReplace:
    no input/output tensor may have rank >= 5, and non-constant tensors must be
    of an allowed type."""
    allowed_in = {"FLOAT32", "FLOAT16"}
    allowed_out = {"FLOAT32", "FLOAT16"}
    if sig.allow_quant_ops:
        allowed_in |= {"INT8", "UINT8"}
        allowed_out |= {"INT8", "UINT8"}
    if sig.builtin in _LOGICAL_OPS:
        allowed_out.add("BOOL")
    if sig.builtin == "CAST":
        allowed_in |= {"BOOL", "FLOAT32", "INT32"}
        allowed_out |= {"FLOAT32", "INT32"}
    if sig.builtin == "ONE_HOT":
        allowed_in.add("INT32")

    reasons = []
    for role, tensors, allowed in (("input", sig.inputs, allowed_in),
                                   ("output", sig.outputs, allowed_out)):
        for pos, t in enumerate(tensors):
            if t.is_optional:
                continue
            label = f"'{t.name}'" if t.name else f"#{pos}"
            if len(t.dims) > 4:
                reasons.append(
                    f"{sig.op}: {role} tensor {label} has {len(t.dims)} "
                    f"dimensions {list(t.dims)} (the GPU delegate supports at "
                    "most 4)")
            if t.is_runtime and not t.is_variable and t.type not in allowed:
                reasons.append(
                    f"{sig.op}: {role} tensor {label} has type {t.type}; the "
                    "GPU delegate only accepts "
                    f"{'/'.join(sorted(allowed))} for non-constant "
                    f"{role}s of this op")
    return reasons


def _fused_activation_reason(sig: _OpSig) -> str | None:
    """IsActivationSupported (L78-92) / MaybeFuseActivation: any fused
    activation other than NONE/RELU/RELU_N1_TO_1/RELU6/TANH/SIGMOID fails."""
    if sig.options is None or sig.builtin == "LSTM":
        return None
    code = getattr(sig.options, "fusedActivationFunction", None)
    if code is None:
        return None
    try:
        _check_activation(_ACT_NAMES.get(code, f"<{code}>"))
    except _Reject as exc:
        return f"{sig.op}: {exc}"
    return None


def _evaluate(sig: _OpSig) -> list[str]:
    """All reasons an op is rejected (empty list: accepted)."""
    if sig.builtin == "CUSTOM" and (sig.custom_name or "").startswith("Flex"):
        return [f"{sig.op}: TensorFlow (Flex) op '{sig.custom_name}' is not "
                "supported by the GPU delegate (it needs the Flex delegate and "
                "runs on the CPU)"]
    entry = _RULES.get(sig.builtin)
    if entry is None:
        return [f"{sig.op}: operation is not supported by the GPU delegate"]
    rule, _lines = entry
    reasons: list[str] = []
    try:
        _check_op_version(sig)
    except _Reject as exc:
        reasons.append(f"{sig.op}: {exc}")
    parser_rule = _PARSER_RULES.get(sig.builtin)
    try:
        rule(sig)  # gpu_compatibility.cc
        if parser_rule is not None:
            parser_rule(sig)  # model_builder.cc parse-time requirement
    except _Reject as exc:
        reasons.append(f"{sig.op}: {exc}")
    except (IndexError, TypeError, ValueError) as exc:  # malformed node
        reasons.append(f"{sig.op}: malformed operator ({exc!r})")
    act = _fused_activation_reason(sig)
    if act is not None and act not in reasons:
        reasons.append(act)
    reasons.extend(_tensor_reasons(sig))
    return reasons


def check_op(
    op: str,
    inputs: Iterable[TensorSpec | None],
    outputs: Iterable[TensorSpec],
    options: Any = None,
    *,
    custom_options: bytes | None = None,
    enhanced_broadcast: bool = False,
    allow_quant_ops: bool = True,
    version: int = 1,
) -> list[str]:
    """Applies the GPU rules to one operator described by hand.

    ``op`` is a builtin name ("RESIZE_BILINEAR"), "CUSTOM:<code>" or
    "FLEX:<name>"; ``inputs``/``outputs`` are :class:`TensorSpec` (``None``
    stands for an omitted optional input); ``options`` is an object-API
    options instance (e.g. ``schema_py_generated.ResizeBilinearOptionsT()``)
    or any object with the same attribute names; ``version`` is the operator
    code's version.  Graph-dependent rules (comparison -> CAST pairing,
    identical inputs) are skipped because the op is seen in isolation.
    Returns the list of reasons (empty when the op is accepted).
    """
    custom_name = None
    builtin = op
    if op.startswith("CUSTOM:"):
        builtin, custom_name = "CUSTOM", op[len("CUSTOM:"):]
    elif op.startswith("FLEX:"):
        builtin, custom_name = "CUSTOM", "Flex" + op[len("FLEX:"):]
    sig = _OpSig(
        op=op, builtin=builtin, custom_name=custom_name,
        inputs=[_OPTIONAL if t is None else t for t in inputs],
        outputs=list(outputs), options=options,
        custom_options=custom_options,
        enhanced_broadcast=enhanced_broadcast,
        allow_quant_ops=allow_quant_ops,
        version=version,
    )
    return _evaluate(sig)


# --------------------------------------------------------------------------
# Flatbuffer reading.
# --------------------------------------------------------------------------
def _read_model(model: Any) -> tuple[bytes, str]:
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model), "<bytes>"
    if isinstance(model, (str, os.PathLike)):
        return read_tflite(model), os.fspath(model)
    raise TypeError("model must be a path to a .tflite file or its bytes, got "
                    f"{type(model).__name__}")


def _as_str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _ints(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(int(v) for v in np.asarray(value).reshape(-1))


def _buffer_has_data(model: Any, buffer_index: int) -> bool:
    """op_signature.cc: a tensor is constant when its buffer holds data."""
    if buffer_index <= 0 or not model.buffers or buffer_index >= len(model.buffers):
        return False
    buf = model.buffers[buffer_index]
    if buf.data is not None and len(buf.data) > 0:
        return True
    return buf.offset > 1 and buf.size > 0  # >2 GB models keep data outside


def _dequantized_constants(model: Any, subgraph: Any) -> set[int]:
    """Outputs of DEQUANTIZE ops whose input is a constant float16 tensor. The delegate
    treats them as constants (model_builder.cc keeps fp16 weights' DEQUANTIZE nodes out of
    the graph and reads the weights directly), so an fp16 file is judged like its fp32 twin."""
    out = set()
    for op in subgraph.operators or []:
        _, builtin, _ = _op_names(model, op.opcodeIndex)
        inputs = _ints(op.inputs)
        if builtin == "DEQUANTIZE" and inputs and inputs[0] >= 0:
            t = subgraph.tensors[inputs[0]]
            if t.type == _schema.TensorType.FLOAT16 and _buffer_has_data(model, t.buffer):
                out.update(_ints(op.outputs))
    return out


def _tensor_spec(model: Any, subgraph: Any, index: int, constants: set[int] = frozenset()) -> TensorSpec:
    if index < 0:
        return _OPTIONAL
    t = subgraph.tensors[index]
    dims = _ints(t.shape)
    is_const = _buffer_has_data(model, t.buffer) or index in constants
    data = None
    # Small int32 constants (begin/end/strides, axes, perms) are decoded so
    # that parse-time rules can look at their values.
    if is_const and t.type == _INT32 and int(np.prod(dims, dtype=np.int64)) <= 64:
        raw = model.buffers[t.buffer].data
        if raw is not None:
            arr = np.frombuffer(np.asarray(raw, dtype=np.uint8).tobytes(), dtype="<i4")
            if arr.size == int(np.prod(dims, dtype=np.int64)):
                data = arr.reshape(dims)
    return TensorSpec(
        dims=dims,
        type=type_name(t.type),
        is_const=is_const,
        name=_as_str(t.name),
        shape_signature=_ints(t.shapeSignature) if t.shapeSignature is not None else None,
        is_variable=bool(t.isVariable),
        index=index,
        data=data,
    )


def _op_names(model: Any, opcode_index: int) -> tuple[str, str, str | None]:
    """(display name, builtin name, custom code)."""
    display = op_name(model, opcode_index)
    if display.startswith(("FLEX:", "CUSTOM:")):
        return display, "CUSTOM", _as_str(model.operatorCodes[opcode_index].customCode)
    return display, display, None


def _custom_options(buf: bytes, op: Any) -> bytes | None:
    if op.customOptions is not None and len(op.customOptions) > 0:
        return bytes(np.asarray(op.customOptions, dtype=np.uint8))
    if op.largeCustomOptionsSize:
        start = int(op.largeCustomOptionsOffset)
        return buf[start:start + int(op.largeCustomOptionsSize)]
    return None


def _fmt_dims(dims: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _graph_problems(model: Any) -> list[str]:
    problems: list[str] = []
    subgraphs = model.subgraphs
    main = subgraphs[0]
    tensors = main.tensors or []

    if len(subgraphs) > 1:
        flow = sorted({
            _op_names(model, op.opcodeIndex)[0]
            for sg in subgraphs for op in (sg.operators or [])
            if _op_names(model, op.opcodeIndex)[0] in _CONTROL_FLOW_OPS
        })
        detail = (f"control flow ops {', '.join(flow)}" if flow
                  else "no control-flow op found")
        problems.append(
            f"model has {len(subgraphs)} subgraphs ({detail}); the GPU delegate "
            "cannot run control flow, so those parts fall back to the CPU")

    input_ids = set(_ints(main.inputs))
    for i in _ints(main.inputs):
        t = tensors[i]
        name = _as_str(t.name) or f"#{i}"
        shape = _ints(t.shape)
        sig = _ints(t.shapeSignature) if t.shapeSignature is not None else ()
        dynamic = [d for d, v in enumerate(sig) if v == -1]
        if dynamic:
            dims = ", ".join(str(d) for d in dynamic)
            what = "batch dimension 0" if dynamic == [0] else f"dimension(s) {dims}"
            problems.append(
                f"input tensor '{name}' has a dynamic {what} (shape_signature "
                f"{_fmt_dims(sig)}); the GPU delegate needs static shapes - "
                "build the model with keras.Input(..., batch_size=1)")
        if len(shape) >= 2 and shape[0] != 1:
            problems.append(
                f"input tensor '{name}' has batch size {shape[0]} (shape "
                f"{_fmt_dims(shape)}); the GPU delegate requires batch 1")

    others = []
    for i, t in enumerate(tensors):
        if i in input_ids or t.shapeSignature is None:
            continue
        sig = _ints(t.shapeSignature)
        if -1 in sig:
            others.append((_as_str(t.name) or f"#{i}", sig))
    if others:
        name, sig = others[0]
        problems.append(
            f"{len(others)} non-input tensor(s) have dynamic dimensions (-1 in "
            f"shape_signature), e.g. '{name}' {_fmt_dims(sig)}")
    return problems


def check_gpu_compatibility(
    model: str | os.PathLike | bytes,
    *,
    enhanced_broadcast: bool = False,
    allow_quant_ops: bool = True,
) -> GpuReport:
    """Checks a ``.tflite`` model against the TFLite GPU delegate's rules.

    ``model`` is a path to a ``.tflite`` file or the file's bytes.  A missing
    path raises :class:`FileNotFoundError`; a file that is not a TFLite
    flatbuffer raises :class:`ValueError`; both messages name the file.

    ``enhanced_broadcast`` selects ``GpuCompatibilityFlags::kEnhancedBroadcast``
    for ADD/MUL (what the offline analyzer assumed); the default is the
    stricter ``kStandard`` rule of the runtime delegate.  ``allow_quant_ops``
    mirrors the delegate's quantized-ops support (on by default in
    ``TfLiteGpuDelegateOptionsV2Default``).
    """
    buf, label = _read_model(model)
    fb = read_model(buf, label)
    verdicts: list[OpVerdict] = []
    for sg_index, subgraph in enumerate(fb.subgraphs):
        sigs: list[_OpSig] = []
        constants = _dequantized_constants(fb, subgraph)
        for op in subgraph.operators or []:
            display, builtin, custom = _op_names(fb, op.opcodeIndex)
            sigs.append(_OpSig(
                op=display, builtin=builtin, custom_name=custom,
                inputs=[_tensor_spec(fb, subgraph, i, constants) for i in _ints(op.inputs)],
                outputs=[_tensor_spec(fb, subgraph, i, constants) for i in _ints(op.outputs)],
                options=op.builtinOptions,
                custom_options=_custom_options(buf, op),
                enhanced_broadcast=enhanced_broadcast,
                allow_quant_ops=allow_quant_ops,
                version=int(fb.operatorCodes[op.opcodeIndex].version or 1),
            ))
        graph = _Graph.build(sigs)
        for op_index, sig in enumerate(sigs):
            sig.graph = graph
            reasons = _evaluate(sig)
            verdicts.append(OpVerdict(sg_index, op_index, sig.op,
                                      not reasons, reasons))
    return GpuReport(ops=verdicts, graph_problems=_graph_problems(fb),
                     source=label)
