"""Interleaved before/after timings of the native CPU losses (SupCon and the two-head Con2 loss,
forward + backward, D = 128, tau = 0.07) of two checkouts, each with its extension built in place:
each round runs one process per checkout, the minimum over rounds is reported.

    python benchmarks/ab_loss_cpu.py OLD_CHECKOUT NEW_CHECKOUT [ROUNDS]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

ONE_PROCESS = r"""
import json, time
import torch, torch.nn.functional as F
import con2._C
from con2.ops import native
out = {"so": con2._C.__file__}
for m in (256, 2048, 3000):  # 3000: past the single-block path (M <= ~2900)
    g = torch.Generator().manual_seed(m)
    z = F.normalize(torch.randn(m, 128, generator=g), dim=1)
    labels, ids = torch.randint(0, 4, (m,), generator=g), torch.arange(m) // 2
    def supcon():
        x = z.detach().requires_grad_(True); native.supcon_loss(x, labels, 0.07).backward()
    def con2():
        x, y = z.detach().requires_grad_(True), z.flip(1).detach().requires_grad_(True)
        native.con2_loss(x, y, labels, ids, 0.5, 0.07).backward()
    for name, f in (("supcon", supcon), ("con2", con2)):
        f()
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter(); f(); best = min(best, time.perf_counter() - t)
        out[f"{name} M={m}"] = best * 1e3
print(json.dumps(out))
"""


def main(old: str, new: str, rounds: int = 8) -> None:
    trees = {"old": os.path.abspath(old), "new": os.path.abspath(new)}
    best: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for name, root in trees.items():
            res = json.loads(subprocess.run([sys.executable, "-c", ONE_PROCESS], env={**os.environ, "PYTHONPATH": root},
                                            cwd="/", capture_output=True, text=True, check=True).stdout)
            if not res.pop("so").startswith(root):  # an installed con2 would shadow the checkout
                raise SystemExit(f"{root}: its con2._C was not the one loaded; build it in place first")
            for case, ms in res.items():
                best.setdefault(case, {})[name] = min(best.get(case, {}).get(name, float("inf")), ms)
    print(f"| case (D = 128) | {old} ms | {new} ms | new / old |\n|---|---|---|---|")
    for case, t in best.items():
        print(f"| {case} | {t['old']:.2f} | {t['new']:.2f} | {t['new'] / t['old']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:4]))
