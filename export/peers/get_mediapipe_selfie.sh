#!/usr/bin/env bash
# Fetch MediaPipe's selfie segmentation model, the production peer sinet bench compares
# SINet with, out of the mediapipe 0.10.21 wheel (Apache-2.0). Needs network and pip;
# run it yourself (nothing in sinet-tf downloads at run time).
#
#   bash export/peers/get_mediapipe_selfie.sh [DIR]      # default DIR: export/peers/models
#
# Writes DIR/selfie_segmentation.tflite (256x256) and DIR/selfie_segmentation_landscape.tflite
# (144x256) and prints their sha256. The wheel is always the CPython 3.11 manylinux x86_64
# one, whatever machine runs this, so the files (platform-independent) are the same bytes
# everywhere.
set -euo pipefail
dir=${1:-export/peers/models}
python=${PYTHON:-python3}
expected_sha256=9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c   # selfie_segmentation.tflite
mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" -m pip download mediapipe==0.10.21 --no-deps --only-binary=:all: \
  --python-version 3.11 --platform manylinux_2_28_x86_64 -d "$tmp"
wheel=$(ls "$tmp"/mediapipe-0.10.21-*.whl)
"$python" - "$wheel" "$dir" "$expected_sha256" <<'PY'
import hashlib, sys, zipfile
from pathlib import Path

wheel, out, expected = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
with zipfile.ZipFile(wheel) as z:
    for name in ("selfie_segmentation.tflite", "selfie_segmentation_landscape.tflite"):
        data = z.read(f"mediapipe/modules/selfie_segmentation/{name}")
        (out / name).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        print(f"{digest}  {out / name} ({len(data):,} bytes)")
        if name == "selfie_segmentation.tflite" and digest != expected:
            print(f"warning: expected sha256 {expected} (the file sinet-tf's numbers were measured on)", file=sys.stderr)
PY
echo "benchmark it next to a SINet export:  sinet bench sinet_fp32.tflite $dir/selfie_segmentation.tflite"
