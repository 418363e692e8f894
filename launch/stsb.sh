#!/usr/bin/env bash
# The main job, end to end, on STS-B with the default model (all-MiniLM-L6-v2 + seq_bn):
# set up, validate the data, train, evaluate on the test split, export verified ONNX bundles
# (fp32, and int8 for CPUs), evaluate the int8 bundle on test, score one pair with it, then
# WiSE-FT: interpolate zero-shot <-> fine-tuned, α chosen on dev (test reported), saved as a run.
# Usage: bash launch/stsb.sh [RUN_DIR]   (STS-B folder: $STSB, default ../shared/data/stsb)
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
export HF_HUB_OFFLINE=1
data=${STSB:-../shared/data/stsb}
run=${1:-runs/stsb-seqbn}
tk=.venv/bin/toolkit
$tk check "$data/sts-train.csv"
$tk train --data "stsb:$data" --out "$run" --overwrite
$tk eval "$run" --data "$data/sts-test.csv" --json "$run/test_metrics.json" --plot "$run/test_pred_vs_gold.png"
$tk export "$run" --onnx --out "$run-onnx" --overwrite
$tk export "$run" --onnx --quantize int8 --out "$run-onnx-int8" --overwrite
$tk eval "$run-onnx-int8" --data "$data/sts-test.csv" --json "$run-onnx-int8/test_metrics.json"
$tk predict "$run-onnx-int8" "A plane is taking off." "An air plane is taking off."
$tk wise "$run" --id "$data/sts-dev.csv" --test "$data/sts-test.csv" --alphas 0:1:0.25 --choose --out "$run-wise" --overwrite
