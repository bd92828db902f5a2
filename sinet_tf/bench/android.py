"""``sinet bench --adb``: latency on an Android device with TFLite's ``benchmark_model``.

The pure functions build the ``adb`` and ``benchmark_model`` command lines and parse what
``adb devices`` and ``benchmark_model`` print; :func:`benchmark_on_device` strings them
together (check ``adb``, pick the device, push the binary and the models to
``/data/local/tmp``, run, parse). ``adb shell`` hands its arguments to the phone's shell
as one command line, so every such call goes through :func:`shell_command`, which quotes
each argument (a space in a file name would split it, a ``;`` start a second command),
and the models get device file names of safe characters only. The rows have the keys of the host benchmark's
(:func:`sinet_tf.bench.host.benchmark`) where ``benchmark_model`` reports the quantity:
it prints the mean, min, max and standard deviation of the timed runs, and newer versions
also ``p5``, ``median`` and ``p95``; ``median_ms`` is that median where printed (else
``None``, and ``mean_ms`` carries the latency), ``p90_ms`` is always ``None``.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

from sinet_tf.bench.host import model_info

__all__ = ["BENCHMARK_MODEL_URL", "DEVICE_DIR", "AdbError", "adb_command", "benchmark_model_command",
           "benchmark_on_device", "device_file_name", "find_adb", "parse_adb_devices", "parse_benchmark_output",
           "pick_device", "row_from_output", "shell_command"]

MEASUREMENT_DOCS = "https://www.tensorflow.org/lite/performance/measurement"
BENCHMARK_MODEL_URL = ("https://storage.googleapis.com/tensorflow-nightly-public/prod/tensorflow/release/lite/tools/"
                       "nightly/latest/android_aarch64_benchmark_model")
DEVICE_DIR = "/data/local/tmp"
DEVICE_BINARY = f"{DEVICE_DIR}/benchmark_model"


class AdbError(ValueError):
    """adb missing, no usable device, or a failed adb/benchmark_model call."""


def find_adb(path: str | None = None) -> str:
    """The ``adb`` executable on ``PATH`` (or the given ``PATH`` string)."""
    adb = shutil.which("adb", path=path)
    if adb is None:
        raise AdbError("adb not found on PATH: install Android platform-tools "
                       "(https://developer.android.com/tools/releases/platform-tools) and put adb on PATH")
    return adb


def parse_adb_devices(text: str) -> list[tuple[str, str]]:
    """``(serial, state)`` pairs from ``adb devices`` output (state: device, unauthorized,
    offline, ...)."""
    devices = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("List of devices", "*")):
            continue
        parts = line.split()
        if len(parts) >= 2:
            devices.append((parts[0], parts[1]))
    return devices


def pick_device(devices: list[tuple[str, str]], serial: str | None = None) -> str:
    """The serial to use: ``serial`` if it is attached and ready, else the only ready device."""
    listing = ", ".join(f"{s} ({st})" for s, st in devices) or "none"
    ready = [s for s, st in devices if st == "device"]
    if serial is not None:
        state = dict(devices).get(serial)
        if state is None:
            raise AdbError(f"device {serial!r} is not attached; adb devices lists: {listing}")
        if state != "device":
            raise AdbError(f"device {serial!r} is {state} (authorize this computer on the phone, or reconnect); "
                           f"adb devices lists: {listing}")
        return serial
    if not devices:
        raise AdbError("no Android device attached (adb devices lists none): connect one with USB debugging "
                       "enabled, or start an emulator")
    if not ready:
        raise AdbError(f"no device is ready (authorize this computer on the phone, or reconnect); "
                       f"adb devices lists: {listing}")
    if len(ready) > 1:
        raise AdbError(f"{len(ready)} devices attached; choose one with --serial: {listing}")
    return ready[0]


def adb_command(adb: str, serial: str | None, *args: str) -> list[str]:
    return [adb, *(["-s", serial] if serial else []), *args]


def shell_command(adb: str, serial: str | None, *argv: str) -> list[str]:
    """``adb [-s SERIAL] shell 'ARGV quoted'``: the device's shell splits the one command line
    back into exactly ``argv``."""
    return adb_command(adb, serial, "shell", shlex.join(str(a) for a in argv))


def device_file_name(index: int, path) -> str:
    """The name a model gets in ``/data/local/tmp``: its own, with anything but letters,
    digits, ``.``, ``_`` and ``-`` replaced by ``_``, after a per-run index."""
    return f"sinet_bench_{index}_" + re.sub(r"[^A-Za-z0-9._-]", "_", Path(path).name)


def benchmark_model_command(graph: str, threads: int, use_gpu: bool, runs: int, warmup: int,
                            binary: str = DEVICE_BINARY) -> list[str]:
    """The ``benchmark_model`` call on the device. ``--min_secs=0`` and
    ``--warmup_min_secs=0`` make ``runs`` and ``warmup`` the exact counts (by default the
    tool also runs for at least one second / half a second)."""
    return [binary, f"--graph={graph}", f"--num_threads={int(threads)}", f"--use_gpu={str(bool(use_gpu)).lower()}",
            f"--num_runs={int(runs)}", f"--warmup_runs={int(warmup)}", "--min_secs=0", "--warmup_min_secs=0"]


_NUMBER = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"


# adb logcat's "threadtime" prefix: date, time, pid, tid, level letter, tag
_LOGCAT = re.compile(r"^\d\d-\d\d \d\d:\d\d:\d\d\.\d+\s+\d+\s+\d+\s+([VDIWEF])\s+[^:]*?\s*:\s?")


def _stat_line(line: str) -> dict:
    return {k: float(v) for k, v in re.findall(r"(\w+)=" + _NUMBER, line)}


def parse_benchmark_output(text: str) -> dict:
    """What ``benchmark_model`` reports, in its own units (microseconds, MB).

    Keys (present when printed): ``runs`` (the timed run's ``count=...`` statistics:
    count, first, curr, min, max, avg, std, and in newer versions p5, median, p95),
    ``warmup`` (the warm-up run's), ``timings_us``
    (the ``Inference timings in us`` line: init, first_inference, warmup_avg,
    inference_avg), ``memory_mb`` (init and overall deltas from the tool's start, peak via
    periodic monitoring), ``delegate`` (name, delegated and total nodes, partitions),
    ``gpu`` (whether a GPU delegate was created), ``model_size_mb``, ``errors`` (lines that
    say something failed).

    Lines may carry a level prefix (``INFO:``, ``ERROR:``) or, captured with ``adb logcat``
    from the benchmark app, logcat's date, pids and tag (``... I tflite  : ``). With
    ``--enable_op_profiling`` the profiler prints summaries of its own
    (``Timings (microseconds): count=...``); they are not the benchmark's timed runs.
    """
    out: dict = {"errors": []}
    stats = []
    for raw in text.splitlines():
        line = raw.strip()
        logcat = _LOGCAT.match(line)
        if logcat:
            line = line[logcat.end():]
        level = re.match(r"^(INFO|WARNING|ERROR):\s*", line)
        line = line[level.end():] if level else line
        is_error = bool(level and level.group(1) == "ERROR") or bool(logcat and logcat.group(1) in "EF")
        if re.match(r"^count=\d+", line):
            stats.append(_stat_line(line))
        elif line.startswith("Inference timings in us:"):
            fields = dict(re.findall(r"([A-Za-z][A-Za-z ()]*?):\s*" + _NUMBER, line.split(":", 1)[1]))
            names = {"Init": "init", "First inference": "first_inference", "Warmup (avg)": "warmup_avg",
                     "Inference (avg)": "inference_avg"}
            out["timings_us"] = {names.get(k.strip(), k.strip()): float(v) for k, v in fields.items()}
        elif line.startswith("Memory footprint delta from the start of the tool (MB):"):
            out.setdefault("memory_mb", {}).update({f"delta_{k}": v for k, v in _stat_line(line).items()})
        elif line.startswith("Overall peak memory footprint (MB) via periodic monitoring:"):
            out.setdefault("memory_mb", {})["peak"] = float(re.findall(_NUMBER, line.rsplit(":", 1)[1])[0])
        elif m := re.match(r"Replacing (\d+) out of (\d+) node\(s\) with delegate \((\w+)\) node, "
                           r"yielding (\d+) partitions", line):
            out["delegate"] = {"name": m.group(3), "nodes": int(m.group(1)), "total_nodes": int(m.group(2)),
                               "partitions": int(m.group(4))}
        elif line.startswith("Created TensorFlow Lite delegate for GPU"):
            out["gpu"] = True
        elif m := re.match(r"The input model file size \(MB\): " + _NUMBER, line):
            out["model_size_mb"] = float(m.group(1))
        elif is_error or re.search(r"\b(failed|error|unable|not supported|could not)\b", line, re.IGNORECASE):
            out["errors"].append(line)
    if stats:
        out["runs"] = stats[-1]
        if len(stats) > 1:
            out["warmup"] = stats[0]
    return out


def row_from_output(parsed: dict, threads: int, use_gpu: bool) -> dict:
    """A bench row (milliseconds) from :func:`parse_benchmark_output`."""
    runs = parsed.get("runs")
    if runs is None:
        detail = "; ".join(parsed.get("errors", [])[-3:]) or "no timing lines in its output"
        raise AdbError(f"benchmark_model reported no timings: {detail}")
    ms = {k: round(runs[k] / 1000, 4) if k in runs else None
          for k in ("min", "max", "avg", "std", "first", "median")}
    timings = parsed.get("timings_us", {})
    mem = parsed.get("memory_mb", {})
    delegate = parsed.get("delegate")
    return {"threads": int(threads), "use_gpu": bool(use_gpu), "runs": int(runs.get("count", 0)),
            "median_ms": ms["median"], "p90_ms": None, "mean_ms": ms["avg"], "min_ms": ms["min"], "max_ms": ms["max"],
            "std_ms": ms["std"], "first_ms": ms["first"],
            "init_ms": round(timings["init"] / 1000, 3) if "init" in timings else None,
            "peak_memory_mb": mem.get("peak"), "memory_delta_init_mb": mem.get("delta_init"),
            "memory_delta_overall_mb": mem.get("delta_overall"),
            "delegate": delegate["name"] if delegate else None,
            "delegated_nodes": f"{delegate['nodes']}/{delegate['total_nodes']}" if delegate else None,
            "gpu_delegate_created": bool(parsed.get("gpu")), "warnings": parsed.get("errors", []),
            "latency_statistic": "median (benchmark_model's)" if ms["median"] is not None
            else "mean (this benchmark_model prints no median)"}


def _run(cmd: list[str], what: str, timeout: float = 600) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AdbError(f"{what}: no answer within {timeout:.0f} s ({' '.join(cmd)})") from None
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise AdbError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n" + "\n".join(detail))
    return proc.stdout + proc.stderr


def _missing_binary_message() -> str:
    return (f"no benchmark_model binary: give --benchmark-binary PATH (the TFLite benchmark tool for "
            f"android_aarch64). Download the nightly pre-built binary (see \"Download the nightly pre-built "
            f"binaries\" on {MEASUREMENT_DOCS}): {BENCHMARK_MODEL_URL}")


def benchmark_on_device(models, threads=(4,), use_gpu: bool = False, runs: int = 50, warmup: int = 5,
                        serial: str | None = None, benchmark_binary=None, progress=None) -> list[dict]:
    """Run every model under ``benchmark_model`` on an attached device; one row per
    (thread count, model) with the host rows' keys where the tool reports them."""
    say = progress or (lambda msg: None)
    infos = [model_info(m) for m in models]  # missing or non-model files fail before adb is touched
    adb = find_adb()
    device = pick_device(parse_adb_devices(_run([adb, "devices"], "adb devices", timeout=60)), serial)
    if benchmark_binary is not None:
        binary = Path(benchmark_binary)
        if not binary.is_file():
            raise FileNotFoundError(f"benchmark binary not found: {binary}. {_missing_binary_message()}")
        say(f"pushing {binary} to {device}:{DEVICE_BINARY}")
        _run(adb_command(adb, device, "push", str(binary), DEVICE_BINARY), "adb push")
        _run(shell_command(adb, device, "chmod", "755", DEVICE_BINARY), "adb shell chmod")
    else:
        listing = subprocess.run(shell_command(adb, device, "ls", DEVICE_BINARY),
                                 capture_output=True, text=True, timeout=60)
        if listing.returncode != 0 or "No such file" in listing.stdout + listing.stderr:
            raise AdbError(_missing_binary_message())
    remote = []
    for i, info in enumerate(infos):
        dest = f"{DEVICE_DIR}/{device_file_name(i, info['model'])}"
        say(f"pushing {info['model']} to {device}:{dest}")
        _run(adb_command(adb, device, "push", info["model"], dest), "adb push")
        remote.append(dest)
    rows = []
    for n in threads:
        for info, dest in zip(infos, remote):
            cmd = shell_command(adb, device, *benchmark_model_command(dest, n, use_gpu, runs, warmup))
            say(cmd[-1])
            text = _run(cmd, f"benchmark_model on {info['name']}")
            row = {**info, "device": device, "warmup": int(warmup), "command": " ".join(cmd),
                   **row_from_output(parse_benchmark_output(text), n, use_gpu)}
            if use_gpu and not row["gpu_delegate_created"]:
                row["warnings"].append("use_gpu was asked but no GPU delegate was created: this ran on the CPU")
            rows.append(row)
    first = {}
    for row in rows:
        first.setdefault(row["threads"], row["mean_ms"])
    for row in rows:
        ref = first[row["threads"]]
        row["mean_ratio"] = round(row["mean_ms"] / ref, 3) if ref else None
    return rows
