"""The README's model table: every registered model at its default input size, exported to
float32 and full-int8 ``.tflite`` (batch 1), with the GPU-delegate verdict of both files and
the host latency of both under LiteRT/XNNPACK.

    python benchmarks/model_zoo.py [--models a,b] [--threads 1] [--out benchmarks/results]

Weights are random (the ImageNet backbones are not downloaded; nothing here depends on
trained weights): params, multiply-adds, op sets, GPU verdicts and latency do not depend
on them. int8 is calibrated on 8 synthetic portraits at the model's input size. Each file is
timed with ``sinet bench`` (``sinet_tf.bench.benchmark``: same interpreter settings for
every file, fp32 and int8 of a model interleaved), with fewer runs for the heavy models so
that the whole table takes minutes, not hours. Writes model_zoo.json and model_zoo.md
(the table) into --out, and prints each row as it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]


def _runs_for(macs: float) -> tuple[int, int]:
    """(warm-up, timed runs) for a model of ``macs`` multiply-adds: ~20 s of timing at most."""
    if macs < 1e9:
        return 5, 50
    if macs < 10e9:
        return 2, 10
    return 1, 3


def measure(name: str, threads: int, workdir: Path) -> dict:
    import keras

    import sinet_tf
    from sinet_tf.bench import benchmark
    from sinet_tf.export import check_gpu_compatibility, convert_float32, export_tflite
    from sinet_tf.files import write_atomic
    from sinet_tf.model_cost import count_macs, count_params

    info = sinet_tf.get_model_info(name)
    keras.utils.set_random_seed(0)
    model = sinet_tf.build_model(name)
    row = {"name": name, "paper": info.paper, "params": count_params(model), "macs": count_macs(model),
           "input_size": list(info.default_input_size)}
    fp32 = workdir / f"{name}_fp32.tflite"
    t0 = time.perf_counter()
    write_atomic(convert_float32(model), fp32)
    row["fp32_convert_s"] = round(time.perf_counter() - t0, 1)
    gpu32 = check_gpu_compatibility(fp32.read_bytes())
    int8 = workdir / f"{name}_int8.tflite"
    t0 = time.perf_counter()
    report = export_tflite(model, int8, quantize="int8", calibration_data="synthetic:8", calibration_split=None,
                           num_calibration=8, num_parity=2)
    row["int8_convert_s"] = round(time.perf_counter() - t0, 1)
    for key, gpu in (("fp32", gpu32), ("int8", report.gpu)):
        row[f"{key}_gpu_compatible"] = bool(gpu.compatible)
        row[f"{key}_gpu_rejected"] = sorted({v.op for v in gpu.incompatible}) + list(gpu.graph_problems)
        row[f"{key}_size_bytes"] = (fp32 if key == "fp32" else int8).stat().st_size
    warmup, runs = _runs_for(row["macs"])
    bench = benchmark([str(fp32), str(int8)], threads=(threads,), warmup=warmup, runs=runs, memory=False)
    for key, r in zip(("fp32", "int8"), bench):
        row[f"{key}_median_ms"] = round(float(r["median_ms"]), 2)
    row["threads"], row["runs"] = threads, runs
    return row


def _table(rows: list[dict]) -> str:
    def verdict(r, key):
        return "yes" if r[f"{key}_gpu_compatible"] else "no: " + ", ".join(r[f"{key}_gpu_rejected"])

    lines = ["| name | paper | params | multiply-adds | input | GPU fp32 | GPU int8 | fp32 ms | int8 ms |",
             "| --- | --- | ---: | ---: | --- | --- | --- | ---: | ---: |"]
    for r in rows:
        h, w = r["input_size"]
        lines.append(f"| `{r['name']}` | {r['paper']} | {r['params']:,} | {r['macs'] / 1e6:,.1f} M | {h}x{w} | "
                     f"{verdict(r, 'fp32')} | {verdict(r, 'int8')} | {r['fp32_median_ms']:,.1f} | "
                     f"{r['int8_median_ms']:,.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    import sinet_tf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated names (default: every registered model)")
    parser.add_argument("--threads", type=int, default=1, help="LiteRT threads (default 1: the least noisy "
                                                                "on a shared 2-core host)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    names = args.models.split(",") if args.models else sinet_tf.list_models()
    for name in names:
        sinet_tf.get_model_info(name)  # an unknown name fails before any work
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            t0 = time.perf_counter()
            row = measure(name, args.threads, Path(tmp))
            rows.append(row)
            print(json.dumps(row), f"({time.perf_counter() - t0:.0f} s)", flush=True)
            (out / "model_zoo.json").write_text(json.dumps(rows, indent=2))
    table = _table(rows)
    (out / "model_zoo.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
