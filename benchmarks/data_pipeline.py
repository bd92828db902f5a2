"""Input-pipeline throughput: images/s at 224x224 with the full PortraitNet augmentation,
tf backend vs imgaug backend, on humanseg290, on the same cores in one run; and how many
images/s SINet's training step consumes on the same machine.

imgaug needs numpy<2, so run this in the imgaug environment (which has TF 2.21 too):

    python -m venv .venv-imgaug && .venv-imgaug/bin/pip install ".[imgaug]"
    .venv-imgaug/bin/python benchmarks/data_pipeline.py --data ../shared/datasets/humanseg290

Decoded photos are cached before timing (the first epoch is a warm-up), so the numbers
measure augmentation + resizing + batching, which is what repeats every epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _throughput(ds_fn, epochs, threads):
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    ds = ds_fn().with_options(options)
    for _ in ds:  # warm-up epoch: decode + fill the cache
        pass
    n, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for x, _ in ds:
            n += int(x.shape[0])
    return n / (time.perf_counter() - t0)


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
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per configuration")
    ap.add_argument("--threads", default="1,2", help="tf.data thread-pool sizes to measure")
    ap.add_argument("--batch-size", type=int, default=24, help="SINet stage-2 batch size")
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import tensorflow as tf

    from sinet_tf.data import load_dataset, make_pipeline

    source = load_dataset(args.data, split=args.split)
    backends = ["tf"]
    try:
        from sinet_tf.data.augment_imgaug import import_imgaug

        import_imgaug()
        backends.append("imgaug")
    except ImportError as e:
        print(f"imgaug backend skipped: {e}")

    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        for backend in backends:
            rate = _throughput(lambda: make_pipeline(source, (224, 224), 16, backend=backend, seed=0),
                               args.epochs, threads)
            rows.append({"backend": backend, "threads": threads, "images_per_s": round(rate, 1)})
            print(f"{backend:7s} threads={threads}: {rate:7.1f} images/s", flush=True)
    step = _train_step_rate(args.batch_size, args.train_steps)
    print(f"SINet training step (batch {args.batch_size}, 224x224, all cores): {step:.1f} images/s")
    result = {"dataset": f"{args.data} ({args.split}, {len(source)} images)", "cores": os.cpu_count(),
              "pipeline": rows, "sinet_train_images_per_s": round(step, 1),
              "numpy": __import__("numpy").__version__, "tensorflow": tf.__version__}
    for t in sorted({r["threads"] for r in rows}):
        by = {r["backend"]: r["images_per_s"] for r in rows if r["threads"] == t}
        if "imgaug" in by:
            print(f"threads={t}: tf / imgaug = {by['tf'] / by['imgaug']:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
