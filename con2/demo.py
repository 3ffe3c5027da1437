"""`con2 demo` / `make demo`: train on scikit-learn's digits (real data shipped with a
dependency) and show what training adds over the same encoder untrained."""
from __future__ import annotations

import time
from pathlib import Path

from .config import TrainConfig

# Sized for a 2-core CPU (under a minute, docs/TRAINING.md): native 8 px digits, a ResNet18 of width 8, 600 steps.
# Digit 8 is the hardest digit for raw nearest neighbours (raw-pixel AUROC 0.98; digit 0 is 1.0).
DEMO = dict(dataset="digits", context="invert", normal_class=["8"], image_size=8, epochs=200, batch_size=32,
            width=8, lr=2e-3, checkpoint_every=20, device="auto")
DEMO_VIEWS = 8


def run_demo(out: str = "runs/demo", epochs: int | None = None, normal_class: str | None = None,
             seed: int = 0) -> dict:
    # imported here so that `con2 demo --help` reads DEMO without loading the training stack
    import torch

    from .data import load_split
    from .evaluate import evaluate_model, evaluate_run, format_metrics
    from .run import build_model
    from .train import CHECKPOINT_FILE, train

    cfg = TrainConfig(**DEMO, out=out, seed=seed)
    if epochs is not None:  # 0 is refused by validate, not read as "the default"
        cfg.epochs = epochs
    if normal_class is not None:
        cfg.normal_class = [str(normal_class)]
    cfg.validate()
    t0 = time.perf_counter()
    split = load_split(cfg)  # training prints its summary
    torch.manual_seed(cfg.seed)
    untrained = build_model(cfg, split).eval()
    before, _ = evaluate_model(untrained, cfg, split, views=DEMO_VIEWS, progress=False)
    continuing = (Path(out) / CHECKPOINT_FILE).exists()  # an interrupted demo continues where it stopped
    train(cfg, split, resume=continuing, continue_with="the same con2 demo command")
    after = evaluate_run(out, views=DEMO_VIEWS, split=split, progress=False)
    print(f"\nDigits, normal digit {cfg.normal_class[0]}, context {cfg.context}, {cfg.epochs} epochs, "
          f"ResNet18 width {cfg.width}, {DEMO_VIEWS} test-time views")
    print(f"{'scorer':<8} {'AUROC untrained':>16} {'AUROC trained':>14}")
    for s in ("nnd", "lh"):
        print(f"{s:<8} {before[s]['auroc']:>16.4f} {after[s]['auroc']:>14.4f}")
    print(f"\n{format_metrics(after)}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; run folder {out}")
    return {"untrained": before, "trained": after}
