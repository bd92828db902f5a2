"""Edge refinement: boundary F and person IoU of the official SINet with and without the
guided filter, how its parameters were chosen, and what it costs.

1. Parameters, chosen on humanseg290 **train** (230 photos): the guided filter's radius (in
   model-input pixels) and eps (>= 1e-3, see EPSILONS) over a grid; the pair with the
   largest boundary F + person IoU is the default of ``sinet predict --refine guided`` and ``sinet export --refine guided``.
2. Accuracy on humanseg290 **val** (60 photos), scored as ``sinet evaluate`` scores (each
   photo resized to 224x224 without letterbox, the matte back at the photo's size,
   threshold 0.5, full-size ground truth, :class:`sinet_tf.metrics.SegmentationMetrics`):
   no refinement (bilinear upsampling); ``sinet predict``'s refinement (coefficients at the
   model's resolution, applied with the full-resolution photo as guide); the refinement
   inside exported float32 files (the filter at 224x224 with its coefficients on 2x2 blocks,
   the export default, or at full 224x224 resolution; then bilinear upsampling), run under
   LiteRT. The same two predict rows with ``sinet predict``'s letterbox follow.
3. Cost: the exported files (float32, ``mask`` head) plain, with ``--refine guided`` (and
   ``--refine-subsample 1``), with ``--temporal ema`` and with both, each checked against the GPU-delegate rules and timed
   side by side at one thread by ``sinet bench``'s interleaved timer (both inputs set for
   the two-input files, which ``sinet bench`` itself does not take); and predict's NumPy
   refinement against plain bilinear upsampling on a 640x480 photo. The CPU is shared:
   read ratios.

    python benchmarks/edge_refine.py [--work runs/edge_refine] [--runs 200]

Writes benchmarks/results/edge_refine.json and edge_refine.md (the .tflite files go to --work).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "datasets" / "humanseg290"
WEIGHTS = SHARED / "reference" / "official" / "sinet_official_state_dict.npz"

RADII = (1, 2, 3, 4, 5, 6, 8)
# eps below 1e-3 is not tried: a phone's GPU delegate may run the filter in float16, whose
# resolution near 1 (about 1e-3) is then the error of mean(I^2) - mean(I)^2, the variance
# that eps regularizes
EPSILONS = (1e-3, 3e-3, 1e-2)



def model_outputs(segmenter, split, keep_aspect: bool):
    """(photo, label, ModelFrame) for every photo of ``split``."""
    from sinet_tf.data.readers import load_dataset
    from sinet_tf.postprocess import model_frame

    segmenter.keep_aspect = keep_aspect
    ds = load_dataset(DATA, split=split)
    rows = []
    for i in range(len(ds)):
        image, label = ds.read(i)
        rows.append((image, label, model_frame(segmenter, image)))
    return rows


def score(rows, mattes) -> dict:
    from sinet_tf.metrics import SegmentationMetrics

    m = SegmentationMetrics(num_classes=2)
    for (image, label, _), matte in zip(rows, mattes):
        m.update((matte > 0.5).astype(np.uint8), label)
    r = m.result()
    return {"person_iou": round(r["person_iou"], 5), "boundary_f": round(r["boundary_f"], 5), "n_images": r["n_images"]}


def predict_mattes(rows, refine: str, radius=None, eps=None):
    from sinet_tf.postprocess import MattePostprocessor

    kw = {} if radius is None else {"radius": radius, "eps": eps}
    post = MattePostprocessor("none", 0.0, refine, **kw)
    return [post(frame, image) for image, _, frame in rows]


def export_files(work: Path, radius: int, eps: float, say) -> dict:
    from sinet_tf.export import export_tflite

    files = {}
    for name, kw in (("plain", {}), ("refine", {"refine": "guided"}),
                     ("refine_subsample1", {"refine": "guided", "refine_subsample": 1}),
                     ("temporal", {"temporal": "ema"}), ("refine_temporal", {"refine": "guided", "temporal": "ema"})):
        path = work / f"sinet_mask_{name}.tflite"
        say(f"exporting {path.name}")
        report = export_tflite("sinet", path, weights=WEIGHTS, head="mask", refine_radius=radius, refine_eps=eps,
                               parity_data=DATA, num_parity=8, **kw)
        files[name] = {"path": str(path), "size_bytes": report.size_bytes, "ops": report.ops,
                       "gpu_compatible": report.gpu.compatible,
                       "max_abs_diff_vs_keras": report.parity["max_abs_diff_probability"]}
    return files


def exported_mattes(path: str, rows):
    """The exported refine file's matte (224x224) resized bilinearly to each photo."""
    from sinet_tf.runtime.interpreter import TFLiteRunner

    runner = TFLiteRunner(path)
    out = []
    for image, _, frame in rows:
        prob = runner(frame.model_input[None])[0, ..., 0]
        out.append(cv2.resize(prob, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR))
    return out


def timed_files(files: dict, runs: int, warmup: int = 20) -> dict:
    """``{name: [ms, ...]}`` of every file at one thread under LiteRT/XNNPACK, the runs
    interleaved (:func:`sinet_tf.bench.host.interleaved_times`); pixels and a previous matte
    of seeded noise."""
    from sinet_tf.bench.host import interleaved_times
    from sinet_tf.runtime.interpreter import make_interpreter

    rng = np.random.default_rng(0)
    invokes = {}
    for name, f in files.items():
        interpreter = make_interpreter(f["path"], threads=1)
        for d in interpreter.get_input_details():
            shape = [int(v) for v in d["shape"]]
            scale = 255.0 if shape[-1] == 3 else 1.0
            interpreter.set_tensor(d["index"], (rng.uniform(0, 1, shape) * scale).astype(np.float32))
        invokes[name] = interpreter.invoke
    return interleaved_times(invokes, warmup, runs)


def numpy_cost(rows, radius, eps, repeats: int = 30) -> dict:
    """Milliseconds per photo of predict's step 3 at 640x480: bilinear vs guided (interleaved)."""
    from sinet_tf.postprocess import MattePostprocessor

    image, _, frame = next(r for r in rows if r[0].shape[:2] == (480, 640) or r[0].shape[:2] == (640, 480))
    posts = {"bilinear": MattePostprocessor("none", 0.0, "none"),
             "guided": MattePostprocessor("none", 0.0, "guided", radius, eps)}
    times = {k: [] for k in posts}
    for _ in range(repeats):
        for k, post in posts.items():
            t0 = time.perf_counter()
            post(frame, image)
            times[k].append(time.perf_counter() - t0)
    med = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    return {"photo": f"{image.shape[1]}x{image.shape[0]}", "bilinear_ms": round(med["bilinear"], 3),
            "guided_ms": round(med["guided"], 3), "ratio": round(med["guided"] / med["bilinear"], 2)}


def markdown(result: dict) -> str:
    lines = [f"Parameters chosen on train: radius {result['chosen']['radius']}, eps {result['chosen']['eps']:g} "
             f"(train: person IoU {result['chosen']['person_iou']:.4f}, boundary F {result['chosen']['boundary_f']:.4f}; "
             f"no refinement {result['train_none']['person_iou']:.4f} / {result['train_none']['boundary_f']:.4f})", "",
             "| humanseg290 val | input | refine | person IoU | vs none | boundary F | vs none |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in result["val"]:
        lines.append(f"| SINet official | {r['input']} | {r['refine']} | {r['person_iou']:.4f} | "
                     f"{r['iou_vs_none']:+.4f} | {r['boundary_f']:.4f} | {r['bf_vs_none']:+.4f} |")
    lines += ["", f"Latency (LiteRT/XNNPACK, 1 thread, {result['latency'][0]['runs']} interleaved runs; CPU: "
              f"{result['cpu']}):", "", "| file | ops | GPU delegate | median ms | vs plain |",
              "| --- | ---: | --- | ---: | ---: |"]
    for r in result["latency"]:
        lines.append(f"| {Path(r['model']).name} | {sum(r['ops'].values()) if isinstance(r['ops'], dict) else r['ops']} | "
                     f"{'compatible' if r['gpu_compatible'] else 'NOT compatible'} | {r['median_ms']:.2f} | "
                     f"{r['median_ratio']:.3f}x |")
    c = result["numpy"]
    lines += ["", f"predict's refinement in NumPy/OpenCV on a {c['photo']} photo: {c['guided_ms']:.2f} ms against "
              f"{c['bilinear_ms']:.2f} ms for bilinear upsampling ({c['ratio']:.1f}x)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from sinet_tf.bench.host import cpu_info, cpu_label
    from sinet_tf.files import write_atomic
    from sinet_tf.inference import Segmenter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(REPO / "runs" / "edge_refine"), help="folder for the .tflite files")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--runs", type=int, default=200, help="timed runs per file (default 200)")
    args = parser.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)

    def say(msg):
        print(msg, file=sys.stderr, flush=True)

    segmenter = Segmenter("sinet", weights=WEIGHTS)
    train = model_outputs(segmenter, "train", keep_aspect=False)
    train_none = score(train, predict_mattes(train, "none"))
    grid = []
    for r in RADII:
        for e in EPSILONS:
            grid.append({"radius": r, "eps": e, **score(train, predict_mattes(train, "guided", r, e))})
            say(f"train r={r} eps={e:g}: IoU {grid[-1]['person_iou']:.4f} BF {grid[-1]['boundary_f']:.4f}")
    chosen = max(grid, key=lambda g: g["person_iou"] + g["boundary_f"])
    radius, eps = chosen["radius"], chosen["eps"]
    del train

    files = export_files(work, radius, eps, say)
    val_rows = []
    for keep_aspect, label in ((False, "resized (as sinet evaluate)"), (True, "letterboxed (sinet predict)")):
        val = model_outputs(segmenter, "val", keep_aspect)
        none = score(val, predict_mattes(val, "none"))
        results = [("none", none), ("guided (predict: full-resolution guide)",
                                    score(val, predict_mattes(val, "guided", radius, eps)))]
        if not keep_aspect:
            results.append(("guided (in the exported file: at 224x224, coefficients on 2x2 blocks)",
                            score(val, exported_mattes(files["refine"]["path"], val))))
            results.append(("guided (in the exported file, --refine-subsample 1)",
                            score(val, exported_mattes(files["refine_subsample1"]["path"], val))))
            cost = numpy_cost(val, radius, eps)
        for name, r in results:
            val_rows.append({"input": label, "refine": name, **r,
                             "iou_vs_none": round(r["person_iou"] - none["person_iou"], 5),
                             "bf_vs_none": round(r["boundary_f"] - none["boundary_f"], 5)})
            say(f"val {label} {name}: IoU {r['person_iou']:.4f} BF {r['boundary_f']:.4f}")

    say(f"timing {len(files)} files, {args.runs} interleaved runs at 1 thread")
    times = timed_files(files, args.runs)
    latency = []
    for name, f in files.items():
        ms = np.asarray(times[name])
        latency.append({"model": f["path"], "ops": f["ops"], "gpu_compatible": f["gpu_compatible"],
                        "size_bytes": f["size_bytes"], "median_ms": round(float(np.median(ms)), 3),
                        "p90_ms": round(float(np.percentile(ms, 90)), 3),
                        "median_ratio": round(float(np.median(ms) / np.median(times["plain"])), 3), "runs": len(ms),
                        "max_abs_diff_vs_keras": f["max_abs_diff_vs_keras"]})
    result = {"chosen": chosen, "train_none": train_none, "grid": grid, "val": val_rows, "latency": latency,
              "numpy": cost, "cpu": cpu_label(cpu_info())}
    write_atomic(json.dumps(result, indent=2).encode(), out / "edge_refine.json")
    write_atomic(markdown(result).encode(), out / "edge_refine.md")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
