"""``sinet bench``: host rows, table, JSON, plots, input conventions, errors, and the
Android path (benchmark_model output parsing on recorded logs, adb error paths, a fake
adb end to end). Timings are never asserted, only their structure."""

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from sinet_tf.bench import android
from sinet_tf.bench.host import benchmark, input_convention, model_info
from sinet_tf.cli import main

LOGS = Path(__file__).parent / "data" / "benchmark_model"


def _tiny_keras(width: int, size: int = 32):
    import keras

    keras.utils.set_random_seed(width)
    bias = {"bias_initializer": "random_uniform"}  # distinct biases: the converter merges identical constants
    inp = keras.Input((size, size, 3), batch_size=1)
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", **bias)(inp)
    x = keras.layers.DepthwiseConv2D(3, padding="same", **bias)(x)
    return keras.Model(inp, keras.layers.Conv2D(2, 1, **bias)(x))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two small float32 files and a full-integer one with uint8 I/O; with Keras' parameter counts."""
    from sinet_tf.export import convert_float32
    from sinet_tf.export.quantize import convert

    d = tmp_path_factory.mktemp("bench")
    small, wide = _tiny_keras(4), _tiny_keras(8)
    (d / "small.tflite").write_bytes(convert_float32(small))
    (d / "wide.tflite").write_bytes(convert_float32(wide))
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(4):
            yield [rng.uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)]

    (d / "small_int8.tflite").write_bytes(convert(small, "int8", io="uint8", representative=representative))
    return SimpleNamespace(dir=d, small=d / "small.tflite", wide=d / "wide.tflite", int8=d / "small_int8.tflite",
                           params={"small": small.count_params(), "wide": wide.count_params()})


def test_benchmark_rows(tiny):
    rows = benchmark([tiny.small, tiny.wide], threads=(1, 2), warmup=1, runs=6)
    assert [(r["name"], r["threads"]) for r in rows] == [("small", 1), ("wide", 1), ("small", 2), ("wide", 2)]
    for r in rows:
        assert r["runs"] == 6 and r["warmup"] == 1 and r["xnnpack"] is True
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["size_bytes"] == Path(r["model"]).stat().st_size
        assert r["params"] == tiny.params[r["name"]]  # no BN to fold, distinct biases: exactly Keras' weights
        assert r["input"]["shape"] == [1, 32, 32, 3] and r["input"]["dtype"] == "float32"
        assert r["input"]["range"] == [0.0, 255.0] and r["input"]["range_source"] == "default"
        assert r["output"]["shape"] == [1, 32, 32, 2]
        assert r["peak_memory_mb"] is not None and r["peak_memory_mb"] > 0
        assert "person_iou" not in r
    assert rows[0]["median_ratio"] == 1.0 and rows[2]["median_ratio"] == 1.0
    assert rows[1]["median_ratio"] == pytest.approx(rows[1]["median_ms"] / rows[0]["median_ms"], rel=1e-2)


def test_integer_input_and_builtin_kernels(tiny):
    rows = benchmark([tiny.int8, tiny.small], threads=(1,), warmup=0, runs=3, xnnpack=False, memory=False)
    q = rows[0]
    assert q["input"]["dtype"] == "uint8" and q["input"]["scale"] == pytest.approx(1.0, rel=0.01)
    assert q["xnnpack"] is False and q["runs"] == 3 and "peak_memory_mb" not in q
    assert q["params"] == tiny.params["small"]  # int8 weights + int32 biases, the same count
    assert 0 < q["min_ms"] <= q["median_ms"] <= q["p90_ms"]


def test_input_convention():
    def contents(name="serving_default_x:0", shape=(1, 256, 256, 3), out_channels=1, dtype="float32"):
        return SimpleNamespace(inputs=[{"name": name, "shape": list(shape), "dtype": dtype}],
                               outputs=[{"name": "y", "shape": [1, shape[1], shape[2], out_channels]}])

    assert input_convention(contents()) == {"range": [0.0, 255.0], "source": "default"}
    selfie = {"range": [0.0, 1.0], "source": "MediaPipe selfie signature"}
    assert input_convention(contents("input_1")) == selfie
    assert input_convention(contents("input_1", (1, 144, 256, 3))) == selfie
    assert input_convention(contents("input_1", out_channels=2))["source"] == "default"
    assert input_convention(contents("input_1", dtype="uint8"))["source"] == "default"
    assert input_convention(contents(), override=(-1, 1)) == {"range": [-1.0, 1.0], "source": "--input-range"}


def test_cli_json_plots_and_iou(tiny, tmp_path, capsys):
    out = tmp_path / "plots" / "bench.png"
    rc = main(["bench", str(tiny.small), str(tiny.wide), "--threads", "1,2", "--warmup", "1", "--runs", "4",
               "--json", "--plot", str(out), "--data", "synthetic:5", "--no-memory",
               "--input-range", "wide=0,1"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4
    for r in rows:
        assert 0.0 <= r["person_iou"] <= 1.0 and r["iou_images"] == 1 and r["iou_split"] == "val"
    wide = [r for r in rows if r["name"] == "wide"]
    assert all(r["input"]["range"] == [0.0, 1.0] and r["input"]["range_source"] == "--input-range" for r in wide)
    for png in (out, out.with_name("bench_scatter.png")):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = cv2.imread(str(png))
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 100
        assert img.std() > 5 and len(np.unique(img.reshape(-1, 3), axis=0)) > 10  # drawn, not blank


def test_cli_table(tiny, capsys):
    assert main(["bench", str(tiny.small), str(tiny.int8), "--runs", "3", "--warmup", "0", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for text in ("small", "small_int8", "median ms", "p90 ms", "ratio", "params", "peak MB", "1.00x",
                 "32x32x3 uint8 in [0, 255]", "peak resident set"):
        assert text in out, text
    assert "person IoU" not in out


def test_bench_errors(tiny, tmp_path, capsys):
    missing = tmp_path / "nope.tflite"
    assert main(["bench", str(tiny.small), str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    text = tmp_path / "notes.tflite"
    text.write_text("not a model at all")
    assert main(["bench", str(text)]) == 2
    err = capsys.readouterr().err
    assert str(text) in err and "not a TFLite model" in err
    assert main(["bench", str(tiny.small), "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err
    assert main(["bench", str(tiny.small), "--input-range", "other=0,1"]) == 2
    assert "names none of the models" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="nope.tflite"):
        model_info(missing)


# ---- Android: benchmark_model output, command lines, adb ---------------------------------------


def test_parse_cpu_log():
    parsed = android.parse_benchmark_output((LOGS / "cpu_4threads.txt").read_text())
    assert parsed["runs"] == {"count": 50, "first": 6098, "curr": 5874, "min": 5731, "max": 7415, "avg": 6023.58,
                              "std": 312}
    assert parsed["warmup"]["count"] == 5
    assert parsed["timings_us"] == {"init": 31482, "first_inference": 14832, "warmup_avg": 7842.4,
                                    "inference_avg": 6023.58}
    assert parsed["memory_mb"] == {"delta_init": 7.30859, "delta_overall": 15.6211, "peak": 19.2539}
    assert parsed["delegate"] == {"name": "TfLiteXNNPackDelegate", "nodes": 189, "total_nodes": 189, "partitions": 1}
    assert "gpu" not in parsed and parsed["errors"] == [] and parsed["model_size_mb"] == 0.497396
    row = android.row_from_output(parsed, threads=4, use_gpu=False)
    assert row["median_ms"] is None and row["p90_ms"] is None  # benchmark_model prints no median
    assert row["mean_ms"] == 6.0236 and row["min_ms"] == 5.731 and row["std_ms"] == 0.312 and row["runs"] == 50
    assert row["init_ms"] == 31.482 and row["peak_memory_mb"] == 19.2539
    assert row["delegated_nodes"] == "189/189" and "median" in row["latency_statistic"]


def test_parse_gpu_logs():
    gpu = android.parse_benchmark_output((LOGS / "gpu.txt").read_text())
    assert gpu["gpu"] is True and gpu["errors"] == []
    assert gpu["delegate"] == {"name": "TfLiteGpuDelegateV2", "nodes": 189, "total_nodes": 189, "partitions": 1}
    row = android.row_from_output(gpu, threads=4, use_gpu=True)
    assert row["gpu_delegate_created"] and row["mean_ms"] == 3.2628 and row["memory_delta_init_mb"] == 61.2188

    partial = android.parse_benchmark_output((LOGS / "gpu_fallback.txt").read_text())
    assert partial["delegate"]["nodes"] == 189 and partial["delegate"]["total_nodes"] == 190
    assert any("ARG_MAX" in e for e in partial["errors"])
    assert any("not supported by GPU delegate" in e for e in partial["errors"])


def test_parse_output_without_timings():
    parsed = android.parse_benchmark_output("INFO: STARTING!\nERROR: Failed to load model /data/local/tmp/x.tflite\n")
    with pytest.raises(android.AdbError, match="Failed to load model"):
        android.row_from_output(parsed, 4, False)


def test_commands():
    cmd = android.benchmark_model_command("/data/local/tmp/m.tflite", 4, True, 50, 5)
    assert cmd == ["/data/local/tmp/benchmark_model", "--graph=/data/local/tmp/m.tflite", "--num_threads=4",
                   "--use_gpu=true", "--num_runs=50", "--warmup_runs=5", "--min_secs=0", "--warmup_min_secs=0"]
    assert "--use_gpu=false" in android.benchmark_model_command("m", 1, False, 10, 1)
    assert android.adb_command("adb", "R58M", "push", "a", "b") == ["adb", "-s", "R58M", "push", "a", "b"]
    assert android.adb_command("adb", None, "devices") == ["adb", "devices"]


def test_adb_devices():
    text = "List of devices attached\nR58M123\tdevice\nemulator-5554\tunauthorized\n\n"
    devices = android.parse_adb_devices(text)
    assert devices == [("R58M123", "device"), ("emulator-5554", "unauthorized")]
    assert android.pick_device(devices) == "R58M123"
    with pytest.raises(android.AdbError, match="unauthorized"):
        android.pick_device(devices, "emulator-5554")
    with pytest.raises(android.AdbError, match="not attached.*R58M123"):
        android.pick_device(devices, "XYZ")
    with pytest.raises(android.AdbError, match="--serial"):
        android.pick_device([("a", "device"), ("b", "device")])
    with pytest.raises(android.AdbError, match="no Android device attached"):
        android.pick_device(android.parse_adb_devices("List of devices attached\n\n"))


def _fake_adb(folder: Path, devices: str, has_binary: bool = True) -> Path:
    """An ``adb`` that logs its arguments, lists ``devices`` and answers benchmark_model with a recorded log."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "adb"
    script.write_text(f"""#!/bin/sh
echo "$@" >> "{folder}/calls.txt"
case "$*" in
  *devices*) printf '%s' '{devices}' ;;
  *" shell ls "*) {'exit 0' if has_binary else 'echo "ls: /data/local/tmp/benchmark_model: No such file or directory"; exit 1'} ;;
  *--use_gpu=true*) cat "{LOGS / 'gpu.txt'}" ;;
  *benchmark_model*) cat "{LOGS / 'cpu_4threads.txt'}" ;;
  *) exit 0 ;;
esac
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


def test_adb_missing(tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no adb here
    assert main(["bench", str(tiny.small), "--adb"]) == 2
    err = capsys.readouterr().err
    assert "adb not found on PATH" in err and "platform-tools" in err


def test_adb_without_device(tiny, tmp_path, monkeypatch, capsys):
    bin_dir = _fake_adb(tmp_path / "bin", "List of devices attached\n\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert main(["bench", str(tiny.small), "--adb"]) == 2
    assert "no Android device attached" in capsys.readouterr().err
    assert main(["bench", str(tiny.small), "--adb", "--serial", "R58M"]) == 2
    assert "'R58M' is not attached; adb devices lists: none" in capsys.readouterr().err


def test_adb_missing_benchmark_binary(tiny, tmp_path, monkeypatch, capsys):
    bin_dir = _fake_adb(tmp_path / "bin", "List of devices attached\nR58M\tdevice\n", has_binary=False)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert main(["bench", str(tiny.small), "--adb"]) == 2
    err = capsys.readouterr().err
    assert android.BENCHMARK_MODEL_URL in err and "--benchmark-binary" in err
    assert main(["bench", str(tiny.small), "--adb", "--benchmark-binary", str(tmp_path / "missing")]) == 2
    assert "benchmark binary not found" in capsys.readouterr().err


def test_adb_end_to_end_with_fake_device(tiny, tmp_path, monkeypatch, capsys):
    bin_dir = _fake_adb(tmp_path / "bin", "List of devices attached\nR58M\tdevice\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    binary = tmp_path / "android_aarch64_benchmark_model"
    binary.write_bytes(b"\x7fELF")
    assert main(["bench", str(tiny.small), str(tiny.wide), "--adb", "--gpu", "--threads", "4",
                 "--benchmark-binary", str(binary), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["small", "wide"]
    r = rows[0]
    assert r["device"] == "R58M" and r["use_gpu"] and r["gpu_delegate_created"] and r["threads"] == 4
    assert r["mean_ms"] == 3.2628 and r["median_ms"] is None and r["params"] == tiny.params["small"]
    assert rows[1]["mean_ratio"] == 1.0  # both answered with the same recorded log
    calls = (bin_dir / "calls.txt").read_text().splitlines()
    assert calls[0] == "devices"
    assert f"-s R58M push {binary} /data/local/tmp/benchmark_model" in calls
    assert f"-s R58M push {tiny.small} /data/local/tmp/sinet_bench_0_small.tflite" in calls
    assert any("--graph=/data/local/tmp/sinet_bench_1_wide.tflite --num_threads=4 --use_gpu=true" in c
               for c in calls)


def test_evaluate_first_images(tiny):
    from sinet_tf.evaluate import evaluate

    assert evaluate(str(tiny.small), "synthetic:20", split="val", num_images=2)["n_images"] == 2
    with pytest.raises(ValueError, match="num_images"):
        evaluate(str(tiny.small), "synthetic:20", split="val", num_images=0)


def test_adb_shell_command_line_is_quoted(tmp_path):
    """The phone's shell gets one command line; split by a real sh it gives back exactly the
    arguments, and a ';' in a file name runs nothing."""
    import subprocess

    argv = ["/data/local/tmp/benchmark_model", "--graph=/data/local/tmp/my model;touch pwned.tflite", "--x=$HOME"]
    cmd = android.shell_command("adb", "R58M", *argv)
    assert cmd[:4] == ["adb", "-s", "R58M", "shell"] and len(cmd) == 5
    out = subprocess.run(["sh", "-c", f"set -- {cmd[-1]}; printf '%s\\n' \"$@\""], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == argv and not (tmp_path / "pwned.tflite").exists()
    assert android.device_file_name(3, "/x/my model;rm -rf.tflite") == "sinet_bench_3_my_model_rm_-rf.tflite"


def test_adb_with_unsafe_model_file_name(tiny, tmp_path, monkeypatch, capsys):
    bin_dir = _fake_adb(tmp_path / "bin", "List of devices attached\nR58M\tdevice\n")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    model = tmp_path / "my model;touch pwned.tflite"
    model.write_bytes(tiny.small.read_bytes())
    assert main(["bench", str(model), "--adb", "--json"]) == 0
    calls = (bin_dir / "calls.txt").read_text().splitlines()
    dest = "/data/local/tmp/sinet_bench_0_my_model_touch_pwned.tflite"
    assert f"-s R58M push {model} {dest}" in calls
    assert any(c.startswith(f"-s R58M shell /data/local/tmp/benchmark_model --graph={dest} ") for c in calls)
    assert not (tmp_path / "pwned.tflite").exists()


def test_input_range_that_does_not_fit_an_integer_input_is_refused(tiny, capsys):
    """A uint8 input of scale 1 holds pixels 0..255: --input-range 0,1 would feed every photo
    as two grey levels and score it silently wrong."""
    code = main(["bench", str(tiny.int8), "--input-range", "0,1", "--runs", "1", "--warmup", "0", "--no-memory"])
    err = capsys.readouterr().err
    assert code == 2 and "--input-range 0,1" in err and "uint8" in err and "Leave --input-range out" in err
    code = main(["bench", str(tiny.int8), "--input-range", "0,255", "--runs", "1", "--warmup", "0", "--no-memory",
                 "--json"])
    assert code == 0


def test_readers_share_one_parse_and_editors_get_their_own(tiny, monkeypatch):
    """read_model: the same bytes give the same parsed model (a file is parsed once for all
    its readers), another file another one, and a file over the kept bytes is not kept;
    parse_model always gives a fresh copy to edit."""
    import sinet_tf.runtime.model_file as model_file
    from sinet_tf.runtime.model_file import parse_model, read_model

    data = tiny.small.read_bytes()
    shared = read_model(data)
    assert read_model(bytes(bytearray(data))) is shared
    assert read_model(tiny.int8.read_bytes()) is not shared
    copy = parse_model(data)
    assert copy is not shared and copy is not parse_model(data)
    copy.subgraphs[0].tensors[0].name = b"edited"
    assert read_model(data).subgraphs[0].tensors[0].name != b"edited"
    with monkeypatch.context() as m:
        m.setattr(model_file, "_SHARED_MAX_BYTES", len(data) - 1)
        m.setattr(model_file, "_SHARED_MODELS", type(model_file._SHARED_MODELS)())  # as if nothing was read yet
        big = tiny.wide.read_bytes()
        assert len(big) > len(data) and read_model(big) is not read_model(big)
