"""Training throughput: images/s of the training step alone and of the input pipeline alone,
at each recipe stage's batch size and input size, on this machine's devices (a GPU when
TensorFlow sees one, else the CPU). Whichever is lower is the bottleneck of a real run: the
pipeline runs on the CPU beside the step (tf.data prefetches), so a run goes at about
min(step, pipeline) images/s.

    python benchmarks/train_throughput.py --json benchmarks/results/train_throughput.json
    python benchmarks/train_throughput.py --recipe training/sinet.yaml --mixed-precision --jit

* step: ``model.train_on_batch`` on one fixed batch (the recipe's model, loss, optimizer
  and L2, compiled as the trainer compiles it), after warm-up steps that trace and compile;
  the median of ``--rounds`` timings of ``--steps`` steps each.
* pipeline: batches of the recipe's augmentation (the ``tf`` backend) from a running
  iterator over synthetic portraits, whose decoded canvases are cached as in training,
  after draining what it prefetched during the step round (steady state); the same rounds.

The two are timed in alternating rounds, so that load from other processes hits both alike.
The CPU's model name and ISA flags are recorded with every figure (int8/fp32 and
training speed differ between hosts with and without AVX-512).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_RECIPES = ("training/sinet.yaml", "training/sinet_finetune.yaml", "training/portraitnet.yaml")



def _timed(fn, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return time.perf_counter() - t0


def _drain(it, limit: int = 64) -> None:
    """Consume the batches the iterator prefetched while something else ran, until two
    batches in a row had to be made on demand: the timing that follows is steady state."""
    waited = 0
    for _ in range(limit):
        t0 = time.perf_counter()
        next(it)
        waited = waited + 1 if time.perf_counter() - t0 > 1e-3 else 0
        if waited >= 2:
            return


def measure_stage(config, stage, steps: int, rounds: int, warmup: int) -> dict:
    import keras
    import numpy as np

    from sinet_tf.data.pipeline import make_pipeline
    from sinet_tf.data.sources import open_source
    from sinet_tf.registry import build_model
    from sinet_tf.train.trainer import _compile

    keras.utils.set_random_seed(0)
    batch, size = stage.batch_size, tuple(stage.input_size)
    model = build_model(stage.model, input_shape=(*size, 3), **stage.model_kwargs)
    model = _compile(model, stage, steps_per_epoch=steps)
    network = getattr(model, "network", model)
    out_hw = tuple(int(d) for d in network.outputs[0].shape[1:3])
    stride = size[0] // out_hw[0]

    source = open_source("synthetic:%d" % max(2 * batch, 64), "train", seed=0, size=(256, 256))
    pipe = make_pipeline(source, size, batch, augment=stage.augment if stage.augment is not None else True,
                         seed=0, two_views=stage.two_views, label_stride=stride, epochs=10_000)
    it = iter(pipe)
    x, y = next(it)  # a real batch for the step, and the canvases cached
    for _ in range(warmup):
        model.train_on_batch(x, y)
        next(it)
    step_s, pipe_s = [], []
    for _ in range(rounds):
        step_s.append(_timed(lambda: model.train_on_batch(x, y), steps))
        _drain(it)
        pipe_s.append(_timed(lambda: next(it), steps))
    step_ips = batch * steps / statistics.median(step_s)
    pipe_ips = batch * steps / statistics.median(pipe_s)
    return {"stage": stage.name, "model": stage.model, "batch_size": batch, "input_size": list(size),
            "step_images_per_s": round(step_ips, 1), "pipeline_images_per_s": round(pipe_ips, 1),
            "bottleneck": "pipeline" if pipe_ips < step_ips else "step",
            "step_ms": round(1000 * statistics.median(step_s) / steps, 1),
            "rounds": rounds, "steps_per_round": steps,
            "loss": float(np.asarray(model.evaluate(x, y, verbose=0, return_dict=True)["loss"]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", action="append", help="recipe YAML (repeatable; default: SINet, its fine-tune, "
                                                       "PortraitNet)")
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (tracing, XLA) (default 2)")
    ap.add_argument("--mixed-precision", action="store_true", help="mixed_float16 (what a GPU run uses)")
    ap.add_argument("--jit", action="store_true", help="jit_compile the step (XLA)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)

    import keras
    import tensorflow as tf

    from sinet_tf.bench.host import cpu_info
    from sinet_tf.train import load_recipe

    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    gpus = tf.config.list_physical_devices("GPU")
    host = {"cpu": cpu_info(), "gpu": [tf.config.experimental.get_device_details(g).get("device_name", g.name)
                                       for g in gpus],
            "tensorflow": tf.__version__, "mixed_precision": args.mixed_precision, "jit_compile": args.jit}
    rows = []
    for recipe in args.recipe or DEFAULT_RECIPES:
        config = load_recipe(recipe, data="synthetic")
        for stage in config.stages:
            if args.jit:
                stage.jit_compile = True
            row = {"recipe": recipe, **measure_stage(config, stage, args.steps, args.rounds, args.warmup)}
            rows.append(row)
            print(f"{recipe} [{row['stage']}] {row['model']} batch {row['batch_size']} "
                  f"{row['input_size'][0]}x{row['input_size'][1]}: step {row['step_images_per_s']} images/s "
                  f"({row['step_ms']} ms), pipeline {row['pipeline_images_per_s']} images/s -> bottleneck: "
                  f"{row['bottleneck']}", flush=True)
    result = {"host": host, "rows": rows}
    if args.json:
        from sinet_tf.files import write_atomic

        write_atomic(json.dumps(result, indent=2).encode(), args.json)
    print(json.dumps(host))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
