"""Training throughput (views/s) of the whole Con2 step: views, forward, loss, backward, AdamW.

    python benchmarks/train_throughput.py --dataset breast --data-root ../shared/data --image-size 32
    python benchmarks/train_throughput.py --dataset digits --width 8 --image-size 8 --batch-size 32
    python benchmarks/train_throughput.py ... --procs 3      # 3 such runs sharing the device

Times `--steps` steps after `--warmup` steps on the device con2 would train on. With --procs N,
N processes warm up, wait for each other, then time their steps together; the line reports the
sum of their rates (what N reproduction seeds sharing one GPU get).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from con2.config import TrainConfig
from con2.data import load_split
from con2.data.sources import make_batch_source
from con2.losses import con2_loss, view_labels
from con2.run import build_model, context_set, resolve_device, view_config


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--center-crop", type=int, default=None, help="after resizing to --image-size (paper: 256 -> 224)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--procs", type=int, default=1, help="processes sharing the device, timed together")
    p.add_argument("--barrier", default=None, help=argparse.SUPPRESS)  # set by --procs for its children
    a = p.parse_args(argv if argv is not None else sys.argv[1:])
    if a.procs > 1:
        return run_together(a, argv if argv is not None else sys.argv[1:])
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    cfg = TrainConfig(dataset=a.dataset, data_root=a.data_root, image_size=a.image_size,
                      center_crop=a.center_crop, width=a.width,
                      batch_size=a.batch_size, device=a.device, amp=a.amp,
                      normal_class=["8"] if a.dataset == "digits" else None).validate()
    device = resolve_device(cfg.device)
    split = load_split(cfg)
    model = build_model(cfg, split).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if a.compile else model
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
                if a.barrier:
                    wait_for_peers(Path(a.barrier))
                t0, views = time.perf_counter(), 0
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.amp and device.type == "cuda"):
                zc, zs = forward(v)
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
    print(f"{a.dataset} {a.center_crop or a.image_size or split.image_size}px width {a.width} batch {n} "
          f"({4 * n} views/step) on {device}: {views / dt:.1f} views/s ({dt / a.steps:.2f} s/step, "
          f"{torch.get_num_threads()} threads, cudnn.benchmark {a.cudnn_benchmark}, compile {a.compile})")


def wait_for_peers(barrier: Path) -> None:
    """Mark this process ready, then wait until every process of the group is."""
    (barrier / f"ready.{os.getpid()}").touch()
    n = int((barrier / "n").read_text())
    while len(list(barrier.glob("ready.*"))) < n:
        time.sleep(0.05)


def run_together(a, argv: list[str]) -> None:
    # the same options without --procs ("--procs N" or "--procs=N")
    i = argv.index("--procs") if "--procs" in argv else None
    child = argv[:i] + argv[i + 2:] if i is not None else [x for x in argv if not x.startswith("--procs=")]
    with tempfile.TemporaryDirectory() as barrier:
        (Path(barrier) / "n").write_text(str(a.procs))
        procs = [subprocess.Popen([sys.executable, __file__, *child, "--barrier", barrier], stdout=subprocess.PIPE,
                                  text=True) for _ in range(a.procs)]
        lines = [p.communicate()[0].strip().splitlines()[-1] for p in procs]
    rates = [float(line.split(": ")[1].split(" views/s")[0]) for line in lines]
    for line in lines:
        print(f"  {line}")
    print(f"{a.procs} processes together: {sum(rates):.1f} views/s ({', '.join(f'{r:.0f}' for r in rates)})")


if __name__ == "__main__":
    main()
