#!/usr/bin/env bash
# Recipe of the bundled text-to-image default model (src/nextscale/assets/default_t2i): a bitwise (BSQ) tokenizer,
# a tiny T5 text encoder built from the captions' words and an Infinity-style transformer, all made here with
# nextscale's own trainers on 20,000 square 32x32 scenes of nextscale.scenes (shapes and MNIST digits with captions;
# held-out combinations and prompts never in the training split). Nothing is downloaded.
#
#   bash recipes/default_t2i.sh [WORK_DIR]        # ~50 min on the shared 2-core CPU (see docs/default_t2i.md)
#
# Re-running resumes every stage (the trainers resume from their newest checkpoint; finished stages are skipped).
# Two processes of one thread each (torchrun, DDP on the CPU): on a busy 2-core machine that beats one process of
# two threads, whose OpenMP barriers wait for a descheduled thread.
set -euo pipefail
W=${1:-runs/default_t2i}
mkdir -p "$W"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
NPROC=${NPROC:-2}
RUN="torchrun --nproc_per_node=$NPROC -m nextscale"

# 1. data: 20,000 train-split scenes, square, 32x32 (the 0.06M table's first 5 scales x 4 px tokens), seed 0
python - "$W/scenes" <<'PY'
import os, sys
import numpy as np
from nextscale.scenes import SceneConfig, write_scene_dataset
if not os.path.isfile(os.path.join(sys.argv[1], "scenes.jsonl")):
    write_scene_dataset(sys.argv[1], 20000, np.random.default_rng(0), SceneConfig(aspect_ratios=(1.0,)), "train",
                        pn="0.06M", n_scales=5, patch_size=4)
PY

# 2. bitwise tokenizer: the `tiny` preset (4 px tokens) with 16 bits, L2 pixel loss + BSQ terms, no GAN; one
# process (the bitwise recipe calls the encoder and decoder directly, not through a DDP wrapper). 300 steps, then
# the same run resumed to 600 (the cosine schedule re-stretched): how the shipped tokenizer was made. Phase one
# ends by exporting W/bsq/tokenizer, phase two overwrites it.
TOK=(train-tokenizer --bitwise --data "$W/scenes" --preset tiny --z-channels 16 --n-scales 5 --run-dir "$W/bsq"
     --batch-size 24 --lr 1e-3 --warmup-steps 20 --lr-end 0.05 --disc-weight 0 --mid-reso 1.0 --ckpt-every 50
     --log-every 10 --no-progress)
[ -d "$W/bsq/tokenizer" ] || nextscale "${TOK[@]}" --steps 300 --eval-every 300 --sample-every 300
[ -f "$W/bsq/checkpoints/step_00000600.pt" ] || nextscale "${TOK[@]}" --steps 600 --eval-every 600 --sample-every 600

# 3 + 4. text encoder (`tiny`: a 2-layer T5, width 128, word vocabulary of the captions, seeded init, frozen;
# built by train-t2i and exported with the model) and the transformer (depth 4, width 128), square bucket only.
# 1,700 steps, then the same run resumed to 3,000 (the cosine schedule re-stretched): how the shipped model was made.
T2I=(train-t2i --data "$W/scenes" --tokenizer "$W/bsq/tokenizer" --text-encoder tiny --n-scales 5 --aspect-ratios 1
     --depth 4 --embed-dim 128 --num-heads 4 --text-maxlen 32 --batch-size 32 --lr 2e-3 --warmup-steps 20
     --lr-end 0.05 --weight-decay 0.05 --ema 0.99 --text-dropout 0.1 --loss-weights sqrt_area --no-cache
     --ckpt-every 50 --keep 3 --log-every 20 --sample-every -1 --no-progress --run-dir "$W/t2i")
[ -d "$W/t2i/pipeline" ] || $RUN "${T2I[@]}" --steps 1700
[ -f "$W/t2i/checkpoints/step_00003000.pt" ] || $RUN "${T2I[@]}" --steps 3000

# 5. the shipped directory: the export with the sampling defaults (docs/default_t2i.md) and no absolute paths
rm -rf "$W/model" && cp -r "$W/t2i/pipeline" "$W/model"
python - "$W/model" <<'PY'
import json, sys
path = sys.argv[1] + "/model_index.json"
index = json.load(open(path))
step = index["training"]["step"]
index["training"]["checkpoint"] = f"recipes/default_t2i.sh: runs/default_t2i/t2i/checkpoints/step_{step:08d}.pt"
index["sampling_defaults"] = {"guidance_scale": 3.0, "temperature": 1.0, "top_k": 0, "top_p": 0.0}
json.dump(index, open(path, "w"), indent=2)
PY
echo "model written to $W/model (copy it to src/nextscale/assets/default_t2i to ship it)"
