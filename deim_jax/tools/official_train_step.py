"""Time the official DEIM train step: run by ``benchmarks/train_step.py --official`` (and the accelerator
suite) in the Python that has torch, torchvision and the official tree's requirements. Standalone: it
imports neither jax nor deim_jax.

    python official_train_step.py --official=DIR --yaml=REL --state=STATE.npz --batch=BATCH.npz
        --runs=5 --warmup=2 [--amp] [--device=cpu|cuda] --out=RESULT.npz

One step is the official ``train_one_epoch`` body: model (train mode, denoising) -> the YAML's
criterion -> backward -> ``clip_grad_norm_`` (the YAML's ``clip_max_norm``) -> the YAML's optimizer
(AdamW with its parameter groups) -> EMA update; ``--amp`` takes its autocast + GradScaler branch.
``STATE.npz``: the official state dict (``convert.to_torch_state_dict``); ``BATCH.npz``: ``image``
[B, H, W, 3] in [0, 1], ``boxes`` [B, M, 4] normalized cxcywh, ``labels`` [B, M], ``mask`` [B, M].
``RESULT.npz``: ``times`` (seconds per step), ``loss`` (first step's total) and ``impl``.
"""

import argparse
import time

import numpy as np


def main():
    p = argparse.ArgumentParser()
    for name in ("official", "yaml", "state", "batch", "out"):
        p.add_argument(f"--{name}", required=True)
    for name in ("runs", "warmup"):
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    import torch

    import official_common  # beside this script

    batch = np.load(a.batch)
    cfg = official_common.load(a.official, a.yaml, a.state, batch["image"].shape[1:3])
    device = torch.device(a.device)
    model = cfg.model
    model.to(device).train()
    criterion = cfg.criterion.to(device).train()
    optimizer, ema = cfg.optimizer, cfg.ema
    max_norm = float(cfg.yaml_cfg.get("clip_max_norm", 0.0))
    scaler = torch.amp.GradScaler(a.device) if a.amp else None

    images = torch.from_numpy(np.ascontiguousarray(np.transpose(batch["image"], (0, 3, 1, 2)))).to(device)
    targets = [{"boxes": torch.from_numpy(batch["boxes"][i][batch["mask"][i]]).to(device),
                "labels": torch.from_numpy(batch["labels"][i][batch["mask"][i]].astype(np.int64)).to(device)}
               for i in range(len(batch["image"]))]

    def step(i):
        metas = dict(epoch=0, step=i, global_step=i, epoch_step=1000)
        if scaler is not None:
            with torch.autocast(device_type=a.device, cache_enabled=True):
                outputs = model(images, targets=targets)
            with torch.autocast(device_type=a.device, enabled=False):
                loss = sum(criterion(outputs, targets, **metas).values())
            scaler.scale(loss).backward()
            if max_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
        else:
            loss = sum(criterion(model(images, targets=targets), targets, **metas).values())
            optimizer.zero_grad()
            loss.backward()
            if max_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
        if ema is not None:
            ema.update(model)
        return float(loss)  # synchronizes, as the official loop's logging does

    times, first_loss = [], None
    for i in range(a.warmup + a.runs):
        t0 = time.perf_counter()
        loss = step(i)
        if a.device == "cuda":
            torch.cuda.synchronize()
        first_loss = loss if first_loss is None else first_loss
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    np.savez(a.out, times=np.array(times), loss=np.array(first_loss),
             impl=np.array(f"official PyTorch {torch.__version__} ({torch.get_num_threads()} threads"
                           f"{', AMP' if a.amp else ''}, {a.device})"))


if __name__ == "__main__":
    main()
