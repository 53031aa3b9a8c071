import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The tests run tiny models, for which a second thread costs more than it gains.
torch.set_num_threads(1)

from .helpers import V, tiny_llama  # noqa: E402  (after the environment above: it imports specdec)


@pytest.fixture(scope="session")
def tiny_target():
    return tiny_llama(seed=0)


@pytest.fixture(scope="session")
def tiny_drafts(tiny_target):
    """Two draft models of the tiny target: ``same``, an identical copy of it (alpha = 1), and
    ``other``, an unrelated one-layer model."""
    same = tiny_llama(seed=0)
    other = tiny_llama(seed=1, n_layers=1)
    return {"same": same, "other": other}


@pytest.fixture(scope="session")
def small_vocab_pair():
    """A target and a one-layer draft over a vocabulary of ``V`` tokens, small enough for the
    exact distribution of a short continuation to be enumerated."""
    return tiny_llama(vocab=V, seed=4, init=0.3), tiny_llama(vocab=V, seed=5, n_layers=1, init=0.3)
