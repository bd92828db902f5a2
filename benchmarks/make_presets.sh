#!/usr/bin/env bash
# Remake the presets bundled in sinet_tf/assets/presets/ from the official checkpoints
# (MIT, NAVER Corp.; ../shared/reference/official) and measure each on humanseg290 val:
#   bash benchmarks/make_presets.sh
# Writes sinet_tf/assets/presets/{sinet,extremec3net}_official/ and
# benchmarks/results/presets_humanseg290_val_<preset>.json (the `sinet evaluate --json` output
# recorded as the preset's metrics). Takes about a minute on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
OFFICIAL=${SINET_SHARED:-../shared}/reference/official
DATA=${SINET_SHARED:-../shared}/datasets/humanseg290
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

make_preset() {  # name architecture checkpoint title paper
    local name=$1 arch=$2 ckpt=$3 title=$4 paper=$5
    local out=sinet_tf/assets/presets/$name result=benchmarks/results/presets_humanseg290_val_$name.json
    sinet import-weights "$arch" "$OFFICIAL/$ckpt" -o "$TMP/$name.keras"
    local args=(--name "$name" --license MIT --license-file "$OFFICIAL/LICENSE.upstream"
                --description "$title with the weights its authors released with the paper (portrait segmentation)"
                --source-text "official $title checkpoint, NAVER Corp. ($paper; github.com/HYOJINPARK/ExtPortraitSeg)")
    sinet preset save "$TMP/$name.keras" "$out" "${args[@]}"
    sinet evaluate "$name" --data "$DATA" --split val --json > "$TMP/$name.json"
    mkdir -p benchmarks/results && cp "$TMP/$name.json" "$result"
    sinet preset save "$TMP/$name.keras" "$out" "${args[@]}" --metrics "$result"
}

make_preset sinet_official sinet sinet_official_state_dict.npz SINet "Park et al., WACV 2020"
make_preset extremec3net_official extremec3net extremec3_official_state_dict.npz ExtremeC3Net "Park et al., arXiv 2019"
sinet models --presets
