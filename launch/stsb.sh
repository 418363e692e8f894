#!/usr/bin/env bash
# The main job, end to end, on STS-B with the default model (all-MiniLM-L6-v2 + seq_bn):
# set up, validate the data, train, evaluate on the test split, export verified ONNX bundles
# (fp32, and int8 for CPUs), evaluate the int8 bundle on test, score one pair and then the whole
# test file with it (as `toolkit score` does for files of millions of rows), and WiSE-FT:
# interpolate zero-shot <-> fine-tuned, α chosen on dev (test reported), saved as a run.
# Usage: bash launch/stsb.sh [RUN_DIR]   (STS-B folder: $STSB, default ../shared/data/stsb)
#   SMOKE=1   every stage on the first lines of each split (1 epoch on 64 training pairs; 200 dev and
#             200 test pairs, copied to RUN_DIR-data/), in a few minutes
#   VENV=DIR BASE=1   set up and run in DIR with the base install only (see .ci/setup)
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
export HF_HUB_OFFLINE=1
data=${STSB:-../shared/data/stsb}
run=${1:-runs/stsb-seqbn}
tk=${VENV:-.venv}/bin/toolkit
small=() alphas=0:1:0.05
if [ "${SMOKE:-0}" = 1 ]; then
    mkdir -p "$run-data"
    for split in train:64 dev:200 test:200; do head -n "${split#*:}" "$data/sts-${split%:*}.csv" > "$run-data/sts-${split%:*}.csv"; done
    data=$run-data small=(--epochs 1 --max-length 64) alphas=0:1:0.5
fi
$tk check "$data/sts-train.csv"
$tk train --data "stsb:$data" --out "$run" --overwrite "${small[@]}"
$tk eval "$run" --data "$data/sts-test.csv" --json "$run/test_metrics.json" --plot "$run/test_pred_vs_gold.png"
$tk export "$run" --onnx --out "$run-onnx" --overwrite
$tk export "$run" --onnx --quantize int8 --out "$run-onnx-int8" --overwrite
$tk eval "$run-onnx-int8" --data "$data/sts-test.csv" --json "$run-onnx-int8/test_metrics.json"
$tk predict "$run-onnx-int8" "A plane is taking off." "An air plane is taking off."
$tk score "$run-onnx-int8" "$data/sts-test.csv" -o "$run-test-scores.parquet" --restart --quiet
$tk wise "$run" --id "$data/sts-dev.csv" --test "$data/sts-test.csv" --alphas "$alphas" --choose --out "$run-wise" \
    --overwrite
