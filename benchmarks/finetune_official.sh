#!/usr/bin/env bash
# Fine-tune the official SINet checkpoint with training/sinet_finetune_kd.yaml (humanseg290
# train.txt + generated portraits, distilled from MediaPipe's selfie model) and score
# val.txt with `sinet evaluate` (full-size protocol), timing the whole run.
#   bash benchmarks/finetune_official.sh [OUT_DIR] [extra recipe overrides...]
# Leaves OUT_DIR/finetune/best.keras. RECIPE=training/sinet_finetune.yaml runs the plain
# fine-tune (no teacher) instead.
set -euo pipefail
out=${1:-runs/finetune_official}; shift || true
recipe=${RECIPE:-training/sinet_finetune_kd.yaml}
official=../shared/reference/official/sinet_official_state_dict.npz
teacher=$(python - "$recipe" "$@" <<'PY'
import sys
from sinet_tf.train import load_recipe
print(load_recipe(sys.argv[1], overrides=sys.argv[2:]).stages[0].teacher or "")
PY
)
if [[ "$teacher" == *.tflite && ! -f "$teacher" ]]; then
  echo "the recipe's teacher $teacher is missing: training/teachers/README.md says where it comes from" >&2
  exit 2
fi
mkdir -p "$(dirname "$out")"
start=$(date +%s)
sinet evaluate sinet --weights "$official" --data ../shared/datasets/humanseg290 --split val --json > "$out.before.json"
sinet train --config "$recipe" -o "$out" --verbose 2 "$@"
sinet evaluate "$out/finetune/best.keras" --data ../shared/datasets/humanseg290 --split val --json > "$out.after.json"
end=$(date +%s)
echo "wall seconds: $((end - start))"
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
b, a = json.load(open(out + ".before.json")), json.load(open(out + ".after.json"))
print(f"val person IoU: official {b['person_iou']:.4f} -> fine-tuned {a['person_iou']:.4f} "
      f"(mIoU {a['miou']:.4f}, boundary F {a['boundary_f']:.4f}, {a['n_images']} images)")
PY
