import os
from pathlib import Path

import pytest
import torch

# Tiny models on 2-core machines: one thread is ~10x faster and far steadier.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
EG3D_FIXTURE = SHARED / "fixtures" / "eg3d_reference"


@pytest.fixture(scope="session")
def eg3d_fixture_dir():
    if not (EG3D_FIXTURE / "state_dict.safetensors").exists():
        pytest.skip(f"EG3D reference fixture not found at {EG3D_FIXTURE} (it lives in ../shared beside the checkout)")
    return EG3D_FIXTURE
