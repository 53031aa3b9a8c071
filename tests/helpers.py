"""Builders shared by several test files: tiny random models and a hand-made results set.

Test files import them package-relatively (``from .helpers import tiny_llama``); fixtures that
wrap them live in ``conftest.py``.
"""

import itertools

import numpy as np
import torch
from scipy import stats

from specdec.analysis import BenchmarkConfig
from specdec.metrics import GenerationResult


def tiny_llama(n_layers=4, vocab=256, seed=0, init=0.2):
    """A tiny random Llama whose logits are peaked enough for greedy decoding to be stable."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=init, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return LlamaForCausalLM(cfg).eval()


# ---------------------------------------------------------------------------------------------
# The exact distribution of a short sampled continuation, and a chi-square test against it
# ---------------------------------------------------------------------------------------------

V, N_NEW, N_RUNS = 6, 3, 2000


def exact_sequence_distribution(model, prompt, params):
    """P(x1, x2, x3 | prompt) under the target, by enumerating every continuation."""
    from specdec.sampling import probs_from_logits

    probs = {}
    with torch.inference_mode():
        for seq in itertools.product(range(V), repeat=N_NEW):
            p, ctx = 1.0, prompt
            for t in seq:
                p *= float(probs_from_logits(model(ctx[None]).logits[0, -1], params)[t])
                ctx = torch.cat([ctx, torch.tensor([t])])
            probs[seq] = p
    return probs


def sequence_chisquare(sampler, model, prompt, params):
    exact = exact_sequence_distribution(model, prompt, params)
    counts = {s: 0 for s in exact}
    for seed in range(N_RUNS):
        counts[tuple(sampler(seed))] += 1
    keys = sorted(exact, key=exact.get, reverse=True)
    expected = np.array([exact[s] for s in keys]) * N_RUNS
    observed = np.array([counts[s] for s in keys], dtype=float)
    # pool the rare sequences so that every expected count is >= 5
    big = expected >= 5
    exp = np.append(expected[big], expected[~big].sum())
    obs = np.append(observed[big], observed[~big].sum())
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


# ---------------------------------------------------------------------------------------------
# A results set with hand-picked numbers, for the aggregation and figure tests
# ---------------------------------------------------------------------------------------------


def bench_result(pair, method, k, domain="code", prompt="code/0", n=10, total=2.0, accepted=(), drafted=(),
                 phases=None, latencies=None, run="r1"):
    """One generation as the harness records it (configuration, its hash and run in ``meta``)."""
    cfg = BenchmarkConfig(pair=pair, method=method, k=k, domain=domain, prompt_id=prompt, max_new_tokens=n)
    lat = latencies if latencies is not None else [total / n] * n
    res = GenerationResult(method=method, tokens=list(range(n)), prompt_tokens=5, total_s=total, ttft_s=lat[0],
                           token_latencies_s=list(lat), drafted_per_round=list(drafted),
                           accepted_per_round=list(accepted), phase_s=dict(phases or {}))
    res.meta.update(config=cfg.to_dict(), config_hash=cfg.config_hash, run_id=run)
    return res


def make_results():
    """Two pairs, two domains; every number chosen so the aggregates can be worked out by hand.

    Autoregressive: 10 tokens in 2.0 s, prefill 0.2 s, 9 decode steps of 0.2 s (verify 1.8 s).
    Speculative K=2: 10 tokens in 1.0 s; rounds accept (2, 0, 2, 1) of 2 drafted each;
    draft 0.16 s over 8 draft passes (0.02 s each, c = 0.1), verify 0.6 s over 4 rounds.
    Transformers: its baseline 2.5 s, its assisted method 1.25 s (speedup 2 over its own).
    """
    out = []
    for pair in ("pairA", "pairB"):
        for domain in ("code", "conversation"):
            p = f"{domain}/0"
            out.append(bench_result(pair, "autoregressive", 0, domain, p, total=2.0,
                                    phases={"prefill": 0.2, "decode": 1.8, "sample": 0.0}))
            out.append(bench_result(pair, "speculative", 2, domain, p, total=1.0, accepted=(2, 0, 2, 1),
                                    drafted=(2, 2, 2, 2),
                                    phases={"prefill": 0.2, "draft": 0.16, "verify": 0.6, "sample": 0.04},
                                    latencies=[0.2, 0.0, 0.2, 0.2, 0.0, 0.2, 0.0, 0.2, 0.0, 0.0]))
            out.append(bench_result(pair, "hf_autoregressive", 0, domain, p, total=2.5))
            out.append(bench_result(pair, "hf_assisted", 2, domain, p, total=1.25))
    return out
