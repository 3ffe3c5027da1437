"""Training throughput (views/s) of the whole Con2 step: views, forward, loss, backward, AdamW.

    python benchmarks/train_throughput.py --dataset breast --data-root ../shared/data --image-size 32
    python benchmarks/train_throughput.py --dataset digits --width 8 --image-size 8 --batch-size 32

Times `--steps` steps after `--warmup` steps on the device con2 would train on.
"""
from __future__ import annotations

import argparse
import time

import torch

from con2.config import TrainConfig
from con2.data import load_split
from con2.data.sources import make_batch_source
from con2.losses import con2_loss, view_labels
from con2.train import build_model, context_set, resolve_device, view_config


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    cfg = TrainConfig(dataset=a.dataset, data_root=a.data_root, image_size=a.image_size, width=a.width,
                      batch_size=a.batch_size, device=a.device, amp=a.amp,
                      normal_class=["8"] if a.dataset == "digits" else None).validate()
    device = resolve_device(cfg.device)
    split = load_split(cfg)
    model = build_model(cfg, split).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-3)
    source = make_batch_source("tensor", split, context_set(cfg), view_config(cfg, split), cfg.batch_size, 0,
                               device, channels_last=device.type == "cuda")
    n = source.batch_size
    ctx, ids = view_labels(n, 2, device=device)
    done, views, t0 = 0, 0, None
    epoch = 0
    while done < a.warmup + a.steps:
        for _, v in source.batches_from(epoch):
            if done == a.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0, views = time.perf_counter(), 0
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.amp and device.type == "cuda"):
                zc, zs = model(v)
            loss = con2_loss(zc.float(), zs.float(), ctx, ids, 0.5)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            views += v.shape[0]
            if done >= a.warmup + a.steps:
                break
        epoch += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print(f"{a.dataset} {split.image_size if not a.image_size else a.image_size}px width {a.width} batch {n} "
          f"({4 * n} views/step) on {device}: {views / dt:.1f} views/s ({dt / a.steps:.2f} s/step, "
          f"{torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
