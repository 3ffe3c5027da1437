"""Which view pipelines this installation can run (for `con2 info`)."""
from __future__ import annotations


def available_pipelines() -> dict[str, str]:
    import torch
    import torchvision

    from .. import ops

    def how(device: str) -> str:
        if ops.native_views(device):
            return "native simclr_views kernel"
        return "torch.compile of the torch ops" if device == "cuda" else "eager torch ops, chunked"

    cuda = torch.cuda.is_available()
    out = {
        "tensor": "views made on the training device: CPU " + how("cpu")
                  + (f"; CUDA {how('cuda')} (CON2_CUDA_VIEWS=native|compiled)" if cuda else ""),
        "workers": f"torchvision {torchvision.__version__} DataLoader worker processes (PIL)",
    }
    from . import dali

    out["dali"] = dali.status()
    return out
