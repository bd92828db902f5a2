"""Fine-tune recipes for the official SINet checkpoint side by side: accuracy on humanseg290
val and how much of what the checkpoint knew each one keeps.

    python benchmarks/finetune_candidates.py run [--out runs/ft_candidates] [--only NAME ...]
    python benchmarks/finetune_candidates.py score MODEL.keras [MODEL.tflite ...]
    python benchmarks/finetune_candidates.py table ROWS.jsonl [...] [--title TEXT]

``run`` trains every candidate (one at a time, from the official checkpoint, on humanseg290
train.txt), scores its ``best.keras`` and writes benchmarks/results/finetune_candidates.json
and .md. ``score`` prints the same columns for existing models; ``table`` writes the
results files from rows that ``run --jsonl`` (or ``score``) appended to files.

Columns, all on photos no candidate trains on:

* val person IoU, mIoU, boundary F: humanseg290 val.txt, the full-size protocol of
  ``sinet evaluate``;
* portrait IoU: mean person IoU of the val photos whose person covers at least 20% of the
  frame (the half-length portraits among them);
* synthetic IoU: ``synthetic:1000``'s val split (200 generated head-and-shoulders portraits),
  a domain none of the candidates trains on unless it says so; close-up IoU: the mean person
  IoU of those whose person covers at least 30% of the frame (where the fine-tunes lose
  most: large plain torsos);
* agreement with the official checkpoint (and with MediaPipe's selfie model when
  training/teachers/mediapipe_selfie_segmentation.tflite is there): mean per-image IoU between the
  candidate's masks and theirs on the val photos and the synthetic portraits.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
HUMANSEG = SHARED / "datasets" / "humanseg290"
OFFICIAL_NPZ = SHARED / "reference" / "official" / "sinet_official_state_dict.npz"
MEDIAPIPE = REPO / "training" / "teachers" / "mediapipe_selfie_segmentation.tflite"
SYNTHETIC = "synthetic:1000"
PORTRAIT_FRACTION = 0.2
CLOSE_UP = 0.3
RESULTS = REPO / "benchmarks" / "results"


def _segmenter(model):
    from sinet_tf.inference import Segmenter

    if str(model).endswith(".tflite"):
        from sinet_tf.bench.host import _segmenter as ranged, input_convention
        from sinet_tf.runtime.model_file import read_contents, read_tflite

        rng = input_convention(read_contents(read_tflite(model), label=str(model)))["range"]
        return ranged(model, rng)
    if str(model).endswith(".npz"):
        return Segmenter("sinet", weights=model)
    return Segmenter(model)


def _masks(segmenter, data, split):
    """The segmenter's masks of ``data``'s ``split``, the labels, and the metrics ``sinet
    evaluate`` computes from the same masks (one pass over the photos)."""
    from sinet_tf.data.sources import open_source
    from sinet_tf.metrics import SegmentationMetrics

    source = open_source(data, split, seed=0)
    metrics = SegmentationMetrics(num_classes=2, ignore_index=source.ignore_index)
    masks, labels = [], []
    for i in range(len(source)):
        image, label = source.read(i)
        masks.append(segmenter.mask(image))
        labels.append(label)
        metrics.update(masks[-1], label)
    return masks, labels, metrics.result()


def _iou(a, b, ignore_index=256):
    """Person IoU of mask ``a`` against ``b`` (labels or another mask), pixels of ``b`` equal
    to ``ignore_index`` left out (256: none)."""
    from sinet_tf.metrics import person_iou

    return float(person_iou(a, b, ignore_index=ignore_index)[0])


_REFERENCE_CACHE: dict = {}


def _reference_masks(name, model):
    if name not in _REFERENCE_CACHE:
        seg = _segmenter(model)
        _REFERENCE_CACHE[name] = {d: _masks(seg, d, "val")[0] for d in (str(HUMANSEG), SYNTHETIC)}
    return _REFERENCE_CACHE[name]


def score(model) -> dict:
    """The columns above for one model (a .keras, .tflite, or the official .npz)."""
    seg = _segmenter(model)
    (val_masks, val_labels, val), (syn_masks, syn_labels, syn) = (_masks(seg, d, "val")
                                                                  for d in (str(HUMANSEG), SYNTHETIC))
    portrait = [_iou(m, lbl, 255) for m, lbl in zip(val_masks, val_labels) if (lbl == 1).mean() >= PORTRAIT_FRACTION]
    close = [_iou(m, lbl) for m, lbl in zip(syn_masks, syn_labels) if (lbl == 1).mean() >= CLOSE_UP]
    out = {"model": str(model), "val_person_iou": float(val["person_iou"]), "val_miou": float(val["miou"]),
           "val_boundary_f": float(val["boundary_f"]), "synthetic_person_iou": float(syn["person_iou"]),
           "val_portrait_iou": float(np.mean(portrait)), "val_portrait_n": len(portrait),
           "synthetic_closeup_iou": float(np.mean(close)), "synthetic_closeup_n": len(close)}
    masks = {str(HUMANSEG): val_masks, SYNTHETIC: syn_masks}
    references = {"official": OFFICIAL_NPZ}
    if MEDIAPIPE.is_file():
        references["mediapipe"] = MEDIAPIPE
    for name, ref in references.items():
        ref_masks = _reference_masks(name, ref)
        for data, key in ((str(HUMANSEG), "val"), (SYNTHETIC, "synthetic")):
            out[f"agree_{name}_{key}"] = float(np.mean([_iou(a, b) for a, b in zip(masks[data], ref_masks[data])]))
    return out


# name -> (what it is, recipe overrides on training/sinet_finetune.yaml's stage "finetune")
MP = "training/teachers/mediapipe_selfie_segmentation.tflite"
CANDIDATES = {
    "baseline": ("sinet_finetune.yaml as it was: ce + boundary, whole network at one learning rate", []),
    "kd_mediapipe": ("+ 1.0 x kd (T=2) from MediaPipe's selfie model (256x256, resized)",
                     ["loss=ce + 1.0 * boundary(window=15) + 1.0 * kd(temperature=2)", f"teacher={MP}",
                      "teacher_resize=true"]),
    "kd_mediapipe_t1x3": ("+ 3.0 x kd (T=1) from MediaPipe's selfie model",
                          ["loss=ce + 1.0 * boundary(window=15) + 3.0 * kd(temperature=1)", f"teacher={MP}",
                           "teacher_resize=true"]),
    "kd_mediapipe_320": ("kd_mediapipe at input 320x320",
                         ["loss=ce + 1.0 * boundary(window=15) + 1.0 * kd(temperature=2)", f"teacher={MP}",
                          "teacher_resize=true", "input_size=[320, 320]"]),
    "kd_mediapipe_b8": ("kd_mediapipe in batches of 8 (3x the steps)",
                        ["loss=ce + 1.0 * boundary(window=15) + 1.0 * kd(temperature=2)", f"teacher={MP}",
                         "teacher_resize=true", "batch_size=8"]),
    "kd_mediapipe_b8_lovasz": ("kd_mediapipe_b8 + 1.0 x Lovasz hinge (per-image IoU surrogate)",
                               ["loss=ce + 1.0 * boundary(window=15) + 1.0 * lovasz + 1.0 * kd(temperature=2)",
                                f"teacher={MP}", "teacher_resize=true", "batch_size=8"]),
    "kd_mediapipe_b8_copy_paste": ("kd_mediapipe_b8 + 230 copy-paste composites (train set x2; half the epochs)",
                                   ["loss=ce + 1.0 * boundary(window=15) + 1.0 * kd(temperature=2)", f"teacher={MP}",
                                    "teacher_resize=true", "batch_size=8", "copy_paste=230"]),
    "kd_mediapipe_b8_synthetic": ("kd_mediapipe_b8 + 200 synthetic portraits in the training set (synthetic:1000's "
                                  "train seed; the scores on synthetic portraits are then in-domain)",
                                  ["loss=ce + 1.0 * boundary(window=15) + 1.0 * kd(temperature=2)", f"teacher={MP}",
                                   "teacher_resize=true", "batch_size=8", "extra_data=synthetic:200"]),
    "baseline_b8": ("baseline in batches of 8 (3x the steps)", ["batch_size=8"]),
    "lwf_official": ("+ 1.0 x kd (T=2) from the official checkpoint (teacher: init; Learning without Forgetting)",
                     ["loss=ce + 1.0 * boundary(window=15) + 1.0 * kd(temperature=2)", "teacher=init"]),
}


def _load():
    return os.getloadavg()


def run_candidate(name: str, out: Path, epochs: int | None, extra: list[str]) -> dict:
    """Train one candidate from the official checkpoint and score its best.keras."""
    description, overrides = CANDIDATES[name]
    run_dir = out / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    args = list(overrides) + list(extra)
    if epochs is not None:
        args += [f"epochs={epochs}", f"lr_milestones=[{round(epochs * 0.6)}, {round(epochs * 0.84)}]"]
    load_before = _load()
    t0 = time.perf_counter()
    times0 = os.times()
    subprocess.run(["sinet", "train", "--config", str(REPO / "training" / "sinet_finetune.yaml"), "-o", str(run_dir),
                    "--verbose", "2", *args], check=True, cwd=REPO)
    times1 = os.times()
    wall = time.perf_counter() - t0
    cpu = (times1.children_user - times0.children_user) + (times1.children_system - times0.children_system)
    history = list(csv.DictReader(open(run_dir / "finetune" / "history.csv")))
    row = {"name": name, "description": description, "overrides": args, "train_wall_s": round(wall, 1),
           "train_cpu_s": round(cpu, 1), "load_before": [round(v, 2) for v in load_before],
           "load_after": [round(v, 2) for v in _load()], "epochs": len(history),
           "epoch_seconds": [float(r["seconds"]) for r in history],
           "best_epoch": max(history, key=lambda r: float(r["val_person_iou"]))["epoch"]}
    row.update(score(run_dir / "finetune" / "best.keras"))
    return row


def wise_ft(finetuned: Path, alpha: float, out: Path, recipe=None, reestimate_bn: bool = True) -> Path:
    """WiSE-FT of ``finetuned`` with the official checkpoint at ``alpha``, BatchNorm statistics
    re-estimated on one epoch of the recipe's augmented training batches (or, with
    ``reestimate_bn=False``, interpolated like every other weight); saved to ``out``."""
    from sinet_tf.data.pipeline import make_pipeline
    from sinet_tf.data.sources import open_source
    from sinet_tf.files import save_keras_atomic
    from sinet_tf.loading import load_model
    from sinet_tf.train import load_recipe
    from sinet_tf.train.wise_ft import interpolate_weights, reestimate_batchnorm

    stage = load_recipe(recipe or REPO / "training" / "sinet_finetune.yaml").stages[0]
    model = load_model(finetuned)
    size = tuple(int(d) for d in model.inputs[0].shape[1:3])
    original = load_model("sinet", weights=OFFICIAL_NPZ, input_size=size)
    interpolate_weights(original, model, alpha)
    if reestimate_bn:
        batches = make_pipeline(open_source(str(HUMANSEG), "train", 0), size, stage.batch_size,
                                augment=stage.augment, seed=0, epochs=1)
        reestimate_batchnorm(model, batches)
    save_keras_atomic(model, out)
    return out


_COLUMNS = [("val person IoU", "val_person_iou"), ("mIoU", "val_miou"), ("boundary F", "val_boundary_f"),
            ("portrait IoU", "val_portrait_iou"), ("synthetic IoU", "synthetic_person_iou"),
            ("synthetic close-up IoU", "synthetic_closeup_iou"),
            ("agree official val / syn", ("agree_official_val", "agree_official_synthetic")),
            ("agree MediaPipe val / syn", ("agree_mediapipe_val", "agree_mediapipe_synthetic"))]


def _cell(row, key):
    if isinstance(key, tuple):
        return " / ".join(_cell(row, k) for k in key)
    v = row.get(key)
    return "" if v is None else f"{v:.4f}" if key == "val_person_iou" else f"{v:.3f}"


def report(rows: list[dict], path_stem: Path, title: str) -> None:
    """benchmarks/results/<stem>.json (every row) and .md (the table)."""
    from sinet_tf.files import write_atomic

    write_atomic((json.dumps(rows, indent=2) + "\n").encode(), path_stem.with_suffix(".json"))
    head = ["candidate", *[c for c, _ in _COLUMNS], "epochs", "s / epoch (median)", "train wall s", "load (1 min)"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + " --- |" + " ---: |" * (len(head) - 1)]
    for row in rows:
        secs = sorted(row.get("epoch_seconds") or [])
        median = f"{secs[len(secs) // 2]:.1f}" if secs else ""
        load = (f"{row['load_before'][0]:.1f} -> {row['load_after'][0]:.1f}" if row.get("load_before") else "")
        cells = [f"`{row['name']}`", *[_cell(row, k) for _, k in _COLUMNS], str(row.get("epochs", "")), median,
                 str(row.get("train_wall_s", "")), load]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Candidates:", ""] + [f"- `{r['name']}`: {r.get('description', '')}" for r in rows]
    write_atomic(("\n".join(lines) + "\n").encode(), path_stem.with_suffix(".md"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("score")
    p.add_argument("models", nargs="+")
    p = sub.add_parser("wise", help="score WiSE-FT interpolations of a fine-tuned best.keras with the official")
    p.add_argument("model")
    p.add_argument("--alpha", type=float, nargs="+", default=[0.5, 0.75])
    p.add_argument("--recipe", help="the recipe whose augmentation and batch size re-estimate BatchNorm statistics "
                                    "(default training/sinet_finetune.yaml)")
    p.add_argument("--bn", choices=["reestimate", "interpolate"], default="reestimate",
                   help="BatchNorm moving statistics: re-estimated on one augmented epoch (precise BN), or "
                        "interpolated like the weights")
    p = sub.add_parser("table", help="write benchmarks/results/finetune_candidates.{json,md} from JSON-lines rows")
    p.add_argument("rows", nargs="+")
    p.add_argument("--title", default="Fine-tuning the official SINet checkpoint: candidates")
    p = sub.add_parser("run")
    p.add_argument("--out", default="runs/ft_candidates")
    p.add_argument("--only", nargs="+", choices=sorted(CANDIDATES))
    p.add_argument("--epochs", type=int, help="shortened screening runs (milestones at 60%% and 84%%)")
    p.add_argument("--jsonl", help="append each candidate's row to this file as it finishes")
    p.add_argument("overrides", nargs="*", help="extra key=value for every candidate")
    args = parser.parse_args(argv)
    if args.command == "score":
        for m in args.models:
            print(json.dumps(score(m)), flush=True)
        return
    if args.command == "table":
        rows = [json.loads(line) for path in args.rows for line in Path(path).read_text().splitlines() if line.strip()]
        report(rows, RESULTS / "finetune_candidates", args.title)
        return
    if args.command == "wise":
        for alpha in args.alpha:
            path = wise_ft(Path(args.model), alpha, Path(args.model).with_name(f"wise_{alpha:g}_{args.bn}.keras"),
                           recipe=args.recipe, reestimate_bn=args.bn == "reestimate")
            print(json.dumps({"alpha": alpha, "bn": args.bn, **score(path)}), flush=True)
        return
    out = Path(args.out).resolve()
    for name in args.only or list(CANDIDATES):
        row = run_candidate(name, out, args.epochs, args.overrides)
        print(json.dumps(row), flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
