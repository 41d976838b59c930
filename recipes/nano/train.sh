#!/usr/bin/env bash
# The stablesr-nano recipe, end to end (CPU; each stage resumes with --run.resume latest if stopped).
# Usage: bash recipes/nano/train.sh [DATA=nano-data] [RUNS=runs/nano]
set -euo pipefail
DATA=${DATA:-nano-data}; RUNS=${RUNS:-runs/nano}; R=recipes/nano
[ -d "$DATA/train" ] || stablesr photos "$DATA"                       # 98 train + 10 val photos, sources.tsv
stablesr train vae --config $R/vae.yaml --data.hr_folders "[$DATA/train]" --run.output_dir "$RUNS/vae"
stablesr train prior --config $R/prior.yaml --vae "$RUNS/vae" --data.hr_folders "[$DATA/train]" \
    --run.output_dir "$RUNS/prior"
stablesr train stablesr --config $R/sr.yaml --model.pipeline "$RUNS/prior" --data.hr_folders "[$DATA/train]" \
    --run.output_dir "$RUNS/sr"
stablesr generate-cfw-data "$DATA/train" --model "$RUNS/sr" -o "$RUNS/cfw-data" --num-samples 600 --crop-size 128 \
    --steps 4 --seed 0
stablesr generate-cfw-data "$DATA/train" --model "$RUNS/sr" -o "$RUNS/cfw-data-bicubic" --num-samples 200 \
    --crop-size 128 --steps 4 --seed 1 --degradation bicubic
stablesr train cfw --config $R/cfw.yaml --pipeline "$RUNS/sr" --data.folders "[$RUNS/cfw-data, $RUNS/cfw-data-bicubic]" \
    --run.output_dir "$RUNS/cfw"
# 4c: 400 more clean (bicubic) triplets, then the same run continues to step 1200 on all three folders
stablesr generate-cfw-data "$DATA/train" --model "$RUNS/sr" -o "$RUNS/cfw-data-bicubic2" --num-samples 400 \
    --crop-size 128 --steps 4 --seed 2 --degradation bicubic
stablesr train cfw --config $R/cfw.yaml --pipeline "$RUNS/sr" \
    --data.folders "[$RUNS/cfw-data, $RUNS/cfw-data-bicubic, $RUNS/cfw-data-bicubic2]" --run.output_dir "$RUNS/cfw" \
    --run.resume latest --run.max_steps 1200 --run.checkpoint_every 100 --run.log_every 25
python $R/bundle.py "$RUNS/cfw"                                         # fp16 into src/stablesr/bundled/
python $R/evaluate.py "$DATA/val" "$RUNS/eval"                           # the metric table of the model card
