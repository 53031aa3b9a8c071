"""Token trees (chapter 11): the structure, the verify pass's mask, keeping the accepted path in
the cache (continuing equals a fresh pass, as chapter 2's rollback), and exact verification --
the analytic output distribution of multi-candidate rejection sampling equals the target's, a
chi-square test of the sampler passes, and a plausible wrong scheme fails it."""

import itertools

import pytest
import torch

from specdec.cache import CachedLM
from specdec.sampling import goodness_of_fit, total_variation
from specdec.trees import TokenTree, tree_mask, tree_positions, verify_tree, verify_tree_greedy

from .helpers import tiny_llama

PASS, FAIL = 1e-3, 1e-6
F64 = torch.float64
#      0  1  2  3  4  5
# root -> 0 -> 1 -> 2
#      -> 3 -> 4
#      -> 5
TREE = TokenTree(tokens=(7, 8, 9, 10, 11, 12), parents=(-1, 0, 1, -1, 3, -1))


def test_tree_structure_and_bad_input():
    assert TREE.depths == [1, 2, 3, 1, 2, 1]
    assert TREE.children(-1) == [0, 3, 5] and TREE.children(3) == [4] and TREE.children(2) == []
    assert TREE.path_to(2) == [0, 1, 2] and TREE.path_to(4) == [3, 4]
    a = TREE.ancestors()
    assert a[2].tolist() == [True, True, True, False, False, False] and a[4].tolist() == [False] * 3 + [True, True, False]
    chain = TokenTree.chain([4, 5, 6])
    assert chain.parents == (-1, 0, 1)
    with pytest.raises(ValueError, match="earlier node"):
        TokenTree(tokens=(1, 2), parents=(1, -1))
    with pytest.raises(ValueError, match="parents"):
        TokenTree(tokens=(1, 2), parents=(-1,))


def test_mask_and_positions():
    m = tree_mask(TREE, n_cached=3, n_tail=2)[0, 0]
    allowed = m == 0
    assert m.shape == (8, 11)
    assert allowed[:, :3].all()  # everyone sees the cache
    assert allowed[0, 3] and not allowed[0, 4] and allowed[1, 3:5].all()  # the text tokens, causally
    assert allowed[2:, 3:5].all()  # nodes see the text
    assert allowed[2 + 4, 5:].tolist() == [False, False, False, True, True, False]  # node 4: node 3, itself
    assert tree_positions(TREE, 3, 2)[0].tolist() == [3, 4, 5, 6, 7, 5, 6, 5]


@pytest.fixture(scope="module")
def model():
    return tiny_llama(n_layers=2, seed=3)


@pytest.mark.parametrize("cache", ["preallocated", "dynamic"])
def test_tree_logits_score_every_path_as_a_fresh_pass_would(model, cache):
    seq = [5, 17, 33, 2, 90, 41]
    lm = CachedLM(model, cache=cache)
    lm.logits(seq[:4])  # part of the text is cached already, two tokens are not
    rows = lm.tree_logits(seq, TREE)
    assert rows.shape == (len(TREE) + 1, model.config.vocab_size) and lm.length == len(seq) + len(TREE)

    def fresh(tokens):
        return CachedLM(model).logits(tokens)[0]

    torch.testing.assert_close(rows[0], fresh(seq), atol=1e-4, rtol=1e-4)
    for node in range(len(TREE)):
        path = [TREE.tokens[i] for i in TREE.path_to(node)]
        torch.testing.assert_close(rows[node + 1], fresh(seq + path), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cache", ["preallocated", "dynamic"])
@pytest.mark.parametrize("path", [[3, 4], [0, 1, 2], [5], []])
def test_keeping_a_path_then_continuing_equals_a_fresh_pass(model, cache, path):
    seq = [5, 17, 33, 2, 90, 41]
    lm = CachedLM(model, cache=cache, feature_layers=(0, 1))
    lm.tree_logits(seq, TREE)
    lm.keep_path(len(seq), path)
    kept = seq + [TREE.tokens[i] for i in path]
    assert lm.tokens == kept and lm.length == len(kept)
    cont = lm.logits(kept + [3, 3], n_last=2)
    fresh = CachedLM(model, feature_layers=(0, 1))
    want = fresh.logits(kept + [3, 3], n_last=2)
    torch.testing.assert_close(cont, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lm.features(), fresh.features(), atol=1e-4, rtol=1e-4)


def test_greedy_verification_follows_the_targets_argmax(model):
    seq = [5, 17, 33, 2]
    greedy = []
    lm = CachedLM(model)
    for _ in range(3):
        greedy.append(int(lm.logits(seq + greedy)[0].argmax()))
    wrong = [(t + 1) % model.config.vocab_size for t in greedy]
    # the greedy path sits on the second branch; decoys beside it at every level
    tree = TokenTree(tokens=(wrong[0], greedy[0], wrong[1], greedy[1], greedy[2]), parents=(-1, -1, 1, 1, 3))
    rows = CachedLM(model).tree_logits(seq, tree)
    path, nxt = verify_tree_greedy(rows, tree)
    assert path == [1, 3, 4]
    lm = CachedLM(model)
    assert nxt == int(lm.logits(seq + greedy)[0].argmax())


# ---------------------------------------------------------------------------------------------
# Exact sampling: an independent, analytic computation of the output distribution
# ---------------------------------------------------------------------------------------------


def _analytic_first_token(p, q, m, replacement):
    """The exact distribution of the first emitted token of a depth-1 tree of ``m`` siblings
    drawn from ``q``, enumerated over every draw."""
    p, q = p.double(), q.double()
    V = len(p)
    out = torch.zeros(V, dtype=torch.float64)
    for draw in itertools.product(range(V), repeat=m):
        if not replacement and len(set(draw)) < m:
            continue
        prob, qs = 1.0, q.clone()
        for x in draw:  # the probability of this draw
            prob *= float(qs[x])
            if not replacement:
                qs[x] = 0
                qs = qs / qs.sum() if qs.sum() > 0 else qs
        if prob == 0:
            continue
        r, qs, carry = p.clone(), q.clone(), 1.0
        for x in draw:
            a = min(1.0, float(r[x] / qs[x]))
            out[x] += prob * carry * a
            carry *= 1 - a
            res = (r - qs).clamp_min(0)
            r = res / res.sum() if res.sum() > 0 else r
            if not replacement:
                qs[x] = 0
                qs = qs / qs.sum() if qs.sum() > 0 else qs
        out += prob * carry * r
    return out


CASES = {
    "overlapping": (torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=F64), torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)),
    "peaked_draft": (torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=F64), torch.tensor([0.85, 0.05, 0.05, 0.05], dtype=F64)),
    "disjoint": (torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=F64), torch.tensor([0.0, 0.0, 0.5, 0.5], dtype=F64)),
}


@pytest.mark.parametrize("replacement", [True, False])
@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_multi_candidate_rejection_sampling_is_exact_analytically(case, m, replacement):
    p, q = CASES[case]
    if not replacement and m > int((q > 0).sum()):
        pytest.skip("not enough distinct tokens to draw without replacement")
    assert float(total_variation(_analytic_first_token(p, q, m, replacement), p)) <= 1e-9


def _sampled_first_tokens(p, q, m, replacement, n, seed, wrong=False):
    g = torch.Generator().manual_seed(seed)
    V = len(p)
    P = torch.stack([p] * (m + 1))
    Q = torch.stack([q] * (m + 1))
    out = []
    for _ in range(n):
        if replacement:
            draw = torch.multinomial(q, m, replacement=True, generator=g).tolist()
        else:
            draw = torch.multinomial(q, m, replacement=False, generator=g).tolist()
        tree = TokenTree(tokens=tuple(draw), parents=(-1,) * m)
        if wrong:  # the plausible bug: every sibling tried against p itself, no residual
            first = next((x for x in draw if torch.rand((), generator=g) * q[x] < p[x]), None)
            out.append(first if first is not None else int(torch.multinomial(p, 1, generator=g)))
            continue
        path, nxt = verify_tree(P, Q, tree, g, replacement=replacement)
        out.append(draw[path[0]] if path else nxt)
    return torch.tensor(out, dtype=torch.long).clamp(max=V - 1)


@pytest.mark.parametrize("replacement", [True, False])
def test_the_sampler_passes_chi_square_and_a_wrong_one_fails(replacement):
    p, q = CASES["overlapping"]
    got = _sampled_first_tokens(p, q, 2, replacement, 100_000, seed=1)
    assert goodness_of_fit(got, p)[1] > PASS
    bad = _sampled_first_tokens(p, q, 2, replacement, 20_000, seed=2, wrong=True)
    assert goodness_of_fit(bad, p)[1] < FAIL


# ---------------------------------------------------------------------------------------------
# Trees drafted by chapter 10's head, in the loop
# ---------------------------------------------------------------------------------------------


def test_full_shape_is_closed_under_prefixes_and_elder_siblings():
    from specdec.trees import check_shape
    from specdec.trees import full_shape

    shape = full_shape(3, 2, 9)
    assert shape[:4] == [(0,), (1,), (0, 0), (0, 1)] and len(shape) == 9
    check_shape(shape)
    with pytest.raises(ValueError, match="parent"):
        check_shape([(0,), (1, 0)])
    with pytest.raises(ValueError, match="elder"):
        check_shape([(1,)])


@pytest.fixture(scope="module")
def head_target():
    from specdec import eagle

    target = tiny_llama(n_layers=4, vocab=256, seed=0, init=0.05)
    torch.manual_seed(0)
    return eagle.EagleHead.for_target(target, torch.randperm(256)[:200]), target


@pytest.mark.parametrize("cache", ["preallocated", "dynamic"])
@pytest.mark.parametrize("options", [dict(), dict(depth=3, top_k=2, n_nodes=6),
                                     dict(shape=[(0,), (0, 0), (0, 0, 0)]), dict(shape=[(0,), (1,), (2,), (0, 0)])],
                         ids=["dynamic", "dynamic-small", "chain", "static"])
def test_greedy_tree_speculation_equals_the_target(head_target, cache, options):
    from specdec.decoding import autoregressive_generate
    from specdec.eagle import EagleDrafter
    from specdec.trees import tree_generate

    head, target = head_target
    prompt = torch.tensor([5, 17, 33, 2, 90, 41, 7, 64])
    want = autoregressive_generate(target, prompt, 40, cache=cache).tokens
    got = tree_generate(target, EagleDrafter(head), prompt, 40, cache=cache, **options)
    assert got.tokens == want
    assert all(a <= d for d, a in zip(got.drafted_per_round, got.accepted_per_round))


def test_sampled_tree_speculation_runs(head_target):
    from specdec.eagle import EagleDrafter
    from specdec.sampling import SamplingParams
    from specdec.trees import tree_generate

    head, target = head_target
    res = tree_generate(target, EagleDrafter(head), torch.tensor([5, 17, 33]), 30, SamplingParams(temperature=1.0),
                        seed=2, depth=3, top_k=2, n_nodes=6)
    assert len(res.tokens) == 30
    with pytest.raises(ValueError, match="rank path"):
        tree_generate(target, EagleDrafter(head), torch.tensor([5, 17]), 5, shape=[(0,), (0, 1)])


def test_deterministic_siblings_are_verified_exactly():
    """Prompt lookup's branches are one-point proposals: sibling after sibling, each accepted
    with the residual's probability of its token; the first emitted token still follows p."""
    p = CASES["overlapping"][0]
    tree = TokenTree(tokens=(2, 0), parents=(-1, -1))
    P = torch.stack([p] * 3)
    g = torch.Generator().manual_seed(4)
    first = []
    for _ in range(100_000):
        path, nxt = verify_tree(P, None, tree, g)
        first.append(tree.tokens[path[0]] if path else nxt)
    assert goodness_of_fit(torch.tensor(first), p)[1] > PASS


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_prompt_lookup_trees_in_the_loop(model, temperature):
    from specdec.decoding import autoregressive_generate
    from specdec.drafters import NGramDrafter
    from specdec.sampling import SamplingParams
    from specdec.trees import tree_generate

    prompt = torch.tensor([5, 6, 7, 8, 5, 6, 9, 5, 6, 7, 3, 5, 6])  # "5 6" is followed by 7, 9 and 7
    tree, q = NGramDrafter().propose_tree(prompt.tolist(), depth=3, top_k=3)
    assert q is None and len(tree.children(-1)) >= 2  # several continuations become branches
    params = SamplingParams(temperature=temperature)
    got = tree_generate(model, NGramDrafter(), prompt, 30, params, seed=1, depth=3, top_k=3)
    if temperature == 0:
        assert got.tokens == autoregressive_generate(model, prompt, 30).tokens
    else:
        assert len(got.tokens) == 30


def test_plan_shape_takes_the_most_probable_paths():
    from specdec.trees import best_tree, plan_shape

    acc = [[0.6, 0.2, 0.1], [0.5, 0.2]]
    shape, expected = plan_shape(acc, 4)
    # paths: (0) .6, (0,0) .3, (1) .2, (0,0,0) .15 (deeper levels reuse the last row), (0,1) .12, (2) .1
    assert shape == [(0,), (0, 0), (1,), (0, 0, 0)] and expected == pytest.approx(0.6 + 0.3 + 0.2 + 0.15)
    # brute force over every prefix- and sibling-closed shape of 4 nodes in a small universe
    from specdec.trees import check_shape

    universe = [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (1, 1), (0, 0, 0)]

    def value(sh):
        def prob(path):
            out = 1.0
            for d, r in enumerate(path, start=1):
                row = acc[min(d, len(acc)) - 1]
                out *= row[r] if r < len(row) else 0.0
            return out
        return sum(prob(p) for p in sh)

    best = 0.0
    for combo in itertools.combinations(universe, 4):
        try:
            check_shape(list(combo))
        except ValueError:
            continue
        best = max(best, value(combo))
    assert expected == pytest.approx(best)
    table = best_tree(acc, verify_cost=lambda n: 1.0 + 0.05 * (n - 1), draft_cost=0.05, sizes=range(1, 9))
    assert table["expected_tokens"].is_monotonic_increasing and (table["cost"] > 1).all()


@pytest.mark.parametrize("options", [dict(depth=3, top_k=2, n_nodes=6), dict(shape=[(0,), (1,), (0, 0), (0, 1)])],
                         ids=["dynamic", "static"])
def test_model_draft_trees_in_the_loop(model, options):
    from specdec.decoding import autoregressive_generate
    from specdec.drafters import ModelDrafter
    from specdec.sampling import SamplingParams
    from specdec.trees import tree_generate

    draft = tiny_llama(n_layers=1, seed=4)
    prompt = torch.tensor([5, 17, 33, 2, 90])
    want = autoregressive_generate(model, prompt, 30).tokens
    assert tree_generate(model, ModelDrafter(draft), prompt, 30, **options).tokens == want
    res = tree_generate(model, ModelDrafter(draft), prompt, 30, SamplingParams(temperature=1.0), seed=3, **options)
    assert len(res.tokens) == 30


def test_torch_returns_draws_without_replacement_in_the_order_drawn():
    """Sampled trees try siblings in the order torch.multinomial returns them, which must be the
    order of sequential draws without replacement for the verification to be exact."""
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.2])
    d = torch.stack([torch.multinomial(p, 2, replacement=False, generator=g) for _ in range(20_000)])
    first = d[:, 0] == 0
    assert abs(float(first.float().mean()) - 0.5) < 0.02  # sorted output would give 0.5 + 0.3*5/7 + 0.2*5/8
    assert abs(float((first & (d[:, 1] == 1)).sum() / first.sum()) - 0.6) < 0.02  # 0.3 / (1 - 0.5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_head_chains_and_trees_equal_the_target_on_a_gpu():
    """Chapter 10's head and chapter 11's trees on the device: features kept by the target's
    cache, the head's own cache, the tree mask and the path kept in the cache, all on the GPU."""
    from specdec import eagle
    from specdec.decoding import autoregressive_generate, speculative_generate
    from specdec.drafters import NGramDrafter
    from specdec.sampling import SamplingParams
    from specdec.trees import tree_generate

    target = tiny_llama(n_layers=4, vocab=256, seed=0, init=0.05).cuda()
    torch.manual_seed(0)
    head = eagle.EagleHead.for_target(target, torch.randperm(256)[:200].cuda())
    prompt = torch.tensor([5, 17, 33, 2, 90, 41, 7, 64])
    want = autoregressive_generate(target, prompt, 40).tokens
    for cache in ("preallocated", "dynamic"):
        for k in (1, 4):
            assert speculative_generate(target, eagle.EagleDrafter(head), prompt, 40, k, cache=cache).tokens == want
        assert tree_generate(target, eagle.EagleDrafter(head), prompt, 40, cache=cache).tokens == want
        assert tree_generate(target, NGramDrafter(), prompt, 40, cache=cache).tokens == want
    sampled = tree_generate(target, eagle.EagleDrafter(head), prompt, 30, SamplingParams(temperature=1.0), seed=1,
                            depth=3, top_k=2, n_nodes=6)
    assert len(sampled.tokens) == 30


def test_sampled_trees_through_the_loop_follow_the_target_and_a_wrong_scheme_fails(monkeypatch):
    """At T = 1 the first two tokens ``tree_generate`` writes follow the target's own joint
    distribution p(x1) p(x2 | x1): x2 comes out of a tree's recursive rejection sampling (two
    levels, two siblings each, drafted by another model). Verifying the siblings against a
    distribution other than the one they were drawn from (a uniform q: a plausible bug when the
    draft's distributions are not kept) fails."""
    from specdec import trees as trees_mod
    from specdec.drafters import ModelDrafter
    from specdec.sampling import SamplingParams, goodness_of_fit
    from specdec.trees import tree_generate

    V = 8
    target = tiny_llama(n_layers=2, vocab=V, seed=11, init=0.6)
    draft = tiny_llama(n_layers=1, vocab=V, seed=12, init=0.6)
    prompt = torch.tensor([2, 5, 3])
    params = SamplingParams(temperature=1.0)
    with torch.inference_mode():
        p1 = target(prompt[None]).logits[0, -1].double().softmax(-1)
        nxt = torch.stack([torch.cat([prompt, torch.tensor([x])]) for x in range(V)])
        p2 = target(nxt).logits[:, -1].double().softmax(-1)
    joint = (p1[:, None] * p2).reshape(-1)

    def pairs(n, seed0):
        out = []
        for s in range(n):
            res = tree_generate(target, ModelDrafter(draft), prompt, 3, params, seed=seed0 + s,
                                shape=[(0,), (1,), (0, 0), (0, 1)])
            out.append(res.tokens[0] * V + res.tokens[1])
        return torch.tensor(out)

    n = 2500
    assert goodness_of_fit(pairs(n, 0), joint)[1] > 1e-3
    real = trees_mod.verify_tree

    def against_uniform(p, q, tree, generator=None, replacement=True):
        return real(p, torch.full_like(q, 1.0 / q.shape[-1]), tree, generator, replacement=replacement)

    monkeypatch.setattr(trees_mod, "verify_tree", against_uniform)
    assert goodness_of_fit(pairs(n, 10_000), joint)[1] < 1e-6
