"""The proof of exactness, checked: logits -> probabilities, and the rejection step.

Three layers, each able to fail:
* ``probs_from_logits`` against its definition and against transformers' own warpers;
* ``output_distribution`` (the analytic law of the emitted token) equals the target to 1e-6;
* the sampler the loop actually runs, ``verify``, batched over 200,000 independent rounds,
  passes chi-square goodness-of-fit tests against the target -- while two deliberately wrong
  samplers (always accept; resample from p instead of the residual) fail the same tests.
"""

import functools
import math

import pytest
import torch
from scipy import stats
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from specdec.sampling import (
    GREEDY,
    SamplingParams,
    acceptance_probability,
    output_distribution,
    probs_from_logits,
    sample,
    total_variation,
    verify,
)

N_ROUNDS = 200_000  # independent rounds per statistical check (the batch dimension)
PASS = 1e-3  # a correct sampler passes a chi-square test unless p < PASS (fixed seeds)
FAIL = 1e-6  # a wrong sampler must be rejected this strongly


def gof_pvalue(tokens: torch.Tensor, p: torch.Tensor) -> float:
    """Chi-square goodness of fit of sampled token ids against the distribution ``p`` (V,).

    A token that ``p`` gives probability 0 is impossible under ``p``: the p-value is then 0.
    """
    p = p.double()
    counts = torch.bincount(tokens.reshape(-1), minlength=p.numel()).double()
    support = p > 0
    if counts[~support].sum() > 0:
        return 0.0
    expected = p[support] / p[support].sum() * counts.sum()
    return float(stats.chisquare(counts[support].numpy(), expected.numpy()).pvalue)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Fixed (target p, draft q) pairs over V = 8 tokens, float32 as the loop sees them.
PAIRS = {
    "overlapping": (
        [0.30, 0.20, 0.15, 0.10, 0.10, 0.08, 0.05, 0.02],
        [0.02, 0.05, 0.10, 0.08, 0.15, 0.20, 0.10, 0.30],
    ),
    "disjoint": (
        [0.40, 0.30, 0.20, 0.10, 0.00, 0.00, 0.00, 0.00],
        [0.00, 0.00, 0.00, 0.00, 0.25, 0.25, 0.25, 0.25],
    ),
    # a confident draft, low temperature, against a flatter target
    "peaked_draft": (
        torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5]).softmax(-1).tolist(),
        (torch.tensor([1.0, 3.0, 0.0, 0.5, -1.0, 0.0, 2.5, -2.0]) / 0.3).softmax(-1).tolist(),
    ),
}


def pair(name):
    p, q = PAIRS[name]
    return torch.tensor(p, dtype=torch.float32), torch.tensor(q, dtype=torch.float32)


@functools.lru_cache(maxsize=None)
def k1_rounds(name):
    """N_ROUNDS independent K=1 rounds of the real sampler on one pair (bonus row uniform).

    Returns ``(draft, n, next_token)``; computed once per pair and shared by the tests.
    """
    p, q = pair(name)
    g = gen(10)
    P = torch.stack([p, torch.full_like(p, 1 / len(p))]).expand(N_ROUNDS, 2, -1)
    Q = q.expand(N_ROUNDS, 1, -1)
    draft = sample(Q, g)
    n, nxt = verify(P, Q, draft, g)
    return draft, n, nxt


# ============================================================ SamplingParams


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(temperature=-0.5), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_k=-1), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_p=-0.2), "top_p"),
        (dict(top_p=float("nan")), "top_p"),
    ],
)
def test_sampling_params_reject_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_sampling_params_valid_and_greedy():
    assert SamplingParams().greedy is False
    assert SamplingParams(temperature=0.7, top_k=50, top_p=0.9).top_k == 50
    assert GREEDY.greedy is True and GREEDY.temperature == 0
    assert SamplingParams(top_p=1.0).top_p == 1.0  # the boundary is allowed


# ============================================================ probs_from_logits

PARAM_GRID = [
    SamplingParams(),
    SamplingParams(temperature=0.7),
    SamplingParams(temperature=1.3, top_k=10),
    SamplingParams(temperature=1.0, top_p=0.9),
    SamplingParams(temperature=0.8, top_k=20, top_p=0.8),
    SamplingParams(temperature=1.0, top_k=5, top_p=0.5),
    SamplingParams(temperature=0.5, top_p=0.3),
    SamplingParams(temperature=2.0, top_k=1),
]


@pytest.mark.parametrize("params", PARAM_GRID, ids=str)
def test_probs_sum_to_one_and_keep_shape(params):
    logits = torch.randn(3, 5, 50, generator=gen(0)) * 3
    probs = probs_from_logits(logits, params)
    assert probs.shape == logits.shape and probs.dtype == torch.float32
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 5), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_probs_are_float32_for_half_precision_logits(dtype):
    logits = (torch.randn(4, 100, generator=gen(1)) * 4).to(dtype)
    probs = probs_from_logits(logits, SamplingParams(temperature=0.7))
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, (logits.float() / 0.7).softmax(-1), atol=1e-6, rtol=1e-5)
    # the temperature is applied after the cast: 60000 / 0.5 would overflow float16
    big = torch.tensor([60000.0, 0.0, -60000.0], dtype=torch.float16)
    out = probs_from_logits(big, SamplingParams(temperature=0.5))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.tensor([1.0, 0.0, 0.0]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_greedy_is_one_hot_argmax(dtype):
    logits = torch.randn(2, 7, 300, generator=gen(2)).to(dtype)
    probs = probs_from_logits(logits, GREEDY)
    assert probs.dtype == torch.float32
    want = torch.nn.functional.one_hot(logits.float().argmax(-1), 300).float()
    assert torch.equal(probs, want)


@pytest.mark.parametrize("k", [1, 2, 7, 49])
def test_top_k_keeps_exactly_the_k_largest(k):
    logits = torch.randn(64, 50, generator=gen(3))  # continuous: no ties
    probs = probs_from_logits(logits, SamplingParams(top_k=k))
    kept = probs > 0
    assert (kept.sum(-1) == k).all()
    top = torch.topk(logits, k, dim=-1).indices
    assert kept.gather(-1, top).all()
    # the kept tokens keep their relative odds: a renormalised softmax
    ref = logits.masked_fill(~kept, float("-inf")).softmax(-1)
    torch.testing.assert_close(probs, ref)


def test_top_k_at_least_vocabulary_is_no_filter():
    logits = torch.randn(8, 20, generator=gen(4))
    for k in (20, 100):
        torch.testing.assert_close(probs_from_logits(logits, SamplingParams(top_k=k)), logits.softmax(-1))


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, temperature):
    logits = torch.randn(128, 40, generator=gen(5)) * 2
    probs = probs_from_logits(logits, SamplingParams(temperature=temperature, top_p=top_p))
    full = (logits.double() / temperature).softmax(-1)
    sorted_p, order = full.sort(-1, descending=True)
    cum = sorted_p.cumsum(-1)
    # the smallest m with p_(1) + ... + p_(m) >= top_p
    m = (cum < top_p).sum(-1) + 1
    kept = probs > 0
    assert torch.equal(kept.sum(-1), m)
    ranks = torch.arange(40).expand(128, 40)
    assert torch.equal(kept.gather(-1, order), ranks < m[:, None])
    ref = full * kept
    torch.testing.assert_close(probs.double(), ref / ref.sum(-1, keepdim=True), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("top_p,n_kept", [(0.5, 1), (0.6, 2), (0.75, 2), (0.8, 3), (0.875, 3), (0.9, 4)])
def test_top_p_boundary_is_inclusive(top_p, n_kept):
    """Reaching p exactly is enough: with probabilities 1/2, 1/4, 1/8, 1/8 (exact in binary),
    top_p = 0.75 keeps two tokens, not three."""
    logits = torch.tensor([3.0, 2.0, 1.0, 1.0]) * math.log(2)
    probs = probs_from_logits(logits, SamplingParams(top_p=top_p))
    assert int((probs > 0).sum()) == n_kept


@pytest.mark.parametrize("params", PARAM_GRID, ids=str)
def test_matches_transformers_warpers(params):
    logits = torch.randn(256, 200, generator=gen(6)) * 2.5
    scores = logits.clone()
    ids = torch.zeros(256, 1, dtype=torch.long)
    scores = TemperatureLogitsWarper(params.temperature)(ids, scores)
    if params.top_k:
        scores = TopKLogitsWarper(params.top_k)(ids, scores)
    if params.top_p < 1:
        scores = TopPLogitsWarper(params.top_p)(ids, scores)
    ref = scores.softmax(-1)
    probs = probs_from_logits(logits, params)
    assert torch.equal(probs > 0, ref > 0), "a different set of tokens survives the filters"
    torch.testing.assert_close(probs, ref, atol=1e-6, rtol=1e-5)


# ============================================================ analytic exactness


def random_pairs(kind: str, V: int, n: int, seed: int):
    g = gen(seed)
    if kind == "dirichlet":
        conc = torch.tensor([0.1, 1.0, 10.0]).repeat_interleave(math.ceil(n / 3))[:n, None]
        p = torch._standard_gamma(conc.expand(n, V).double().contiguous(), generator=g)
        q = torch._standard_gamma(conc.expand(n, V).double().contiguous(), generator=g)
        p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    elif kind == "peaked":  # low-temperature softmaxes, both sides
        p = (torch.randn(n, V, generator=g, dtype=torch.double) * 3 / 0.05).softmax(-1)
        q = (torch.randn(n, V, generator=g, dtype=torch.double) * 3 / 0.05).softmax(-1)
    elif kind == "disjoint":
        perm = torch.rand(n, V, generator=g).argsort(-1)
        cut = torch.randint(1, V, (n, 1), generator=g)
        in_p = torch.zeros(n, V, dtype=torch.bool).scatter(-1, perm, torch.arange(V).expand(n, V) < cut)
        w = torch.rand(n, V, generator=g, dtype=torch.double) + 0.01
        p, q = w * in_p, w.flip(-1) * ~in_p
        p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    elif kind == "nested":  # q lives on part of p's support, or q == p
        p = torch.rand(n, V, generator=g, dtype=torch.double)
        p = p / p.sum(-1, keepdim=True)
        keep = torch.rand(n, V, generator=g) < 0.5
        keep[:, 0] = True
        q = torch.where(keep, torch.rand(n, V, generator=g, dtype=torch.double), 0)
        q = q / q.sum(-1, keepdim=True)
        q[: n // 4] = p[: n // 4]
    else:
        raise ValueError(kind)
    return p, q


KINDS = ["dirichlet", "peaked", "disjoint", "nested"]


@pytest.mark.parametrize("V", [2, 10, 1000])
@pytest.mark.parametrize("kind", KINDS)
def test_output_distribution_is_exactly_the_target(kind, V):
    p, q = random_pairs(kind, V, 600, seed=V)
    out = output_distribution(p, q)
    assert (out >= 0).all()
    torch.testing.assert_close(out.sum(-1), torch.ones(600, dtype=torch.double), atol=1e-12, rtol=0)
    assert total_variation(out, p).max().item() <= 1e-6
    # The tolerance has teeth: skipping the rejection (emitting q) or resampling from p after
    # a rejection are both far from p on such pairs. (Not everywhere: where q == p both are
    # right, and where alpha is ~0 -- disjoint or very peaked pairs -- p is the residual.)
    if kind in ("dirichlet", "peaked"):
        assert total_variation(q, p).max().item() > 0.1
    if kind == "dirichlet":
        alpha = acceptance_probability(p, q).double()
        resample_p = torch.minimum(p, q) + (1 - alpha[:, None]) * p
        assert total_variation(resample_p, p).max().item() > 0.05


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(temperature=0.6, top_k=30, top_p=0.9)], ids=str)
def test_output_distribution_exact_for_float32_model_outputs(params):
    target_logits = torch.randn(200, 1000, generator=gen(7)) * 3
    draft_logits = target_logits + torch.randn(200, 1000, generator=gen(8)) * 2
    p, q = probs_from_logits(target_logits, params), probs_from_logits(draft_logits, params)
    assert total_variation(output_distribution(p, q), p).max().item() <= 1e-6


@pytest.mark.parametrize("kind", KINDS)
def test_acceptance_probability_is_one_minus_tv(kind):
    p, q = random_pairs(kind, 50, 300, seed=9)
    torch.testing.assert_close(acceptance_probability(p, q).double(), 1 - total_variation(p, q), atol=1e-6, rtol=0)
    if kind == "disjoint":
        assert acceptance_probability(p, q).abs().max().item() < 1e-6


def test_total_variation_known_values():
    assert total_variation(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])).item() == 1.0
    assert total_variation(torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])).item() == 0.0
    assert total_variation(torch.tensor([0.7, 0.3]), torch.tensor([0.4, 0.6])).item() == pytest.approx(0.3)


# ============================================================ the real sampler, K = 1


@pytest.mark.parametrize("name", list(PAIRS))
def test_verify_first_token_follows_the_target(name):
    p, _ = pair(name)
    draft, n, nxt = k1_rounds(name)
    first = torch.where(n == 1, draft[:, 0], nxt)
    pval = gof_pvalue(first, p)
    assert pval > PASS, f"{name}: chi-square p-value {pval:.2e}"


@pytest.mark.parametrize("name", list(PAIRS))
def test_verify_acceptance_rate_is_alpha(name):
    p, q = pair(name)
    alpha = acceptance_probability(p.double(), q.double()).item()
    _, n, _ = k1_rounds(name)
    accepted = int(n.sum())
    if alpha == 0:
        assert accepted == 0
    else:
        pval = stats.binomtest(accepted, N_ROUNDS, alpha).pvalue
        assert pval > PASS, f"{name}: acceptance {accepted / N_ROUNDS:.4f} vs alpha {alpha:.4f}"


@pytest.mark.parametrize("name", list(PAIRS))
def test_negative_control_always_accept_fails(name):
    """A 'sampler' that keeps every drafted token emits q, and the same test rejects it."""
    p, _ = pair(name)
    draft, _, _ = k1_rounds(name)
    assert gof_pvalue(draft[:, 0], p) < FAIL


@pytest.mark.parametrize("name", ["overlapping", "peaked_draft"])
def test_negative_control_resample_from_target_fails(name):
    """After a rejection, drawing from p instead of the residual over-weights where p > q.

    (For disjoint supports nothing is ever accepted and p *is* the residual, so this
    shortcut is only wrong when the supports overlap.)
    """
    p, q = pair(name)
    g = gen(11)
    P = torch.stack([p, p]).expand(N_ROUNDS, 2, -1)
    Q = q.expand(N_ROUNDS, 1, -1)
    draft = sample(Q, g)
    n, _ = verify(P, Q, draft, g)  # the real accept/reject decision ...
    wrong = torch.where(n == 1, draft[:, 0], sample(P[:, 0], g))  # ... and the wrong fallback
    assert gof_pvalue(wrong, p) < FAIL


def test_k0_is_plain_sampling():
    p, _ = pair("overlapping")
    n, nxt = verify(p.expand(N_ROUNDS, 1, -1), torch.empty(N_ROUNDS, 0, 8), torch.empty(N_ROUNDS, 0, dtype=torch.long), gen(12))
    assert (n == 0).all()
    assert gof_pvalue(nxt, p) > PASS


# ============================================================ the real sampler, K > 1


def test_number_accepted_follows_the_iid_law():
    K = 4
    p, q = pair("peaked_draft")
    alpha = acceptance_probability(p.double(), q.double()).item()
    g = gen(13)
    P = p.expand(N_ROUNDS, K + 1, -1)
    Q = q.expand(N_ROUNDS, K, -1)
    n, _ = verify(P, Q, sample(Q, g), g)
    law = torch.tensor([alpha**j * (1 - alpha) for j in range(K)] + [alpha**K], dtype=torch.double)
    assert law.sum().item() == pytest.approx(1.0)
    assert gof_pvalue(n, law) > PASS
    # and the same test tells a different alpha apart
    shifted = torch.tensor([(alpha - 0.02) ** j * (1.02 - alpha) for j in range(K)] + [(alpha - 0.02) ** K])
    assert gof_pvalue(n, shifted) < FAIL


def test_every_position_follows_its_own_target_and_bonus_follows_p_k():
    """K = 3 with a different (p_i, q_i) at every position and a distinct bonus p_K.

    Position i emits a token whenever the first i drafts were accepted (n >= i): the draft
    if it is accepted too (n > i), else the residual token (n == i). That token must follow
    p_i; the token after a fully accepted draft (n == K) must follow p_K.
    """
    K, V = 3, 6
    g = gen(14)
    target_logits = torch.randn(K + 1, V, generator=g) * 1.5
    p_rows = target_logits.softmax(-1)
    q_rows = (target_logits[:K] + torch.randn(K, V, generator=g)).softmax(-1)  # a noisy copy
    P, Q = p_rows.expand(N_ROUNDS, -1, -1), q_rows.expand(N_ROUNDS, -1, -1)
    draft = sample(Q, g)
    n, nxt = verify(P, Q, draft, g)

    alphas = acceptance_probability(p_rows[:K].double(), q_rows.double())
    law = [torch.prod(alphas[:j]) * (1 - alphas[j]) for j in range(K)] + [torch.prod(alphas)]
    assert gof_pvalue(n, torch.stack(law)) > PASS

    for i in range(K):
        reached = n >= i
        token = torch.where(n[reached] > i, draft[reached, i], nxt[reached])
        assert reached.sum() > 10_000
        assert gof_pvalue(token, p_rows[i]) > PASS, f"position {i}"
        # the position's draft alone is a different distribution, and the test sees it
        assert gof_pvalue(draft[reached, i], p_rows[i]) < FAIL

    bonus = nxt[n == K]
    assert bonus.numel() > 10_000
    assert gof_pvalue(bonus, p_rows[K]) > PASS
    assert gof_pvalue(bonus, p_rows[K - 1]) < FAIL


# ============================================================ greedy


def test_greedy_accepts_exactly_the_matching_prefix():
    B, K, V = 4000, 4, 12
    g = gen(15)
    target_logits = torch.randn(B, K + 1, V, generator=g)
    draft_logits = torch.randn(B, K, V, generator=g)
    # copy the target's logits into a random number of leading positions, so every prefix
    # length 0..K occurs often; later positions may still agree by chance
    copy = torch.arange(K) < torch.randint(0, K + 1, (B, 1), generator=g)
    draft_logits = torch.where(copy[..., None], target_logits[:, :K], draft_logits)
    p, q = probs_from_logits(target_logits, GREEDY), probs_from_logits(draft_logits, GREEDY)
    draft = draft_logits.argmax(-1)
    target_argmax = target_logits.argmax(-1)
    agree = draft == target_argmax[:, :K]
    want_n = agree.long().cumprod(-1).sum(-1)
    assert set(want_n.tolist()) == set(range(K + 1))

    for seed in (0, 1):
        n, nxt = verify(p, q, draft, gen(seed))
        assert torch.equal(n, want_n)
        assert torch.equal(nxt, target_argmax.gather(-1, want_n[:, None]).squeeze(-1))


# ============================================================ bad input


def test_verify_rejects_mismatched_shapes():
    V, K = 5, 2
    p, q = torch.full((K + 1, V), 1 / V), torch.full((K, V), 1 / V)
    draft = torch.zeros(K, dtype=torch.long)
    with pytest.raises(ValueError, match="K\\+1"):
        verify(p[:K], q, draft)  # target has K rows, needs K+1
    with pytest.raises(ValueError, match="K\\+1"):
        verify(p, q[:1], draft)  # draft distributions for fewer positions than drafted
    with pytest.raises(ValueError, match="K\\+1"):
        verify(p, q, draft[:1])
    with pytest.raises(ValueError, match="differ in size"):
        verify(p, torch.full((K, V + 1), 1 / (V + 1)), draft)


def test_verify_rejects_mismatched_batch_dimensions():
    V, K = 5, 1
    p = torch.full((10, K + 1, V), 1 / V)
    q = torch.full((10, K, V), 1 / V)
    draft = torch.zeros(4, K, dtype=torch.long)
    with pytest.raises(ValueError, match="batch shapes"):
        verify(p, q, draft)
    with pytest.raises(ValueError, match="batch shapes"):
        verify(p, q[:4], torch.zeros(10, K, dtype=torch.long))
