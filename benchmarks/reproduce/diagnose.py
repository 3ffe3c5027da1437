"""Why does a row fall short? Re-score finished runs under variants that never look at
test anomalies to choose anything; they only explain a number after the fact.

    python benchmarks/reproduce/diagnose.py RUN_DIR [RUN_DIR ...]
    python benchmarks/reproduce/diagnose.py --raw-pixels ROW [ROW ...] --data-root DIR

Prints AUROC (NND / LH) for: one plain view; 40 views; the original-context half and the
context half of those 40 views on their own; the aggregate max instead of mean; and 40 views
with CSI's evaluation crops (54 % of the area). --raw-pixels scores a row's data with no network
at all (the L2-normalised pixels are the representation): what the test-time views do by themselves.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[2]))  # con2, where it is not installed (the GPU machine)
from con2.data import load_split  # noqa: E402
from con2.evaluate import evaluate_model  # noqa: E402
from con2.metrics import auroc  # noqa: E402
from con2.run import load_run  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rows import ROWS, row_config  # noqa: E402

CSI_CROP_SCALE = (0.54, 0.54)


class RawPixels(torch.nn.Module):
    """An 'encoder' whose representation is the view's pixels."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # the scorers read the device from a parameter

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).float()


def report(name: str, model, cfg, split) -> str:
    labels = split.test_labels.astype(int)
    plain, _ = evaluate_model(model, cfg, split, views=0, progress=False)
    full, scores = evaluate_model(model, cfg, split, views=40, progress=False)
    csi, _ = evaluate_model(model, cfg, split, views=40, progress=False, crop_scale=CSI_CROP_SCALE)
    line = [f"{name}: plain view NND {plain['nnd']['auroc']:.3f} LH {plain['lh']['auroc']:.3f}",
            f"40 views NND {full['nnd']['auroc']:.3f} LH {full['lh']['auroc']:.3f}",
            f"40 CSI views NND {csi['nnd']['auroc']:.3f} LH {csi['lh']['auroc']:.3f}"]
    for s in ("nnd", "lh"):
        v = scores[f"{s}_views"]
        half = v.shape[1] // 2
        line.append(f"{s}: original half {auroc(labels, v[:, :half].mean(1)):.3f} "
                    f"context half {auroc(labels, v[:, half:].mean(1)):.3f} max {auroc(labels, v.max(1)):.3f}")
    return " | ".join(line)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="+", help="run directories, or row names with --raw-pixels")
    p.add_argument("--raw-pixels", action="store_true")
    p.add_argument("--data-root", default=None)
    a = p.parse_args(argv)
    for target in a.targets:
        if a.raw_pixels:
            cfg = row_config(ROWS[target], a.data_root, device="cpu")
            split = load_split(cfg)
            model = RawPixels(split.channels)
        else:
            cfg, model = load_run(target, device="auto")
            split = load_split(cfg)
        print(report(target, model, cfg, split), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
