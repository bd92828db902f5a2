#!/usr/bin/env bash
# Fine-tune the official SINet checkpoint on humanseg290 train.txt and score val.txt with
# `sinet evaluate` (full-size protocol), timing the whole run.
#   bash benchmarks/finetune_official.sh [OUT_DIR] [extra recipe overrides...]
set -euo pipefail
out=${1:-runs/finetune_official}; shift || true
start=$(date +%s)
sinet evaluate sinet --weights ../shared/reference/official/sinet_official_state_dict.npz \
  --data ../shared/datasets/humanseg290 --split val --json > "$out.before.json"
sinet train --config training/sinet_finetune.yaml -o "$out" --verbose 2 "$@"
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
