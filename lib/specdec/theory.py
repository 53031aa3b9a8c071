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

Real drafts are not i.i.d.: a learned head is right more often at its first draft than at its
fourth, and on a CPU the verify pass of ``n`` tokens costs ``v(n)`` decode steps, not one.
The second half of this module plans with the measured figures instead:

* :func:`chain_tokens` -- expected tokens per round of a chain from acceptance *by position*
  (conditional: position ``j`` is accepted given ``1 .. j-1`` were);
* :func:`verify_cost_at` -- ``v(n)`` between the sizes where it was measured;
* :func:`predicted_speedup` -- tokens per round over the round's cost ``v(n) + c * depth``;
* :func:`plan_shape`, :func:`best_tree` -- the tree of ``n`` nodes that collects the most
  expected tokens from acceptance by rank, and its predicted speedup for each ``n``;
* :func:`plan_drafting` -- the chain's best ``K`` and the best tree, from the same figures:
  what the loop drafts, chosen by the law.
"""

from __future__ import annotations

import numpy as np

from .checks import require_int

__all__ = [
    "expected_tokens",
    "speedup",
    "best_k",
    "speedup_limit",
    "simulate_tokens_per_round",
    "chain_tokens",
    "verify_cost_at",
    "predicted_speedup",
    "plan_shape",
    "best_tree",
    "plan_drafting",
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
    require_int("k_max", k_max, 0)
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
    require_int("n_rounds", n_rounds, 1)
    rng = np.random.default_rng(rng)
    accepted = rng.random((int(n_rounds), int(kk))) < float(a)
    prefix = np.cumprod(accepted, axis=1).sum(axis=1)
    return prefix + 1


# -- planning with measured figures ------------------------------------------------------------


def chain_tokens(position_acceptance, k: int) -> float:
    """Expected tokens per round of a chain of ``k`` drafts: ``1 + sum_j prod_{i<=j} a_i``,
    where ``a_i = position_acceptance[i-1]`` is the chance draft ``i`` is accepted given drafts
    ``1 .. i-1`` were (positions past the list reuse its last entry). With every ``a_i = alpha``
    this is :func:`expected_tokens`."""
    a = [float(x) for x in position_acceptance]
    k = int(_check_k(k))
    if k and not a:
        raise ValueError("need the acceptance of at least one draft position")
    _check_alpha(a)
    total, alive = 1.0, 1.0
    for j in range(k):
        alive *= a[min(j, len(a) - 1)]
        total += alive
    return total


def verify_cost_at(v: dict, n) -> float:
    """``v(n)``, the cost of scoring ``n`` tokens in one pass in decode steps, from a table
    ``{n: v}`` measured at some sizes: linear between them, the nearest measured end outside
    (``v(1) = 1`` by definition when 1 is not in the table)."""
    table = {1: 1.0, **{int(m): float(x) for m, x in v.items()}}
    xs = sorted(table)
    return float(np.interp(n, xs, [table[x] for x in xs]))


def predicted_speedup(tokens_per_round, verify_cost, c, depth):
    """The law with measured costs: tokens per round over the round's cost in decode steps,
    ``verify_cost`` (``v`` of the tokens scored) plus ``depth`` draft steps of ``c`` each. With
    ``verify_cost = 1`` and ``depth = K`` it is :func:`speedup`'s denominator ``c K + 1``."""
    cost = np.asarray(verify_cost, dtype=float) + _check_c(c) * np.asarray(depth, dtype=float)
    return _scalar_or_array(np.asarray(tokens_per_round, dtype=float) / cost)


def plan_shape(rank_acceptance, n_nodes: int) -> tuple[list[tuple[int, ...]], float]:
    """The static shape of ``n_nodes`` nodes that maximises the expected number of accepted
    tokens, for a drafter whose rank-``r`` guess at depth ``d`` is the target's token with
    probability ``rank_acceptance[d-1][r]`` (given that its parent was; the ranks exclude each
    other). A node is on the accepted path with the product of these along its rank path, so
    the best tree of ``n`` nodes holds the ``n`` most probable paths; they are taken greedily,
    each next the most probable child slot of a node already in the tree (Sequoia's dynamic
    programme solves the same problem when the probabilities do not factor this way).
    Returns ``(shape, expected accepted tokens)``; rows past the last are the last row."""
    import heapq

    table = [list(map(float, row)) for row in rank_acceptance]
    if not table or not all(table) or n_nodes < 1:
        raise ValueError("need a non-empty table of acceptance by depth and rank, and n_nodes >= 1")

    def a(depth, rank):
        row = table[min(depth, len(table)) - 1]
        return row[rank] if rank < len(row) else 0.0

    shape, total = [], 0.0
    heap = [(-a(1, 0), (0,))]
    while heap and len(shape) < n_nodes:
        neg, path = heapq.heappop(heap)
        prob = -neg
        if prob <= 0:
            break
        shape.append(path)
        total += prob
        # its first child, and its next younger sibling
        heapq.heappush(heap, (-prob * a(len(path) + 1, 0), path + (0,)))
        parent_prob = prob / a(len(path), path[-1]) if a(len(path), path[-1]) > 0 else 0.0
        heapq.heappush(heap, (-parent_prob * a(len(path), path[-1] + 1), path[:-1] + (path[-1] + 1,)))
    return shape, total


def best_tree(rank_acceptance, verify_cost, draft_cost: float, sizes=range(1, 65)):
    """The tree size whose expected tokens per unit of time is largest: for each ``n`` of
    ``sizes``, the best shape (:func:`plan_shape`), its expected tokens per round
    (accepted + 1) and its cost in target decode steps: ``verify_cost(n + 1)`` (the measured
    cost of scoring ``n + 1`` tokens, in decode steps) plus ``draft_cost`` per level drafted.
    Returns a DataFrame, one row per size, with ``tokens_per_step``; the best row maximises it."""
    import pandas as pd

    rows = []
    for n in sizes:
        shape, accepted = plan_shape(rank_acceptance, n)
        depth = max((len(r) for r in shape), default=0)
        cost = float(verify_cost(len(shape) + 1)) + draft_cost * depth
        rows.append(dict(n_nodes=len(shape), depth=depth, expected_tokens=accepted + 1, cost=cost,
                         tokens_per_step=predicted_speedup(accepted + 1, verify_cost(len(shape) + 1), draft_cost,
                                                           depth), shape=shape))
    return pd.DataFrame(rows).drop_duplicates("n_nodes")


def plan_drafting(rank_acceptance, v: dict, c: float, k_max: int = 8, max_nodes: int = 32) -> dict:
    """What to draft, by the law: the chain length ``K <= k_max`` and the tree of at most
    ``max_nodes`` nodes whose predicted speedup is largest, from a drafter's acceptance by
    depth and rank (``rank_acceptance[d][r]``: its rank-``r`` guess at depth ``d+1`` is the
    target's token given its parent was; column 0 is the chain's acceptance by position), its
    cost ``c`` per drafted level and this machine's verify cost table ``v`` (``{n: v(n)}``).

    A depth no chain reached in the measurement (NaN) counts as never accepted.

    Returns ``{"chain": {k, expected_tokens, cost, speedup}, "tree": {n_nodes, depth, shape,
    expected_tokens, cost, speedup}, "chains": DataFrame, "trees": DataFrame}``."""
    import pandas as pd

    rank_acceptance = [[0.0 if x != x else float(x) for x in row] for row in rank_acceptance]

    firsts = [row[0] for row in rank_acceptance]
    chains = pd.DataFrame([dict(k=k, expected_tokens=chain_tokens(firsts, k), cost=verify_cost_at(v, k + 1) + c * k)
                           for k in range(0, k_max + 1)])
    chains["speedup"] = chains["expected_tokens"] / chains["cost"]
    trees = best_tree(rank_acceptance, lambda n: verify_cost_at(v, n), c, sizes=range(1, max_nodes + 1))
    trees = trees.rename(columns={"tokens_per_step": "speedup"}).reset_index(drop=True)
    chain = chains.loc[chains["speedup"].idxmax()].to_dict()
    tree = trees.loc[trees["speedup"].idxmax()].to_dict()
    chain["k"] = int(chain["k"])
    tree.update(n_nodes=int(tree["n_nodes"]), depth=int(tree["depth"]), shape=[tuple(r) for r in tree["shape"]])
    return dict(chain=chain, tree=tree, chains=chains, trees=trees)
