#!/usr/bin/env bash
# Host benchmark of the official SINet checkpoint exported as float32 and full-integer int8,
# next to MediaPipe's selfie segmentation model when its path is given
# (export/peers/get_mediapipe_selfie.sh fetches it), at 2 and 1 threads, with person IoU
# on humanseg290 val. Run from the repository root with ../shared beside it:
#
#   bash benchmarks/bench_host.sh [SELFIE.tflite] [WORK_DIR]      # WORK_DIR default runs/bench_host
#
# Writes WORK_DIR/sinet_{fp32,int8}.tflite (+ export reports), benchmarks/results/bench_host.json,
# bench_host.png (latency) and bench_host_scatter.png (latency vs IoU), and prints the table.
# SINET overrides the command (default: python -m sinet_tf.cli, i.e. this checkout).
set -euo pipefail
selfie=${1:-}
work=${2:-runs/bench_host}
sinet=${SINET:-python -m sinet_tf.cli}
weights=../shared/reference/official/sinet_official_state_dict.npz
data=../shared/datasets/humanseg290
results=benchmarks/results
mkdir -p "$work" "$results"

$sinet export sinet --weights "$weights" -o "$work/sinet_fp32.tflite" \
  --calibration-data "$data" --num-calibration 20
# int8 may keep an op the GPU delegate refuses; the CPU benchmark does not care (exit 3 otherwise)
$sinet export sinet --weights "$weights" -o "$work/sinet_int8.tflite" --quantize int8 \
  --calibration-data "$data" --allow-cpu-ops

models=("$work/sinet_fp32.tflite" "$work/sinet_int8.tflite")
if [ -n "$selfie" ]; then
  models+=("$selfie")
else
  echo "note: no selfie model given; benchmarking SINet only (bash export/peers/get_mediapipe_selfie.sh fetches the peer)"
fi
$sinet bench "${models[@]}" --threads 2,1 --warmup 10 --runs 100 --data "$data" --split val \
  --plot "$results/bench_host.png" --json > "$results/bench_host.json"
python - "$results/bench_host.json" <<'PY'
import json, sys
from rich.console import Console
from sinet_tf.bench import bench_table

Console(width=130).print(bench_table(json.load(open(sys.argv[1]))))
PY
echo "wrote $results/bench_host.json, $results/bench_host.png, $results/bench_host_scatter.png"
