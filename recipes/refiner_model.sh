#!/usr/bin/env bash
# A small refiner for the default model (sampling's refiner mode, docs/speed.md): the `mnist-small`
# transformer (depth 2) trained on the default model's own tokenizer and data, same recipe as
# recipes/default_model.sh. Usage: bash recipes/refiner_model.sh [WORKDIR]
set -euo pipefail
W=${1:-runs/refiner}
mkdir -p "$W"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
bash "$(dirname "$0")/mnist_data.sh" "$W"
[ -d "$W/cache" ] || nextscale tokenize --data "$W/mnist32" --tokenizer default --out "$W/cache" --mid-reso 1.0
nextscale train --cache "$W/cache" --preset mnist-small --run-dir "$W/var" --steps 1400 --batch-size 32 --lr 2e-3 --warmup-steps 50 --lr-end 0.05 --weight-decay 0.05 --grad-clip 2 --ema 0.995 --cond-drop 0.1 --ckpt-every 100 --keep 3 --log-every 50 --eval-every 700 --sample-every 700 --no-progress
nextscale export "$W/var" --out "$W/model"
python - "$W/model" <<'PY'
import json, sys
json.dump([str(d) for d in range(10)], open(sys.argv[1] + "/labels.json", "w"))
PY
echo "refiner written to $W/model"
