"""What the training tests share: a run folder's newest checkpoint, and a run killed with SIGKILL part-way."""

import os
import random
import subprocess
import sys
import time

from nextscale.checkpoint import CheckpointFolder


def final(run):
    """(step, state) of ``run``'s newest checkpoint."""
    return CheckpointFolder(os.path.join(run, "checkpoints")).latest()


def kill9_after_first_checkpoint(argv, run, jitter_s: float, timeout_s: float = 300):
    """Start ``nextscale argv`` in a subprocess (one thread), wait for its first checkpoint in ``run``, wait a random
    0..jitter_s more (so the kill lands at varying points of a step) and SIGKILL it: no handler runs. Returns
    (return code, the checkpoint steps left behind)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "nextscale"] + argv, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)  # fmt: skip
    ck = CheckpointFolder(os.path.join(run, "checkpoints"))
    t0 = time.time()
    while not ck.steps() and p.poll() is None and time.time() - t0 < timeout_s:
        time.sleep(0.01)
    time.sleep(random.Random().uniform(0.0, jitter_s))
    p.kill()
    p.wait()
    return p.returncode, ck.steps()
