"""Why does a row fall short? Re-score finished runs under variants that never look at
test anomalies to choose anything; they only explain a number after the fact.

    python benchmarks/reproduce/diagnose.py RUN_DIR [RUN_DIR ...]

Prints AUROC (NND / LH) for: one plain view; 40 views; the original-context half and the
context half of those 40 views on their own; and the aggregate max instead of mean.
"""
from __future__ import annotations

import sys

import numpy as np

from con2.data import load_split
from con2.evaluate import evaluate_model
from con2.metrics import auroc
from con2.train import load_run


def main(runs: list[str]) -> int:
    for run in runs:
        cfg, model = load_run(run, device="auto")
        split = load_split(cfg)
        labels = split.test_labels.astype(int)
        plain, _ = evaluate_model(model, cfg, split, views=0, progress=False)
        full, scores = evaluate_model(model, cfg, split, views=40, progress=False)
        line = [f"{run}: plain view NND {plain['nnd']['auroc']:.3f} LH {plain['lh']['auroc']:.3f}",
                f"40 views NND {full['nnd']['auroc']:.3f} LH {full['lh']['auroc']:.3f}"]
        for s in ("nnd", "lh"):
            v = scores[f"{s}_views"]
            half = v.shape[1] // 2
            line.append(f"{s}: original half {auroc(labels, v[:, :half].mean(1)):.3f} "
                        f"context half {auroc(labels, v[:, half:].mean(1)):.3f} max {auroc(labels, v.max(1)):.3f}")
        print(" | ".join(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
