import os
from pathlib import Path

import pyro
import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if "PYROVAE_DATA" not in os.environ and SHARED.exists():
    os.environ["PYROVAE_DATA"] = str(SHARED)  # a checkout with ../shared beside it (as in CI)

# fit and evaluate choose CPU threads by timing (pyrovae.runtime.threads.Tuner): off here, so that two
# runs in one test compute with the same threads; tests/test_threads.py turns it on
os.environ["PYROVAE_TUNE_THREADS"] = "0"

#: the devices a device-parametrized test runs on: the CPU, and CUDA where there is a GPU
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """A test that takes ``device`` runs once per device of :data:`DEVICES`."""
    return request.param


def pytest_collection_modifyitems(items):
    """Mark each device-parametrized test by its device: ``pytest -m on_cuda`` runs the ones that
    exercise CUDA (benchmarks/gpu.sh's first stage), ``-m on_cpu`` their CPU twins."""
    for item in items:
        device = getattr(item, "callspec", None) and item.callspec.params.get("device")
        if device in ("cpu", "cuda"):
            item.add_marker(getattr(pytest.mark, f"on_{device}"))


@pytest.fixture(autouse=True)
def _fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def ppca():
    """A 2-latent probabilistic PCA on 5-pixel 'images' and 40 datapoints drawn from it, in float64."""
    from pyrovae.models import LinearGaussian

    torch.manual_seed(1)
    model = LinearGaussian((1, 1, 5), latent_dim=2, sigma=0.7, init_scale=0.8).double()
    with torch.no_grad():
        model.bias.copy_(torch.randn(5, dtype=torch.float64))
        z = torch.randn(40, 2, dtype=torch.float64)
        x = model.decode(z) + 0.7 * torch.randn(40, 1, 1, 5, dtype=torch.float64)
    return model, x
