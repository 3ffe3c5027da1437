"""Peak memory and time of an image folder held in memory vs decoded on access (FolderImages).

    .venv/bin/python benchmarks/folder_memory.py [--n 6000] [--size 128] [--root DIR]

Writes a synthetic folder of N RGB PNGs (good/ and bad/, 4:1) unless --root holds one, then runs,
each in a fresh process: load the split, fingerprint its training images, build an S_NND + S_LH
bank over the train part and score the test part (a width-4 ResNet18, 2 test-time views, CPU),
once with the folder decoded into memory and once with CON2_MEMORY_BUDGET_MB=0 (decoded on access).
Prints one row per mode: seconds per phase and the process's peak resident memory.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import torch
from con2.config import TrainConfig
from con2.data import ContextSet, ViewConfig, load_split
from con2.model import Con2Model
from con2.run import data_fingerprint
from con2.scoring import Scorer

root, size = sys.argv[1], int(sys.argv[2])
t = {}
t0 = time.perf_counter()
split = load_split(TrainConfig(dataset="folder", data_root=root, normal_class=["good"]))
t["load_s"] = time.perf_counter() - t0
t0 = time.perf_counter()
data_fingerprint(split)
t["fingerprint_s"] = time.perf_counter() - t0
torch.manual_seed(0)
model = Con2Model(in_channels=3, width=4, image_size=size).eval()
t0 = time.perf_counter()
scores = Scorer(model, ViewConfig(size=size), ContextSet("flip"), split.train, views=2, batch_size=256).score(split.test)
t["score_s"] = time.perf_counter() - t0
t.update(in_memory=split.in_memory, n_train=len(split.train), n_test=len(split.test),
         peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
         nnd_sum=float(scores["nnd"].sum()), lh_sum=float(scores["lh"].sum()))
print(json.dumps(t))
"""


def write_folder(root: Path, n: int, size: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        cls = "bad" if i % 5 == 0 else "good"
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / cls / f"{i:06d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--root", default=None, help="an existing folder with good/ and bad/ (else one is written)")
    args = ap.parse_args()
    tmp = None
    root = Path(args.root) if args.root else None
    if root is None:
        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name)
        write_folder(root, args.n, args.size)
    decoded_mib = args.n * args.size * args.size * 3 / 2**20
    print(f"folder {root}: {args.n} RGB PNGs at {args.size} px, {decoded_mib:.0f} MiB decoded")
    rows = {}
    for mode, budget in (("held in memory", None), ("decoded on access", "0")):
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        env.pop("CON2_MEMORY_BUDGET_MB", None)
        if budget is not None:
            env["CON2_MEMORY_BUDGET_MB"] = budget
        out = subprocess.run([sys.executable, "-c", CHILD, str(root), str(args.size)], env=env,
                             capture_output=True, text=True, check=True)
        rows[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        r = rows[mode]
        print(f"{mode:>18}: load {r['load_s']:.1f} s, fingerprint {r['fingerprint_s']:.1f} s, "
              f"bank + score {r['score_s']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB "
              f"(in_memory={r['in_memory']}, {r['n_train']} train, {r['n_test']} test)")
    a, b = rows.values()
    same = abs(a["nnd_sum"] - b["nnd_sum"]) < 1e-6 * abs(a["nnd_sum"]) and abs(a["lh_sum"] - b["lh_sum"]) < 1e-6 * abs(a["lh_sum"])
    print(f"scores equal in both modes: {same}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
