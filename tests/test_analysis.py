"""specdec.analysis: results files to DataFrames, checked on a results set whose aggregates
can be worked out by hand; and reading results loads no decoding loop."""

import subprocess
import sys

import numpy as np
import pytest

from specdec import analysis, theory
from specdec.metrics import GenerationResult

from .helpers import make_results


@pytest.fixture
def results_df():
    return analysis.load_results(make_results())


# ---------------------------------------------------------------------------------------------
# Aggregation on hand-made results (tests/helpers.py: make_results)
# ---------------------------------------------------------------------------------------------


def test_alpha_estimate_counts_only_tested_tokens():
    # accepted (2, 0, 2, 1) of 2: successes 5; failures in rounds 2 and 4 -> 5 / 7
    assert analysis.alpha_estimate([2, 0, 2, 1], [2, 2, 2, 2]) == pytest.approx(5 / 7)
    assert analysis.alpha_estimate([], []) is None
    # on simulated i.i.d. rounds the estimator recovers alpha
    rng = np.random.default_rng(0)
    acc = (np.cumprod(rng.random((20000, 4)) < 0.7, axis=1).sum(1)).tolist()
    assert analysis.alpha_estimate(acc, [4] * len(acc)) == pytest.approx(0.7, abs=0.01)


def test_speedups_and_tables(results_df):
    s = analysis.speedups(results_df)
    spec = s[s.method == "speculative"]
    # the headline is decode-only: 9 tokens after the first; AR decode 2.0 - 0.2 s, speculative 1.0 - 0.2 s
    assert len(spec) == 4 and np.allclose(spec.speedup, (9 / 0.8) / (9 / 1.8))
    assert np.allclose(spec.speedup_e2e, 2.0)  # end to end: 10 tokens in 1.0 s against 10 in 2.0 s
    hf = s[s.method == "hf_assisted"]
    assert np.allclose(hf.speedup, 2.0) and np.allclose(hf.speedup_e2e, 2.0)
    assert np.allclose(hf.speedup_vs_ours, 1.8 / 1.125)  # decode: 9 tokens in 1.125 s against ours in 1.8 s
    table = analysis.speedup_table(results_df)
    assert set(table.columns) == {"pair", "k", "domain", "speedup", "lo", "hi", "n_prompts", "n_repeats"}
    assert len(table) == 4 and np.allclose(table.speedup, (9 / 0.8) / (9 / 1.8))
    acc = analysis.acceptance_by_domain(results_df)
    assert np.allclose(acc.alpha_hat, 5 / 7) and np.allclose(acc.acceptance_rate, 5 / 8)
    assert np.allclose(acc.mean_accepted, 5 / 4) and (acc.rounds == 4).all()


def test_relative_to_ours_divides_decode_rates_by_our_loop(results_df):
    rel = analysis.relative_to_ours(results_df).set_index(["pair", "domain", "label"]).relative
    # transformers' generate(): 9 tokens after the first in 2.5 - 0.25 s; ours in 2.0 - 0.2 s
    assert rel[("pairA", "code", "hf_autoregressive")] == pytest.approx(1.8 / 2.25)
    assert rel[("pairA", "code", "speculative K=2")] == pytest.approx(1.8 / 0.8)
    assert rel[("pairA", "code", "autoregressive")] == pytest.approx(1.0)


def test_summarise_takes_the_median_repeat_of_geometric_means_over_prompts():
    import pandas as pd

    # two prompts x three repeats; prompt a: 1, 2, 4; prompt b: 8, 8, 2
    s = pd.DataFrame({"g": ["x"] * 6, "prompt_id": ["a", "a", "a", "b", "b", "b"], "repeat": [0, 1, 2] * 2,
                      "run_id": ["r"] * 6, "v": [1.0, 2.0, 4.0, 8.0, 8.0, 2.0]})
    row = analysis.summarise(s, ["g"], "v").iloc[0]
    # per repeat over prompts: sqrt(1*8), sqrt(2*8) = 4, sqrt(4*2); the median repeat is sqrt(8)
    assert row.v == pytest.approx(8 ** 0.5)
    assert row.lo == pytest.approx(8 ** 0.5) and row.hi == pytest.approx(4.0)
    assert row.lo <= row.v <= row.hi
    assert row.n_prompts == 2 and row.n_repeats == 3


def test_cost_ratios_and_prediction(results_df):
    cost = analysis.cost_ratios(results_df)
    assert np.allclose(cost.t_step, 0.2) and np.allclose(cost.c, 0.02 / 0.2)
    assert np.allclose(cost.verify_cost, (0.6 / 4) / 0.2) and np.allclose(cost.draft_cost, (0.16 / 4) / 0.2)
    mp = analysis.measured_vs_predicted(results_df)
    assert np.allclose(mp.predicted, theory.speedup(5 / 7, 0.1, 2))
    assert np.allclose(mp.predicted_verify, theory.expected_tokens(5 / 7, 2) / (0.2 + 0.75))
    assert np.allclose(mp.measured, (9 / 0.8) / (9 / 1.8))
    assert np.allclose(mp.measured_lo, mp.measured) and np.allclose(mp.measured_hi, mp.measured)


def test_latency_cdf_and_phase_breakdown(results_df):
    cdf = analysis.latency_cdf(results_df)
    spec = cdf[(cdf.pair == "pairA") & (cdf.label == "speculative K=2")]
    assert len(spec) == 2 * 9  # two prompts, the first token left out
    assert spec.cdf.iloc[-1] == 1.0 and spec.latency_s.is_monotonic_increasing
    assert (spec.latency_s == 0).mean() == pytest.approx(5 / 9)
    ph = analysis.phase_breakdown(results_df)
    row = ph[(ph.pair == "pairA") & (ph.k == 2)].iloc[0]
    assert row.draft == pytest.approx(0.016) and row.verify == pytest.approx(0.06)
    total = row[["prefill", "decode", "draft", "verify", "sample", "overhead"]].sum()
    assert total == pytest.approx(1.0 / 10)  # the phases and the overhead add up to the wall time
    ar = ph[(ph.pair == "pairA") & (ph.k == 0)].iloc[0]
    assert ar.decode == pytest.approx(0.18) and ar.verify == 0  # the baseline's step is "decode"


def test_aggregation_refuses_foreign_results():
    plain = GenerationResult(method="speculative", tokens=[1], prompt_tokens=1, total_s=1.0, ttft_s=1.0,
                             token_latencies_s=[1.0])
    with pytest.raises(ValueError, match="meta\\['config'\\]"):
        analysis.load_results([plain])
    only_ar = analysis.load_results([r for r in make_results() if r.method == "autoregressive"])
    with pytest.raises(ValueError, match="no speculative"):
        analysis.speedups(only_ar)


# ---------------------------------------------------------------------------------------------
# What reading results imports
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["specdec.analysis", "specdec.plots"])
def test_reading_and_drawing_results_imports_no_decoding_loop(module):
    """A fresh interpreter imports the module; none of the decoding-loop modules may come with it."""
    loops = ["specdec.decoding", "specdec.drafters", "specdec.cache", "specdec.bench"]
    code = f"import sys, {module}; print(sorted(m for m in {loops!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]", f"importing {module} imported {out.strip()}"


def test_the_import_check_sees_a_decoding_import():
    """The check above can fail: importing the harness does bring the loop in."""
    code = "import sys, specdec.bench; print('specdec.decoding' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "True"


def test_greedy_identity_counts_generations_that_left_their_baselines_tokens():
    from .helpers import bench_result

    results = make_results()
    changed = next(r for r in results if r.method == "speculative")
    changed.tokens[3] += 1  # one speculative generation emits one other token
    # a generation whose prompt has no autoregressive baseline is left out, not counted either way
    results.append(bench_result("pairA", "speculative", 2, "code", "code/9"))
    table = analysis.greedy_identity(analysis.load_results(results)).set_index(["pair", "method"])
    assert table.loc[("pairA", "speculative")].tolist() == [1, 2]
    assert table.loc[("pairB", "speculative")].tolist() == [2, 2]
    assert table.loc[("pairA", "autoregressive")].tolist() == [2, 2]
    assert table.loc[("pairB", "hf_assisted")].tolist() == [2, 2]
