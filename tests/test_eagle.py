"""Chapter 10's draft head: its bookkeeping, its exactness, and that training helps.

On a tiny random target (tests/helpers.py): the unrolled training pass computes what drafting
computes; greedy speculative output equals the target's for every K, cache and path; the
head's cache after a generation equals one built afresh from the final text (after rejected
and after fully accepted rounds); the head's sampled proposals pass chapter 3's checks, and a
wrong verifier fails them; training lowers the held-out loss and raises held-out acceptance.
"""

import copy
import dataclasses

import pytest
import torch

from specdec import eagle, fastpath, headdata, headloss, headtrain
from specdec.cache import CachedLM
from specdec.decoding import autoregressive_generate, speculative_generate
from specdec.sampling import SamplingParams, first_tokens, goodness_of_fit, output_distribution, probs_from_logits
from specdec.sampling import total_variation

from .helpers import tiny_llama

V = 256
PASS, FAIL = 1e-3, 1e-6


@pytest.fixture(scope="module")
def target():
    # small weights: the residual stream carries the current token, so the text follows
    # patterns a head can learn from 48 short answers (with init=0.2 it is close to random)
    return tiny_llama(n_layers=4, vocab=V, seed=0, init=0.05)


def _head(target, size=200, seed=0, layers=None):
    torch.manual_seed(seed)
    return eagle.EagleHead.for_target(target, torch.randperm(V)[:size], layers)


def _samples(target, n, seed, length=48):
    """Random prompts and the target's greedy answers to them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(2, V, (8,), generator=g)
        answer = autoregressive_generate(target, prompt, length).tokens
        out.append(headdata.Sample(prompt.tolist(), answer, domain="d" + str(i % 2), id=str(i)))
    return out


@pytest.fixture(scope="module")
def trained(target):
    """(untrained head, the same head trained, held-out features, training history)."""
    layers = eagle.default_feature_layers(4)
    train = headdata.extract_features(target, _samples(target, 48, seed=1), layers, progress=False)  # noqa
    held = headdata.extract_features(target, _samples(target, 12, seed=2), layers, progress=False)
    samples = _samples(target, 48, seed=1)
    distinct = len({t for s in samples for t in s.answer} | {1})
    d2t = headdata.draft_vocabulary(samples, size=min(96, distinct), always=(1,))
    before = eagle.EagleHead.for_target(target, d2t)
    head = copy.deepcopy(before)
    history = headtrain.train_head(head, train, held, headtrain.TrainConfig(epochs=15, batch_tokens=512, lr=3e-3,
                                                                            eval_every=10_000), progress=False)
    return before, head, held, history


def test_default_feature_layers():
    assert eagle.default_feature_layers(30) == (1, 14, 26)  # SmolLM2-135M: low, middle, high
    assert eagle.default_feature_layers(4) == (0, 1)
    assert eagle.default_feature_layers(1) == (0,)
    with pytest.raises(ValueError):
        eagle.default_feature_layers(0)


def test_bad_input_is_refused(target):
    with pytest.raises(ValueError, match="feature_layers"):
        CachedLM(target, feature_layers=(2, 1))
    with pytest.raises(ValueError, match="feature_layers"):
        CachedLM(target, feature_layers=(9,))
    with pytest.raises(ValueError, match="distinct"):
        eagle.EagleHead.for_target(target, torch.tensor([3, 3, 4]))
    with pytest.raises(RuntimeError, match="binds"):
        eagle.EagleDrafter(_head(target)).propose([1, 2, 3], 2, SamplingParams(temperature=0))
    with pytest.raises(ValueError, match="keeps no features"):
        CachedLM(target).features()


def test_kept_features_follow_the_cache_through_rollback(target):
    layers = (0, 2)
    lm = CachedLM(target, feature_layers=layers, capacity=4)  # small: the buffer must grow
    seq = torch.randint(V, (20,)).tolist()
    lm.logits(seq[:12])
    lm.logits(seq[:9] + [5, 6, 7], n_last=3)  # a rejected continuation: rolled back, replaced
    lm.advance(torch.tensor([8, 9]))
    fresh = CachedLM(target, feature_layers=layers)
    fresh.logits(seq[:9] + [5, 6, 7, 8, 9])
    assert lm.length == fresh.length == 14
    torch.testing.assert_close(lm.features(), fresh.features(), atol=1e-4, rtol=1e-4)
    assert lm.features(3, 5).shape == (2, 2 * target.config.hidden_size)
    with pytest.raises(ValueError, match="not all cached"):
        lm.features(0, 15)


def test_unrolled_training_pass_computes_what_drafting_computes(target):
    head = _head(target).eval()
    n, steps = 12, 3
    H = target.config.hidden_size
    g = torch.Generator().manual_seed(0)
    feats = head.fuse(torch.randn(1, n, len(head.cfg.feature_layers) * H, generator=g))
    x = torch.randint(V, (n + steps + 1,), generator=g)  # x_0 .. x_{n+steps}
    tokens = x[1:].view(1, -1)  # tokens[:, s + j - 1] = x_{s+j}
    with torch.no_grad():
        outs = head.unrolled(feats, tokens, steps)
        for s in (0, 4, n - 1):
            cache = eagle.HeadCache()
            h = head.step(cache, feats[0, : s + 1], x[1: s + 2], start=0)[-1:]
            torch.testing.assert_close(h[0], outs[0][0, s], atol=1e-5, rtol=1e-5)
            for j in range(2, steps + 1):  # the head's own output stands in for the feature
                h = head.step(cache, h, tokens[0, s + j - 1].view(1), start=s + j - 1)
                torch.testing.assert_close(h[0], outs[j - 1][0, s], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", [fastpath.PLAIN, fastpath.Path(linear="packed")], ids=lambda p: p.label)
@pytest.mark.parametrize("cache", ["preallocated", "dynamic"])
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_greedy_speculation_with_the_head_equals_the_target(target, trained, k, cache, path):
    if path.linear == "packed" and not fastpath.packing_available():
        pytest.skip("this torch has no oneDNN packing")
    model = fastpath.prepare(target, path)
    prompt = torch.tensor([5, 17, 33, 2, 90, 41, 7, 64])
    want = autoregressive_generate(model, prompt, 40, cache=cache).tokens
    for head in trained[:2]:  # untrained (mostly rejected) and trained (often accepted)
        got = speculative_generate(model, eagle.EagleDrafter(head), prompt, 40, k, cache=cache)
        assert got.tokens == want


def test_head_cache_equals_a_fresh_one_after_rejections_and_full_acceptance(target, trained):
    head = trained[1]
    drafter = eagle.EagleDrafter(head)
    prompt = [9, 3, 77, 120, 4, 4, 18, 200]
    res = speculative_generate(target, drafter, torch.tensor(prompt), 60, 3)
    rounds = list(zip(res.drafted_per_round, res.accepted_per_round))
    assert any(a < d for d, a in rounds) and any(a == d for d, a in rounds), rounds
    seq = prompt + res.tokens
    n = drafter.n_real
    assert n >= len(seq) - 1 - 4  # it caught up at the last round
    fresh_lm = CachedLM(target, feature_layers=head.cfg.feature_layers)
    fresh_lm.logits(seq[:n])
    cache = eagle.HeadCache()
    with torch.no_grad():
        head.step(cache, head.fuse(fresh_lm.features()), torch.tensor(seq[1: n + 1]), start=0)
    torch.testing.assert_close(drafter.cache.k[:, :n], cache.k[:, :n], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(drafter.cache.v[:, :n], cache.v[:, :n], atol=1e-4, rtol=1e-4)


def _head_and_target_rows(target, head, params):
    """The head's first proposal distribution q and the target's p after one prompt."""
    prompt = [5, 17, 33, 2, 90, 41, 7, 64]
    lm = CachedLM(target, feature_layers=head.cfg.feature_layers)
    p = probs_from_logits(lm.logits(prompt + [12])[0], params)
    drafter = eagle.EagleDrafter(head)
    drafter.bind(lm)
    _, q = drafter.propose(prompt + [12], 1, params, torch.Generator().manual_seed(0))
    return p, q[0]


def test_sampled_proposals_are_exact_and_a_wrong_verifier_fails(target, trained):
    head = trained[1]
    params = SamplingParams(temperature=1.0)
    p, q = _head_and_target_rows(target, head, params)
    outside = torch.ones(V, dtype=torch.bool)
    outside[head.d2t] = False
    assert q[outside].sum() == 0 and abs(float(q.sum()) - 1) < 1e-5  # zero outside the draft vocabulary
    assert float(total_variation(output_distribution(p, q), p)) <= 1e-6  # analytic: exactly p
    tokens, _ = first_tokens(p, q, 100_000, torch.Generator().manual_seed(1))
    assert goodness_of_fit(tokens, p)[1] > PASS
    # a plausible bug: verifying against a uniform q over the draft vocabulary
    wrong_q = (~outside).float() / (~outside).sum()
    tokens, _ = first_tokens(p, q, 100_000, torch.Generator().manual_seed(2), q_verify=wrong_q)
    assert goodness_of_fit(tokens, p)[1] < FAIL


def test_sampled_speculation_runs_and_emits_target_tokens(target, trained):
    res = speculative_generate(target, eagle.EagleDrafter(trained[1]), torch.tensor([5, 17, 33]), 30, 4,
                               SamplingParams(temperature=1.0), seed=3)
    assert len(res.tokens) == 30 and all(0 <= t < V for t in res.tokens)


def test_training_lowers_held_out_loss_and_raises_acceptance(trained):
    before, after, held, history = trained
    b = headloss.evaluate_head(before, held, steps=4)
    a = headloss.evaluate_head(after, held, steps=4, by_domain=True)
    assert a["loss"] < b["loss"] - 0.02  # the target is high-entropy at T=1: little to gain
    assert a["tau"] > b["tau"] + 0.3 and a["agree"][0] > b["agree"][0] + 0.1
    assert set(a["tau_by_domain"]) == {"d0", "d1"}
    # the first guess of each step is what the chain's agreement counts; lower ranks catch more
    assert a["rank_acceptance"][0][0] == pytest.approx(a["agree"][0], abs=0.02)
    assert all(sum(row) <= 1 + 1e-9 for row in a["rank_acceptance"])
    assert history["held_out_loss"].iloc[-1] < history["held_out_loss"].iloc[0]


def test_save_and_load_round_trip(target, trained, tmp_path):
    head = trained[1]
    eagle.save_head(head, tmp_path / "h", provenance={"command": "test"})
    loaded = eagle.load_head(tmp_path / "h", target)
    assert torch.equal(loaded.d2t, head.d2t) and loaded.cfg == head.cfg
    for name, value in head.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(loaded.state_dict()[name], value.to(torch.bfloat16).float())
    prompt = torch.tensor([5, 17, 33, 2, 90])
    want = autoregressive_generate(target, prompt, 24).tokens
    assert speculative_generate(target, eagle.EagleDrafter(loaded), prompt, 24, 4).tokens == want
    with pytest.raises(FileNotFoundError, match="no head"):
        eagle.load_head(tmp_path / "missing", target)


def test_head_benchmark_summarises_one_interleaved_run(target, trained):
    from specdec import headbench

    head = trained[1]
    draft = tiny_llama(n_layers=1, vocab=V, seed=1, init=0.05)
    g = torch.Generator().manual_seed(5)
    prompts = [(f"{d}/{i}", torch.randint(2, V, (6,), generator=g)) for d in ("code", "conversation")
               for i in range(2)]
    df = headbench.run_head_benchmark(target, target, head, draft, prompts, max_new_tokens=10, k=3, repeats=1,
                                      progress=False, tree=dict(n_nodes=6, depth=3, top_k=2))
    methods = headbench.OURS + headbench.THEIRS
    assert set(df["method"]) == set(methods) and len(df) == 4 * len(methods)
    f = headbench.summarise_head(df, 3)
    sp = f["speedups"]
    for key in ("eagle_vs_autoregressive", "autoregressive_vs_hf_autoregressive", "eagle_vs_hf_prompt_lookup",
                "eagle_tree_vs_eagle", "ngram_tree_vs_ngram"):
        assert sp[key]["identical"] == sp[key]["runs"] == 4  # greedy: everyone writes the target's text
    assert set(f["tau"]) >= {"eagle", "eagle_t1", "ngram", "int4", "eagle_tree", "eagle_tree_t1", "ngram_tree"}
    assert 0 < f["tree_nodes"]["eagle_tree"] <= 6
    by_domain = f["decode_speedup_by_domain"]
    assert set(by_domain["eagle"]) == {"code", "conversation"} and set(by_domain) >= {"eagle", "ngram", "eagle_tree"}
    assert all(d["lo"] <= d["median"] <= d["hi"] for m in by_domain.values() for d in m.values())
    assert all(v >= 1 for row in f["tau"].values() for v in row.values())
    assert all(0 <= a <= 1 for a in f["position_acceptance"]["eagle"])
    assert f["fastest_transformers_method"] in headbench.THEIRS and f["cost_ratio"]["eagle"] > 0
    assert "tau" in headbench.format_head_report({"figures": f, "k": 3})


@pytest.mark.skipif(not headdata.DOC_ROOT.is_dir(), reason="needs Debian's python3.11-doc (make train-prompts)")
def test_reference_text_alternates_code_and_prose_within_its_budget():
    from specdec.prompts import smollm2_tokenizer

    tok = smollm2_tokenizer()
    samples = headdata.reference_samples(tok, 3000, chunk_tokens=200, progress=False)
    kinds = [s.domain for s in samples]
    assert kinds[:4] == ["reference-code", "reference-prose"] * 2
    total = sum(len(s.answer) for s in samples)
    assert 3000 <= total < 3000 + 200 and all(0 < len(s.answer) <= 200 for s in samples)
    assert samples == headdata.reference_samples(tok, 3000, chunk_tokens=200, progress=False)  # deterministic
    assert "stdlib/" in samples[0].id and "docs/" in samples[1].id


def test_feature_sets_keep_a_subset_of_layers(target):
    samples = _samples(target, 3, seed=7, length=6)
    both = headdata.extract_features(target, samples, (0, 1, 3), progress=False)
    one = headdata.extract_features(target, samples, (1, 3), progress=False)
    sliced = both.with_layers((1, 3))
    assert sliced.feature_layers == (1, 3)
    for a, b in zip(sliced.features, one.features):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="among"):
        both.with_layers((2,))


def test_cutting_answers_keeps_the_features_a_pass_over_the_cut_texts_gives(target):
    samples = _samples(target, 4, seed=5, length=12)
    layers = (1, 3)
    whole = headdata.extract_features(target, samples, layers, progress=False)
    cut = [headdata.Sample(s.prompt, s.answer[:5], s.domain, s.id) for s in samples]
    fresh = headdata.extract_features(target, cut, layers, progress=False)
    sliced = whole.answers_cut(5)
    assert sliced.n_answer_tokens == fresh.n_answer_tokens == 4 * 5
    assert sliced.starts == fresh.starts and sliced.domains == fresh.domains
    for k in ("tokens", "argmax"):
        assert [x.tolist() for x in getattr(sliced, k)] == [x.tolist() for x in getattr(fresh, k)]
    for k in ("features", "finals", "lse"):
        for a, b in zip(getattr(sliced, k), getattr(fresh, k)):
            torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)
    with pytest.raises(ValueError, match="at least one"):
        whole.answers_cut(0)


def test_cached_features_are_the_extracted_ones_and_keep_their_extraction_time(target, tmp_path):
    groups = [("part-a", _samples(target, 3, seed=7, length=6)), ("part-b", _samples(target, 2, seed=8, length=6))]
    first, second = {}, {}
    made = headdata.cached_features(target, groups, (1, 3), "key", tmp_path, progress=False, stats=first)
    assert first["extracted"] == 2 and first["loaded"] == 0 and first["extract_seconds"] > 0
    assert len(list(tmp_path.glob("*.json"))) == 2  # each cached group records how long it took
    again = headdata.cached_features(target, groups, (1, 3), "key", tmp_path, progress=False, keep=(3,), stats=second)
    assert second["loaded"] == 2 and second["extracted"] == 0 and second["untimed"] == 0
    assert second["extract_seconds"] == pytest.approx(first["extract_seconds"])
    for a, b in zip(again.features, made.with_layers((3,)).features):
        torch.testing.assert_close(a, b)


def test_trained_lm_rows_train_and_save_while_the_teacher_stays_the_targets(target, trained, tmp_path):
    _, _, held, _ = trained
    d2t = trained[1].d2t
    head = eagle.EagleHead.for_target(target, d2t, train_lm_rows=True)
    teacher = head.target_rows.clone()
    assert torch.equal(head.lm_rows, teacher) and "head_rows" in head.state_dict()
    assert "target_rows" not in head.state_dict()  # the target's own rows are never saved
    train = headdata.extract_features(target, _samples(target, 8, seed=9), head.cfg.feature_layers, progress=False)
    headtrain.train_head(head, train, None, headtrain.TrainConfig(epochs=2, batch_tokens=256), progress=False)
    assert not torch.equal(head.lm_rows, teacher) and torch.equal(head.target_rows, teacher)
    eagle.save_head(head, tmp_path / "h")
    loaded = eagle.load_head(tmp_path / "h", target)
    torch.testing.assert_close(loaded.lm_rows, head.lm_rows.detach().to(torch.bfloat16).float())
    torch.testing.assert_close(loaded.target_rows, teacher)


def test_asking_the_head_twice_about_the_same_text_gives_the_same_draft(target, trained):
    head = trained[1]
    lm = CachedLM(target, feature_layers=head.cfg.feature_layers)
    seq = [5, 17, 33, 2, 90, 41]
    lm.logits(seq)
    drafter = eagle.EagleDrafter(head)
    drafter.bind(lm)
    first, _ = drafter.propose(seq, 3, SamplingParams(temperature=0))
    again, _ = drafter.propose(seq, 3, SamplingParams(temperature=0))
    assert torch.equal(first, again)


def test_training_resumes_from_its_checkpoint_exactly(target, tmp_path):
    """A run stopped after one step and resumed from its checkpoint ends where an uninterrupted
    run ends: the same weights, to the bit."""
    layers = eagle.default_feature_layers(4)
    samples = _samples(target, 16, seed=5, length=24)
    train = headdata.extract_features(target, samples, layers, progress=False)
    d2t = headdata.draft_vocabulary(samples, size=40, always=(1,))
    cfg = dict(epochs=3, batch_tokens=256, lr=3e-3, eval_every=10_000, steps=2, feature_noise=0.1, regression=0.5)
    torch.manual_seed(0)
    whole = eagle.EagleHead.for_target(target, d2t)
    start = copy.deepcopy(whole.state_dict())
    headtrain.train_head(whole, train, config=headtrain.TrainConfig(**cfg), progress=False)
    torch.manual_seed(0)
    parts = eagle.EagleHead.for_target(target, d2t)
    parts.load_state_dict(start)
    ckpt = tmp_path / "ckpt.pt"
    first = headtrain.train_head(parts, train, config=headtrain.TrainConfig(**cfg, max_seconds=0.0), progress=False,
                                 checkpoint=ckpt)
    assert not first.attrs["done"] and first.attrs["steps_done"] == 1 and ckpt.is_file()
    again = eagle.EagleHead.for_target(target, d2t)  # a fresh process would build the head afresh
    rest = headtrain.train_head(again, train, config=headtrain.TrainConfig(**cfg), progress=False, checkpoint=ckpt)
    assert rest.attrs["done"] and rest.attrs["steps_done"] == rest.attrs["total_steps"]
    for k, v in whole.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    with pytest.raises(ValueError, match="other settings"):
        headtrain.train_head(again, train, config=headtrain.TrainConfig(**{**cfg, "lr": 1e-3}), progress=False,
                             checkpoint=ckpt)
    # with a held-out set and a patience the best weights travel too (stored once when they are
    # the current ones, as after an evaluation that improved)
    pcfg = dict(cfg, patience=100, eval_every=2, lr=1e-2)
    whole = eagle.EagleHead.for_target(target, d2t)
    whole.load_state_dict(start)
    torch.manual_seed(1)  # the feature noise's draws
    headtrain.train_head(whole, train, train, headtrain.TrainConfig(**pcfg), progress=False)
    parts = eagle.EagleHead.for_target(target, d2t)
    parts.load_state_dict(start)
    ckpt = tmp_path / "ckpt-best.pt"
    torch.manual_seed(1)
    headtrain.train_head(parts, train, train, headtrain.TrainConfig(**pcfg, max_seconds=0.0), progress=False,
                         checkpoint=ckpt)
    assert torch.load(ckpt, weights_only=False)["best_is_head"]
    again = eagle.EagleHead.for_target(target, d2t)
    headtrain.train_head(again, train, train, headtrain.TrainConfig(**pcfg), progress=False, checkpoint=ckpt)
    for k, v in whole.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_patience_stops_on_a_plateau_and_keeps_the_best_head(target, trained):
    _, _, held, _ = trained
    layers = eagle.default_feature_layers(4)
    samples = _samples(target, 16, seed=6, length=24)
    train = headdata.extract_features(target, samples, layers, progress=False)
    head = eagle.EagleHead.for_target(target, headdata.draft_vocabulary(samples, size=40, always=(1,)))
    # a learning rate far too high: held-out tau soon stops improving
    cfg = headtrain.TrainConfig(epochs=200, batch_tokens=256, lr=0.5, eval_every=2, patience=3, min_delta=0.0)
    history = headtrain.train_head(head, train, held, cfg, progress=False)
    assert history.attrs["stopped_early"] and history.attrs["steps_done"] < history.attrs["total_steps"]
    assert headloss.evaluate_head(head, held, steps=cfg.k)["tau"] == pytest.approx(history["tau"].max())


def test_regression_term_and_calibration_are_reported(target, trained):
    _, head, held, _ = trained
    ev = headloss.evaluate_head(head, held, steps=3)
    cal = ev["calibration"]
    assert len(cal["n"]) == 3 and all(len(row) == 10 for row in cal["n"])
    assert sum(cal["n"][0]) == ev["n_positions"]  # every chain is alive at the first step
    assert all(0 <= a <= n for rn, ra in zip(cal["n"], cal["accepted"]) for n, a in zip(rn, ra))
    batch = headloss.feature_batch(held, list(range(4)), 2, "cpu")
    with torch.no_grad():
        plain, _ = headloss.head_loss(head, batch, 2)
        with_reg, _ = headloss.head_loss(head, batch, 2, regression=1.0)
    assert float(with_reg) > float(plain)  # the head's output is not the target's feature


def test_the_head_drafts_what_the_law_plans():
    from specdec import headbench, theory

    meta = {"provenance": {"held_out_eval": {"rank_acceptance": [[0.7, 0.1], [0.6, 0.1], [0.5, 0.1]]}}}
    v = {1: 1.0, 2: 1.05, 3: 1.1, 5: 1.2, 9: 1.5, 17: 2.4, 33: 4.0}
    plan = headbench.plan_for_head(meta, v, level_cost=0.05)
    assert plan["chain"]["k"] <= 3  # never longer than the head was trained (and evaluated) to draft
    direct = theory.plan_drafting(meta["provenance"]["held_out_eval"]["rank_acceptance"], v, 0.05, k_max=3)
    assert plan["chain"] == direct["chain"] and plan["tree"] == direct["tree"]
    opts = plan["tree_options"]
    assert opts["n_nodes"] == len(opts["shape"]) == plan["tree"]["n_nodes"]
    tree, table = headbench.choose_tree(meta, v, 0.05)
    assert tree == opts and table["tokens_per_step"].max() == pytest.approx(plan["tree"]["speedup"])


def test_plan_beside_measurement_and_the_engine_split_read_one_report():
    from specdec import headbench

    def sp(m, lo, hi):
        return {"decode": {"median": m, "lo": lo, "hi": hi}}

    chains = [dict(k=k, expected_tokens=1 + 0.5 * k, cost=1 + 0.1 * k, speedup=(1 + 0.5 * k) / (1 + 0.1 * k))
              for k in range(4)]
    report = {"k": 2, "plan": {"chains": chains, "chain": chains[3],
                               "tree": dict(n_nodes=6, depth=3, expected_tokens=2.9, speedup=2.1)},
              "figures": {"tau": {"eagle": {"all": 1.8}, "eagle_tree": {"all": 2.4}},
                          "speedups": {"eagle_vs_autoregressive": sp(1.5, 1.4, 1.6),
                                       "eagle_tree_vs_autoregressive": sp(1.8, 1.7, 1.9),
                                       "hf_autoregressive_packed_vs_hf_autoregressive": sp(1.2, 1.1, 1.3),
                                       "autoregressive_vs_hf_autoregressive_packed": sp(1.1, 1.0, 1.2),
                                       "eagle_tree_vs_eagle": sp(1.2, 1.1, 1.3)}}}
    pm = headbench.plan_vs_measured(report)
    chain = pm.loc["chain, K = 2"]  # the K the run drafted, not the plan's best
    assert chain.predicted_tau == 2.0 and chain.predicted_speedup == pytest.approx(2.0 / 1.2)
    assert chain.measured_tau == 1.8 and chain.measured_speedup == 1.5 and chain.measured_lo == 1.4
    tree = pm.loc["tree, 6 nodes"]
    assert tree.predicted_tau == 2.9 and tree.measured_tau == 2.4 and tree.measured_speedup == 1.8
    # the miss splits exactly: speedup ratio = tau ratio / cost ratio
    assert tree.tau_ratio / tree.cost_ratio == pytest.approx(1.8 / 2.1)
    assert "below the prediction" in headbench.plan_gap(tree) and "acceptance accounts" in headbench.plan_gap(tree)
    assert "within the range" in headbench.plan_gap(dict(chain, measured_hi=2.0))
    split = headbench.engine_and_method(report)
    assert list(split["speedup"]) == [1.2, 1.1, 1.5, 1.2]
    assert split["cumulative"].iloc[-1] == pytest.approx(1.2 * 1.1 * 1.5 * 1.2)
    del report["figures"]["speedups"]["autoregressive_vs_hf_autoregressive_packed"]
    with pytest.raises(KeyError, match="autoregressive_vs_hf_autoregressive_packed"):
        headbench.engine_and_method(report)


def test_generate_runs_on_the_packed_path_and_writes_the_same_text(target):
    """The engine apart from the method: transformers' generate() on the copy our loops run."""
    from specdec.enginebench import hf_method

    if not fastpath.packing_available():
        pytest.skip("no oneDNN packing in this torch build")
    packed = fastpath.prepare(target, fastpath.Path(linear="packed"))
    prompt = torch.tensor([5, 17, 33, 2])
    theirs = hf_method(packed, "hf_autoregressive", max_new_tokens=12)(prompt)["result"]
    assert theirs.tokens == autoregressive_generate(packed, prompt, 12).tokens


def test_ablations_share_data_and_budget_and_report_spread(target):
    from specdec import headablate

    fused, top = eagle.default_feature_layers(4), (3,)
    layers = tuple(sorted(set(fused) | set(top)))
    samples = _samples(target, 24, seed=7, length=20)
    train_fs = headdata.extract_features(target, samples[:20], layers, progress=False)
    held_fs = headdata.extract_features(target, samples[20:], layers, progress=False)
    ref_fs = headdata.extract_features(target, _samples(target, 4, seed=8, length=20), layers, progress=False)
    d2t = headdata.draft_vocabulary(samples, size=40, always=(1,))
    vocabs = {eagle.DRAFT_VOCAB: d2t, None: torch.arange(V)}
    cfg = headtrain.TrainConfig(epochs=2, batch_tokens=256, lr=3e-3, eval_every=5, steps=2, patience=50)
    v = {1: 1.0, 2: 1.05, 3: 1.1, 9: 1.5}
    names = ["book's recipe", "one unrolled step", "half the data", "reference text added", "top layer only"]
    rows = headablate.ablate(target, target, train_fs, held_fs, vocabs, cfg, names, repeats=2, reference_fs=ref_fs,
                             verify_cost=v, fused=fused, top=top, progress=False, context=64)
    assert [(r["variant"], r["repeat"]) for r in rows] == [(n, i) for n in names for i in range(2)]
    by = {(r["variant"], r["repeat"]): r for r in rows}
    recipe = by[("book's recipe", 0)]
    assert recipe["steps"] == 2 and by[("one unrolled step", 0)]["steps"] == 1
    assert by[("half the data", 0)]["train_answer_tokens"] < recipe["train_answer_tokens"]
    assert by[("reference text added", 0)]["train_answer_tokens"] > recipe["train_answer_tokens"]
    assert by[("top layer only", 0)]["layers"] == [3] and recipe["layers"] == list(fused)
    assert all(len(r["agree"]) == 2 and 0 <= r["best_k"] <= 2 and r["predicted_speedup"] > 0 for r in rows)
    summary = headablate.summarise_ablations(rows)
    assert [s["variant"] for s in summary] == names
    assert all(s["tau_lo"] <= s["tau"] <= s["tau_hi"] and s["repeats"] == 2 for s in summary)
    # a stopped sweep goes on: the runs it finished are kept, only the rest are trained and saved
    saved = []
    again = headablate.ablate(target, target, train_fs, held_fs, vocabs, cfg, names[:2], repeats=2,
                              verify_cost=v, fused=fused, top=top, progress=False, context=64, done=rows[:3],
                              on_row=saved.append)
    assert again[:3] == rows[:3] and [(r["variant"], r["repeat"]) for r in saved] == [(names[1], 1)]
    assert again[3] is saved[0]
    with pytest.raises(ValueError, match="unknown variants"):
        headablate.ablate(target, target, train_fs, held_fs, vocabs, cfg, ["bigger"], progress=False)


def test_the_data_size_curve_fits_log_tokens_and_finds_where_it_reaches_a_goal():
    from specdec import headablate

    # tau = 1 + 0.5 log10(tokens / 1000): 1.5 at 10k, 2.0 at 100k, 2.5 at 1M
    summary = [dict(variant="a quarter of the data", train_answer_tokens=10_000, tau=1.5, tau_lo=1.4, tau_hi=1.6),
               dict(variant="half the data", train_answer_tokens=100_000, tau=2.0, tau_lo=1.9, tau_hi=2.1),
               dict(variant="one unrolled step", train_answer_tokens=100_000, tau=9.0)]
    curve = headablate.data_size_curve(summary, dict(train_answer_tokens=1_000_000, tau=2.5), goal=3.0)
    assert list(curve["points"]["label"]) == ["a quarter of the data", "half the data", "the book's head"]
    assert curve["slope"] == pytest.approx(0.5) and curve["goal_tokens"] == pytest.approx(1e7)
    flat = headablate.data_size_curve(summary[:2], dict(train_answer_tokens=1e6, tau=1.0), goal=3.0)
    assert flat["slope"] < 0 and flat["goal_tokens"] is None
    with pytest.raises(ValueError, match="two data sizes"):
        headablate.data_size_curve(summary[:1])


def test_the_loss_scores_exactly_the_answer_positions(trained):
    # the loss, computed on the scored rows only, equals the masked mean over the whole grid
    _, head, held, _ = trained
    steps, decay = 2, 0.5
    batch = headloss.feature_batch(held, list(range(4)), steps, "cpu")
    feats, tokens, finals, lse, _, masks = batch
    assert all(m.any() and (~m).any() for m in masks)  # prompt rows and padding are left out
    with torch.no_grad():
        loss, stats = headloss.head_loss(head, batch, steps, decay=decay)
        outs = head.unrolled(head.fuse(feats), tokens, steps)
        n, want, weight = feats.shape[1], 0.0, 0.0
        for j, (h, m) in enumerate(zip(outs, masks), start=1):
            logq = torch.log_softmax(head.norm_out(h) @ head.lm_rows.T, -1)
            p = (finals[:, j: j + n] @ head.target_rows.T - lse[:, j: j + n, None]).exp()
            ce = -(p * logq).sum(-1)
            want += decay ** (j - 1) * ce[m].mean()
            weight += decay ** (j - 1)
            assert torch.allclose(stats[j - 1]["ce"][m], ce[m], atol=1e-5)
            assert not stats[j - 1]["ce"][~m].any()
    assert abs(float(loss) - float(want / weight)) < 1e-5


def test_training_time_test_mask_is_the_attention_unrolled_computes(target):
    # dense attention under the drawn mask, over every step's keys, equals unrolled's shortcut
    head = _head(target).eval()
    n, steps = 7, 3
    H, group = target.config.hidden_size, head.cfg.num_heads // head.cfg.num_kv_heads
    mask = eagle.training_time_test_mask(n, steps)
    assert mask.shape == (steps * n, steps * n) and int(mask[:n].sum()) == n * (n + 1) // 2
    g = torch.Generator().manual_seed(1)
    feats = head.fuse(torch.randn(1, n, len(head.cfg.feature_layers) * H, generator=g))
    tokens = torch.randint(V, (1, n + steps), generator=g)
    rows = torch.arange(n)
    with torch.no_grad():
        outs = head.unrolled(feats, tokens, steps)
        keys, values, feature = [], [], feats
        for j in range(steps):
            q, k, v = head._qkv(feature, tokens[:, j: j + n], rows + j)
            keys.append(k.repeat_interleave(group, dim=1))
            values.append(v.repeat_interleave(group, dim=1))
            K, Vv = torch.cat(keys, -2), torch.cat(values, -2)
            visible = mask[j * n: (j + 1) * n, : (j + 1) * n]
            assert not mask[j * n: (j + 1) * n, (j + 1) * n:].any()  # no later step's keys
            attn = torch.nn.functional.scaled_dot_product_attention(q, K, Vv, attn_mask=visible)
            feature = head._finish(feature, attn)
            torch.testing.assert_close(feature, outs[j], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        eagle.training_time_test_mask(0, 2)


def test_bfloat16_training_learns_and_measuring_it_changes_nothing(target, trained):
    before, _, held, _ = trained
    head = copy.deepcopy(before)
    config = headtrain.TrainConfig(epochs=3, batch_tokens=512, lr=3e-3, eval_every=10_000, steps=2, feature_noise=0.1)
    state, rng = copy.deepcopy(head.state_dict()), torch.get_rng_state()
    rates = headtrain.measure_precisions(head, held, config, n_batches=2, repeats=1)
    assert set(rates) == set(headtrain.PRECISIONS) and all(r > 0 for r in rates.values())
    assert all(torch.equal(state[k], v) for k, v in head.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)  # training's noise draws are not shifted
    with pytest.raises(ValueError, match="precision"):
        headtrain.train_head(head, held, held, dataclasses.replace(config, precision="auto"), progress=False)
    with pytest.raises(ValueError, match="precision"):
        headtrain.TrainConfig(precision="float16")
    history = headtrain.train_head(head, held, held, dataclasses.replace(config, precision="bfloat16"),
                                   progress=False)
    assert history["held_out_loss"].iloc[-1] < history["held_out_loss"].iloc[0]
    assert all(p.dtype == torch.float32 for p in head.parameters())  # the weights stay float32


def test_eagle3_export_is_the_same_head_in_the_engines_convention(target, trained, tmp_path):
    from safetensors.torch import load_file

    from specdec import eagle3export

    head = trained[1]
    out = eagle3export.export_eagle3(head, tmp_path / "e3", target.config, dtype=torch.float32)
    state = load_file(out / "model.safetensors")
    cfg = __import__("json").loads((out / "config.json").read_text())
    assert cfg["eagle_aux_hidden_state_layer_ids"] == [i + 1 for i in head.cfg.feature_layers]
    assert cfg["draft_vocab_size"] == len(head.d2t) and cfg["vocab_size"] == V
    # EAGLE-3's d2t holds offsets: target id = draft index + d2t[draft index]
    assert torch.equal(torch.arange(len(head.d2t)) + state["d2t"], head.d2t)
    assert state["t2d"].sum() == len(head.d2t) and state["t2d"][head.d2t].all()
    H = head.cfg.hidden_size
    assert state["fc.weight"].shape == (H, len(head.cfg.feature_layers) * H)
    # the engine's layer reads [token embedding, feature]: its q from the exported weights is ours
    f, tok = torch.randn(3, H), torch.tensor([4, 9, 200])
    emb = target.get_input_embeddings().weight[tok]
    x = torch.cat([emb * torch.rsqrt(emb.pow(2).mean(-1, keepdim=True) + head.cfg.rms_norm_eps)
                   * state["midlayer.input_layernorm.weight"],
                   f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + head.cfg.rms_norm_eps)
                   * state["midlayer.hidden_norm.weight"]], -1)
    ours = torch.cat([head.norm_feature(f), head.norm_token(emb)], -1) @ head.q_proj.weight.T
    torch.testing.assert_close(x @ state["midlayer.self_attn.q_proj.weight"].T, ours.detach())
    # read back, it drafts what the book's head drafts
    back = eagle3export.load_eagle3(out, target)
    assert torch.equal(back.d2t, head.d2t) and back.cfg.feature_layers == head.cfg.feature_layers
    prompt = torch.tensor([5, 17, 33, 2, 90])
    a = speculative_generate(target, eagle.EagleDrafter(head), prompt, 24, 4)
    b = speculative_generate(target, eagle.EagleDrafter(back), prompt, 24, 4)
    assert a.tokens == b.tokens and a.accepted_per_round == b.accepted_per_round
    with pytest.raises(FileNotFoundError, match="no EAGLE-3 checkpoint"):
        eagle3export.load_eagle3(tmp_path / "missing", target)
