import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# torch threads that spin-wait make tiny-model tests many times slower on a busy machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch


def pytest_configure(config):
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct as an nnsight TransformersModel (loaded once)."""
    import confounded_patching as cp

    try:
        return cp.models.smollm2()
    except cp.ModelFileNotFound as err:  # pragma: no cover - CI installs it
        pytest.skip(f"embedded model not installed: {err}")
