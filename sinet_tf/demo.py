"""``sinet demo``: the main job, end to end, in a few minutes on a laptop CPU.

1. train a small SINet (128x128) on synthetic portraits (:mod:`sinet_tf.data.synthetic`,
   nothing to download) or on ``--data``, with :func:`sinet_tf.train.train` and a recipe
   built here, for a time budget rather than a number of epochs: the learning rate
   follows a cosine over the budget and training stops at the epoch that would overrun it
   (so the number of epochs, and the result, depend on the machine's speed);
2. evaluate the best model (:func:`sinet_tf.evaluate.evaluate`, full-size ground truth);
3. export float32 and int8 ``.tflite`` files (:func:`sinet_tf.export.export_tflite`, int8
   calibrated on the training images, the calibration chosen by parity on the validation
   photos, quantization-aware fine-tuning when none meets the gate, and the gate itself:
   a model int8 cannot keep stops the demo with exit code 7) with the GPU-delegate check;
4. evaluate both exports the same way;
5. benchmark both (:func:`sinet_tf.bench.benchmark`, same interpreter and threads);
6. write ``report.md`` with plots (training curves, latency, example overlays) and
   ``metrics.json`` beside it.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sinet_tf.bench import benchmark
from sinet_tf.data.sources import open_source
from sinet_tf.evaluate import evaluate
from sinet_tf.export import export_tflite
from sinet_tf.export.qat import QATSettings
from sinet_tf.files import write_atomic
from sinet_tf.inference import Segmenter
from sinet_tf.train import StageConfig, TrainConfig, train

__all__ = ["DemoSettings", "run_demo"]


@dataclass(frozen=True)
class DemoSettings:
    input_size: int = 128          # SINet takes multiples of 32
    num_synthetic: int = 240       # training portraits (plus num_synthetic // 5 for validation)
    batch_size: int = 8
    learning_rate: float = 6e-3    # Adam, cosine-annealed over the time budget
    # training budget, graph tracing included: long enough on a 2-core CPU for a model whose int8
    # masks stay close to its float ones (benchmarks/results/demo_budget.md)
    minutes: float = 4.0
    num_calibration: int = 64      # int8 calibration images (training split)
    bench_runs: int = 50
    bench_warmup: int = 5
    threads: int = 2
    examples: int = 4              # validation photos in examples.png
    run_eagerly: bool = False      # a few steps only: eager steps cost less than tracing the graph
    int8_equalize: bool | str = "auto"  # int8 candidates with and without equalization ("auto"), or only one


# CI's end-to-end check: every step, least work (the int8 search over four candidates, not eight)
QUICK = DemoSettings(input_size=64, num_synthetic=24, minutes=0.25, num_calibration=16, bench_runs=20,
                     bench_warmup=3, examples=3, run_eagerly=True, int8_equalize=False)


def _timed_training_callback(seconds: float, base_lr: float, floor: float = 0.05, log=print):
    """A Keras callback that anneals the learning rate along a cosine over ``seconds`` of
    training (from ``base_lr`` to ``floor * base_lr``) and stops at the end of the epoch
    after which another epoch would overrun the budget (the first epoch always runs)."""
    import keras

    class TimedTraining(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.t0 = time.perf_counter()
            self.epoch_t0 = self.batch_t0 = self.t0
            self.batch_seconds = []

        def on_train_batch_begin(self, batch, logs=None):
            self.batch_t0 = time.perf_counter()
            frac = min(1.0, (self.batch_t0 - self.t0) / seconds)
            lr = base_lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))
            self.model.optimizer.learning_rate.assign(lr)

        def on_train_batch_end(self, batch, logs=None):
            self.batch_seconds.append(time.perf_counter() - self.batch_t0)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_t0 = time.perf_counter()
            self.batch_seconds = []

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            # the next epoch, estimated from this one without its slowest steps (the first
            # epoch traces the graphs), plus this epoch's validation and bookkeeping share
            steps = len(self.batch_seconds)
            typical = float(np.median(self.batch_seconds)) if steps else 0.0
            if epoch == 0:
                next_epoch = typical * steps * 1.3
            else:
                next_epoch = now - self.epoch_t0
            if now - self.t0 + next_epoch > seconds:
                self.model.stop_training = True
                log(f"time budget reached after {epoch + 1} epochs ({now - self.t0:.0f} s of {seconds:.0f} s)")

    return TimedTraining()


def _recipe(data: str, s: DemoSettings):
    stage = StageConfig(
        name="train", model="sinet", input_size=(s.input_size, s.input_size), epochs=1000,
        batch_size=s.batch_size, learning_rate=s.learning_rate, lr_milestones=(), weight_decay=1e-4,
        loss="ce + 1.0 * boundary(window=5)",
        augment=False,  # a few epochs over varied portraits do not overfit; augmenting would cost CPU time
        run_eagerly=s.run_eagerly)
    return TrainConfig(stages=[stage], data=data, seed=0, mixed_precision=False, recipe="sinet demo")


def _qat_settings(data: str, s: DemoSettings):
    """Quantization-aware fine-tuning if no post-training calibration meets the gate: two
    epochs of the demo's own recipe at the learning rate its cosine ends on."""
    return QATSettings(data=data, epochs=2, loss="ce + 1.0 * boundary(window=5)", batch_size=s.batch_size,
                       learning_rate=0.05 * s.learning_rate, augment=False, seed=0, recipe="sinet demo")


def _history(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


# --------------------------------------------------------------------------- plots


def _plot_training(history: list[dict], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in (("loss", "training"), ("val_loss", "validation")):
        if any(key in r for r in history):
            a.plot(epochs, [r.get(key, np.nan) for r in history], marker="o", label=label)
    a.set(title="loss", xlabel="epoch")
    a.legend()
    for key, label in (("person_iou", "training (batch statistics)"), ("val_person_iou", "validation")):
        if any(key in r for r in history):
            b.plot(epochs, [r.get(key, np.nan) for r in history], marker="o", label=label)
    b.set(title="person IoU", xlabel="epoch", ylim=(0, 1))
    b.legend()
    for ax in (a, b):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_latency(rows: list[dict], path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['name']}\n{r['threads']} thread{'s' if r['threads'] != 1 else ''}" for r in rows]
    med = [r["median_ms"] for r in rows]
    p90 = [r["p90_ms"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    bars = ax.bar(names, med, color=["#4c72b0", "#dd8452", "#55a868", "#c44e52"][:len(rows)],
                  yerr=[np.zeros(len(rows)), np.subtract(p90, med)], capsize=6)
    for bar, m in zip(bars, med):
        ax.text(bar.get_x() + bar.get_width() / 2, m / 2, f"{m:.2f} ms", ha="center", va="center",
                color="white", fontweight="bold")
    ax.set(title="latency per image (median; whisker: 90th percentile)", ylabel="ms")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_examples(model_path: Path, data: str, count: int, path: Path) -> list[float]:
    """Validation photos with the prediction of ``model_path``: person tinted green,
    ground-truth outline in red. Returns the per-photo person IoU."""
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    segmenter = Segmenter(model_path)
    source = open_source(data, "val", seed=0)
    idx = np.linspace(0, len(source) - 1, min(count, len(source))).round().astype(int)
    fig, axes = plt.subplots(1, len(idx), figsize=(3.2 * len(idx), 3.6), squeeze=False)
    ious = []
    for ax, i in zip(axes[0], idx):
        image, label = source.read(int(i))
        pred = segmenter.mask(image).astype(bool)
        truth = label == 1
        valid = label != 255
        union = ((pred | truth) & valid).sum()
        iou = float(((pred & truth) & valid).sum() / union) if union else 1.0
        ious.append(iou)
        overlay = image.astype(np.float32)
        overlay[pred] = 0.55 * overlay[pred] + 0.45 * np.array([40, 220, 60])
        overlay = overlay.astype(np.uint8)
        contours, _ = cv2.findContours(truth.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(overlay, contours, -1, (230, 30, 30), max(1, image.shape[0] // 160))
        ax.imshow(overlay)
        ax.set_title(f"validation image {i}: IoU {iou:.3f}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{model_path.name}: prediction (green), ground truth (red outline)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return ious


# --------------------------------------------------------------------------- report


def _fmt(x, digits=4):
    return "n/a" if x is None else f"{x:.{digits}f}"


def _write_report(out: Path, m: dict, plots: dict) -> Path:

    t, ev, ex = m["training"], m["evaluation"], m["export"]
    lines = [
        "# sinet demo report",
        "",
        f"A {m['settings']['input_size']}x{m['settings']['input_size']} SINet trained from scratch for "
        f"{t['epochs']} epochs ({t['seconds']:.0f} s) on `{m['data']}`, evaluated on its validation split "
        f"({ev['keras']['n_images']} images, full-size ground truth), exported to float32 and int8 `.tflite` "
        f"and benchmarked on this machine. Whole demo: {m['wall_seconds']['total']:.0f} s.",
        "",
        "## Accuracy (validation split)",
        "",
        "| model | file | size | person IoU | mIoU | pixel accuracy | boundary F | GPU delegate |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for key, label in (("keras", "Keras (best epoch)"), ("fp32", "TFLite float32"), ("int8", "TFLite int8")):
        e = ev[key]
        size = ex[key]["size_bytes"] if key in ex else m["keras_size_bytes"]
        gpu = ("all ops compatible" if ex[key]["gpu_compatible"] else "NOT compatible") if key in ex else ""
        lines.append(f"| {label} | `{Path(e['model']).name}` | {size / 1024:.0f} KiB | {_fmt(e['person_iou'])} | "
                     f"{_fmt(e['miou'])} | {_fmt(e['pixel_accuracy'])} | {_fmt(e['boundary_f'])} | {gpu} |")
    cal = ex["int8"]["calibration"]
    tried = ", ".join(f"{c['name']} {c['drop']:+.4f}" if c.get("drop") is not None else f"{c['name']} (not scored)"
                      for c in cal["candidates"])
    lines += [
        "",
        f"int8 vs float32: person IoU {ev['int8']['person_iou'] - ev['fp32']['person_iou']:+.4f}. "
        "The GPU-delegate verdict applies the TFLite GPU delegate's op rules to every op "
        "(`sinet check-gpu FILE`).",
        "",
        f"int8 calibration: **{cal['chosen']}**, chosen by parity with the Keras model on {cal['parity_images']} "
        f"(person IoU lost per candidate: {tried}); gate --max-drop {cal['max_drop']:g}: {cal['gate']}"
        + (f"; quantization-aware fine-tuning: {cal['qat']['epochs']} epochs, {cal['qat']['train_seconds']:.0f} s"
           if cal.get("qat") else "") + ".",
        "",
        "## Training",
        "",
        f"![training curves]({plots['training']})",
        "",
        f"Best validation person IoU {_fmt(t['best_val_person_iou'])} at epoch {t['best_epoch']}; "
        f"{t['images_per_s']} training images/s. Training runs for a time budget "
        f"({m['settings']['minutes']:g} min, graph tracing included) with the learning rate on a cosine over it, "
        "so the number of epochs depends on this machine's speed. "
        f"Run folder: `{t['run_dir']}` (`history.csv`, TensorBoard logs).",
        "",
        "## Latency",
        "",
        f"![latency]({plots['latency']})",
        "",
        "| model | threads | median ms | p90 ms | min ms | size | params | peak memory |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in m["benchmark"]:
        params = f"{r['params']:,}" if isinstance(r.get("params"), (int, float)) else "n/a"
        memory = f"{r['peak_memory_mb']:.1f} MB" if isinstance(r.get("peak_memory_mb"), (int, float)) else "n/a"
        lines.append(f"| `{Path(str(r['model'])).name}` | {r['threads']} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f"{r['min_ms']:.2f} | {r['size_bytes'] / 1024:.0f} KiB | {params} | {memory} |")
    lines += [
        "",
        f"Host CPU, LiteRT interpreter, {m['settings']['bench_runs']} runs after {m['settings']['bench_warmup']} "
        "warm-up runs; other processes on this machine can slow it down.",
        "",
        "## Examples (int8 model, validation photos)",
        "",
        f"![examples]({plots['examples']})",
        "",
        "## Next",
        "",
        "```bash",
        f"sinet predict {out / 'sinet_demo_int8.tflite'} PHOTO_OR_VIDEO -o predictions --background blur",
        f"sinet evaluate {out / 'sinet_demo_int8.tflite'} --data {m['data']}",
        "```",
        "",
        "## Metrics (JSON)",
        "",
        "Also in `metrics.json`:",
        "",
        "```json",
        json.dumps(m, indent=2),
        "```",
        "",
    ]
    return write_atomic("\n".join(lines).encode(), out / "report.md")


# --------------------------------------------------------------------------- the demo


def run_demo(output="demo", data: str | None = None, minutes: float | None = None, quick: bool = False,
             settings: DemoSettings | None = None) -> dict:
    """Run the demo into the folder ``output``; returns the metrics written to ``metrics.json``."""
    import dataclasses

    from rich.console import Console

    console = Console()

    def log(text):
        console.print(str(text), markup=False, highlight=False)

    s = settings or (QUICK if quick else DemoSettings())
    if minutes is not None:
        if not minutes > 0:
            raise ValueError(f"--minutes must be positive, got {minutes}")
        s = dataclasses.replace(s, minutes=float(minutes))
    out = Path(output)
    run_dir = out / "run"
    if (run_dir / "state.json").exists():
        raise ValueError(f"{out} already holds a demo run ({run_dir / 'state.json'}); "
                         "remove the folder or give another -o")
    data = str(data) if data else f"synthetic:{s.num_synthetic}"
    steps = 6
    wall = {}
    t_start = time.perf_counter()

    def step(n, text):
        console.rule(f"[bold][{n}/{steps}] {text}")
        return time.perf_counter()

    # 1. train
    t = step(1, f"training SINet {s.input_size}x{s.input_size} on {data} for about {s.minutes:g} min")

    budget = _timed_training_callback(s.minutes * 60, s.learning_rate, log=log)
    summary = train(_recipe(data, s), run_dir, verbose=1 if console.is_terminal else 2, log=log,
                    extra_callbacks=[budget])
    stage = summary["stages"][0]
    best = Path(stage["best"])
    history = _history(run_dir / "train" / "history.csv")
    wall["train"] = time.perf_counter() - t
    training = {"epochs": int(stage["epochs"]), "seconds": round(wall["train"], 1),
                "best_val_person_iou": stage["best_val_person_iou"], "best_epoch": stage["best_epoch"],
                "images_per_s": stage["images_per_s"], "run_dir": str(run_dir)}

    # 2. evaluate

    t = step(2, f"evaluating {best.name} on the validation split")
    evaluation = {"keras": evaluate(best, data, split="val", progress=True)}
    console.print(f"person IoU {evaluation['keras']['person_iou']:.4f}, mIoU {evaluation['keras']['miou']:.4f}")
    wall["evaluate"] = time.perf_counter() - t

    # 3. export

    t = step(3, "exporting float32 and int8 .tflite (GPU-delegate check, parity with Keras)")
    files = {"fp32": out / "sinet_demo_fp32.tflite", "int8": out / "sinet_demo_int8.tflite"}
    # the export's Keras-vs-TFLite parity photos are the whole validation split, so the int8
    # gate holds on what step 4 evaluates (16 of synthetic:240's 48 passed a file that lost
    # 0.035 person IoU on all 48)
    num_parity = len(open_source(data, "val", seed=0))
    export = {}
    for key, quantize in (("fp32", "none"), ("int8", "int8")):
        kw = dict(calibration_data=data, calibration_split="train", num_calibration=s.num_calibration,
                  equalize=s.int8_equalize, qat=_qat_settings(data, s), log=log) if quantize == "int8" else {}
        report = export_tflite(best, files[key], quantize=quantize, parity_data=data, parity_split="val",
                               num_parity=num_parity, **kw)
        log(report.summary())
        export[key] = {"file": str(files[key]), "size_bytes": report.size_bytes,
                       "gpu_compatible": bool(report.gpu.compatible), "parity": report.parity,
                       "convert_seconds": round(report.convert_seconds, 2)}
        if quantize == "int8":
            info = report.extra["int8"]
            export[key]["calibration"] = {"chosen": info["chosen"], "gate": info["gate"], "max_drop": info["max_drop"],
                                          "parity_images": info["parity_images"],
                                          "candidates": info["candidates"], "qat": info["qat"]}
    wall["export"] = time.perf_counter() - t

    # 4. evaluate the exports
    t = step(4, "evaluating the .tflite files")
    for key in ("fp32", "int8"):
        evaluation[key] = evaluate(files[key], data, split="val", progress=True)
        console.print(f"{files[key].name}: person IoU {evaluation[key]['person_iou']:.4f}")
    wall["evaluate_tflite"] = time.perf_counter() - t

    # 5. benchmark

    t = step(5, f"benchmarking both files ({s.threads} threads, {s.bench_runs} runs)")
    rows = benchmark([str(files["fp32"]), str(files["int8"])], threads=(s.threads,), warmup=s.bench_warmup,
                     runs=s.bench_runs)
    bench = [{k: v for k, v in r.items() if isinstance(v, (int, float, str, bool, type(None)))} for r in rows]
    for r in bench:
        console.print(f"{Path(str(r['model'])).name}: median {r['median_ms']:.2f} ms, p90 {r['p90_ms']:.2f} ms")
    wall["benchmark"] = time.perf_counter() - t

    # 6. report
    t = step(6, "writing the report")
    plots = {"training": "training_curves.png", "latency": "latency.png", "examples": "examples.png"}
    _plot_training(history, out / plots["training"])
    _plot_latency(bench, out / plots["latency"])
    example_ious = _plot_examples(files["int8"], data, s.examples, out / plots["examples"])
    wall["report"] = time.perf_counter() - t
    wall = {k: round(v, 1) for k, v in wall.items()}
    wall["total"] = round(time.perf_counter() - t_start, 1)
    metrics = {"data": data, "settings": dataclasses.asdict(s), "training": training, "evaluation": evaluation,
               "export": export, "keras_size_bytes": best.stat().st_size, "benchmark": bench,
               "example_person_iou": [round(x, 4) for x in example_ious], "wall_seconds": wall}
    write_atomic(json.dumps(metrics, indent=2).encode(), out / "metrics.json")
    report = _write_report(out, metrics, plots)
    console.print(f"[bold green]done in {wall['total']:.0f} s[/]: {report} (plots and metrics.json beside it)")
    return metrics
