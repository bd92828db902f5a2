"""Accuracy parity of every export mode against the Keras model, on humanseg290 val.

For SINet and ExtremeC3Net with the official weights: the Keras model's person IoU
(`sinet evaluate` pipeline), then for each mode (fp32, fp16, dynamic, int8) the exported
file's IoU through the same reader and metrics, its size, conversion wall time and the
GPU-delegate verdict. int8 is calibrated on the train split (200 images).

    python benchmarks/export_parity.py [--out benchmarks/results] [--models sinet,extremec3net]

Writes export_parity.json and export_parity.md (a Markdown table) into --out, and the
.tflite files into --out/tflite/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WEIGHTS = {"sinet": SHARED / "reference/official/sinet_official_state_dict.npz",
           "extremec3net": SHARED / "reference/official/extremec3_official_state_dict.npz"}
DATA = SHARED / "datasets/humanseg290"
MODES = ("none", "fp16", "dynamic", "int8")


def main() -> int:
    from sinet_tf.evaluate import evaluate
    from sinet_tf.export import export_tflite

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--models", default="sinet,extremec3net")
    parser.add_argument("--num-calibration", type=int, default=200)
    args = parser.parse_args()
    out = Path(args.out)
    (out / "tflite").mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models.split(","):
        keras_iou = evaluate(name, DATA, split="val", weights=WEIGHTS[name])["person_iou"]
        rows.append({"model": name, "format": "keras", "person_iou": keras_iou, "difference": 0.0})
        print(f"{name} keras: person IoU {keras_iou:.4f}", flush=True)
        for mode in MODES:
            path = out / "tflite" / f"{name}_{mode}.tflite"
            t0 = time.perf_counter()
            report = export_tflite(name, path, weights=WEIGHTS[name], quantize=mode, head="probabilities",
                                   calibration_data=DATA if mode == "int8" else None,
                                   num_calibration=args.num_calibration, parity_data=DATA, num_parity=60)
            seconds = time.perf_counter() - t0
            iou = evaluate(path, DATA, split="val")["person_iou"]
            row = {"model": name, "format": mode, "person_iou": iou, "difference": iou - keras_iou,
                   "size_bytes": report.size_bytes, "export_seconds": round(seconds, 1),
                   "gpu_compatible": report.gpu.compatible,
                   "max_abs_diff_probability": report.parity["max_abs_diff_probability"]}
            rows.append(row)
            print(f"{name} {mode}: person IoU {iou:.4f} ({iou - keras_iou:+.4f}), {report.size_bytes / 1024:.0f} KiB, "
                  f"export {seconds:.0f} s, GPU {'ok' if report.gpu.compatible else 'NO'}", flush=True)
    (out / "export_parity.json").write_text(json.dumps(rows, indent=2))
    lines = ["| model | format | person IoU (val) | vs Keras | size | export wall time | GPU delegate |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if r["format"] == "keras":
            lines.append(f"| {r['model']} | Keras | {r['person_iou']:.4f} | | | | |")
        else:
            lines.append(f"| {r['model']} | {r['format']} | {r['person_iou']:.4f} | {r['difference']:+.4f} | "
                         f"{r['size_bytes'] / 1024:.0f} KiB | {r['export_seconds']:.0f} s | "
                         f"{'compatible' if r['gpu_compatible'] else 'NOT compatible'} |")
    (out / "export_parity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
