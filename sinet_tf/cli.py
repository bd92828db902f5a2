"""The ``sinet`` command.

Every failure ends in one line on stderr, ``sinet COMMAND: error: MESSAGE``, and an exit
code that says what kind of failure it was (:data:`EXIT_CODES`, also in ``sinet --help``).
``SINET_DEBUG=1`` in the environment shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

__all__ = ["main", "EXIT_CODES"]

EXIT_OK, EXIT_PROBLEMS, EXIT_BAD_INPUT, EXIT_GPU_INCOMPATIBLE, EXIT_DIVERGED, EXIT_SYSTEM, EXIT_INTERNAL = range(7)
EXIT_INT8_DROP = 7  # `export` / `demo`: int8 loses more person IoU than --max-drop allows
EXIT_INTERRUPTED = 130

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_PROBLEMS: "finished, but problems were found: `data check` found bad samples, `predict` could not read "
                   "some of its inputs (each is named)",
    EXIT_BAD_INPUT: "bad input: a command-line value, recipe, dataset, model, checkpoint or photo that cannot be "
                    "used (the message names the file, key or value)",
    EXIT_GPU_INCOMPATIBLE: "`export` / `check-gpu`: an op would not run on the mobile GPU delegate",
    EXIT_DIVERGED: "`train`: the loss or the weights became NaN or inf; the epoch was not committed and the run "
                   "folder keeps the last good one",
    EXIT_SYSTEM: "the system refused: a file or folder could not be written or read (permissions, read-only file "
                 "system, full disk, a file where a folder is needed or the reverse), or memory ran out",
    EXIT_INTERNAL: "internal error (a bug: please report it); `SINET_DEBUG=1` shows the traceback",
    EXIT_INT8_DROP: "`export` / `demo`: the int8 file loses more person IoU than --max-drop allows with every "
                    "calibration tried (the message names the layers that lose most; --allow-drop writes it anyway)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); `sinet train --resume` continues a training run",
}



def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _console():
    from rich.console import Console

    # a pipe or a log file gets full rows instead of rich's 80-column wrapping
    return Console(width=None if sys.stdout.isatty() else 160)


def cmd_models(args):
    if args.presets:
        return _list_presets(args)
    import sinet_tf
    from sinet_tf.model_cost import count_macs, count_params

    from sinet_tf.progress import progress

    rows = []
    names = args.names or sinet_tf.list_models()
    infos = [sinet_tf.get_model_info(name) for name in names]  # an unknown name fails before any build
    for name, info in progress(list(zip(names, infos)), "building models", item=lambda x: x[0]):
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


def _list_presets(args):
    """``sinet models --presets``: the bundled presets (or the named ones, names or folders),
    read from their config.json files without building anything."""
    from sinet_tf.presets import find_preset, list_presets

    rows = [find_preset(name).summary() for name in (args.names or list_presets())]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table

    table = Table(title="sinet-tf presets (sinet predict NAME photo.jpg -o out; a preset folder works the same)")
    for col, kw in [("name", {"no_wrap": True}), ("architecture", {"no_wrap": True}), ("input", {}),
                    ("normalization", {}), ("source", {}), ("licence", {}),
                    ("val person IoU", {"justify": "right"})]:
        table.add_column(col, **kw)
    for r in rows:
        iou = "" if r["val_person_iou"] is None else f"{r['val_person_iou']:.4f}"
        if iou and r["val_data"]:
            iou += f" ({r['val_data']} {r['val_split'] or ''})".replace(" )", ")")
        table.add_row(r["name"], r["architecture"], "x".join(map(str, r["input_size"])), r["normalization"] or "",
                      r["source"] or "", r["license"] or "not stated", iou)
    _console().print(table)
    return 0


def cmd_preset_save(args):
    from sinet_tf.loading import from_preset, save_preset
    from sinet_tf.presets import find_preset, metrics_from_evaluation

    metrics = metrics_from_evaluation(args.metrics) if args.metrics else None
    out = save_preset(args.source, args.output, name=args.name, description=args.description,
                      source_text=args.source_text, license=args.license, license_file=args.license_file,
                      metrics=metrics)
    from_preset(out)  # the folder loads back (weights complete and finite) before it is reported
    row = find_preset(out).summary()
    iou = "" if row["val_person_iou"] is None else f", val person IoU {row['val_person_iou']:.4f}"
    print(f"preset {row['name']!r} ({row['architecture']}, {'x'.join(map(str, row['input_size']))}{iou}) -> {out}")
    return 0


def cmd_import_weights(args):
    from sinet_tf.files import save_keras_atomic
    from sinet_tf.model_cost import count_params
    from sinet_tf.weights import import_official

    _output_file(args.output, "-o")
    model = import_official(args.architecture, args.checkpoint)
    out = save_keras_atomic(model, args.output)
    print(f"imported {args.checkpoint} into {args.architecture} ({count_params(model):,} trainable "
          f"parameters) -> {out}")
    return 0


def cmd_predict(args):
    from sinet_tf.inference import Segmenter
    from sinet_tf.predict import (InputsFailed, check_threshold, expand_inputs, parse_background, postprocessors,
                                  predict)

    post = dict(temporal=args.temporal, temporal_strength=args.temporal_strength, refine=args.refine,
                refine_radius=args.refine_radius, refine_eps=args.refine_eps)
    expand_inputs(args.inputs)          # missing inputs, bad backgrounds and bad values fail before the model loads
    parse_background(args.background)
    postprocessors(**post)
    check_threshold(args.threshold)
    _output_folder(args.output, "-o")
    _registry_name_without_weights(args.model, args.weights, refuse=True)
    segmenter = Segmenter(args.model, weights=args.weights, keep_aspect=args.keep_aspect)
    try:
        predict(segmenter, args.inputs, args.output, threshold=args.threshold, background=args.background,
                max_frames=args.frames, **post)
    except InputsFailed as e:   # every input was tried; the failed ones were named as they failed
        if len(e.failed) == e.total:
            raise                                          # nothing done: bad input (exit 2)
        _error(args, str(e))
        return EXIT_PROBLEMS
    return 0


def cmd_demo(args):
    from sinet_tf.demo import run_demo
    from sinet_tf.export.calibration import Int8GateError

    _output_folder(args.output, "-o")
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
    from sinet_tf.export import OUTPUT_HEADS, export_tflite
    from sinet_tf.export.calibration import Int8GateError

    if args.output in OUTPUT_HEADS:
        raise ValueError(f"--output {args.output}: -o/--output is the output .tflite file; the output head is "
                         f"chosen with --head {args.output}")
    _output_file(args.output, "-o")
    input_size = None
    if args.input_size:
        try:
            h, _, w = args.input_size.lower().partition("x")
            input_size = (int(h), int(w or h))
        except ValueError:
            raise ValueError(f"--input-size {args.input_size!r}: expected HxW, e.g. 224x224") from None
        if min(input_size) < 1:
            raise ValueError(f"--input-size {args.input_size!r}: height and width must be positive")
    if args.qat_epochs and args.quantize != "int8":
        raise ValueError(f"--qat-epochs fine-tunes for int8: it needs --quantize int8, not {args.quantize}")
    _registry_name_without_weights(args.source, args.weights, refuse=False)
    try:
        report = export_tflite(args.source, args.output, weights=args.weights, quantize=args.quantize, io=args.io,
                               head=args.head, calibration_data=args.calibration_data,
                               calibration_split=None if args.calibration_split == "none" else args.calibration_split,
                               num_calibration=args.num_calibration, parity_data=args.parity_data,
                               parity_split=None if args.parity_split == "none" else args.parity_split,
                               num_parity=args.num_parity, metadata=args.metadata, input_size=input_size,
                               int8_ranges=args.int8_ranges, equalize=False if args.no_equalize else "auto",
                               max_drop=args.max_drop, allow_drop=args.allow_drop, qat=_qat_settings(args),
                               temporal=args.temporal, temporal_strength=args.temporal_strength,
                               refine=args.refine, refine_radius=args.refine_radius, refine_eps=args.refine_eps,
                               refine_subsample=args.refine_subsample, progress=True,
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


def _check_input_ranges(ranges):
    """An integer-input file (``--io uint8``/``int8``) holds its real input range in its
    quantization; a ``--input-range`` that fits only a few of its levels would feed every
    photo as a near-constant image and score it silently wrong."""
    if not ranges:
        return
    from sinet_tf.bench.host import model_info

    for path, value_range in ranges.items():
        if value_range is None:
            continue
        info = model_info(path)["input"]
        if info["dtype"] not in ("uint8", "int8", "int16"):
            continue
        import numpy as np

        lo, hi = value_range
        scale, zero = (info["scale"] or 1.0), (info["zero_point"] or 0)
        q = np.iinfo(info["dtype"])
        real = (scale * (q.min - zero), scale * (q.max - zero))
        levels = (hi - lo) / scale
        if hi <= lo or levels < 16 or lo < real[0] - scale or hi > real[1] + scale:
            raise ValueError(f"--input-range {lo:g},{hi:g} for {path}: its {info['dtype']} input holds the values "
                             f"[{real[0]:g}, {real[1]:g}] (scale {scale:g}, zero point {zero}); [{lo:g}, {hi:g}] "
                             f"would use {max(levels, 0):.0f} of its {q.max - q.min + 1} levels and feed every photo "
                             f"as a near-constant image. Leave --input-range out for this file (or give "
                             f"{real[0]:g},{real[1]:g})")


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
        _check_input_ranges(ranges)
        rows = benchmark(args.models, threads=_parse_threads(args.threads or "2"), warmup=args.warmup,
                         runs=args.runs, data=args.data, split=None if args.split == "none" else args.split,
                         num_images=args.num_images, xnnpack=not args.no_xnnpack, input_range=ranges,
                         memory=not args.no_memory, progress=say)
    written = write_plots(rows, _output_file(args.plot, "--plot")) if args.plot else []
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
                           mattes=args.mattes, progress=True)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary(max_listed=len(report.problems) + len(report.warnings)))
    return 0 if report.ok else 1


def cmd_train(args):
    from sinet_tf.train.cluster import read_tf_config
    from sinet_tf.train.run_folder import check_run_folder, kill_point

    if args.workers is not None and args.strategy not in (None, "multiworker"):
        raise ValueError(f"--workers runs the multiworker strategy; it does not go with --strategy {args.strategy}")
    output = args.output or str(Path("runs") / Path(args.config).stem)
    # before TensorFlow is imported (seconds): a repeated command or a malformed environment fails at once
    check_run_folder(output, args.resume)
    kill_point()
    if args.strategy == "multiworker" and args.workers is None:
        read_tf_config()   # the launcher (--workers) writes each worker's own
    from sinet_tf.train import load_recipe, train

    # with --workers the recipe is read, and a bad one refused, once here rather than in every worker
    config = load_recipe(args.config, overrides=args.overrides, data=args.data)
    if args.workers is not None:
        from sinet_tf.train.cluster import launch_local_workers

        forwarded = ["--config", args.config, "--verbose", str(args.verbose)]
        forwarded += ["--data", args.data] if args.data else []
        forwarded += ["-o", args.output] if args.output else []
        forwarded += ["--resume"] if args.resume else []
        forwarded += ["--json"] if args.json else []
        return launch_local_workers(forwarded + list(args.overrides), args.workers, config=config)
    if args.strategy:
        config.strategy = args.strategy
    _output_folder(output, "-o")
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
    if args.gallery:
        _output_folder(args.gallery, "--gallery")
    _registry_name_without_weights(args.model, args.weights, refuse=False)
    shown = {}

    def show(result):   # the metrics are printed before the gallery is written, so a failed gallery loses nothing
        shown["result"] = result
        if not args.json:
            split_text = result["split"] or "whole folder"
            print(f"{result['model']} on {result['data']} ({split_text}, {result['n_images']} images): "
                  f"person IoU {result['person_iou']:.4f}, mIoU {result['miou']:.4f}, "
                  f"pixel accuracy {result['pixel_accuracy']:.4f}, boundary F {result['boundary_f']:.4f}", flush=True)

    try:
        result = evaluate(args.model, args.data, split=split, weights=args.weights,
                          boundary_width=args.boundary_width, gallery=args.gallery, worst=args.worst,
                          progress=not args.json, on_metrics=show)
    except BaseException:
        if args.json and "result" in shown:
            print(json.dumps(shown["result"], indent=2), flush=True)
        raise
    if args.json:
        print(json.dumps(result, indent=2))
    elif result.get("gallery"):
        print(f"gallery: {len(result['gallery'])} images in {args.gallery}")
    return 0


def _exit_code_table() -> str:
    import textwrap

    return "exit codes:\n" + "\n".join(
        textwrap.fill(text.replace("`", ""), width=100, initial_indent=f"  {code:>3}  ", subsequent_indent=" " * 7)
        for code, text in EXIT_CODES.items())


def build_parser() -> argparse.ArgumentParser:
    from sinet_tf.postprocess.refine import DEFAULT_EPS, DEFAULT_EXPORT_SUBSAMPLE, DEFAULT_RADIUS, REFINE_MODES
    from sinet_tf.postprocess.temporal import DEFAULT_STRENGTH, DEFAULT_TEMPORAL, TEMPORAL_MODES

    parser = argparse.ArgumentParser(prog="sinet", description="Mobile portrait segmentation: build, train, export, "
                                                               "benchmark.",
                                     epilog=_exit_code_table(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list every registered model with params and multiply-adds, or the presets")
    p.add_argument("names", nargs="*", help="only these models (default: all; building the large ones takes a "
                                            "minute); with --presets, preset names or folders")
    p.add_argument("--presets", action="store_true", help="list the presets (models with weights: name, "
                                                          "architecture, input size, normalization, source, "
                                                          "licence, measured val person IoU) instead")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("preset", help="make presets: a trained model as a folder every command takes as a model")
    preset_sub = p.add_subparsers(dest="preset_command", required=True)
    p = preset_sub.add_parser(
        "save", help="make a preset folder of a training run or a .keras file",
        description="Writes OUT_DIR/config.json (architecture, input size, normalization, source, licence, "
                    "metrics) with the weights (weights.npz, or model.keras when the registry cannot build the "
                    "network again) and, from a run, its history.csv and best validation person IoU. The folder "
                    "is then a model for sinet predict, export, evaluate and sinet_tf.from_preset. An existing "
                    "preset folder is replaced.")
    p.add_argument("source", help="training run folder (sinet train -o DIR: its last stage's best.keras) or a "
                                  ".keras file")
    p.add_argument("output", help="preset folder to write")
    p.add_argument("--name", help="preset name (default: the folder's name)")
    p.add_argument("--description", help="one line on what the preset is")
    p.add_argument("--source-text", metavar="TEXT", help="where the weights come from (default: the run or file)")
    p.add_argument("--license", help="the weights' licence, e.g. an SPDX id such as MIT (default: not stated)")
    p.add_argument("--license-file", help="licence text to copy into the folder as LICENSE")
    p.add_argument("--metrics", metavar="EVAL.json", help="record the output of `sinet evaluate --json` as the "
                                                          "preset's metrics (instead of the run's validation)")
    p.set_defaults(func=cmd_preset_save)

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
    p.add_argument("model", help=".keras, .tflite, a preset (a name from sinet models --presets, or a preset "
                                 "folder), or a registry name (with --weights)")
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
    p.add_argument("--temporal", choices=TEMPORAL_MODES, default=DEFAULT_TEMPORAL,
                   help="temporal smoothing of videos and webcams: none, ema (gated moving average of the "
                        "probability, what an exported --temporal ema model does), flow (the same after optical-flow "
                        f"motion compensation); default {DEFAULT_TEMPORAL}")
    p.add_argument("--temporal-strength", type=float, default=DEFAULT_STRENGTH, metavar="S",
                   help=f"weight in [0, 1) the previous matte keeps where the new one barely changed "
                        f"(default {DEFAULT_STRENGTH})")
    p.add_argument("--refine", choices=REFINE_MODES, default="guided",
                   help="edge refinement: guided (guided filter with the photo as guide, default) or none")
    p.add_argument("--refine-radius", type=int, default=DEFAULT_RADIUS, metavar="R",
                   help=f"guided filter window radius in model-input pixels (default {DEFAULT_RADIUS})")
    p.add_argument("--refine-eps", type=float, default=DEFAULT_EPS, metavar="EPS",
                   help=f"guided filter regularization, > 0 (default {DEFAULT_EPS:g})")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="train a small SINet, evaluate, export fp32/int8, benchmark and write a report",
                       description="The main job on a fresh machine, in a few minutes on a CPU: train a small SINet "
                                   "on synthetic portraits (or --data), evaluate it, export fp32 and int8 .tflite "
                                   "with the GPU-delegate check, benchmark both and write DIR/report.md with plots.")
    p.add_argument("-o", "--output", default="demo", help="output folder (default demo)")
    p.add_argument("--data", help="dataset with train/val splits (folder or list file) instead of synthetic portraits")
    p.add_argument("--minutes", type=float, default=None, help="training time budget in minutes (default 4; "
                                                               "--quick: 0.25)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run for CI (under 2 minutes)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("export", help="export a .tflite (batch 1; fp32/fp16/dynamic/int8) with a JSON report "
                                      "and GPU-delegate check")
    p.add_argument("source", help=".keras file, a preset (a name from sinet models --presets, or a "
                                  "preset folder), or a registry name (with --weights)")
    p.add_argument("-o", "--output", required=True, help="output .tflite file (OUT.json is written beside it)")
    p.add_argument("--weights", help="checkpoint for a registry model name (.npz, .pth, .weights.h5)")
    p.add_argument("--quantize", choices=["none", "fp16", "dynamic", "int8"], default="none")
    p.add_argument("--io", choices=["float32", "uint8", "int8"], default="float32",
                   help="input/output type; uint8/int8 need --quantize int8 (input = pixels, scale 1)")
    p.add_argument("--head", choices=["logits", "probabilities", "mask"], default="logits",
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
    p.add_argument("--refine", choices=("none", "guided"), default="none",
                   help="with --head mask: guided filter on the matte, the input image as guide (GPU-delegate ops)")
    p.add_argument("--refine-radius", type=int, default=DEFAULT_RADIUS, metavar="R",
                   help=f"guided filter window radius in input pixels (default {DEFAULT_RADIUS})")
    p.add_argument("--refine-eps", type=float, default=DEFAULT_EPS, metavar="EPS",
                   help=f"guided filter regularization, > 0 (default {DEFAULT_EPS:g})")
    p.add_argument("--refine-subsample", type=int, default=DEFAULT_EXPORT_SUBSAMPLE, metavar="S",
                   help=f"guided filter coefficients on SxS blocks, a quarter of the work at 2 "
                        f"(default {DEFAULT_EXPORT_SUBSAMPLE}; 1: at the input's resolution)")
    p.add_argument("--temporal", default="none", metavar="{none,ema}",
                   help="with --head mask: a second input, the previous matte, and the gated moving average of "
                        "sinet predict --temporal ema (feed each output back; -1 everywhere for the first frame)")
    p.add_argument("--temporal-strength", type=float, default=DEFAULT_STRENGTH, metavar="S",
                   help=f"weight in [0, 1) the previous matte keeps (default {DEFAULT_STRENGTH})")
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
    p.add_argument("--strategy", choices=["default", "mirrored", "multiworker", "tpu"],
                   help="multiworker reads the cluster from TF_CONFIG (see README, Scaling out)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="run N multiworker processes on this machine (127.0.0.1, free ports): the chief writes "
                        "the run folder, the others' output goes to temporary log files")
    p.add_argument("--verbose", default="auto", type=lambda v: v if v == "auto" else int(v),
                   help="Keras progress: auto, 0, 1 (bar) or 2 (a line per epoch)")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.add_argument("overrides", nargs="*", help="key=value recipe overrides (stage.key=value for one stage)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="person IoU, mIoU, pixel accuracy and boundary F on a dataset")
    p.add_argument("model", help=".keras, .tflite, a preset (a name from sinet models --presets, or a preset "
                                 "folder), or a registry name (with --weights)")
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


# --------------------------------------------------------------------------- errors


def _output_file(path, flag: str):
    """An output that must be a file: not an existing folder, and not below a file."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {p}: is a folder; give a file name")
    _no_file_above(p, flag)
    return path


def _output_folder(path, flag: str):
    """An output that must be a folder: not an existing file, and not below a file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {p}: is a file; give a folder")
    _no_file_above(p, flag)
    return path


def _no_file_above(p: Path, flag: str):
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {p}: {parent} is a file, not a folder")
            return


def _registry_name_without_weights(model, weights, refuse: bool):
    """A registry name without ``--weights`` has random, untrained weights: ``predict`` refuses
    it (its masks would mean nothing), ``evaluate`` and ``export`` warn (a baseline score, a
    file to time). Presets and files carry their weights; other names fail later, when the
    model is loaded, with the closest names."""
    if weights is not None or Path(str(model)).suffix.lower() in (".keras", ".tflite"):
        return
    from sinet_tf.presets import resolve_preset
    from sinet_tf.registry import list_models

    if str(model) not in list_models() or resolve_preset(model) is not None:
        return
    text = f"{model!r} is a registry name without --weights: its weights are random (untrained)"
    if refuse:
        raise ValueError(f"{text}, so its masks would mean nothing; give --weights CHECKPOINT, a preset "
                         "(sinet models --presets) or a trained .keras/.tflite file")
    print(f"sinet: warning: {text}; give --weights CHECKPOINT, or a preset, for a trained model", file=sys.stderr)


_OS_HINTS = {
    errno.EACCES: "no permission; choose another output or fix the permissions",
    errno.EPERM: "operation not permitted; choose another output or fix the permissions",
    errno.EROFS: "read-only file system; choose another output",
    errno.ENOSPC: "no space left on the device; free some and run again (existing outputs were kept)",
    errno.EDQUOT: "disk quota exceeded; free some and run again (existing outputs were kept)",
    errno.EFBIG: "file too large for this file system or limit (existing outputs were kept)",
    errno.EISDIR: "is a folder where a file is needed",
    errno.ENOTDIR: "a file is where a folder is needed",
    errno.EEXIST: "already exists and is not what is needed here",
    errno.ENAMETOOLONG: "file name too long",
}


def _os_message(e: OSError) -> str:
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    what = _OS_HINTS.get(e.errno) or (e.strerror or str(e)).rstrip(".")
    return f"{where}: {what}" if where else f"{e.strerror or e}: {what}" if e.strerror else str(e)


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _classify(e: BaseException) -> tuple[int, str]:
    """``(exit code, message)`` for an exception that ended a command."""
    from_project = type(e).__module__.startswith("sinet_tf")
    if type(e).__name__ == "TrainingDiverged":
        return EXIT_DIVERGED, str(e)
    if type(e).__name__ == "Int8GateError":
        return EXIT_INT8_DROP, f"int8 refused: {e}"
    if isinstance(e, FileNotFoundError):
        return EXIT_BAD_INPUT, (str(e) if e.errno is None else f"{e.filename}: not found")
    if isinstance(e, OSError):
        return EXIT_SYSTEM, _os_message(e)
    if isinstance(e, MemoryError) or type(e).__name__ == "ResourceExhaustedError":
        return EXIT_SYSTEM, f"out of memory ({_one_line(e, 200) or type(e).__name__})"
    if isinstance(e, KeyError):
        return EXIT_BAD_INPUT, str(e.args[0]) if e.args else "unknown key"
    if isinstance(e, ValueError):
        return EXIT_BAD_INPUT, str(e) if from_project or type(e) is ValueError else _one_line(e)
    return EXIT_INTERNAL, (f"internal error: {type(e).__name__}: {_one_line(e)} (please report it; "
                           "SINET_DEBUG=1 shows the traceback)")


def _error(args, message: str):
    print(f"sinet {args.command}: error: {message}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    _quiet_tensorflow()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        _error(args, "interrupted" + ("; `sinet train --resume` continues from the last committed epoch"
                                      if args.command == "train" else ""))
        return EXIT_INTERRUPTED
    except Exception as e:
        if os.environ.get("SINET_DEBUG"):
            raise
        code, message = _classify(e)
        _error(args, message)
        return code


if __name__ == "__main__":
    sys.exit(main())
