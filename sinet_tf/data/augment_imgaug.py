"""Backend ``imgaug`` of PortraitNet's augmentation (the original Keras SINet recipe's library).

The same :class:`~sinet_tf.data.augment.PortraitNetAugmentation` spec expressed with imgaug
augmenters, run through ``tf.numpy_function``: the geometry here, the texture ops from their
registry entries (:class:`~sinet_tf.data.augment.TextureOp`, each its ``imgaug`` form inside
``iaa.Sometimes`` of its probability, in registration order). An op without an imgaug form
is refused unless its probability is 0. imgaug 0.4.0 only imports with ``numpy<2``: install
the extra in its own environment, ``pip install ".[imgaug]"``.
"""

from __future__ import annotations

import cv2
import numpy as np

from sinet_tf.data.augment import PortraitNetAugmentation, texture_ops

__all__ = ["import_imgaug", "build_augmenters", "augment_numpy", "imgaug_map_fn"]


def import_imgaug():
    try:
        import imgaug  # noqa: F401
        import imgaug.augmenters as iaa
    except (ImportError, AttributeError) as e:
        raise ImportError(
            "the 'imgaug' augmentation backend needs imgaug 0.4.0, which imports only with numpy<2 "
            f"({type(e).__name__}: {e}). Install it in a separate environment with "
            "`pip install \".[imgaug]\"`, or use backend='tf'.") from None
    return iaa


def _texture_ops(spec: PortraitNetAugmentation):
    """The registered texture ops with an imgaug form; raises for one without that can apply."""
    ops = []
    for op in texture_ops():
        if op.imgaug is not None:
            ops.append(op)
        elif op.probability(spec) > 0:
            field = f" ({op.prob}={op.probability(spec)})" if isinstance(op.prob, str) else ""
            raise ValueError(f"texture op {op.name!r} has no imgaug implementation and may apply{field}: "
                             "use backend='tf'")
    return ops


def build_augmenters(spec: PortraitNetAugmentation):
    """``(geometric, texture)`` imgaug augmenters for ``spec``."""
    ops = _texture_ops(spec)
    iaa = import_imgaug()
    geometric = iaa.Sequential([
        iaa.Fliplr(spec.flip_prob),
        iaa.Affine(scale=spec.scale, rotate=spec.rotation_deg,
                   translate_percent={"x": spec.translate, "y": spec.translate},
                   order=1, cval=spec.image_fill, mode="constant"),
    ])
    texture = iaa.Sequential([iaa.Sometimes(op.probability(spec), op.imgaug(iaa, spec)) for op in ops])
    return geometric, texture


def augment_numpy(image, label, seed, out_hw, spec: PortraitNetAugmentation, two_views=False):
    """Augment one ``uint8`` photo and label with imgaug; deterministic in ``seed`` (an int)."""
    from imgaug.augmentables.segmaps import SegmentationMapsOnImage

    h, w = out_hw
    image = cv2.resize(np.asarray(image, np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(np.asarray(label, np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    geometric, texture = build_augmenters(spec)  # per call: augmenters are not thread-safe
    geometric.seed_(int(seed) % (2 ** 31))
    texture.seed_((int(seed) * 7919 + 1) % (2 ** 31))
    plain, segmap = geometric(image=image, segmentation_maps=SegmentationMapsOnImage(label.astype(np.int32), image.shape))
    label_out = segmap.get_arr().astype(np.uint8)
    if spec.label_fill != 0:
        raise ValueError("the imgaug backend pads labels with 0 only")
    textured = texture(image=plain)
    out = [textured.astype(np.float32)]
    if two_views:
        out.append(plain.astype(np.float32))
    return (*out, label_out)


def imgaug_map_fn(spec: PortraitNetAugmentation, out_hw, two_views=False):
    """A ``tf.data`` map function ``(image, label, seed[2]) -> (image, [plain,] label)``."""
    import tensorflow as tf

    _texture_ops(spec)  # fail early: an op without an imgaug form,
    import_imgaug()  # or no imgaug (with the install hint)
    h, w = int(out_hw[0]), int(out_hw[1])

    def _np(image, label, seed):
        run_seed, example = (int(v) for v in np.asarray(seed, np.int64))
        # one integer from the (run seed, example) pair: every example draws differently
        s = int(np.random.SeedSequence([run_seed % 2 ** 32, example % 2 ** 63]).generate_state(1)[0] % 2 ** 31)
        return augment_numpy(image, label, s, out_hw, spec, two_views)

    def _map(image, label, seed):
        types = [tf.float32, tf.float32, tf.uint8] if two_views else [tf.float32, tf.uint8]
        outs = tf.numpy_function(_np, [image, label, seed], types, stateful=False)
        for t in outs[:-1]:
            t.set_shape([h, w, 3])
        outs[-1].set_shape([h, w])
        return tuple(outs)

    return _map
