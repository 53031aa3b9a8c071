"""The speedup law and its pieces (specdec.theory), checked at known points and by brute force."""

import math

import numpy as np
import pytest

from specdec import theory
from specdec.theory import best_k, expected_tokens, simulate_tokens_per_round, speedup, speedup_limit


def geometric_sum(alpha, k):
    """1 + alpha + ... + alpha^k, written out term by term."""
    return sum(alpha**j for j in range(k + 1))


def geometric_sum_closed(alpha, k):
    """The closed form, for the brute-force search (alpha < 1)."""
    return (1 - alpha ** (k + 1)) / (1 - alpha)


# ---------------------------------------------------------------- expected_tokens

@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 0.8, 0.9, 0.99])
@pytest.mark.parametrize("k", [0, 1, 2, 4, 8, 30])
def test_expected_tokens_is_the_geometric_sum(alpha, k):
    assert expected_tokens(alpha, k) == pytest.approx(geometric_sum(alpha, k), rel=1e-12)


def test_expected_tokens_known_points():
    assert expected_tokens(0.0, 7) == 1.0  # nothing accepted: only the target's own token
    assert expected_tokens(0.5, 1) == pytest.approx(1.5)
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)
    assert expected_tokens(0.9, 8) == pytest.approx((1 - 0.9**9) / 0.1)
    assert expected_tokens(0.3, 0) == 1.0


@pytest.mark.parametrize("k", [0, 1, 5, 64])
def test_expected_tokens_alpha_one_limit(k):
    assert expected_tokens(1.0, k) == k + 1
    # approaching the limit is continuous and free of cancellation
    for eps in (1e-3, 1e-8, 1e-13):
        assert expected_tokens(1.0 - eps, k) == pytest.approx(geometric_sum(1.0 - eps, k), rel=1e-9)
        assert expected_tokens(1.0 - eps, k) <= k + 1


def test_expected_tokens_vectorised():
    alphas = np.array([0.0, 0.5, 0.9, 1.0])
    ks = np.array([[1], [4]])
    got = expected_tokens(alphas, ks)
    assert got.shape == (2, 4)
    want = np.array([[geometric_sum(a, int(k)) for a in alphas] for k in ks[:, 0]])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert isinstance(expected_tokens(0.5, 3), float)


# ---------------------------------------------------------------- speedup

def test_speedup_known_points():
    assert speedup(0.9, 0.1, 0) == 1.0  # no drafting: no speedup, no loss
    assert speedup(0.0, 0.2, 0) == 1.0
    assert speedup(0.5, 0.0, 1) == pytest.approx(1.5)
    assert speedup(0.8, 0.25, 4) == pytest.approx((1 - 0.8**5) / (0.2 * 2.0))
    assert speedup(0.9, 0.1, 8) == pytest.approx((1 - 0.9**9) / (0.1 * 1.8))
    assert speedup(1.0, 0.5, 4) == pytest.approx(5 / 3)
    # a useless draft that costs something makes decoding slower
    assert speedup(0.0, 0.1, 3) == pytest.approx(1 / 1.3)
    assert speedup(0.0, 0.1, 3) < 1


def test_speedup_equals_expected_tokens_over_cost():
    rng = np.random.default_rng(0)
    alpha, c, k = rng.uniform(0, 1, 50), rng.uniform(0, 1, 50), rng.integers(0, 20, 50)
    np.testing.assert_allclose(speedup(alpha, c, k), expected_tokens(alpha, k) / (c * k + 1), rtol=1e-12)


# ---------------------------------------------------------------- best_k

@pytest.mark.parametrize("alpha", [0.2, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("c", [0.01, 0.05, 0.1, 0.3, 1.0, 2.0])
def test_best_k_matches_brute_force(alpha, c):
    ks = list(range(0, 2000))
    values = [geometric_sum_closed(alpha, k) / (c * k + 1) for k in ks]
    want = ks[int(np.argmax(values))]
    got = best_k(alpha, c, k_max=1000)
    assert got == want
    assert isinstance(got, int)


def test_best_k_finite_and_shrinking_with_cost():
    ks = [best_k(0.9, c) for c in (0.01, 0.05, 0.1, 0.2, 0.5)]
    assert all(0 < k < 128 for k in ks)
    assert ks == sorted(ks, reverse=True) and ks[0] > ks[-1]
    # speculation that cannot pay for itself: K = 0 is best
    assert best_k(0.1, 1.0) == 0
    assert best_k(0.0, 0.5) == 0


def test_best_k_vectorised_matches_scalar():
    alphas = np.array([0.5, 0.7, 0.9])
    cs = np.array([[0.05], [0.2]])
    grid = best_k(alphas, cs)
    assert grid.shape == (2, 3)
    for i, c in enumerate(cs[:, 0]):
        for j, a in enumerate(alphas):
            assert grid[i, j] == best_k(a, c)


def test_best_k_without_finite_optimum_returns_k_max():
    assert best_k(0.9, 0.0, k_max=50) == 50  # a free draft: longer is always better
    assert best_k(1.0, 0.5, k_max=50) == 50  # a perfect draft: the same
    assert best_k(0.0, 0.0, k_max=50) == 0  # all K tie: the smallest


def test_best_k_refuses_when_the_optimum_is_beyond_k_max():
    with pytest.raises(ValueError, match="larger k_max"):
        best_k(0.999, 0.001, k_max=16)


# ---------------------------------------------------------------- speedup_limit

def test_speedup_limit_values():
    assert speedup_limit(0.9, 0.0) == pytest.approx(10.0)
    assert speedup_limit(0.5, 0.0) == pytest.approx(2.0)
    assert speedup_limit(0.9, 0.1) == 0.0
    assert speedup_limit(1.0, 0.5) == pytest.approx(2.0)
    assert speedup_limit(1.0, 0.0) == math.inf
    np.testing.assert_allclose(speedup_limit(np.array([0.5, 0.9]), np.array([[0.0], [0.2]])), [[2.0, 10.0], [0.0, 0.0]])


@pytest.mark.parametrize("alpha,c", [(0.9, 0.0), (0.6, 0.0), (0.9, 0.1), (0.8, 0.02), (1.0, 0.25)])
def test_speedup_limit_is_what_large_k_approaches(alpha, c):
    far = speedup(alpha, c, 10**7)
    assert far == pytest.approx(speedup_limit(alpha, c), abs=1e-4)


def test_speedup_with_cost_falls_below_one_for_large_k():
    # the naive belief that more drafting approaches 1/(1-alpha) is wrong whenever c > 0
    assert speedup(0.9, 0.1, 100) < 1 < speedup(0.9, 0.1, 10)


# ---------------------------------------------------------------- simulation

@pytest.mark.parametrize("alpha,k", [(0.0, 3), (0.5, 1), (0.6, 4), (0.8, 8), (0.95, 16), (1.0, 5), (0.7, 0)])
def test_simulation_mean_matches_expected_tokens(alpha, k):
    n = 200_000
    tokens = simulate_tokens_per_round(alpha, k, n, np.random.default_rng(1))
    assert tokens.shape == (n,)
    assert tokens.min() >= 1 and tokens.max() <= k + 1
    mean, sd = tokens.mean(), tokens.std()
    # five standard errors: a correct simulator fails this about once in two million runs
    assert abs(mean - expected_tokens(alpha, k)) <= 5 * sd / math.sqrt(n) + 1e-12


def test_simulation_distribution_of_accepted_prefix():
    alpha, k, n = 0.7, 3, 200_000
    tokens = simulate_tokens_per_round(alpha, k, n, 2)
    freq = np.bincount(tokens - 1, minlength=k + 1) / n
    want = [alpha**j * (1 - alpha) for j in range(k)] + [alpha**k]
    np.testing.assert_allclose(freq, want, atol=0.005)


def test_simulation_is_reproducible_and_a_wrong_model_is_caught():
    a = simulate_tokens_per_round(0.8, 4, 10_000, 3)
    b = simulate_tokens_per_round(0.8, 4, 10_000, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    # the same mean check rejects a simulator run with the wrong alpha
    wrong = simulate_tokens_per_round(0.75, 4, 200_000, 4)
    assert abs(wrong.mean() - expected_tokens(0.8, 4)) > 5 * wrong.std() / math.sqrt(200_000)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("alpha", [-0.1, 1.1, float("nan"), [0.5, 1.5]])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        expected_tokens(alpha, 2)
    with pytest.raises(ValueError, match="alpha"):
        speedup(alpha, 0.1, 2)
    with pytest.raises(ValueError, match="alpha"):
        best_k(alpha, 0.1)
    with pytest.raises(ValueError, match="alpha"):
        speedup_limit(alpha, 0.1)


@pytest.mark.parametrize("c", [-0.01, float("nan"), float("inf"), [0.1, -1.0]])
def test_bad_cost(c):
    with pytest.raises(ValueError, match="c is the draft/target cost"):
        speedup(0.5, c, 2)
    with pytest.raises(ValueError, match="c is the draft/target cost"):
        best_k(0.5, c)
    with pytest.raises(ValueError, match="c is the draft/target cost"):
        speedup_limit(0.5, c)


@pytest.mark.parametrize("k", [-1, 2.0, 2.5, "3", [1, -2], np.array([1.0, 2.0])])
def test_bad_k(k):
    with pytest.raises(ValueError, match=r"^k (is a number of drafted tokens|must be >= 0)"):
        expected_tokens(0.5, k)
    with pytest.raises(ValueError, match=r"^k (is a number of drafted tokens|must be >= 0)"):
        speedup(0.5, 0.1, k)


def test_bad_simulation_arguments():
    with pytest.raises(ValueError, match="n_rounds"):
        simulate_tokens_per_round(0.5, 2, 0)
    with pytest.raises(ValueError, match="n_rounds"):
        simulate_tokens_per_round(0.5, 2, 10.0)
    with pytest.raises(ValueError, match="alpha"):
        simulate_tokens_per_round(2.0, 2, 10)
    with pytest.raises(ValueError, match="^k must be >= 0"):
        simulate_tokens_per_round(0.5, -1, 10)
    with pytest.raises(ValueError, match="one alpha and one k"):
        simulate_tokens_per_round(np.array([0.5, 0.6]), 2, 10)


@pytest.mark.parametrize("k_max", [-1, 2.5, True])
def test_bad_k_max(k_max):
    with pytest.raises(ValueError, match="k_max"):
        best_k(0.5, 0.1, k_max=k_max)


# -- planning with measured figures ---------------------------------------------------------


def test_chain_tokens_is_the_iid_law_for_constant_acceptance():
    for a in (0.0, 0.3, 0.8, 1.0):
        for k in range(6):
            assert theory.chain_tokens([a], k) == pytest.approx(theory.expected_tokens(a, k))
    # by position: 1 + .8 + .8*.5 + .8*.5*.5
    assert theory.chain_tokens([0.8, 0.5], 3) == pytest.approx(1 + 0.8 + 0.4 + 0.2)
    with pytest.raises(ValueError):
        theory.chain_tokens([1.2], 2)
    with pytest.raises(ValueError):
        theory.chain_tokens([], 2)


def test_verify_cost_interpolates_and_holds_its_ends():
    v = {2: 1.1, 5: 1.4, 9: 2.2}
    assert theory.verify_cost_at(v, 1) == 1.0 and theory.verify_cost_at(v, 5) == pytest.approx(1.4)
    assert theory.verify_cost_at(v, 3) == pytest.approx(1.2) and theory.verify_cost_at(v, 40) == pytest.approx(2.2)


def test_plan_drafting_picks_the_law_best_k_and_tree():
    ranks = [[0.7, 0.1], [0.6, 0.1], [0.5, 0.1], [0.3, 0.1]]
    v = {2: 1.05, 3: 1.1, 5: 1.2, 9: 1.6, 17: 2.5, 33: 4.0}
    plan = theory.plan_drafting(ranks, v, c=0.05, k_max=6, max_nodes=16)
    chains = plan["chains"]
    # the chosen K is the brute-force argmax of the law with these figures
    best = max(range(7), key=lambda k: theory.chain_tokens([r[0] for r in ranks], k)
               / (theory.verify_cost_at(v, k + 1) + 0.05 * k))
    assert plan["chain"]["k"] == best and chains.loc[0, "speedup"] == pytest.approx(1.0)
    assert plan["tree"]["speedup"] >= plan["chain"]["speedup"] - 1e-12  # a chain is one of the trees
    # a free verify pass and free drafts: draft as much as allowed
    flat = theory.plan_drafting(ranks, {n: 1.0 for n in (2, 64)}, c=0.0, k_max=6, max_nodes=16)
    assert flat["chain"]["k"] == 6 and flat["tree"]["n_nodes"] == 16
    # a draft that is never right: no speculation
    assert theory.plan_drafting([[0.0]], v, c=0.05)["chain"]["k"] == 0
