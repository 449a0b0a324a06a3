"""Time the official PyTorch model: run by ``deim_jax.tools.benchmark --official`` in the Python that
has torch, torchvision and the official tree's requirements (``--official_python``). Standalone:
it imports neither jax nor deim_jax.

    python official_forward.py --official=DIR --yaml=REL --state=STATE.npz --size=640 --batch=1
        --runs=50 --warmup=5 [--deploy] --out=RESULT.npz

``STATE.npz``: the official state dict (``convert.to_torch_state_dict``). ``RESULT.npz``: ``times``
(seconds per run), ``pred_logits``, ``pred_boxes`` and ``impl`` (torch version and threads).
"""

import argparse
import time

import numpy as np


def main():
    p = argparse.ArgumentParser()
    for name in ("official", "yaml", "state", "out"):
        p.add_argument(f"--{name}", required=True)
    for name in ("size", "batch", "runs", "warmup"):
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--deploy", action="store_true")
    a = p.parse_args()
    import torch

    import official_common  # beside this script

    model = official_common.load(a.official, a.yaml, a.state, [a.size, a.size]).model
    model.eval()
    if a.deploy:
        model = model.deploy()
    x = np.random.default_rng(0).random((a.batch, a.size, a.size, 3), np.float32)  # the benchmark's input
    x = torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))
    times = []
    with torch.no_grad():
        for i in range(a.warmup + a.runs):
            t0 = time.perf_counter()
            out = model(x)
            if i >= a.warmup:
                times.append(time.perf_counter() - t0)
    np.savez(a.out, times=np.array(times), pred_logits=out["pred_logits"].numpy(), pred_boxes=out["pred_boxes"].numpy(),
             impl=np.array(f"official PyTorch {torch.__version__} ({torch.get_num_threads()} threads)"))


if __name__ == "__main__":
    main()
