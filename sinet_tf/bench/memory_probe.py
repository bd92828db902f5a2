"""Peak memory of one ``.tflite`` model under LiteRT, measured in a process of its own.

Run by :func:`sinet_tf.bench.host.peak_memory` as a script (by path, so it imports only
NumPy and ``ai_edge_litert``, never TensorFlow or ``sinet_tf``)::

    python memory_probe.py MODEL.tflite --threads 2 [--no-xnnpack] [--invokes 3]

It prints one JSON object. What it measures: the growth of the process's peak resident
set size (``VmHWM`` in ``/proc/self/status``; ``ru_maxrss`` where there is no ``/proc``)
from just before the interpreter is created to after ``allocate_tensors()`` and
``--invokes`` inferences: the model file as loaded, the activation arena, delegate
(XNNPACK) packed weights and scratch, and the thread pool's stacks as far as they were
touched. On Linux the peak mark is first reset to the current RSS (``echo 5 >
/proc/self/clear_refs``), so memory the imports used and gave back is not counted; the
JSON says whether the reset worked (``hwm_reset``).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _peak_kib() -> int:
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(path: str, threads: int, xnnpack: bool = True, invokes: int = 3) -> dict:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {} if xnnpack else {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    reset = _reset_peak()
    before = _peak_kib()
    interpreter = Interpreter(model_path=path, num_threads=threads, **kwargs)
    interpreter.allocate_tensors()
    d = interpreter.get_input_details()[0]
    interpreter.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    for _ in range(invokes):
        interpreter.invoke()
    after = _peak_kib()
    return {"model": path, "threads": threads, "xnnpack": xnnpack, "invokes": invokes, "hwm_reset": reset,
            "peak_before_kib": before, "peak_after_kib": after,
            "peak_memory_mb": round((after - before) / 1024, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-xnnpack", action="store_true")
    p.add_argument("--invokes", type=int, default=3)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.model, args.threads, not args.no_xnnpack, args.invokes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
