"""``sinet bench`` on this machine: latency, size, parameters, peak memory and accuracy of
``.tflite`` files side by side.

Fairness: every file runs under the same LiteRT interpreter
(``ai_edge_litert.interpreter.Interpreter``) with the same settings (threads, XNNPACK on
or off) in one process, and the timed inferences are interleaved: round ``r`` runs every
model once, starting at model ``r mod n``, so a burst of machine noise lands on all of
them alike instead of on whichever model happened to be measured then. Only
``invoke()`` is timed (the input is set before), with Python's garbage collector paused.
A consequence worth knowing: each inference starts with the caches holding the previous
model's data, as in an app that does other work between frames, not with the warm
caches of a tight loop over one model; for models far below a millisecond this shows.

Inputs follow each file's own convention (:func:`input_convention`): our exports take RGB
pixels in [0, 255]; MediaPipe's selfie model takes RGB in [0, 1]; integer inputs are
quantized with the input tensor's scale and zero point.

Every row records the CPU it ran on (:func:`cpu_info`: model name and the instruction-set
flags that decide whether int8 or float32 is faster) and the load average when the
timing started: the same file's int8/float32 ratio flips between an AVX2 host and one
with int8 dot-product instructions, and a shared machine's load moves every figure.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from sinet_tf.evaluate import evaluate
from sinet_tf.inference import Segmenter
from sinet_tf.runtime.interpreter import make_interpreter, quantization_of
from sinet_tf.runtime.model_file import count_weight_params, input_range, read_contents, read_tflite

__all__ = ["DEFAULT_INPUT_RANGE", "ISA_FLAGS", "benchmark", "cpu_info", "cpu_label", "input_convention",
           "interleaved_times", "load_average", "model_info", "parse_cpuinfo", "peak_memory", "read_tflite"]

DEFAULT_INPUT_RANGE = (0.0, 255.0)

# CPU flags that decide which kernels LiteRT's XNNPACK can use: x86 AVX2 / AVX-512 and the
# int8 dot-product instructions (VNNI, in 512- and 256-bit forms), AMX; ARM's int8 dot
# product (asimddp), int8 matrix multiply (i8mm) and half-precision arithmetic (asimdhp).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "asimdhp")


def parse_cpuinfo(text: str) -> tuple[str | None, set | None]:
    """``(model name, flags)`` from the text of a Linux/Android ``/proc/cpuinfo`` (x86
    ``model name``/``flags``; ARM ``Hardware`` or ``CPU model``/``Features``); None for
    what it does not say."""
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if model is None and key in ("model name", "hardware", "cpu model"):
            model = value.strip() or None
        elif flags is None and key in ("flags", "features"):
            flags = set(value.split())
    return model, flags


def cpu_info(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> dict:
    """The CPU this process runs on: ``model`` (the model name, or the platform's processor
    string where ``/proc/cpuinfo`` does not exist), ``machine`` (``x86_64``, ``aarch64``,
    ...), ``cores`` (logical CPUs) and ``isa``: which of :data:`ISA_FLAGS` the CPU reports
    (``None`` when its flags cannot be read)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    model, flags = parse_cpuinfo(text)
    return {"model": model or platform.processor() or platform.machine() or "unknown",
            "machine": platform.machine(), "cores": os.cpu_count(),
            "isa": None if flags is None else [f for f in ISA_FLAGS if f in flags]}


def cpu_label(cpu: dict) -> str:
    """One line for tables: ``model (flag, flag, ...)``."""
    isa = cpu.get("isa")
    flags = "flags unknown" if isa is None else (", ".join(isa) or "none of " + "/".join(ISA_FLAGS[:4]))
    return f"{cpu.get('model', 'unknown')} ({flags})"


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the platform has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def input_convention(contents, override: tuple[float, float] | None = None) -> dict:
    """The value range RGB pixels are mapped to for this file: ``[0, 255]`` (every
    ``sinet export`` file), ``[0, 1]`` for MediaPipe's selfie segmentation models
    (recognized by their signature: one float32 input named ``input_1`` of 256x256x3 or
    144x256x3 and one single-channel output), or ``override`` (``--input-range``)."""
    if override is not None:
        lo, hi = (float(v) for v in override)
        return {"range": [lo, hi], "source": "--input-range"}
    value_range, source = input_range(contents)
    return {"range": list(value_range), "source": source}


def model_info(path: str | os.PathLike, input_range: tuple[float, float] | None = None) -> dict:
    """Size, parameter count, input and output of a ``.tflite`` file, read from the flatbuffer."""
    data = read_tflite(path)
    contents = read_contents(data, label=str(path))
    if len(contents.inputs) != 1:
        raise ValueError(f"{path}: {len(contents.inputs)} inputs; sinet bench runs single-image models")
    i, o = contents.inputs[0], contents.outputs[0]
    conv = input_convention(contents, input_range)
    return {"model": str(path), "name": Path(path).stem, "size_bytes": len(data),
            "params": count_weight_params(data), "ops": len(contents.ops),
            "input": {"name": i["name"], "shape": i["shape"], "dtype": i["dtype"], "scale": i["scale"],
                      "zero_point": i["zero_point"], "range": conv["range"], "range_source": conv["source"]},
            "output": {"name": o["name"], "shape": o["shape"], "dtype": o["dtype"]}}


def _bench_input(input_detail: dict, value_range, seed: int = 0) -> np.ndarray:
    """A fixed random photo (RGB pixels in [0, 255]) in the file's convention: mapped to its
    value range, then quantized with the tensor's scale and zero point for integer inputs."""
    shape = [int(d) for d in input_detail["shape"]]
    pixels = np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)
    lo, hi = value_range
    x = lo + pixels * ((hi - lo) / 255.0)
    dtype = input_detail["dtype"]
    if dtype in (np.int8, np.uint8, np.int16):
        scale, zero = quantization_of(input_detail) or (1.0, 0)
        info = np.iinfo(dtype)
        x = np.clip(np.round(x / (scale or 1.0) + zero), info.min, info.max)
    return x.astype(dtype)


class _Timed:
    """One model under one interpreter, its input set once."""

    def __init__(self, path, threads, xnnpack, value_range):
        self.interpreter = make_interpreter(path, threads=threads, xnnpack=xnnpack)
        d = self.interpreter.get_input_details()[0]
        self.interpreter.set_tensor(d["index"], _bench_input(d, value_range))
        self.invoke = self.interpreter.invoke


def interleaved_times(invokes: dict, warmup: int, runs: int, inner: int = 1) -> dict:
    """``{key: [ms, ...]}``: each ``invokes[key]()`` (one inference) warmed up ``warmup``
    times, then timed in ``runs`` rounds whose order rotates over the keys, so machine noise
    falls on every model alike (garbage collection off while timing). With ``inner > 1`` a
    sample is the mean of ``inner`` back-to-back calls."""
    keys = list(invokes)
    times = {k: [] for k in keys}
    gc.collect()
    gc.disable()
    try:
        for _ in range(warmup):
            for k in keys:
                invokes[k]()
        for r in range(runs):
            for j in range(len(keys)):
                k = keys[(r + j) % len(keys)]
                invoke = invokes[k]
                t0 = time.perf_counter_ns()
                for _ in range(inner):
                    invoke()
                times[k].append((time.perf_counter_ns() - t0) / 1e6 / inner)
    finally:
        gc.enable()
    return times


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms, np.float64)
    return {"median_ms": round(float(np.median(a)), 4), "p90_ms": round(float(np.percentile(a, 90)), 4),
            "min_ms": round(float(a.min()), 4), "mean_ms": round(float(a.mean()), 4),
            "std_ms": round(float(a.std()), 4), "runs": int(a.size)}


def peak_memory(path, threads: int = 1, xnnpack: bool = True, invokes: int = 3, timeout: float = 300) -> dict:
    """Peak-RSS growth of loading and running ``path`` in a fresh Python process
    (:mod:`sinet_tf.bench.memory_probe` documents what is measured)."""
    script = Path(__file__).with_name("memory_probe.py")
    cmd = [sys.executable, str(script), str(path), "--threads", str(int(threads)), "--invokes", str(int(invokes))]
    if not xnnpack:
        cmd.append("--no-xnnpack")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"peak_memory_mb": None, "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _segmenter(path, value_range):
    """A :class:`~sinet_tf.inference.Segmenter` for ``path`` that maps the [0, 255] pixels it
    prepares to the file's value range before the model sees them."""
    lo, hi = (float(v) for v in value_range)
    if (lo, hi) == DEFAULT_INPUT_RANGE:
        return Segmenter(path)

    class RangedSegmenter(Segmenter):
        def logits(self, batch):
            return super().logits(lo + np.asarray(batch, np.float32) * ((hi - lo) / 255.0))

    return RangedSegmenter(path)


def _unique_names(paths: list[Path]) -> list[str]:
    names = [p.stem for p in paths]
    if len(set(names)) == len(names):
        return names
    out = []
    for p in paths:
        n = p.stem if names.count(p.stem) == 1 else f"{p.parent.name}/{p.stem}"
        out.append(n if n not in out else f"{n}#{len(out)}")
    return out


def _range_for(path: Path, input_range):
    """``input_range`` is one ``(lo, hi)`` for every file, or a dict keyed by path, file
    name or stem."""
    if input_range is None:
        return None
    if isinstance(input_range, dict):
        for key in (str(path), path.name, path.stem):
            if key in input_range:
                return input_range[key]
        return None
    return input_range


def benchmark(models, threads=(2,), warmup: int = 5, runs: int = 50, data=None, split: str | None = "val",
              num_images: int | None = None, xnnpack: bool = True, input_range=None, memory: bool = True,
              progress=None) -> list[dict]:
    """Benchmark ``.tflite`` files side by side; one dict per (thread count, model), in that
    order.

    Each dict: ``model``, ``name``, ``threads``, ``xnnpack``, ``median_ms``, ``p90_ms``,
    ``min_ms``, ``mean_ms``, ``std_ms``, ``runs``, ``warmup``, ``size_bytes``, ``params``
    (values in constant weight tensors), ``ops``, ``input`` (shape, dtype, value range and
    where it came from), ``output``, ``median_ratio`` (median over the first model's at the
    same thread count), ``peak_memory_mb`` (peak-RSS growth in a fresh process, see
    :func:`peak_memory`; ``memory=False`` skips it), and with ``data`` ``person_iou``,
    ``miou``, ``boundary_f``, ``iou_images`` from :func:`sinet_tf.evaluate.evaluate` (the
    first ``num_images`` images of ``split``), ``cpu`` (:func:`cpu_info`) and ``load_average``
    (when that thread count's timing started). A file the interpreter loads but cannot run
    with these settings (e.g. a custom op only XNNPACK provides, under ``xnnpack=False``)
    gets ``error`` and no timings.
    """
    paths = [Path(m) for m in models]
    if not paths:
        raise ValueError("no models to benchmark")
    threads = [int(t) for t in threads]
    if not threads or min(threads) < 1:
        raise ValueError(f"thread counts must be >= 1, got {threads}")
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0 (got runs={runs}, warmup={warmup})")
    infos = [model_info(p, _range_for(p, input_range)) for p in paths]
    for info, name in zip(infos, _unique_names(paths)):
        info["name"] = name
    say = progress or (lambda msg: None)

    rows = []
    cpu = cpu_info()
    for n_threads in threads:
        timed, errors = [], {}
        for i, p in enumerate(paths):
            try:
                timed.append(_Timed(p, n_threads, xnnpack, infos[i]["input"]["range"]))
            except (RuntimeError, ValueError) as e:
                timed.append(None)
                errors[i] = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
        live = [i for i, t in enumerate(timed) if t is not None]
        say(f"{n_threads} thread(s): {warmup} warm-up + {runs} timed rounds over {len(live)} model(s)")
        load = load_average()
        times = interleaved_times({i: timed[i].invoke for i in live}, warmup, runs)
        del timed
        for i, info in enumerate(infos):
            row = {**info, "threads": n_threads, "xnnpack": bool(xnnpack), "warmup": int(warmup), "cpu": cpu,
                   "load_average": load}
            if i in errors:
                row.update({"median_ms": None, "p90_ms": None, "min_ms": None, "mean_ms": None, "std_ms": None,
                            "runs": 0, "error": errors[i]})
            else:
                row.update(_stats(times[i]))
            rows.append(row)

    _add_ratios(rows)
    if memory:
        for row in rows:
            if row.get("error"):
                row["peak_memory_mb"] = None
                continue
            say(f"peak memory: {row['name']} ({row['threads']} thread(s), fresh process)")
            m = peak_memory(row["model"], row["threads"], xnnpack)
            row["peak_memory_mb"] = m.get("peak_memory_mb")
            if m.get("error"):
                row["peak_memory_error"] = m["error"]
    if data is not None:
        scores = {}
        for info in infos:
            say(f"accuracy: {info['name']} on {data} ({split})")
            scores[info["model"]] = _score(info, data, split, num_images)
        for row in rows:
            row.update(scores[row["model"]])
    return rows


def _score(info: dict, data, split, num_images) -> dict:
    try:
        segmenter = _segmenter(info["model"], info["input"]["range"])
    except (RuntimeError, ValueError) as e:
        return {"person_iou": None, "iou_error": f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"}
    result = evaluate(segmenter, data, split=split, num_images=num_images)
    return {"person_iou": result["person_iou"], "miou": result["miou"], "boundary_f": result["boundary_f"],
            "iou_images": result["n_images"], "iou_data": str(data), "iou_split": split}


def _add_ratios(rows: list[dict]) -> None:
    """``median_ratio``: a row's median over the first model's median at the same thread count."""
    first = {}
    for row in rows:
        first.setdefault(row["threads"], row)
    for row in rows:
        ref = first[row["threads"]]["median_ms"]
        row["median_ratio"] = (round(row["median_ms"] / ref, 3)
                               if row["median_ms"] is not None and ref else None)
