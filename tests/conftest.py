import os
from pathlib import Path

import pytest
import torch

# ../shared/data beside the checkout (or CON2_SHARED_DATA); tests skip when absent.
SHARED_DATA = Path(os.environ.get("CON2_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Every test starts from one torch seed: its random inputs do not depend on which tests ran
    before it (-k, --lf, a test added earlier in the file)."""
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
