"""Latency against accuracy: SINet at several input sizes, with the official weights, a
fine-tuned checkpoint and the accelerator-friendly variant (``sinet_fast``, trained from the
official checkpoint by ``training/sinet_fast_kd.yaml``), exported float32 and full-integer
int8, next to MediaPipe's selfie model. Run from the repository root with ../shared beside it:

    python benchmarks/pareto.py --selfie training/teachers/mediapipe_selfie_segmentation.tflite \\
        --finetuned runs/finetune/best.keras --fast runs/fast/finetune/best.keras \\
        [--sizes 160,192,224,256] [--work runs/pareto] [--runs 100] [--out benchmarks/results]

Every file is exported with ``sinet export``'s function (the rewrite passes of its mode;
int8 with ``--int8-ranges minmax+equalize``, the calibration ``sinet export``'s automatic
choice picked for SINet in ``benchmarks/results/int8_matrix.md``, to keep the run short,
and where that fails the int8 gate (more than 0.01 person IoU lost on the held-out parity
photos) again with ``sinet export``'s search over calibrations, the default; 100
calibration photos of humanseg290 train, the int8 gate's parity on held-out ones),
then all files and the selfie model are timed in one ``sinet bench`` run
(:func:`sinet_tf.bench.benchmark`: 1 and 2 threads, timed runs interleaved across the
files) that also scores person IoU on humanseg290 val as ``sinet evaluate`` does (each
photo at full size: the model's input is the photo resized, its mask resized back).

Writes pareto.json (the rows, with the CPU model and ISA flags), pareto.md (the table, the
configurations that are faster than the selfie model at the official SINet's IoU or
better) and pareto.png (latency against IoU at 1 and 2 threads). Existing exports in
--work are reused (delete them to re-export).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OFFICIAL_WEIGHTS = SHARED / "reference" / "official" / "sinet_official_state_dict.npz"
DATA = SHARED / "datasets" / "humanseg290"
OFFICIAL_KERAS_IOU = 0.6825  # official SINet, Keras, humanseg290 val (benchmarks/results/int8_matrix.md)
INT8_RANGES = "minmax+equalize"


def export_all(sources: dict, sizes, work: Path, log) -> list[dict]:
    """Export every (weights, size, mode) to ``work``; one dict per file."""
    from sinet_tf.export import export_tflite

    files = []
    for label, (source, weights) in sources.items():
        for size in sizes:
            for quantize in ("none", "int8"):
                mode = "fp32" if quantize == "none" else "int8"
                out = work / f"sinet_{label}_{size}_{mode}.tflite"
                entry = {"weights": label, "size": size, "mode": mode, "file": str(out)}
                kwargs = {}
                if quantize == "int8":
                    kwargs = {"calibration_data": str(DATA), "calibration_split": "train", "num_calibration": 100,
                              "int8_ranges": INT8_RANGES, "allow_drop": True}
                if not out.exists():
                    t0 = time.perf_counter()
                    export_tflite(source, out, weights=weights, quantize=quantize, input_size=(size, size), **kwargs)
                    log(f"exported {out.name} in {time.perf_counter() - t0:.0f} s")
                report = json.loads(out.with_suffix(".json").read_text())
                if quantize == "int8" and report["int8"]["gate"] != "passed" and len(report["int8"]["candidates"]) == 1:
                    t0 = time.perf_counter()  # the fixed calibration fails the gate: sinet export's own search
                    export_tflite(source, out, weights=weights, quantize=quantize, input_size=(size, size),
                                  **{**kwargs, "int8_ranges": "auto"})
                    report = json.loads(out.with_suffix(".json").read_text())
                    log(f"{out.name}: {INT8_RANGES} failed the gate; the search chose {report['int8']['chosen']} "
                        f"({report['int8']['gate']}) in {time.perf_counter() - t0:.0f} s")
                entry["gpu_compatible"] = bool(report["gpu_delegate"]["compatible"])
                entry["num_ops"] = int(report["gpu_delegate"]["num_ops"])
                if quantize == "int8":
                    entry["int8_gate"] = report.get("int8", {}).get("gate")
                    entry["int8_chosen"] = report.get("int8", {}).get("chosen")
                files.append(entry)
    return files


def measure(files: list[dict], selfie: Path | None, runs: int, warmup: int, log) -> list[dict]:
    """One interleaved ``sinet bench`` run over every file (1 and 2 threads) with person IoU
    on humanseg290 val; one row per file and thread count."""
    from sinet_tf.bench import benchmark

    paths = [f["file"] for f in files] + ([str(selfie)] if selfie else [])
    bench = benchmark(paths, threads=(1, 2), warmup=warmup, runs=runs, data=str(DATA), split="val", memory=False,
                      progress=log)
    meta = {f["file"]: f for f in files}
    rows = []
    for r in bench:
        entry = meta.get(r["model"], {"weights": "mediapipe", "size": None, "mode": "selfie (fp16 weights)",
                                      "file": r["model"]})
        rows.append({**entry, "name": r["name"], "input": r.get("input"), "threads": r["threads"],
                     "median_ms": r["median_ms"], "p90_ms": r["p90_ms"], "min_ms": r["min_ms"], "runs": r["runs"],
                     "person_iou": r.get("person_iou"), "boundary_f": r.get("boundary_f"),
                     "iou_images": r.get("iou_images"), "cpu": r.get("cpu"), "load_average": r.get("load_average")})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """One line per configuration: latency at 1 and 2 threads, IoU, int8-minus-fp32 IoU,
    latency relative to the selfie model, and whether it beats the selfie model at the
    official SINet's IoU or better with its int8 within 0.01 of its fp32."""
    by = {}
    for r in rows:
        by.setdefault((r["weights"], r["size"], r["mode"]), {}).update({
            **{k: r[k] for k in ("weights", "size", "mode", "file", "person_iou", "boundary_f")},
            f"ms_{r['threads']}t": r["median_ms"],
            **{k: r[k] for k in ("gpu_compatible", "num_ops", "int8_chosen") if k in r}})
    selfie = next((v for k, v in by.items() if k[0] == "mediapipe"), None)
    for (weights, size, mode), v in by.items():
        if weights == "mediapipe":
            continue
        other = by.get((weights, size, "int8" if mode == "fp32" else "fp32"))
        fp32, int8 = (v, other) if mode == "fp32" else (other, v)
        v["int8_minus_fp32_iou"] = None if not (fp32 and int8) else round(int8["person_iou"] - fp32["person_iou"], 4)
        if selfie:
            for t in (1, 2):
                v[f"vs_selfie_{t}t"] = round(v[f"ms_{t}t"] / selfie[f"ms_{t}t"], 3)
            v["beats_selfie"] = bool(v["ms_1t"] < selfie["ms_1t"] and v["ms_2t"] < selfie["ms_2t"]
                                     and v["person_iou"] >= OFFICIAL_KERAS_IOU
                                     and v["int8_minus_fp32_iou"] is not None
                                     and abs(v["int8_minus_fp32_iou"]) <= 0.01)
    return sorted(by.values(), key=lambda v: (v["weights"] != "mediapipe", v["weights"], v["size"] or 0, v["mode"]))


def table(summary: list[dict], cpu_line: str, runs: int) -> str:
    lines = [f"CPU: {cpu_line}; LiteRT XNNPACK, {runs} timed runs per file and thread count, interleaved across all "
             "files in one process; person IoU on humanseg290 val (60 photos, each at full size). "
             f"Official SINet in Keras at 224: {OFFICIAL_KERAS_IOU}.", "",
             "| weights | input | mode | ms, 1 thread | ms, 2 threads | vs selfie (1 / 2 threads) | person IoU | "
             "int8 - fp32 IoU | int8 calibration | ops | GPU delegate | faster than selfie at >= official IoU |",
             "| --- | ---: | --- | ---: | ---: | --- | ---: | ---: | --- | ---: | --- | --- |"]
    for v in summary:
        vs = "" if "vs_selfie_1t" not in v else f"{v['vs_selfie_1t']:.2f} / {v['vs_selfie_2t']:.2f}"
        diff = v.get("int8_minus_fp32_iou")
        lines.append(f"| {v['weights']} | {v['size'] or 256} | {v['mode']} | {v['ms_1t']:.2f} | {v['ms_2t']:.2f} | "
                     f"{vs} | {v['person_iou']:.4f} | {'' if diff is None else f'{diff:+.4f}'} | "
                     f"{v.get('int8_chosen') or ''} | "
                     f"{v.get('num_ops', '')} | {'' if 'gpu_compatible' not in v else ('yes' if v['gpu_compatible'] else 'no')} | "
                     f"{'**yes**' if v.get('beats_selfie') else ''} |")
    return "\n".join(lines) + "\n"


def plot(summary: list[dict], out: Path, cpu_line: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    styles = {"fp32": "o-", "int8": "s--"}
    for ax, t in zip(axes, (1, 2)):
        for weights in dict.fromkeys(v["weights"] for v in summary if v["weights"] != "mediapipe"):
            for mode in ("fp32", "int8"):
                pts = sorted((v for v in summary if v["weights"] == weights and v["mode"] == mode),
                             key=lambda v: v["size"])
                if not pts:
                    continue
                ax.plot([p[f"ms_{t}t"] for p in pts], [p["person_iou"] for p in pts], styles[mode],
                        label=f"SINet {weights} {mode}")
                for p in pts:
                    ax.annotate(str(p["size"]), (p[f"ms_{t}t"], p["person_iou"]), fontsize=7,
                                xytext=(3, 3), textcoords="offset points")
        for v in summary:
            if v["weights"] == "mediapipe":
                ax.plot([v[f"ms_{t}t"]], [v["person_iou"]], "k*", markersize=14, label="MediaPipe selfie (256)")
                ax.axvline(v[f"ms_{t}t"], color="k", lw=0.5, ls=":")
        ax.axhline(OFFICIAL_KERAS_IOU, color="gray", lw=0.5, ls=":")
        ax.set_xlabel(f"median latency, {t} thread{'s' if t > 1 else ''} (ms)")
        ax.set_title(f"{t} thread{'s' if t > 1 else ''}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("person IoU, humanseg290 val")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"SINet input size / weights / mode vs MediaPipe selfie; {cpu_line}", fontsize=8)
    fig.tight_layout()
    from sinet_tf.files import atomic_path

    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--selfie", type=Path, help="MediaPipe's selfie_segmentation.tflite")
    parser.add_argument("--finetuned", type=Path, help="a fine-tuned SINet .keras (e.g. benchmarks/finetune_official.sh's)")
    parser.add_argument("--fast", type=Path,
                        help="a trained sinet_fast .keras (training/sinet_fast_kd.yaml's best.keras)")
    parser.add_argument("--sizes", default="160,192,224,256")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "pareto")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    for path, what in ((args.selfie, "--selfie"), (args.finetuned, "--finetuned"), (args.fast, "--fast")):
        if path is not None and not path.exists():
            parser.error(f"{what} {path}: no such file")
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    sources = {"official": ("sinet", str(OFFICIAL_WEIGHTS))}
    if args.finetuned is not None:
        sources["finetuned"] = (str(args.finetuned), None)
    if args.fast is not None:
        sources["fast"] = (str(args.fast), None)
    files = export_all(sources, sizes, args.work, log)
    rows = measure(files, args.selfie, args.runs, args.warmup, log)
    summary = summarize(rows)
    from sinet_tf.bench.host import cpu_info, cpu_label
    from sinet_tf.files import write_atomic

    cpu = cpu_info()
    result = {"cpu": cpu, "runs": args.runs, "warmup": args.warmup, "int8_ranges": INT8_RANGES,
              "finetuned": None if args.finetuned is None else str(args.finetuned),
              "fast": None if args.fast is None else str(args.fast),
              "official_keras_iou": OFFICIAL_KERAS_IOU, "summary": summary, "rows": rows}
    write_atomic(json.dumps(result, indent=1).encode(), args.out / "pareto.json")
    text = table(summary, cpu_label(cpu), args.runs)
    write_atomic(("# SINet latency vs accuracy (benchmarks/pareto.py)\n\n" + text).encode(), args.out / "pareto.md")
    plot(summary, args.out / "pareto.png", cpu_label(cpu))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
