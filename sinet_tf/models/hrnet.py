"""HRNetV2 for segmentation (Wang, Sun, Cheng, Jiang, Deng, Zhao, Liu, Mu, Tan, Wang, Liu,
Xiao: "Deep High-Resolution Representation Learning for Visual Recognition", TPAMI 2020,
arXiv 1908.07919; Sun et al.: "High-Resolution Representations for Labeling Pixels and
Regions", arXiv 1904.04514).

The network (TPAMI Sec. 3, Fig. 2) keeps a high-resolution stream through the whole
depth and adds one lower-resolution stream per stage:

- stem: two 3x3 stride-2 convolutions (64 channels) with BN + ReLU, to 1/4 (Sec. 3);
- stage 1: bottleneck residual units at 1/4 (Sec. 3, "Instantiation");
- stages 2, 3, 4: 2, 3, 4 parallel branches at 1/4, 1/8, 1/16, 1/32 with widths C, 2C,
  4C, 8C; each new branch comes from a 3x3 stride-2 conv on the previous lowest-resolution
  branch (the "transition"), and each stage is a sequence of *modules*: basic residual
  blocks on every branch, then the multi-resolution fusion (Fig. 3): a lower-resolution
  input reaches a higher resolution through a 1x1 conv + BN + bilinear upsampling; a
  higher-resolution input reaches a lower one through strided 3x3 convs + BN (ReLU
  between repeated ones); the inputs are summed and passed through a ReLU;
- HRNetV2 head (TPAMI Sec. 3, representation head, Fig. 4(b); 1904.04514 Sec. 3): all
  four branches upsampled to 1/4 and concatenated (15C channels), a 1x1 conv + BN + ReLU
  of the same width (the official seg head ``last_layer``), a 1x1 classifier; then a
  bilinear x4 upsample to the input resolution (the official code upsamples the logits to
  the label size in its loss).

Variants (module / block counts and widths from the official HRNet-Semantic-Segmentation
configs, ``experiments/cityscapes/seg_hrnet_*.yaml``; see :data:`HRNET_SPECS`):

===================  =====  ================  =================  ================
variant              C      stage 1           modules (st 2-4)   blocks / branch
===================  =====  ================  =================  ================
w18_small_v1         16     1 bottleneck x32  1, 1, 1            2
w18_small_v2         18     2 bottleneck x64  1, 3, 2            2
w18                  18     4 bottleneck x64  1, 4, 3            4
w48                  48     4 bottleneck x64  1, 4, 3            4
===================  =====  ================  =================  ================

``hrnetv2_w18_small`` builds W18-Small-v2 (``version=2``, the default: the small model the
authors' README reports best, 76.2 mIoU on Cityscapes val) or W18-Small-v1 (``version=1``).

Parameters (trainable, 2 classes; tests/test_hrnet.py). Our counts equal, to the
parameter, those of the official construction rules (``seg_hrnet.py``): 1,536,722
(W18-Small-v1), 3,934,972 (W18-Small-v2), 9,636,512 (W18), 65,847,122 (W48). Only the
classifier depends on the class count (15C + 1 per class). The authors' README
(HRNet-Semantic-Segmentation, Cityscapes, 19 classes) reports 1.5 M, 3.9 M and 65.8 M;
ours at 19 classes are 1,540,819 (+2.7%), 3,939,579 (+1.0%) and 65,859,379 (+0.1%). For
W18 the only authors' figure is HRNet-Facial-Landmark-Detection's "9.3M" for the same body
and head with 98 landmark maps, while its code builds 9,662,528 (ours at 98 outputs
matches that exactly): their figure is 3.9% below their own network, so W18 is checked
against it within 4%. BatchNorm running statistics are not counted.

Faithful details (official ``lib/models/seg_hrnet.py``): convolutions have no bias except
the head's two 1x1 convs; BatchNorm has PyTorch's epsilon 1e-5 and momentum 0.1 (Keras 0.9);
every 3x3 conv pads one pixel on each side (stride-2 ones through an explicit symmetric
pad, as PyTorch does); bilinear resizes use ``align_corners=False`` (the master branch's
``F.interpolate`` default and ``ALIGN_CORNERS: False`` of the W48 Cityscapes config;
``align_corners=True`` matches the HRNet-OCR branch, whose README says its HRNet upsamples
with align_corners=True).
Layer names are the official ``state_dict`` keys (``conv1``, ``layer1.0.conv2``,
``transition1.1.0.0``, ``stage3.2.branches.1.3.bn2``, ``stage4.0.fuse_layers.0.3.0``,
``last_layer.0``, ...), so official or ImageNet-pretrained checkpoints map by name.
Initialization is the authors' (``init_weights``): conv kernels from N(0, 0.001), BN
scale 1 and shift 0 (biases start at 0 here). BatchNorm makes training insensitive to
the kernels' scale, and it keeps the untrained network's inference-mode outputs small
(He-normal kernels compound through HRNet's ~80-conv residual paths and summing fusions
to logits of ~1e8 before any training).

Input: RGB pixels in [0, 255] normalized with the ImageNet mean/std (the authors' input
transform). Height and width must be multiples of 32 (the 1/32 branch is upsampled back by
exact integer factors). Default 224x224: the portrait size of the zoo (PortraitNet's EG1800
crops, SINet), so ``sinet models`` compares HRNet's multiply-adds with its peers at the same
input; the authors train Cityscapes on 512x1024 crops and LIP (human parsing) at 473x473,
sizes a caller can give with ``input_shape``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import keras

from sinet_tf.backbones import copy_weights_by_name, require_weights_file
from sinet_tf.layers.conv import batch_norm
from sinet_tf.layers.resize import BilinearResize
from sinet_tf.models._common import check_input_shape, logits_output, normalized_input
from sinet_tf.registry import register_model

__all__ = ["HRNetSpec", "HRNET_SPECS", "hrnet_features", "hrnetv2_head", "hrnetv2_backbone",
           "load_hrnet_backbone_weights", "hrnetv2_w18_small", "hrnetv2_w18", "hrnetv2_w48"]

PAPER = "HRNetV2, Wang et al., TPAMI 2020 (arXiv 1908.07919) / Sun et al., arXiv 1904.04514"
INPUT_MULTIPLE = 32
STEM_CHANNELS = 64
BOTTLENECK_EXPANSION = 4
BN_EPSILON = 1e-5          # PyTorch nn.BatchNorm2d default, as in the official code
CONV_INIT_STD = 0.001      # official init_weights: every conv kernel ~ N(0, 0.001)

log = logging.getLogger("sinet_tf.models")


@dataclass(frozen=True)
class HRNetSpec:
    """One HRNet configuration (the official ``MODEL.EXTRA`` of a seg_hrnet yaml).

    ``width`` is C (branch ``i`` has ``C * 2**i`` channels); stage 1 is
    ``stage1_blocks`` bottlenecks of ``stage1_planes`` (output ``4 * stage1_planes``);
    ``modules[s]`` and ``blocks[s]`` are the module count of stage ``s + 2`` and the basic
    blocks per branch in each of its modules.
    """

    width: int
    stage1_blocks: int
    stage1_planes: int
    modules: tuple[int, int, int]
    blocks: tuple[int, int, int]

    @property
    def branch_widths(self) -> tuple[int, ...]:
        return tuple(self.width * 2 ** i for i in range(4))


# Official configs (HRNet/HRNet-Semantic-Segmentation, experiments/cityscapes/):
# seg_hrnet_w18_small_v1_512x1024_..., seg_hrnet_w18_small_v2_512x1024_..., seg_hrnet_w48_train_512x1024_...
# (W18 = the W48 layout at C=18, as in HRNet-Facial-Landmark-Detection's face_alignment_*_hrnet_w18.yaml).
HRNET_SPECS: dict[str, HRNetSpec] = {
    "w18_small_v1": HRNetSpec(width=16, stage1_blocks=1, stage1_planes=32, modules=(1, 1, 1), blocks=(2, 2, 2)),
    "w18_small_v2": HRNetSpec(width=18, stage1_blocks=2, stage1_planes=64, modules=(1, 3, 2), blocks=(2, 2, 2)),
    "w18": HRNetSpec(width=18, stage1_blocks=4, stage1_planes=64, modules=(1, 4, 3), blocks=(4, 4, 4)),
    "w48": HRNetSpec(width=48, stage1_blocks=4, stage1_planes=64, modules=(1, 4, 3), blocks=(4, 4, 4)),
}


def _conv(x, filters, kernel_size, strides=1, use_bias=False, name=None):
    """Conv as the official code builds it: ``(k - 1) / 2`` zero padding on every side (an
    explicit pad before strided convs, where TF "same" would pad bottom-right only) and
    kernels drawn from N(0, 0.001) (``init_weights`` of ``seg_hrnet.py``)."""
    padding = "same"
    if strides > 1 and kernel_size > 1:
        x = keras.layers.ZeroPadding2D((kernel_size - 1) // 2, name=f"{name}_pad")(x)
        padding = "valid"
    return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias,
                               kernel_initializer=keras.initializers.RandomNormal(stddev=CONV_INIT_STD),
                               name=name)(x)


def _bn(x, name):
    return batch_norm(x, name, epsilon=BN_EPSILON)


def _relu(x, name):
    return keras.layers.ReLU(name=name)(x)


def _residual_add(y, shortcut, name):
    return _relu(keras.layers.Add(name=f"{name}.add")([y, shortcut]), f"{name}.relu")


def _shortcut(x, channels, name):
    """Identity, or the official ``downsample`` (1x1 conv + BN) where the width changes."""
    if x.shape[-1] == channels:
        return x
    return _bn(_conv(x, channels, 1, name=f"{name}.downsample.0"), f"{name}.downsample.1")


def basic_block(x, channels, name):
    """Basic residual unit (He et al. 2016; TPAMI Sec. 3): 3x3 conv-BN-ReLU, 3x3 conv-BN, add, ReLU."""
    y = _relu(_bn(_conv(x, channels, 3, name=f"{name}.conv1"), f"{name}.bn1"), f"{name}.relu1")
    y = _bn(_conv(y, channels, 3, name=f"{name}.conv2"), f"{name}.bn2")
    return _residual_add(y, _shortcut(x, channels, name), name)


def bottleneck_block(x, planes, name):
    """Bottleneck residual unit of stage 1 (TPAMI Sec. 3): 1x1 (planes), 3x3, 1x1 (4 x planes)."""
    y = _relu(_bn(_conv(x, planes, 1, name=f"{name}.conv1"), f"{name}.bn1"), f"{name}.relu1")
    y = _relu(_bn(_conv(y, planes, 3, name=f"{name}.conv2"), f"{name}.bn2"), f"{name}.relu2")
    y = _bn(_conv(y, planes * BOTTLENECK_EXPANSION, 1, name=f"{name}.conv3"), f"{name}.bn3")
    return _residual_add(y, _shortcut(x, planes * BOTTLENECK_EXPANSION, name), name)


def _conv_bn_relu(x, channels, strides, name):
    """3x3 conv + BN + ReLU as one official ``nn.Sequential``: ``{name}.0``, ``.1``, ``.2``."""
    x = _bn(_conv(x, channels, 3, strides=strides, name=f"{name}.0"), f"{name}.1")
    return _relu(x, f"{name}.2")


def _transition(branches, widths, name):
    """Branches of the next stage: a 3x3 conv where a kept branch changes width (only after
    stage 1), and for each new branch strided 3x3 convs from the lowest-resolution one."""
    out = []
    for i, width in enumerate(widths):
        if i < len(branches):
            x = branches[i]
            out.append(x if x.shape[-1] == width else _conv_bn_relu(x, width, 1, f"{name}.{i}"))
        else:
            x = branches[-1]
            steps = i + 1 - len(branches)
            for j in range(steps):
                x = _conv_bn_relu(x, width if j == steps - 1 else x.shape[-1], 2, f"{name}.{i}.{j}")
            out.append(x)
    return out


def _fuse(branches, name, align_corners):
    """Multi-resolution fusion (TPAMI Fig. 3): every output branch ``i`` sums all inputs
    brought to its resolution and width, then applies a ReLU."""
    fused = []
    for i, target in enumerate(branches):
        width = target.shape[-1]
        terms = []
        for j, source in enumerate(branches):
            prefix = f"{name}.fuse_layers.{i}.{j}"
            if j == i:
                y = source
            elif j > i:   # lower resolution: 1x1 conv + BN, bilinear up by 2^(j-i)
                y = _bn(_conv(source, width, 1, name=f"{prefix}.0"), f"{prefix}.1")
                y = BilinearResize(scale=2 ** (j - i), align_corners=align_corners, name=f"{prefix}.up")(y)
            else:         # higher resolution: (i-j) strided 3x3 convs, ReLU between them
                y = source
                for k in range(i - j):
                    last = k == i - j - 1
                    y = _bn(_conv(y, width if last else source.shape[-1], 3, strides=2, name=f"{prefix}.{k}.0"),
                            f"{prefix}.{k}.1")
                    if not last:
                        y = _relu(y, f"{prefix}.{k}.2")
            terms.append(y)
        fused.append(_relu(keras.layers.Add(name=f"{name}.fuse{i}.add")(terms), f"{name}.fuse{i}.relu"))
    return fused


def _hr_module(branches, blocks, name, align_corners):
    """One high-resolution module: ``blocks`` basic blocks on each branch, then the fusion."""
    out = []
    for b, x in enumerate(branches):
        for k in range(blocks):
            x = basic_block(x, x.shape[-1], f"{name}.branches.{b}.{k}")
        out.append(x)
    return _fuse(out, name, align_corners)


def hrnet_features(x, spec: HRNetSpec, align_corners=False):
    """Stem, stage 1 and stages 2-4 on normalized input ``x``. Returns the four branches
    ``[1/4, 1/8, 1/16, 1/32]`` with ``C, 2C, 4C, 8C`` channels."""
    x = _relu(_bn(_conv(x, STEM_CHANNELS, 3, strides=2, name="conv1"), "bn1"), "relu1")
    x = _relu(_bn(_conv(x, STEM_CHANNELS, 3, strides=2, name="conv2"), "bn2"), "relu2")
    for k in range(spec.stage1_blocks):
        x = bottleneck_block(x, spec.stage1_planes, f"layer1.{k}")
    branches = [x]
    for stage, (modules, blocks) in enumerate(zip(spec.modules, spec.blocks), start=2):
        branches = _transition(branches, spec.branch_widths[:stage], f"transition{stage - 1}")
        for m in range(modules):
            branches = _hr_module(branches, blocks, f"stage{stage}.{m}", align_corners)
    return branches


def hrnetv2_head(branches, num_classes, align_corners=False):
    """HRNetV2 representation head (TPAMI Fig. 4(b)) and the official ``last_layer``:
    upsample to 1/4, concatenate (15C), 1x1 conv (with bias) + BN + ReLU, 1x1 classifier."""
    ups = [branches[0]] + [BilinearResize(scale=2 ** i, align_corners=align_corners, name=f"head.up{i}")(b)
                           for i, b in enumerate(branches[1:], start=1)]
    x = keras.layers.Concatenate(name="head.concat")(ups)
    width = x.shape[-1]
    x = _relu(_bn(_conv(x, width, 1, use_bias=True, name="last_layer.0"), "last_layer.1"), "last_layer.2")
    return _conv(x, num_classes, 1, use_bias=True, name="last_layer.3")


def hrnetv2_backbone(variant, input_shape=(64, 64, 3), align_corners=False):
    """The HRNet body alone (stem to stage 4, the layers ``backbone_weights`` fills), as a
    model from a normalized image to the four branches. ``save_weights`` of this model
    writes a ``.weights.h5`` file that ``backbone_weights=`` accepts."""
    spec = HRNET_SPECS[variant]
    inputs = keras.Input(shape=tuple(input_shape), name="normalized_image")
    return keras.Model(inputs, hrnet_features(inputs, spec, align_corners), name=f"hrnetv2_{variant}_backbone")


def _weights_path(model_name, path):
    path = require_weights_file(model_name, path)
    if not path.endswith((".keras", ".weights.h5")):
        raise ValueError(f"{model_name}: backbone_weights must be a .keras or .weights.h5 file, got {path}")
    return path


def load_hrnet_backbone_weights(model, path, variant, model_name):
    """Copy the HRNet body's weights into ``model`` by layer name from a local file: a
    ``.keras`` model holding layers of the same names (a trained ``hrnetv2_*`` model of any
    class count, or a converted ImageNet body) or a ``.weights.h5`` file written by
    :func:`hrnetv2_backbone` of the same variant. Returns the number of layers copied."""
    path = _weights_path(model_name, path)
    body = hrnetv2_backbone(variant)
    if path.endswith(".keras"):
        source = keras.models.load_model(path, compile=False, safe_mode=True)
        copy_weights_by_name(body, source, model_name, path)
    else:
        body.load_weights(path)
    return copy_weights_by_name(model, body, model_name, path)


def _hrnetv2(model_name, variant, input_shape, num_classes, align_corners, backbone_weights,
             normalization, batch_size):
    check_input_shape(model_name, input_shape, INPUT_MULTIPLE)
    if backbone_weights is not None:
        _weights_path(model_name, backbone_weights)   # a missing or foreign file fails before the build
    inputs, x = normalized_input(input_shape, normalization, batch_size)
    branches = hrnet_features(x, HRNET_SPECS[variant], align_corners)
    x = hrnetv2_head(branches, num_classes, align_corners)
    x = BilinearResize(scale=4, align_corners=align_corners, name="upsample")(x)
    model = keras.Model(inputs, logits_output(x, "logits"), name=model_name)
    if backbone_weights is not None:
        load_hrnet_backbone_weights(model, backbone_weights, variant, model_name)
    else:
        log.info("%s: no backbone_weights given; the HRNet body is randomly initialized", model_name)
    return model


@register_model(default_input_size=(224, 224), paper=PAPER, input_multiple=INPUT_MULTIPLE,
                tags=("hrnet", "small"))
def hrnetv2_w18_small(input_shape=(224, 224, 3), num_classes=2, version=2, align_corners=False,
                      backbone_weights=None, normalization="imagenet", batch_size=None):
    """HRNetV2-W18-Small (official seg_hrnet_w18_small_v2 config; ``version=1``: v1), logits at full resolution.

    ``backbone_weights``: a local ``.keras`` or ``.weights.h5`` file whose layers carry the
    HRNet names (see :func:`load_hrnet_backbone_weights`); nothing is downloaded.
    """
    if version not in (1, 2):
        raise ValueError(f"hrnetv2_w18_small: version must be 1 or 2, got {version!r}")
    return _hrnetv2("hrnetv2_w18_small", f"w18_small_v{version}", input_shape, num_classes, align_corners,
                    backbone_weights, normalization, batch_size)


@register_model(default_input_size=(224, 224), paper=PAPER, input_multiple=INPUT_MULTIPLE, tags=("hrnet", "large"))
def hrnetv2_w18(input_shape=(224, 224, 3), num_classes=2, align_corners=False, backbone_weights=None,
                normalization="imagenet", batch_size=None):
    """HRNetV2-W18 (C = 18; stage modules 1, 4, 3 of 4 blocks), logits at full resolution."""
    return _hrnetv2("hrnetv2_w18", "w18", input_shape, num_classes, align_corners, backbone_weights,
                    normalization, batch_size)


@register_model(default_input_size=(224, 224), paper=PAPER, input_multiple=INPUT_MULTIPLE, tags=("hrnet", "large"))
def hrnetv2_w48(input_shape=(224, 224, 3), num_classes=2, align_corners=False, backbone_weights=None,
                normalization="imagenet", batch_size=None):
    """HRNetV2-W48 (C = 48; the authors' Cityscapes model), logits at full resolution."""
    return _hrnetv2("hrnetv2_w48", "w48", input_shape, num_classes, align_corners, backbone_weights,
                    normalization, batch_size)
