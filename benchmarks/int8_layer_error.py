"""Where an int8 export loses accuracy: every layer's output in the full-int8 TFLite
model (dequantized) against the same layer of the rewritten float Keras model, on real
images (:func:`sinet_tf.export.layer_error.layer_errors`, what the int8 gate names when it
refuses a file).

Printed per layer: relative RMS error ``||q - f|| / ||f||``, that error in units of the
tensor's int8 step, the fraction of clipped values and the error the layer adds over its
inputs.

    python benchmarks/int8_layer_error.py sinet|extremec3net [--calibration 50] [--images 4]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WEIGHTS = {"sinet": SHARED / "reference/official/sinet_official_state_dict.npz",
           "extremec3net": SHARED / "reference/official/extremec3_official_state_dict.npz"}
DATA = SHARED / "datasets/humanseg290"


def main() -> int:
    from sinet_tf.export import calibration_images
    from sinet_tf.export.layer_error import layer_errors
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
    for e in layer_errors(rewritten, data, val):
        print(f"{e.layer:45s} rel {e.relative_error:8.4f}   {e.error_steps:6.2f} steps   clipped {e.clipped:.5f}   "
              f"added {e.added:+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
