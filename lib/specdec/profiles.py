"""One switch picks the workload: ``SPECDEC_PROFILE`` = ``ci`` | ``cpu`` | ``full``.

* ``ci``   -- the smallest workload that still shows every result; what ``make test`` runs.
* ``cpu``  -- a bounded workload for ``make book`` on a laptop CPU (the default).
* ``full`` -- the four seed pairs, where a GPU and the weights are present.

A profile sizes the chapters' own experiments (prompts, tokens, samples, repeats) and holds two
benchmark sweeps (:class:`Sweep`): ``sweep``, the profile's whole benchmark, which is recorded
once into a committed results file (``make results`` for ``cpu``) and which the analysis
chapters read; and ``live``, the bounded run a chapter makes on the reader's machine while the
book builds. Notebooks read the profile through :func:`get_profile`, never with their own
if-chains; :func:`specdec.bench.plan_for_profile` turns a sweep into a plan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Sweep", "HeadBudget", "ServingBudget", "Profile", "PROFILES", "get_profile"]

_OFFLINE = ("smollm2_ngram", "smollm2_nf4", "smollm2_early", "synthetic-eps0.05", "synthetic-eps0.2")
_SEED = ("gpt2_dev", "tinyllama_llama3", "phi3_llama3", "llama3_self")
# Gemma-3-270M's pairs (installed on request, `make gemma`; skipped where it is not): the offline
# stand-in for the seed's cross-vocabulary pairs, and the drafters the seed's Llama-3 target has
_GEMMA = ("gemma3_ngram", "smollm2_gemma3_tli", "smollm2_gemma3_string", "gemma3_nf4")


@dataclass(frozen=True)
class Sweep:
    """The size of one benchmark sweep: which pairs, how many prompts per domain, how many new
    tokens, which draft lengths and temperatures, and how often each configuration is repeated
    (round-robin with its baseline, see :func:`specdec.bench.run_sweep`)."""

    pairs: tuple[str, ...]
    n_prompts: int
    max_new_tokens: int
    ks: tuple[int, ...]
    temperatures: tuple[float, ...] = (0.0,)
    n_repeats: int = 3


@dataclass(frozen=True)
class HeadBudget:
    """What chapter 10 does live: train a head on ``n_texts`` of the committed training answers
    for at most ``minutes``, and run the book's committed head on ``n_per_domain`` prompts per
    domain for ``max_new_tokens`` tokens."""

    n_texts: int
    minutes: float
    n_per_domain: int
    max_new_tokens: int


@dataclass(frozen=True)
class ServingBudget:
    """What chapter 12 runs live: ``n_per_domain`` benchmark prompts per domain, ``max_new_tokens``
    each, through our batched loop and one short load of a local vLLM server."""

    n_per_domain: int
    max_new_tokens: int


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
    sweep: Sweep  # the profile's whole benchmark (recorded once, committed for `cpu`)
    live: Sweep  # the bounded benchmark a chapter runs while the book builds
    head: HeadBudget = HeadBudget(n_texts=48, minutes=1.0, n_per_domain=1, max_new_tokens=24)
    serving: ServingBudget = ServingBudget(n_per_domain=1, max_new_tokens=16)


# The live run of a chapter: small enough that a 2-core laptop builds the page in minutes; the
# ci profile's whole sweep is this too.
_LIVE = Sweep(pairs=("smollm2_ngram", "synthetic-eps0.05", "synthetic-eps0.2"), n_prompts=1, max_new_tokens=16,
              ks=(1, 4))

PROFILES = {
    "ci": Profile("ci", n_prompts=2, max_new_tokens=24, ks=(1, 2, 4, 8), n_samples=100_000,
                  n_repeats=3, synthetic_alphas=(0.3, 0.6, 0.9), device="cpu", sweep=_LIVE, live=_LIVE),
    "cpu": Profile("cpu", n_prompts=6, max_new_tokens=64, ks=(1, 2, 4, 8), n_samples=200_000,
                   n_repeats=5, synthetic_alphas=(0.2, 0.4, 0.6, 0.8, 0.9), device="cpu",
                   sweep=Sweep(pairs=_OFFLINE + _GEMMA, n_prompts=6, max_new_tokens=64, ks=(1, 2, 4, 8),
                               temperatures=(0.0, 1.0)),
                   live=_LIVE, head=HeadBudget(n_texts=48, minutes=1.0, n_per_domain=1, max_new_tokens=32),
                   serving=ServingBudget(n_per_domain=1, max_new_tokens=32)),
    "full": Profile("full", n_prompts=20, max_new_tokens=128, ks=(1, 2, 4, 8), n_samples=1_000_000,
                    n_repeats=10, synthetic_alphas=(0.2, 0.4, 0.6, 0.8, 0.9, 0.95), device="cuda",
                    sweep=Sweep(pairs=_SEED + _OFFLINE[:3], n_prompts=20, max_new_tokens=128, ks=(1, 2, 4, 8),
                                temperatures=(0.0, 1.0)),
                    live=Sweep(pairs=("smollm2_ngram", "gpt2_dev"), n_prompts=1, max_new_tokens=64, ks=(1, 4)),
                    head=HeadBudget(n_texts=1600, minutes=10.0, n_per_domain=4, max_new_tokens=128),
                    serving=ServingBudget(n_per_domain=4, max_new_tokens=64)),
}


def get_profile(name: str | None = None) -> Profile:
    """The active profile: ``name`` if given, else ``$SPECDEC_PROFILE``, else ``cpu``."""
    name = name or os.environ.get("SPECDEC_PROFILE", "cpu")
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown SPECDEC_PROFILE {name!r}; choose one of {', '.join(PROFILES)}") from None
