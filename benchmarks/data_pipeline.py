"""Input-pipeline throughput: images/s at 224x224 with the full PortraitNet augmentation,
tf backend vs imgaug backend, on humanseg290, on the same cores in one run; and how many
images/s SINet's training step consumes on the same machine.

imgaug needs numpy<2, so run this in the imgaug environment (which has TF 2.21 too):

    python -m venv .venv-imgaug && .venv-imgaug/bin/pip install ".[imgaug]"
    .venv-imgaug/bin/python benchmarks/data_pipeline.py --data ../shared/datasets/humanseg290

Decoded photos (the tf backend: their canvases) are cached before timing (a first pass
per configuration fills the cache and compiles the tf backend's XLA function), so the
numbers measure augmentation + resizing + batching, which is what repeats every epoch.

Each tf.data configuration gets ``threads`` private threads and an intra-op parallelism
of 1. A measurement is the second epoch of a fresh iterator over a 3-epoch pipeline:
steady state, as in training, where the trainer builds one pipeline for all epochs and
Keras iterates it once (the first epoch of an iterator also pays for instantiating its
functions; its first-batch latency is reported as ``startup``). The configurations are
timed in interleaved rounds, so that load from other processes on a shared machine hits
all of them alike; the table gives the best round of each (and the median), and the
tf / imgaug ratio is the median of the ratios within a round. ``images/cpu-s`` is images
per CPU-second of this process (every thread, the consumer loop included): throughput
per core, whatever the thread count. (The tf backend's XLA computations may hand parts of
a batch to TensorFlow's intra-op thread pool, which tf.data's thread options do not
bound: on an idle machine its ``threads=1`` images/s can exceed one core's worth; its
images/cpu-s cannot.)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _pipeline(source, backend, threads, batch_size, epochs=3):
    import tensorflow as tf

    from sinet_tf.data import make_pipeline

    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return make_pipeline(source, (224, 224), batch_size, backend=backend, seed=0,
                         epochs=epochs).with_options(options)


def _consume(it, steps):
    """Images, wall seconds and process CPU seconds of ``steps`` batches from ``it``."""
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    for _ in range(steps):
        x, _ = next(it)
        n += int(x.shape[0])
    return n, time.perf_counter() - t0, time.process_time() - c0


def _measure(ds, steps):
    """``(startup s, images, wall s, cpu s)``: the first batch of a fresh iterator, then
    its second epoch (``steps`` batches)."""
    it = iter(ds)
    startup = _consume(it, 1)[1]
    _consume(it, steps - 1)  # the rest of the first epoch
    n, wall, cpu = _consume(it, steps)
    del it
    return startup, n, wall, cpu


def _train_step_rate(batch_size, steps):
    import keras
    import numpy as np

    import sinet_tf

    model = sinet_tf.build_model("sinet")
    model.compile(optimizer=keras.optimizers.Adam(5e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
    x = np.random.default_rng(0).uniform(0, 255, (batch_size, 224, 224, 3)).astype("float32")
    y = np.zeros((batch_size, 224, 224), "uint8")
    model.train_on_batch(x, y)  # trace + compile
    t0 = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return batch_size * steps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/datasets/humanseg290")
    ap.add_argument("--split", default="train")
    ap.add_argument("--epochs", type=int, default=5, help="timed rounds (one epoch per configuration each)")
    ap.add_argument("--threads", default="1,2", help="tf.data thread-pool sizes to measure")
    ap.add_argument("--pipeline-batch", type=int, default=16, help="batch size of the measured pipelines")
    ap.add_argument("--batch-size", type=int, default=24, help="SINet stage-2 batch size (training step)")
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import tensorflow as tf

    from sinet_tf.data import load_dataset

    source = load_dataset(args.data, split=args.split)
    backends = ["tf"]
    try:
        from sinet_tf.data.augment_imgaug import import_imgaug

        import_imgaug()
        backends.append("imgaug")
    except ImportError as e:
        print(f"imgaug backend skipped: {e}")

    from sinet_tf.data.pipeline import steps_per_epoch

    steps = steps_per_epoch(source, args.pipeline_batch)
    configs = [(b, int(t)) for t in args.threads.split(",") for b in backends]
    pipelines = {}
    for backend, threads in configs:
        ds = _pipeline(source, backend, threads, args.pipeline_batch)
        t0 = time.perf_counter()
        _consume(iter(ds), steps)  # decode, fill the cache, compile
        print(f"warm-up {backend:7s} threads={threads}: {time.perf_counter() - t0:6.1f} s", flush=True)
        pipelines[backend, threads] = ds
    runs = {c: [] for c in configs}
    for r in range(args.epochs):
        for c in configs:
            startup, n, wall, cpu = _measure(pipelines[c], steps)
            runs[c].append((n / wall, n / cpu, startup))
            print(f"round {r}: {c[0]:7s} threads={c[1]}: {n / wall:7.1f} images/s, {n / cpu:7.1f} images/cpu-s, "
                  f"startup {startup:5.2f} s", flush=True)

    rows = []
    for backend, threads in configs:
        wall = [w for w, _, _ in runs[backend, threads]]
        cpu = [c for _, c, _ in runs[backend, threads]]
        rows.append({"backend": backend, "threads": threads, "images_per_s": round(max(wall), 1),
                     "images_per_s_median": round(statistics.median(wall), 1),
                     "images_per_cpu_s": round(max(cpu), 1),
                     "startup_s": round(statistics.median(s for _, _, s in runs[backend, threads]), 2)})
    step = _train_step_rate(args.batch_size, args.train_steps)
    result = {"dataset": f"{args.data} ({args.split}, {len(source)} images)", "cores": os.cpu_count(),
              "pipeline_batch": args.pipeline_batch, "rounds": args.epochs,
              "pipeline": rows, "sinet_train_images_per_s": round(step, 1),
              "numpy": __import__("numpy").__version__, "tensorflow": tf.__version__}
    print()
    print(f"{'backend':8s} {'threads':>7s} {'images/s':>9s} {'median':>8s} {'images/cpu-s':>13s} {'startup s':>10s}")
    for row in rows:
        print(f"{row['backend']:8s} {row['threads']:7d} {row['images_per_s']:9.1f} "
              f"{row['images_per_s_median']:8.1f} {row['images_per_cpu_s']:13.1f} {row['startup_s']:10.2f}")
    print(f"SINet training step (batch {args.batch_size}, 224x224, all cores): {step:.1f} images/s")
    ratios = {}
    for t in sorted({c[1] for c in configs}):
        if ("imgaug", t) in runs:
            per_round = [a[0] / b[0] for a, b in zip(runs["tf", t], runs["imgaug", t])]
            per_round_cpu = [a[1] / b[1] for a, b in zip(runs["tf", t], runs["imgaug", t])]
            ratios[t] = {"wall": round(statistics.median(per_round), 2),
                         "cpu": round(statistics.median(per_round_cpu), 2)}
            print(f"threads={t}: tf / imgaug = {ratios[t]['wall']:.1f}x images/s "
                  f"({ratios[t]['cpu']:.1f}x images per CPU-second)")
    result["tf_over_imgaug"] = ratios
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
