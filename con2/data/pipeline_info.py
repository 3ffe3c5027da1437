"""Which view pipelines this installation can run (for `con2 info`)."""
from __future__ import annotations


def available_pipelines() -> dict[str, str]:
    import torch
    import torchvision

    cuda = torch.cuda.is_available()
    out = {
        "tensor": "batched torch ops on the training device"
                  + (" (torch.compile on CUDA)" if cuda else " (CPU here: eager, chunked)"),
        "workers": f"torchvision {torchvision.__version__} DataLoader worker processes (PIL)",
    }
    from . import dali

    out["dali"] = dali.status()
    return out
