"""One switch picks the workload: ``SPECDEC_PROFILE`` = ``ci`` | ``cpu`` | ``full``.

* ``ci``   -- the smallest workload that still shows every result; what ``make test`` runs.
* ``cpu``  -- a bounded workload for ``make book`` on a laptop CPU (the default).
* ``full`` -- the four seed pairs, where a GPU and the weights are present.

Notebooks read the profile through :func:`get_profile`, never with their own if-chains.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Profile", "PROFILES", "get_profile"]


@dataclass(frozen=True)
class Profile:
    name: str
    n_prompts: int  # prompts per domain
    max_new_tokens: int  # tokens generated per prompt
    ks: tuple[int, ...]  # draft lengths to sweep
    n_samples: int  # Monte Carlo draws for statistical checks
    n_repeats: int  # repeats of each timing (the median is reported)
    synthetic_alphas: tuple[float, ...]  # dialled agreement levels for synthetic pairs
    device: str  # "cpu" or "cuda"


PROFILES = {
    "ci": Profile("ci", n_prompts=2, max_new_tokens=24, ks=(1, 2, 4, 8), n_samples=100_000,
                  n_repeats=3, synthetic_alphas=(0.3, 0.6, 0.9), device="cpu"),
    "cpu": Profile("cpu", n_prompts=6, max_new_tokens=64, ks=(1, 2, 4, 8), n_samples=200_000,
                   n_repeats=5, synthetic_alphas=(0.2, 0.4, 0.6, 0.8, 0.9), device="cpu"),
    "full": Profile("full", n_prompts=20, max_new_tokens=128, ks=(1, 2, 4, 8), n_samples=1_000_000,
                    n_repeats=10, synthetic_alphas=(0.2, 0.4, 0.6, 0.8, 0.9, 0.95), device="cuda"),
}


def get_profile(name: str | None = None) -> Profile:
    """The active profile: ``name`` if given, else ``$SPECDEC_PROFILE``, else ``cpu``."""
    name = name or os.environ.get("SPECDEC_PROFILE", "cpu")
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown SPECDEC_PROFILE {name!r}; choose one of {', '.join(PROFILES)}") from None
