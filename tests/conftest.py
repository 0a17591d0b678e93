import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def tiny():
    from posttrain.models import load_model_and_tokenizer

    return load_model_and_tokenizer("tiny-llama:d=32,l=2,h=2", seed=0)


@pytest.fixture
def one_thread():
    """Tiny-model tests run on one torch thread: their matmuls are too small for a second thread to
    pay for its synchronisation (and CI shares its cores). Files opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance with 2 CPUs for one test module (Ray rollout workers)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
