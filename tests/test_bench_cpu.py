"""What every benchmark records about its machine (sinet_tf.bench.host.cpu_info, load
average; the --adb rows' device CPU) and the per-op profile of an fp16 file, whose weights
reach their ops through DEQUANTIZE (sinet_tf.bench.op_profile)."""

import json
import os
import stat

import keras
import numpy as np
import pytest

from sinet_tf.bench.host import ISA_FLAGS, benchmark, cpu_info, cpu_label, parse_cpuinfo

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480C
flags\t\t: fpu vme sse2 avx2 avx512f avx512bw avx512_vnni avx_vnni amx_int8 amx_tile

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480C
flags\t\t: fpu vme sse2 avx2 avx512f avx512bw avx512_vnni avx_vnni amx_int8 amx_tile
"""
AVX2_ONLY = "model name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx avx2 fma\n"
ARM = """processor\t: 0
BogoMIPS\t: 38.40
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp i8mm
CPU implementer\t: 0x41
Hardware\t: Qualcomm Technologies, Inc SM8650
"""


def test_cpuinfo_is_parsed_for_x86_and_arm(tmp_path):
    assert parse_cpuinfo(X86) == ("Intel(R) Xeon(R) Platinum 8480C",
                                  set("fpu vme sse2 avx2 avx512f avx512bw avx512_vnni avx_vnni amx_int8 amx_tile".split()))
    for text, model, isa in [(X86, "Intel(R) Xeon(R) Platinum 8480C",
                              ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"]),
                             (AVX2_ONLY, "AMD EPYC 7B12", ["avx2"]),
                             (ARM, "Qualcomm Technologies, Inc SM8650", ["asimddp", "i8mm", "asimdhp"])]:
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        info = cpu_info(path)
        assert info["model"] == model and info["isa"] == isa and info["cores"] == os.cpu_count()
    assert cpu_label({"model": "AMD EPYC 7B12", "isa": ["avx2"]}) == "AMD EPYC 7B12 (avx2)"
    assert cpu_label({"model": "x", "isa": []}) == "x (none of avx2/avx512f/avx512_vnni/avx_vnni)"
    missing = cpu_info(tmp_path / "nowhere")  # macOS, Windows: no /proc/cpuinfo
    assert missing["isa"] is None and missing["model"] and cpu_label(missing).endswith("(flags unknown)")
    assert set(ISA_FLAGS) >= {"avx2", "avx512f", "avx512_vnni", "avx_vnni"}


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    from sinet_tf.export.quantize import convert

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), batch_size=1)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2DTranspose(8, 2, strides=2)(x)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(x))
    d = tmp_path_factory.mktemp("cpu")
    (d / "fp32.tflite").write_bytes(convert(model, "none"))
    (d / "fp16.tflite").write_bytes(convert(model, "fp16"))
    return d


def test_benchmark_rows_record_the_cpu_and_the_load(small_files):
    rows = benchmark([small_files / "fp32.tflite"], threads=(1,), warmup=1, runs=3, memory=False)
    (row,) = rows
    assert row["cpu"] == cpu_info()
    assert row["load_average"] is None or (len(row["load_average"]) == 3
                                           and all(v >= 0 for v in row["load_average"]))
    json.dumps(rows)  # what --json prints


def test_bench_table_caption_names_the_cpu(small_files):
    from rich.console import Console

    from sinet_tf.bench import bench_table

    rows = benchmark([small_files / "fp32.tflite"], threads=(1,), warmup=1, runs=2, memory=False)
    console = Console(width=200, record=True)
    console.print(bench_table(rows))
    assert f"CPU: {cpu_label(cpu_info())}" in console.export_text()


def test_fp16_ops_are_profiled_with_their_dequantized_weights(small_files):
    from sinet_tf.bench.op_profile import op_profile
    from sinet_tf.runtime.model_file import read_contents

    data = (small_files / "fp16.tflite").read_bytes()
    ops = read_contents(data).ops
    assert ops.count("DEQUANTIZE") >= 3  # the weights, stored as float16
    rows = op_profile(data, runs=2, warmup=1, inner=1)
    assert [r["op"] for r in rows] == ops
    for r in rows:
        if r["op"] == "DEQUANTIZE":
            assert r.get("folded_at_load") and r["median_ms"] == 0.0
        else:
            assert r["median_ms"] > 0 and r["delegated"] and not r.get("folded_at_load")


def test_adb_rows_record_the_device_cpu(small_files, tmp_path, monkeypatch, capsys):
    from sinet_tf.cli import main

    logs = os.path.join(os.path.dirname(__file__), "data", "benchmark_model")  # recorded benchmark_model output
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "cpuinfo").write_text(ARM)
    script = bin_dir / "adb"
    script.write_text(f"""#!/bin/sh
case "$*" in
  *devices*) printf 'List of devices attached\\nR58M\\tdevice\\n' ;;
  *"cat /proc/cpuinfo"*) cat "{tmp_path / 'cpuinfo'}" ;;
  *"getprop ro.soc.model"*) echo SM8650 ;;
  *benchmark_model*--graph*) cat "{logs}/cpu_4threads.txt" ;;
  *) exit 0 ;;
esac
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    binary = tmp_path / "benchmark_model"
    binary.write_bytes(b"\x7fELF")
    assert main(["bench", str(small_files / "fp32.tflite"), "--adb", "--threads", "4",
                 "--benchmark-binary", str(binary), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["cpu"]["model"] == "SM8650" and row["cpu"]["isa"] == ["asimddp", "i8mm", "asimdhp"]
    assert np.isfinite(row["mean_ms"])
