"""The arithmetic of speculative decoding: tokens per round, speedup, the best draft length.

With a draft that proposes ``K`` tokens per round and a target that keeps each one with
probability ``alpha`` independently (the i.i.d. model of Leviathan et al. 2023, "Fast
Inference from Transformers via Speculative Decoding"), one round emits

    E(alpha, K) = (1 - alpha^(K+1)) / (1 - alpha)            (K + 1 when alpha = 1)

tokens on average: the accepted prefix plus the one token the target always adds.  A round
costs ``K`` draft steps and one target pass, i.e. ``c K + 1`` target-step equivalents when a
draft step costs ``c`` times a target step, so the expected speedup over plain decoding is

    S(alpha, c, K) = (1 - alpha^(K+1)) / ((1 - alpha) (c K + 1)).

Chapter 3 derives ``E`` and corrects a common mistake about ``K -> infinity``; chapter 4
compares ``S`` with measurement.  Every function accepts numpy arrays for ``alpha`` and ``c``
(and ``k`` where it makes sense) and broadcasts them like numpy does.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "expected_tokens",
    "speedup",
    "best_k",
    "speedup_limit",
    "simulate_tokens_per_round",
]


def _check_alpha(alpha) -> np.ndarray:
    a = np.asarray(alpha, dtype=float)
    if not np.all((a >= 0) & (a <= 1)):  # also catches NaN
        raise ValueError(f"alpha is an acceptance probability and must lie in [0, 1], got {alpha!r}")
    return a


def _check_c(c) -> np.ndarray:
    c_arr = np.asarray(c, dtype=float)
    if not np.all((c_arr >= 0) & np.isfinite(c_arr)):
        raise ValueError(f"c is the draft/target cost ratio per token and must be finite and >= 0, got {c!r}")
    return c_arr


def _check_k(k, name: str = "k") -> np.ndarray:
    k_arr = np.asarray(k)
    if k_arr.dtype.kind not in "iu":
        raise ValueError(f"{name} is a number of drafted tokens and must be an integer >= 0, got {k!r}")
    if not np.all(k_arr >= 0):
        raise ValueError(f"{name} must be >= 0 (0 means no speculation), got {k!r}")
    return k_arr.astype(np.int64)


def _scalar_or_array(x: np.ndarray):
    return x.item() if x.ndim == 0 else x


def _expected_tokens(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    # (1 - a^(k+1)) / (1 - a) = expm1((k+1) L) / expm1(L) with L = log(a): accurate next to
    # alpha = 1, where the textbook form cancels catastrophically.  alpha = 0 gives L = -inf
    # and the ratio (-1)/(-1) = 1; alpha = 1 is the limit k + 1.
    with np.errstate(divide="ignore", invalid="ignore"):
        log_a = np.log(a)
        ratio = np.expm1((k + 1) * log_a) / np.expm1(log_a)
    return np.where(a == 1, (k + 1).astype(float), ratio)


def expected_tokens(alpha, k):
    """Expected tokens emitted per round, ``(1 - alpha^(k+1)) / (1 - alpha)``.

    ``alpha`` in [0, 1] (the alpha -> 1 limit is ``k + 1``), ``k`` an integer >= 0 (``k = 0``:
    one token per round, plain decoding).  Scalars give a float, arrays broadcast.
    """
    a, kk = _check_alpha(alpha), _check_k(k)
    return _scalar_or_array(_expected_tokens(a, kk))


def speedup(alpha, c, k):
    """Expected speedup over plain decoding, ``(1 - alpha^(k+1)) / ((1 - alpha)(c k + 1))``.

    ``c`` >= 0 is the cost of one draft step relative to one target step; ``k = 0`` gives 1.
    """
    a, cc, kk = _check_alpha(alpha), _check_c(c), _check_k(k)
    return _scalar_or_array(_expected_tokens(a, kk) / (cc * kk + 1))


def best_k(alpha, c, k_max: int = 128):
    """The integer ``K`` in ``[0, k_max]`` that maximises :func:`speedup` (the smallest on ties).

    For ``c > 0`` and ``alpha < 1`` the speedup rises, peaks and then falls towards 0, so a
    finite best ``K`` exists; if it lies beyond ``k_max`` this raises ``ValueError`` instead of
    returning a wrong answer.  For ``c = 0`` or ``alpha = 1`` drafting more never hurts (the
    speedup never turns down), so the answer is ``k_max`` itself -- the largest ``K`` allowed
    (``0`` when ``alpha = 0``, where every ``K`` gives the same speedup).
    """
    a, cc = _check_alpha(alpha), _check_c(c)
    if not (isinstance(k_max, (int, np.integer)) and not isinstance(k_max, bool) and k_max >= 0):
        raise ValueError(f"k_max must be an integer >= 0, got {k_max!r}")
    a, cc = np.broadcast_arrays(a, cc)
    ks = np.arange(k_max + 2)  # one beyond k_max, to see whether the peak lies further out
    s = _expected_tokens(a[..., None], ks) / (cc[..., None] * ks + 1)
    best = np.argmax(s[..., : k_max + 1], axis=-1)
    finite_optimum = (cc > 0) & (a < 1)
    # The speedup is unimodal in K (a concave numerator over a linear denominator), so if it
    # still rises from k_max to k_max + 1 the peak lies beyond k_max.
    beyond = finite_optimum & (s[..., k_max + 1] > s[..., k_max])
    if np.any(beyond):
        raise ValueError(
            f"the best K exceeds k_max={k_max} for alpha={a[beyond].ravel()[:3]}, c={cc[beyond].ravel()[:3]}; "
            "pass a larger k_max"
        )
    return _scalar_or_array(best)


def speedup_limit(alpha, c):
    """The speedup as ``K -> infinity``.

    For ``c > 0`` (and ``alpha < 1``) it is 0: the cost ``c K + 1`` grows without bound while the
    tokens per round stay below ``1 / (1 - alpha)``.  For ``c = 0`` it is ``1 / (1 - alpha)``
    (infinite at ``alpha = 1``).  At ``alpha = 1`` and ``c > 0`` it is ``1 / c``.
    """
    a, cc = _check_alpha(alpha), _check_c(c)
    with np.errstate(divide="ignore"):
        free_draft = 1.0 / (1.0 - a)
        perfect_draft = 1.0 / cc
    out = np.where(cc == 0, free_draft, np.where(a == 1, perfect_draft, 0.0))
    return _scalar_or_array(out)


def simulate_tokens_per_round(alpha: float, k: int, n_rounds: int, rng=None) -> np.ndarray:
    """Simulate ``n_rounds`` rounds with i.i.d. acceptances; returns tokens emitted per round.

    Each of the ``k`` drafted tokens is kept with probability ``alpha`` independently until the
    first rejection; the round then emits the accepted prefix plus one token from the target.
    ``rng`` is a ``numpy.random.Generator`` or a seed.  The mean estimates
    :func:`expected_tokens`.
    """
    a = _check_alpha(alpha)
    kk = _check_k(k)
    if a.ndim or kk.ndim:
        raise ValueError("simulate_tokens_per_round takes one alpha and one k; loop over several")
    if not (isinstance(n_rounds, (int, np.integer)) and not isinstance(n_rounds, bool) and n_rounds >= 1):
        raise ValueError(f"n_rounds must be an integer >= 1, got {n_rounds!r}")
    rng = np.random.default_rng(rng)
    accepted = rng.random((int(n_rounds), int(kk))) < float(a)
    prefix = np.cumprod(accepted, axis=1).sum(axis=1)
    return prefix + 1
