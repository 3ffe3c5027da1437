"""Copy what the GPU machine needs from ../shared/data into .carry/data (git-ignored), within
the device's 64 MiB working-tree limit. CIFAR-10 travels as one-class subset files made here:
the normal class's 5000 train images and the full test split.

    python benchmarks/reproduce/prepare_carry.py [--shared ../shared/data] [--cifar-classes 0 1 ...]
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default=str(ROOT / ".carry" / "data"))
    p.add_argument("--files", nargs="*", default=["breastmnist.npz", "breastmnist_64.npz", "pneumoniamnist.npz",
                                                  "br35h_64.npz"])
    p.add_argument("--cifar-classes", type=int, nargs="*", default=[])
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in a.files:
        shutil.copy2(Path(a.shared) / name, out / name)
    if a.cifar_classes:
        with np.load(Path(a.shared) / "cifar10.npz", allow_pickle=False) as z:
            tr_x, tr_y, te_x, te_y = z["train_images"], z["train_labels"], z["test_images"], z["test_labels"]
        for c in a.cifar_classes:
            keep = tr_y == c
            np.savez_compressed(out / f"cifar10_c{c}.npz", train_images=tr_x[keep], train_labels=tr_y[keep],
                                test_images=te_x, test_labels=te_y)
    total = sum(f.stat().st_size for f in out.iterdir())
    print(f"{out}: {total / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
