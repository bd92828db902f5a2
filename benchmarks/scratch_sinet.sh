#!/usr/bin/env bash
# SINet from scratch with the authors' two-stage recipe, shortened, on humanseg290; prints the
# validation curve of both stages, the training throughput and the final `sinet evaluate` score.
#   bash benchmarks/scratch_sinet.sh [OUT_DIR] [EPOCHS_PER_STAGE] [extra recipe overrides...]
# e.g. `encoder.batch_size=18 full.batch_size=12`: humanseg290's 230 training photos make only
# 7 / 10 steps per epoch at the paper's batches (36 / 24), which a short schedule cannot afford.
set -euo pipefail
out=${1:-runs/scratch_sinet}
epochs=${2:-12}
shift 2 || shift $# || true
m1=$((epochs * 2 / 3)); m2=$((epochs * 5 / 6))
start=$(date +%s)
sinet train --config training/sinet.yaml --data ../shared/datasets/humanseg290 -o "$out" --verbose 2 \
  epochs="$epochs" "lr_milestones=[$m1,$m2]" "$@"
sinet evaluate "$out/full/best.keras" --data ../shared/datasets/humanseg290 --split val --json > "$out.eval.json"
echo "wall seconds: $(( $(date +%s) - start ))"
python - "$out" <<'PY'
import csv, json, sys
out = sys.argv[1]
n_train = sum(1 for line in open("../shared/datasets/humanseg290/train.txt") if line.strip())
for stage in ("encoder", "full"):
    rows = list(csv.DictReader(open(f"{out}/{stage}/history.csv")))
    curve = " ".join(f"{float(r['val_person_iou']):.3f}" for r in rows)
    timed = rows[1:] or rows  # the first epoch includes graph tracing
    rate = n_train * len(timed) / sum(float(r["seconds"]) for r in timed)
    print(f"{stage}: val person IoU by epoch (labels at the stage's output resolution): {curve}")
    print(f"{stage}: {rate:.1f} training images/s")
e = json.load(open(out + ".eval.json"))
print(f"final (full-size protocol): person IoU {e['person_iou']:.4f}, mIoU {e['miou']:.4f}, "
      f"boundary F {e['boundary_f']:.4f} on {e['n_images']} val images")
PY
