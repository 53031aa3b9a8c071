"""The engine's paths: every path and cache kind keeps the loops exact, and changes only speed."""

import itertools

import pytest
import torch
from transformers import DynamicCache

from specdec import fastpath
from specdec.cache import CACHE_KINDS, CachedLM, PreallocatedCache, cache_bytes
from specdec.decoding import autoregressive_generate, speculative_generate
from specdec.drafters import ModelDrafter, NGramDrafter
from specdec.enginebench import forward_seconds
from specdec.sampling import SamplingParams, probs_from_logits, verify, verify_greedy

PROMPT = torch.tensor([5, 9, 17, 5, 9, 17, 5, 9, 40, 41, 42, 5, 9])
PATHS = fastpath.candidate_paths("cpu")
if fastpath.packing_available() and fastpath.Path(linear="packed") not in PATHS:
    PATHS.append(fastpath.Path(linear="packed"))


@pytest.fixture(scope="module")
def prepared(tiny_target, tiny_drafts):
    """Target and drafts on each path, built once."""
    return {p: (fastpath.prepare(tiny_target, p), {n: fastpath.prepare(d, p) for n, d in tiny_drafts.items()})
            for p in PATHS}


def _first_difference(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.label)
@pytest.mark.parametrize("cache", CACHE_KINDS)
def test_greedy_speculative_equals_autoregressive_on_every_path(prepared, path, cache):
    """In float32, identical token for token. In bfloat16, scoring K+1 tokens at once rounds
    differently from scoring one, so the outputs may part -- but only where the target's two
    best logits are closer than bfloat16's rounding: any difference must sit at such a tie."""
    target, drafts = prepared[path]
    reference = autoregressive_generate(target, PROMPT, 40, cache=cache).tokens
    assert len(reference) == 40
    for name, k in itertools.product(["same", "other", "ngram"], [1, 2, 4, 8]):
        drafter = NGramDrafter() if name == "ngram" else ModelDrafter(drafts[name], cache=cache)
        out = speculative_generate(target, drafter, PROMPT, 40, k, cache=cache)
        if path.dtype == "float32":
            assert out.tokens == reference, (path.label, cache, name, k)
            continue
        i = _first_difference(out.tokens, reference)
        if i is not None:
            with torch.inference_mode():
                logits = target(torch.tensor(PROMPT.tolist() + reference[:i])[None]).logits[0, -1].float()
            top2 = logits.topk(2).values
            assert top2[0] - top2[1] <= 0.02 * logits.abs().max(), (path.label, cache, name, k, i)
    if path.dtype != "float32":
        return
    same = speculative_generate(target, ModelDrafter(drafts["same"], cache=cache), PROMPT, 40, 4, cache=cache)
    assert sum(same.accepted_per_round) == sum(same.drafted_per_round), "an identical draft is always accepted"


def test_prepare_leaves_the_model_alone_and_changes_only_rounding(tiny_target):
    before = {k: v.clone() for k, v in tiny_target.state_dict().items()}
    with torch.inference_mode():
        ref = tiny_target(PROMPT[None]).logits
    assert fastpath.prepare(tiny_target, fastpath.PLAIN) is tiny_target
    for path in PATHS[1:]:
        model = fastpath.prepare(tiny_target, path)
        assert model is not tiny_target
        with torch.inference_mode():
            got = model(PROMPT[None]).logits.float()
        tol = 1e-4 if path.dtype == "float32" else 0.1 * ref.abs().max().item()
        assert (got - ref).abs().max().item() < tol, path.label
    after = tiny_target.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(type(m) is not fastpath.PackedLinear for m in tiny_target.modules())


def test_packed_path_really_packs(tiny_target):
    if not fastpath.packing_available():
        pytest.skip("this torch has no oneDNN")
    model = fastpath.prepare(tiny_target, fastpath.Path(linear="packed"))
    kinds = {type(m) for m in model.modules()}
    assert fastpath.PackedLinear in kinds and torch.nn.Linear not in kinds


def test_bad_paths():
    with pytest.raises(ValueError, match="dtype"):
        fastpath.Path(dtype="float16x")
    with pytest.raises(ValueError, match="linear"):
        fastpath.Path(linear="fast")
    with pytest.raises(ValueError, match="Path"):
        fastpath.prepare(torch.nn.Linear(2, 2), "packed")


def test_measure_paths_table(tiny_target):
    paths = [fastpath.PLAIN] + ([fastpath.Path(linear="packed")] if fastpath.packing_available() else [])
    table = fastpath.measure_paths(tiny_target, paths, context=16, n_tokens=(1, 3), repeats=2, warmup=1)
    assert len(table) == 2 * len(paths)
    assert set(table["n_tokens"]) == {1, 3} and (table["ms"] > 0).all()
    assert (table.loc[table["path"] == fastpath.PLAIN.label, "vs_plain"] == 1.0).all()
    best, _ = fastpath.choose_path(tiny_target, paths, context=16, repeats=2, warmup=1)
    assert best in paths


# --- the preallocated cache -------------------------------------------------------------------


def test_preallocated_cache_matches_dynamic_through_growth_and_rollback(tiny_target):
    g = torch.Generator().manual_seed(3)
    seq = torch.randint(0, 256, (40,), generator=g).tolist()
    other = torch.randint(0, 256, (12,), generator=g).tolist()
    dyn, pre = CachedLM(tiny_target, cache="dynamic"), CachedLM(tiny_target, capacity=4)  # grows 3 times
    assert isinstance(pre.cache, PreallocatedCache) and isinstance(dyn.cache, DynamicCache)
    for text, n_last in [(seq[:20], 1), (seq[:30], 5), (seq[:25] + other, 3), (seq[:10], 2), (seq, 1)]:
        a, b = dyn.logits(text, n_last), pre.logits(text, n_last)
        assert torch.allclose(a, b, atol=1e-5), len(text)
        assert pre.length == pre.cache.get_seq_length() == len(text)
        assert cache_bytes(pre.cache) == cache_bytes(dyn.cache)
    with torch.inference_mode():
        fresh = tiny_target(torch.tensor(seq)[None]).logits[0, -1]
    assert torch.allclose(pre.logits(seq, 1)[0], fresh, atol=1e-5)


def test_advance_feeds_device_tokens_and_the_prefix_rule_still_holds(tiny_target):
    lm = CachedLM(tiny_target)
    lm.logits(PROMPT, 1)
    extra = torch.tensor([7, 8, 9])
    step = lm.advance(extra)
    assert step.shape == (3, 256) and lm.length == len(PROMPT) + 3
    assert lm.tokens == PROMPT.tolist() + [7, 8, 9]
    with torch.inference_mode():
        fresh = tiny_target(torch.cat([PROMPT, extra])[None]).logits[0, -3:]
    assert torch.allclose(step, fresh, atol=1e-5)
    # diverge after the prompt: the cache rolls back by itself
    again = lm.logits(PROMPT.tolist() + [7, 11], 1)
    with torch.inference_mode():
        fresh = tiny_target(torch.tensor(PROMPT.tolist() + [7, 11])[None]).logits[0, -1]
    assert torch.allclose(again[0], fresh, atol=1e-5)


def test_cache_kind_is_checked(tiny_target):
    with pytest.raises(ValueError, match="cache must be one of"):
        CachedLM(tiny_target, cache="static-ish")


# --- the greedy shortcut ----------------------------------------------------------------------


def test_verify_greedy_equals_verify_on_one_hot_distributions():
    g = torch.Generator().manual_seed(0)
    for K in (0, 1, 3, 6):
        logits = torch.randn(200, K + 1, 11, generator=g)
        best = logits.argmax(-1)
        # drafts that agree with the argmax for a random number of positions
        draft = torch.where(torch.rand(200, K, generator=g) < 0.7, best[:, :K], torch.randint(0, 11, (200, K),
                                                                                             generator=g))
        greedy = SamplingParams(temperature=0.0)
        p = probs_from_logits(logits, greedy)
        q = torch.nn.functional.one_hot(draft, 11).float()
        n_ref, nxt_ref = verify(p, q, draft, g)
        n, nxt = verify_greedy(logits, draft)
        assert torch.equal(n, n_ref) and torch.equal(nxt, nxt_ref)


def test_forward_seconds_counts_each_forward(tiny_target):
    with forward_seconds(tiny_target) as times:
        autoregressive_generate(tiny_target, PROMPT, 5)
    assert len(times) == 5  # the prefill, then 4 decode steps (the last token needs no pass)
    assert all(t > 0 for t in times)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_greedy_speculative_equals_the_target_on_a_gpu(tiny_target, tiny_drafts):
    """The whole loop on a GPU: tokens, drafts and caches on the device, every drafter and K."""
    import copy

    target = copy.deepcopy(tiny_target).cuda()
    drafts = {n: copy.deepcopy(d).cuda() for n, d in tiny_drafts.items()}
    reference = autoregressive_generate(target, PROMPT, 40).tokens
    assert len(reference) == 40
    for cache in CACHE_KINDS:
        for name, k in itertools.product(["same", "other", "ngram"], [1, 2, 4, 8]):
            drafter = NGramDrafter() if name == "ngram" else ModelDrafter(drafts[name], cache=cache)
            out = speculative_generate(target, drafter, PROMPT, 40, k, cache=cache)
            assert out.tokens == reference, (cache, name, k)
            assert out.phase_s["verify"] > 0
    sampled = speculative_generate(target, ModelDrafter(drafts["other"]), PROMPT, 40, 4,
                                   SamplingParams(temperature=1.0), seed=1)
    assert len(sampled.tokens) == 40


# --- the engine benchmark ---------------------------------------------------------------------


def test_engine_benchmark_pairs_every_method_with_its_peer(tiny_target, tiny_drafts):
    from specdec.enginebench import PEERS, run_engine_benchmark, summarise_engine

    fast = fastpath.prepare(tiny_target, fastpath.Path(linear="packed")) if fastpath.packing_available() \
        else tiny_target
    prompts = [("p0", PROMPT), ("p1", PROMPT.flip(0))]
    df = run_engine_benchmark(tiny_target, fast, tiny_drafts["other"], prompts, max_new_tokens=12,
                              repeats=2, progress=False)
    methods = [m for pair in PEERS for m in pair]
    assert sorted(df["method"].unique()) == sorted(methods)
    assert len(df) == 2 * 2 * len(methods)  # prompts x repeats x methods
    out = summarise_engine(df, step_bound_ms=1.0)
    for mine, peer in PEERS:
        v = out[f"{mine}_vs_{peer}"]
        assert v["runs"] == 4 and v["identical"] == 4, (mine, peer)  # greedy: the same tokens
        assert v["decode"]["lo"] <= v["decode"]["median"] <= v["decode"]["hi"]
        assert v["headline"] == ("decode" if peer == "hf_autoregressive" else "e2e")
    assert 0 <= out["draft_acceptance"] <= 1 and out["draft_cost_ratio"] > 0
    assert all(0 <= share < 1 for share in out["outside_forward"].values())
    assert out["fraction_of_bound"] == pytest.approx(1.0 / out["ms_per_token"])
