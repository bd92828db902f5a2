"""The ``sinet`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["main"]

EXIT_INT8_DROP = 7  # `export` / `demo`: int8 loses more person IoU than --max-drop allows


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _console():
    from rich.console import Console

    # a pipe or a log file gets full rows instead of rich's 80-column wrapping
    return Console(width=None if sys.stdout.isatty() else 160)


def cmd_models(args):
    import sinet_tf
    from sinet_tf.model_cost import count_macs, count_params

    rows = []
    names = args.names or sinet_tf.list_models()
    infos = [sinet_tf.get_model_info(name) for name in names]  # an unknown name fails before any build
    for name, info in zip(names, infos):
        model = sinet_tf.build_model(name)
        rows.append({"name": name, "params": count_params(model), "macs": count_macs(model),
                     "input_size": list(info.default_input_size), "input_multiple": info.input_multiple,
                     "num_classes": info.num_classes,
                     "paper": info.paper, "description": info.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    table = Table(title="sinet-tf models (multiply-adds at the default input size)")
    for col, kw in [("name", {"no_wrap": True}), ("params", {"justify": "right"}),
                    ("MACs", {"justify": "right", "no_wrap": True}), ("input", {}),
                    ("classes", {"justify": "right"}), ("paper", {})]:
        table.add_column(col, **kw)
    for r in rows:
        table.add_row(r["name"], f"{r['params']:,}", f"{r['macs'] / 1e6:,.1f} M",
                      "x".join(map(str, r["input_size"])), str(r["num_classes"]), r["paper"])
    _console().print(table)
    return 0


def cmd_import_weights(args):
    from sinet_tf.files import save_keras_atomic
    from sinet_tf.model_cost import count_params
    from sinet_tf.weights import import_official

    model = import_official(args.architecture, args.checkpoint)
    out = save_keras_atomic(model, args.output)
    print(f"imported {args.checkpoint} into {args.architecture} ({count_params(model):,} trainable "
          f"parameters) -> {out}")
    return 0


def cmd_predict(args):
    from sinet_tf.inference import Segmenter
    from sinet_tf.predict import expand_inputs, parse_background, predict

    expand_inputs(args.inputs)          # missing inputs and bad backgrounds fail before the model loads
    parse_background(args.background)
    segmenter = Segmenter(args.model, weights=args.weights, keep_aspect=args.keep_aspect)
    predict(segmenter, args.inputs, args.output, threshold=args.threshold, background=args.background,
            max_frames=args.frames)
    return 0


def cmd_demo(args):
    from sinet_tf.demo import run_demo
    from sinet_tf.export.calibration import Int8GateError

    try:
        run_demo(args.output, data=args.data, minutes=args.minutes, quick=args.quick)
    except Int8GateError as e:
        print(f"sinet demo: int8 refused: {e}", file=sys.stderr)
        return EXIT_INT8_DROP
    return 0


def _qat_settings(args):
    """:class:`QATSettings` for ``--qat-epochs N``: loss, batch size and augmentation of the
    model's own recipe (``--qat-recipe``, else the ``state.json`` of the run folder the
    ``.keras`` file is in, else training/default.yaml) at a tenth of its learning rate, and
    the data of ``--data``, else of that recipe."""
    if not args.qat_epochs:
        if args.data or args.qat_recipe:
            raise ValueError("--data and --qat-recipe are for quantization-aware fine-tuning: add --qat-epochs N")
        return None
    if args.qat_epochs < 1:
        raise ValueError(f"--qat-epochs {args.qat_epochs}: expected a whole number of epochs >= 1")
    import json as _json

    from sinet_tf.export.qat import QATSettings
    from sinet_tf.train.config import StageConfig, load_recipe

    stage, data, recipe = None, None, None
    if args.qat_recipe:
        config = load_recipe(args.qat_recipe)
        stage, data, recipe = config.stages[-1], config.data, args.qat_recipe
    else:
        source = Path(args.source)
        state = source.parent.parent / "state.json"
        if source.suffix == ".keras" and state.is_file():
            try:
                config = _json.loads(state.read_text())["config"]
                stages = {st["name"]: st for st in config["stages"]}
                fields = stages[source.parent.name]
            except (ValueError, KeyError) as e:
                raise ValueError(f"{state}: not the state.json of a sinet train run ({e}); give --qat-recipe") from None
            stage = StageConfig(**{k: v for k, v in fields.items() if k in StageConfig.__dataclass_fields__})
            data, recipe = config.get("data"), f"{state} (stage {source.parent.name})"
    if stage is None:
        config = load_recipe("default.yaml")
        stage, recipe = config.stages[-1], "training/default.yaml"
    data = args.data or data
    if not data:
        raise ValueError("--qat-epochs needs training data: give --data SRC (a dataset folder/list file, or "
                         "synthetic[:N])")
    return QATSettings(data=str(data), epochs=args.qat_epochs, loss=stage.loss, batch_size=stage.batch_size,
                       learning_rate=0.1 * stage.learning_rate, augment=stage.augment, recipe=str(recipe))


def cmd_export(args):
    from sinet_tf.export import export_tflite
    from sinet_tf.export.calibration import Int8GateError

    input_size = None
    if args.input_size:
        try:
            h, _, w = args.input_size.lower().partition("x")
            input_size = (int(h), int(w or h))
        except ValueError:
            raise ValueError(f"--input-size {args.input_size!r}: expected HxW, e.g. 224x224") from None
    if args.qat_epochs and args.quantize != "int8":
        raise ValueError(f"--qat-epochs fine-tunes for int8: it needs --quantize int8, not {args.quantize}")
    try:
        report = export_tflite(args.source, args.output, weights=args.weights, quantize=args.quantize, io=args.io,
                               head=args.output_head, calibration_data=args.calibration_data,
                               calibration_split=None if args.calibration_split == "none" else args.calibration_split,
                               num_calibration=args.num_calibration, parity_data=args.parity_data,
                               parity_split=None if args.parity_split == "none" else args.parity_split,
                               num_parity=args.num_parity, metadata=args.metadata, input_size=input_size,
                               int8_ranges=args.int8_ranges, equalize=False if args.no_equalize else "auto",
                               max_drop=args.max_drop, allow_drop=args.allow_drop, qat=_qat_settings(args),
                               log=lambda text: print(text, file=sys.stderr, flush=True))
    except Int8GateError as e:
        print(f"sinet export: int8 refused: {e}", file=sys.stderr)
        return EXIT_INT8_DROP
    print(report.summary())
    print(f"report: {Path(args.output).with_suffix('.json')}")
    return 0 if (report.gpu.compatible or args.allow_cpu_ops) else 3


def cmd_check_gpu(args):
    from sinet_tf.export import check_gpu_compatibility

    report = check_gpu_compatibility(args.tflite)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0 if report.compatible else 3


def _fraction(flag: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number between 0 and 1") from None
        if not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(f"{text}: must be between 0 and 1 (person IoU, e.g. 0.01)")
        return value

    parse.__name__ = flag
    return parse


def _parse_threads(text: str) -> list[int]:
    try:
        threads = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--threads {text!r}: expected thread counts like 1,2,4") from None
    if not threads or min(threads) < 1:
        raise ValueError(f"--threads {text!r}: thread counts must be >= 1")
    return threads


def _parse_input_ranges(items, models):
    """``--input-range [FILE=]LO,HI`` (repeatable) -> ``{model path: (lo, hi) or None}``;
    FILE is a path, file name or stem; without FILE= the range applies to every other file."""
    if not items:
        return None
    default, per_file = None, {}
    for item in items:
        key, _, value = item.rpartition("=")
        try:
            lo, hi = (float(v) for v in value.split(","))
        except ValueError:
            raise ValueError(f"--input-range {item!r}: expected LO,HI or FILE=LO,HI, e.g. 0,1") from None
        if key:
            per_file[key] = (lo, hi)
        else:
            default = (lo, hi)
    names = [(str(Path(m)), Path(m).name, Path(m).stem) for m in models]
    for key in per_file:
        if not any(key in n for n in names):
            raise ValueError(f"--input-range {key}=...: {key!r} names none of the models")
    return {n[0]: next((per_file[k] for k in n if k in per_file), default) for n in names}


def cmd_bench(args):
    from sinet_tf.bench import bench_table, benchmark, benchmark_on_device, write_plots

    def say(msg):
        print(msg, file=sys.stderr)

    if args.adb:
        if args.data:
            raise ValueError("--data scores accuracy on this machine; run it without --adb (accuracy does not "
                             "depend on the device)")
        rows = benchmark_on_device(args.models, threads=_parse_threads(args.threads or "4"), use_gpu=args.gpu,
                                   runs=args.runs, warmup=args.warmup, serial=args.serial,
                                   benchmark_binary=args.benchmark_binary, progress=say)
    else:
        if args.gpu or args.serial or args.benchmark_binary:
            raise ValueError("--gpu, --serial and --benchmark-binary apply to --adb runs")
        ranges = _parse_input_ranges(args.input_range, args.models)
        rows = benchmark(args.models, threads=_parse_threads(args.threads or "2"), warmup=args.warmup,
                         runs=args.runs, data=args.data, split=None if args.split == "none" else args.split,
                         num_images=args.num_images, xnnpack=not args.no_xnnpack, input_range=ranges,
                         memory=not args.no_memory, progress=say)
    written = write_plots(rows, args.plot) if args.plot else []
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        from rich.console import Console

        Console(width=None if sys.stdout.isatty() else 120).print(bench_table(rows))
        if any(r.get("peak_memory_mb") is not None for r in rows):
            print("peak MB: " + ("benchmark_model's peak memory footprint (periodic monitoring)" if args.adb else
                                 "growth of the peak resident set (VmHWM) while a fresh process loads and runs "
                                 "the model"))
        for r in rows:
            for w in r.get("warnings", []):
                print(f"{r['name']}: {w}")
    for path in written:
        say(f"wrote {path}")
    return 0


def cmd_data_check(args):
    from sinet_tf.data.readers import check_dataset

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    report = check_dataset(args.source, split=args.split, classes=classes, ignore_index=args.ignore_index,
                           mattes=args.mattes)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary(max_listed=len(report.problems) + len(report.warnings)))
    return 0 if report.ok else 1


def cmd_train(args):
    from sinet_tf.train import load_recipe, train

    config = load_recipe(args.config, overrides=args.overrides, data=args.data)
    if args.strategy:
        config.strategy = args.strategy
    output = args.output or str(Path("runs") / Path(args.config).stem)
    summary = train(config, output, resume=args.resume, verbose=args.verbose)
    for st in summary["stages"]:
        print(f"[{st['name']}] {st['model']}: {st['epochs']} epochs, best val person IoU "
              f"{st['best_val_person_iou']} (epoch {st['best_epoch']}), {st['images_per_s']} images/s -> {st['best']}")
    if args.json:
        print(json.dumps({k: v for k, v in summary.items()}, indent=2, default=str))
    return 0


def cmd_evaluate(args):
    from sinet_tf.evaluate import evaluate

    split = None if args.split == "none" else args.split
    result = evaluate(args.model, args.data, split=split, weights=args.weights,
                      boundary_width=args.boundary_width, gallery=args.gallery, worst=args.worst,
                      progress=not args.json)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['model']} on {result['data']} ({result['split']}, {result['n_images']} images): "
              f"person IoU {result['person_iou']:.4f}, mIoU {result['miou']:.4f}, "
              f"pixel accuracy {result['pixel_accuracy']:.4f}, boundary F {result['boundary_f']:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sinet", description="Mobile portrait segmentation: build, train, export, benchmark.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list every registered model with params and multiply-adds")
    p.add_argument("names", nargs="*", help="only these models (default: all; building the large ones takes a minute)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("import-weights", help="import an official PyTorch checkpoint into a .keras model")
    p.add_argument("architecture", choices=["sinet", "extremec3net"])
    p.add_argument("checkpoint", help="official state_dict as .npz, or the original .pth (needs PyTorch)")
    p.add_argument("-o", "--output", required=True, help="output .keras file")
    p.set_defaults(func=cmd_import_weights)

    p = sub.add_parser(
        "predict", help="segment photos, folders, videos or a webcam: masks, mattes and composites",
        description="Per photo: <stem>_mask.png (0/255), <stem>_matte.png (person probability 0..255) and, with "
                    "--background, <stem>_composite.jpg. Per video or webcam: <stem>_mask.mp4 and, with "
                    "--background, <stem>_composite.mp4 (mp4v, the input's frame rate and frame count; the audio "
                    "track is not carried over). Photos keep their aspect ratio (letterboxed to the model's "
                    "input) and their EXIF orientation.")
    p.add_argument("model", help=".keras, .tflite, or a registry name (with --weights)")
    p.add_argument("inputs", nargs="+", help="image files, folders (their top-level images and videos), videos "
                                             "(.mp4 .avi .mov .mkv .webm), or a webcam index such as 0")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--weights", help="checkpoint for a registry model name (.npz, .pth, .weights.h5)")
    p.add_argument("--threshold", type=float, default=0.5, help="person probability threshold (default 0.5)")
    p.add_argument("--background", help="also write a composite: 'blur' (the photo blurred), a colour '#RRGGBB' "
                                        "(quote it, or leave out the #), or an image file (scaled to cover)")
    p.add_argument("--no-keep-aspect", dest="keep_aspect", action="store_false",
                   help="resize photos to the model's input without letterboxing (what sinet evaluate does)")
    p.add_argument("--frames", type=int, help="stop videos and webcams after N frames")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="train a small SINet, evaluate, export fp32/int8, benchmark and write a report",
                       description="The main job on a fresh machine, in a few minutes on a CPU: train a small SINet "
                                   "on synthetic portraits (or --data), evaluate it, export fp32 and int8 .tflite "
                                   "with the GPU-delegate check, benchmark both and write DIR/report.md with plots.")
    p.add_argument("-o", "--output", default="demo", help="output folder (default demo)")
    p.add_argument("--data", help="dataset with train/val splits (folder or list file) instead of synthetic portraits")
    p.add_argument("--minutes", type=float, default=None, help="training time budget in minutes (default 2.5; "
                                                               "--quick: 0.5)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run for CI (under 2 minutes)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("export", help="export a .tflite (batch 1; fp32/fp16/dynamic/int8) with a JSON report "
                                      "and GPU-delegate check")
    p.add_argument("source", help=".keras file, or a registry name (with --weights)")
    p.add_argument("-o", dest="output", required=True, help="output .tflite file")
    p.add_argument("--weights", help="checkpoint for a registry model name (.npz, .pth, .weights.h5)")
    p.add_argument("--quantize", choices=["none", "fp16", "dynamic", "int8"], default="none")
    p.add_argument("--io", choices=["float32", "uint8", "int8"], default="float32",
                   help="input/output type; uint8/int8 need --quantize int8 (input = pixels, scale 1)")
    p.add_argument("--output", dest="output_head", choices=["logits", "probabilities", "mask"], default="logits",
                   help="what the model returns: logits, per-class probabilities, or one person-probability channel")
    p.add_argument("--calibration-data", help="dataset (folder, list file, or synthetic[:N]) for int8 calibration "
                                              "and the parity check")
    p.add_argument("--calibration-split", default="train", help="split of --calibration-data (default train; none)")
    p.add_argument("--num-calibration", type=int, default=200, help="calibration images (default 200)")
    p.add_argument("--parity-data", help="dataset for the parity check (default: the calibration images)")
    p.add_argument("--parity-split", default="val", help="split of --parity-data (default val; none)")
    p.add_argument("--num-parity", type=int, default=50, help="images for the parity check (default 50)")
    p.add_argument("--input-size", help="HxW to export at (registry names check it against the architecture)")
    p.add_argument("--metadata", action="store_true", help="add TFLite metadata MediaPipe's ImageSegmenter reads "
                                                           "(pip install --no-deps mediapipe==1.2.2)")
    p.add_argument("--allow-cpu-ops", action="store_true", help="exit 0 even if an op is not GPU-delegate compatible")
    p.add_argument("--int8-ranges", default="auto", metavar="NAME",
                   help="int8 activation ranges: auto (default: every estimator, with and without equalization, "
                        "the best by parity on held-out images), or one of minmax, average, percentile, mse "
                        "(add +equalize to force equalization, e.g. mse+equalize)")
    p.add_argument("--no-equalize", action="store_true",
                   help="int8: only calibrations without per-channel range equalization")
    p.add_argument("--max-drop", type=_fraction("--max-drop"), default=0.01,
                   help="int8 gate: the most person IoU the int8 file may lose against Keras on the held-out "
                        "parity images (default 0.01); more exits with code 7 and names the layers that lose most")
    p.add_argument("--allow-drop", action="store_true", help="write the int8 file even when it misses --max-drop")
    p.add_argument("--qat-epochs", type=int, default=0, metavar="N",
                   help="int8: when post-training calibration misses --max-drop, fine-tune N epochs with "
                        "quantization-aware training (needs training data: --data, or the run's recipe)")
    p.add_argument("--data", help="training data for --qat-epochs (folder, list file, or synthetic[:N]; default: "
                                  "the data of the recipe the model was trained with, from its run folder)")
    p.add_argument("--qat-recipe", help="recipe YAML for --qat-epochs (loss, batch size, learning rate, "
                                        "augmentation; default: the run's own recipe, else training/default.yaml)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("check-gpu", help="check a .tflite file against the mobile GPU delegate's op rules")
    p.add_argument("tflite")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check_gpu)

    p = sub.add_parser("bench", help="latency, size, params, peak memory (and IoU) of .tflite files side by side",
                       description="Every file runs under the same LiteRT interpreter and settings in one process, "
                                   "timed runs interleaved across the files; peak memory is measured per file in a "
                                   "fresh process. --adb runs TFLite's benchmark_model on an Android device instead.")
    p.add_argument("models", nargs="+", help=".tflite files (ratios are against the first)")
    p.add_argument("--threads", help="comma-separated thread counts (default 2; with --adb 4)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up inferences per model (default 5)")
    p.add_argument("--runs", type=int, default=50, help="timed inferences per model (default 50)")
    p.add_argument("--no-xnnpack", action="store_true", help="the builtin kernels without the default XNNPACK delegate")
    p.add_argument("--input-range", action="append", metavar="[FILE=]LO,HI",
                   help="value range RGB pixels are mapped to (default: [0,255], or [0,1] for MediaPipe's selfie "
                        "model, recognized by its signature); FILE= (path, name or stem) for one file; repeatable; "
                        "write negative values as --input-range=-1,1")
    p.add_argument("--data", help="also score person IoU on this dataset (folder, list file, or synthetic[:N])")
    p.add_argument("--split", default="val", help="split of --data (default val; 'none' for the whole folder)")
    p.add_argument("--num-images", type=int, help="score only the first N images of --data")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement (one process per "
                                                            "model and thread count)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    p.add_argument("--plot", metavar="OUT.png", help="write a latency bar chart (and, with --data, OUT_scatter.png: "
                                                     "latency against person IoU)")
    p.add_argument("--adb", action="store_true", help="run on an Android device with benchmark_model (via adb)")
    p.add_argument("--serial", help="device serial for --adb (default: the only attached device)")
    p.add_argument("--gpu", action="store_true", help="--adb: run with the GPU delegate (--use_gpu=true)")
    p.add_argument("--benchmark-binary", metavar="PATH", help="--adb: the android_aarch64 benchmark_model binary to "
                                                              "push (default: one already at "
                                                              "/data/local/tmp/benchmark_model)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("train", help="train with a recipe from training/ (resumable)")
    p.add_argument("--config", required=True, help="recipe YAML, e.g. training/sinet.yaml")
    p.add_argument("--data", help="dataset folder or list file, or synthetic[:N] (overrides the recipe)")
    p.add_argument("-o", "--output", help="run folder (default runs/<recipe>)")
    p.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    p.add_argument("--strategy", choices=["default", "mirrored", "multiworker", "tpu"])
    p.add_argument("--verbose", default="auto", type=lambda v: v if v == "auto" else int(v),
                   help="Keras progress: auto, 0, 1 (bar) or 2 (a line per epoch)")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides (stage.key=value for one stage)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="person IoU, mIoU, pixel accuracy and boundary F on a dataset")
    p.add_argument("model", help=".keras, .tflite, or a registry name (with --weights)")
    p.add_argument("--data", required=True, help="dataset folder or list file, or synthetic[:N]")
    p.add_argument("--split", default="val", help="split to evaluate (default val; 'none' for the whole folder)")
    p.add_argument("--weights", help="checkpoint for a registry model name")
    p.add_argument("--boundary-width", type=int, default=3, help="boundary F tolerance in pixels (default 3)")
    p.add_argument("--gallery", help="write overlays of the worst images into this folder")
    p.add_argument("--worst", type=int, default=8, help="how many worst images the gallery shows")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("check", help="decode every image/mask pair once; report statistics and every problem "
                                          "(exit 0: no problems, 1: problems, 2: unusable dataset)")
    p.add_argument("source", help="dataset folder or list file (images/+masks/, list of pairs, EG1800, mattes)")
    p.add_argument("--split", choices=["train", "val", "test"], help="split to check (e.g. train.txt, images/train/)")
    p.add_argument("--classes", help="comma-separated class names for multi-class label maps "
                                     "(default: background,person)")
    p.add_argument("--ignore-index", type=int, default=255, help="label value to ignore (default 255)")
    p.add_argument("--mattes", action="store_true", help="treat every mask as an alpha matte (person = value >= 128)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_data_check)
    return parser


def main(argv=None) -> int:
    _quiet_tensorflow()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"sinet {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
